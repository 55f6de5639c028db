pub mod gateway;
pub mod peers;
pub mod serial;
