//! MQTT on both sides of the gateway: the embedded broker (`broker`, rumqttd behind the guard),
//! the upstream session (`uplink`) with its pure send plan (`plan`) and in-flight window
//! (`window`, remembered across restarts by `learned`) and its connection (`link`,
//! rumqttc, written in batches), what an incoming publish is on either link (`inbound`), the
//! recognition of our own messages coming back (`echo`), the topic names and payloads of the
//! user-facing contract (`topics`), and the Home Assistant birth topic both links watch
//! (`birth`). The decisions live in the pure files so they can be tested as tables; `broker`,
//! `uplink` and `link` only do the I/O. No rumqttc or rumqttd type leaves this folder.

pub mod birth;
pub mod broker;
pub mod echo;
pub mod inbound;
pub mod learned;
pub mod link;
pub mod plan;
pub mod strikes;
pub mod topics;
pub mod uplink;
pub mod window;
