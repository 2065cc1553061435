//! The store proximity gateway: BLE sightings in, consented and hard-capped
//! nudges out over MQTT. See ARCHITECTURE.md for the map.
//!
//! The pure core (`decode`, `identity`, `presence`, `decide`) does no I/O and
//! takes `now` as data; `store` owns every byte on disk; `io` holds one module
//! per edge; `daemon` wires them with bounded channels and one cancellation
//! token.

pub mod chain_message;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod decode;
pub mod demo;
pub mod heap;
pub mod identity;
pub mod io;
pub mod jsonl;
pub mod people;
pub mod presence;
pub mod privacy;
pub mod ratelimit;
pub mod reload;
pub mod reservations;
pub mod sighting;
pub mod simulate;
pub mod store;
pub mod telemetry;
pub mod topics;
