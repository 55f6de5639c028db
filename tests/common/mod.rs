pub mod gateway;
pub mod peers;
