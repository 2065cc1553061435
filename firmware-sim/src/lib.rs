//! `firmware-sim`: the digital twin of a shop floor for the store proximity
//! gateway.
//!
//! A [`StoreSpec`] describes the floor (zones, scanners, beacons, radio); a
//! [`Scenario`] describes who walks in (opted-in [`Shopper`]s with app keys,
//! and [`Stranger`]s who must never be recognised); a [`Simulation`] turns
//! both into [`SightingRecord`]s (DESIGN §7) in simulated time, plus the
//! [`GroundTruth`] of where every advertiser really was. [`output`] writes
//! them to JSON Lines files or sends them over UDP.
//!
//! ```
//! use firmware_sim::{Scenario, Simulation, StoreSpec};
//! let scenario = Scenario::small_demo(7);
//! let people = scenario.people_jsonl();
//! let mut sim = Simulation::new(StoreSpec::small_store(), scenario, 1_795_334_400_000, 7)?;
//! let records = sim.next_batch(1_795_334_400_000 + 60_000);
//! assert!(!records.is_empty() && people.lines().count() == 4);
//! # Ok::<(), firmware_sim::SimError>(())
//! ```
//!
//! Everything is deterministic in the seed; the model never reads the clock.

pub mod adverts;
pub mod checkin;
pub mod espresense;
pub mod hours;
pub mod load;
pub mod output;
pub mod radio;
pub mod rotating;
pub mod route;
pub mod scenario;
pub mod sim;
pub mod spec;

pub use checkin::{CheckIn, CheckInRecord, HeardBeacon};
pub use espresense::{Espresense, EspresenseMessage, EspresenseReport, to_espresense};
pub use load::{LoadConfig, LoadError, LoadReport, run_load};
pub use output::{
    MqttMessage, MqttReport, OutputError, UdpReport, publish_checkins, publish_espresense,
    publish_mqtt, send_udp, write_capture_file, write_jsonl, write_jsonl_file, write_people_file,
    write_truth_file,
};
pub use rotating::{RotatingKey, interval_of_unix_ms, rotating_id};
pub use scenario::{
    Consent, Identity, PersonRecord, Platform, Scenario, Shopper, Stop, Stranger, StrangerDevice,
    Visit,
};
pub use sim::{GroundTruth, PersonTruth, SightingRecord, SimError, Simulation};
pub use spec::{SpecError, StoreSpec};

/// Zone name of the open floor outside every zone, in ground truth and
/// as a path stop.
pub const HALL_ZONE: &str = "hall";

/// Default simulation start: 2026-11-22T08:00:00Z (09:00 in Berlin, when
/// the default opening hours begin), a rotation boundary.
pub const DEFAULT_START_UNIX_MS: i64 = 1_795_334_400_000;
