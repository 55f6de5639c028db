pub mod gateway;
pub mod peers;
pub mod rtu;
pub mod serial;
