//! The edges: each module turns one piece of the outside world into core
//! types and back. Nothing here decides anything.

pub mod admin;
pub mod ble;
pub mod fleet;
pub mod homeassistant;
pub mod mqtt;
pub mod record;
pub mod scanners;
pub mod sources;
pub mod wsbridge;
