//! The vocabulary of the config file that other folders share: Modbus tables, data types and
//! word orders (`modbus`), serial ports, framing, parsing and sensors (`serial`), MQTT topic
//! syntax (`topic`), broker users and access (`access`), report strategies and payload
//! shapes (`report`), and Home Assistant entity kinds and classes (`homeassistant`). Each type
//! is a value as validation leaves it; behaviour on these types lives with the code that uses
//! them (`device/`, `guard/`).
//! Nothing here imports another module of the crate: it is the floor both `config` and its
//! users stand on.

pub mod access;
pub mod homeassistant;
pub mod modbus;
pub mod report;
pub mod serial;
pub mod topic;
