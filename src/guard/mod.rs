//! The guard: fieldbridge owns every public listener of the embedded broker (plain TCP, TLS,
//! WebSocket) and runs a small MQTT-aware proxy per connection in front of rumqttd, which
//! listens on loopback only and accepts nobody but the guard.
//!
//! Why: rumqttd 0.20 has no topic ACLs, and its TLS accept loop awaits each handshake inline
//! without a timeout, so one idle socket stalls every new TLS client. Here each handshake runs
//! in its own task under a timeout, and one code path authenticates and polices clients of all
//! three listeners.
//!
//! Invariants:
//! - Only MQTT 3.1.1 (protocol level 4); other versions get CONNACK "unacceptable protocol".
//! - A client is connected to rumqttd only after its CONNECT passed: credentials, anonymous
//!   policy of its listener, keep-alive bounds, and the publish ACL for its Last Will.
//! - rumqttd's listener requires a per-start random user and password that only the guard
//!   knows, so a local process cannot bypass the guard through the loopback port.
//! - Connection slots (`max_connections`) are held from accept to close, handshakes included.

pub mod acl;
pub mod auth;
pub mod codec;
mod forward;
mod listen;
mod proxy;
pub mod session;
mod shared;
pub mod throttle;

pub use forward::Forwarder;
pub use listen::{bind, spawn, Bound};
pub use shared::{BackendLogin, GuardError, Shared};
