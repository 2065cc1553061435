//! `firmware-sim`: the digital twin of a shop floor for the store proximity
//! gateway.
//!
//! A [`StoreSpec`] describes the floor (zones, scanners, beacons, radio); a
//! [`Scenario`] describes who walks in (opted-in [`Shopper`]s with app keys,
//! and [`Stranger`]s who must never be recognised); a [`Simulation`] turns
//! both into [`SightingRecord`]s (docs/design.md §7) in simulated time, plus the
//! [`GroundTruth`] of where every advertiser really was. [`output`] writes
//! them to JSON Lines files, sends them over UDP or publishes over MQTT.
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
//! Everything is deterministic in the seed; the model never reads the clock
//! (only the load generator does, see below).
//!
//! # Beacons and telemetry
//!
//! Store beacons send iBeacon, AltBeacon or Eddystone-UID frames. A beacon
//! with a `tlm` table in the store file ([`spec::TlmSpec`]) sends an
//! Eddystone-TLM frame instead of its main frame on every `every`-th advert:
//! service data 0xFEAA, frame type 0x20, version 0, battery mV, temperature
//! in 8.8 fixed point, advert count and uptime in 0.1 s (all big-endian).
//! The battery drains linearly or exponentially from `battery_start_mv` at
//! `drain_mv_per_day`, counted from `age_days` before the start; count and
//! uptime follow from the time since power-on and the beacon's interval.
//!
//! # Stores
//!
//! [`StoreSpec::small_store`] (also `config/sim/small-store.toml`) is the
//! demo's three-zone store. `config/sim/electronics-store.toml` is a bigger
//! one: ten zones (entrance, laptops, phones, tv, audio, gaming, cameras,
//! smart-home, accessories, checkout), a scanner each, twelve beacons of
//! all three kinds, some with TLM, and opening hours. [`site::site_toml`]
//! (`firmware-sim site`) writes the gateway's site file for a store: its
//! zones, its beacons and the presence settings its floor plan gives.
//!
//! # Opening hours and several days
//!
//! An optional `[hours]` table ([`spec::OpeningHours`]: IANA `timezone`,
//! `open`, `close`, DST-correct through chrono-tz) makes the store silent
//! while closed: no sightings, no check-ins, and ground truth clipped to
//! the open hours, so a multi-day stream skips the nights.
//! [`Scenario::returning`] / [`Scenario::returning_for`] build shoppers
//! who come back on several of N days (at most once a day);
//! `firmware-sim capture --days N` starts at the first day's opening and
//! runs N days. [`Scenario::tour`] is a generic scenario for any store.
//!
//! # iOS check-ins
//!
//! iOS shoppers do not advertise the app token. While their phone hears a
//! store iBeacon they check in (at most once per 30 s of sim time) with a
//! [`CheckInRecord`]: recipient, topic suffix `checkin/<recipient>` and the
//! docs/design.md §5 payload `{"rotating_id", "at_ms", "beacons": [...]}`.
//! [`Simulation::next_batch_with_checkins`] returns them beside the
//! sightings, from a random stream of their own (sightings are unchanged).
//! [`output::publish_checkins`] publishes them over MQTT v5 (QoS 1) to
//! `<prefix>/<store>/checkin/<recipient>`.
//!
//! # ESPresense
//!
//! [`to_espresense`] / [`Espresense`] turn sightings of iBeacon-form
//! devices into what ESPresense room nodes publish on
//! `espresense/devices/<id>/<room>` (`id`, `rssi`, `rssi@1m`, `distance`,
//! `raw`, `speed`, `mac`, `interval`), with a smoothed distance and
//! ESPresense-like skip rules. App tokens are not converted: ESPresense
//! would report them without their bytes, losing the rotating id.
//! `capture --format espresense` writes them; `firmware-sim mqtt --format
//! checkins|espresense|both` publishes them through [`output::publish_mqtt`].
//!
//! # Calibration walk
//!
//! [`calibration_walk`] (`firmware-sim walk --store plan.toml --out
//! walk.jsonl --truth t.jsonl [--seed N]`): a member of staff carries a
//! tag through every zone (a few spots each) and the hall, a few minutes in
//! all; the capture holds what the scanners heard (the store's beacons
//! too), the truth only the tag. `gateway calibrate` learns a radio map
//! from it.
//!
//! # Load generator
//!
//! [`run_load`] (`firmware-sim load --target 127.0.0.1:7531 --rate 20000
//! --devices 5000 --duration 30s [--strangers 0.9] [--people out.jsonl]
//! [--json]`) sends sighting records over UDP at a fixed rate from many
//! devices, paced by a token bucket with a batch per millisecond tick,
//! stamped with the wall clock so enrolled shoppers' tokens resolve. It
//! reports records sent, achieved rate, maximum lag behind schedule and
//! how many came from enrolled shoppers. Only loopback targets are
//! accepted, and a duration is required.

pub mod adverts;
pub mod chain_load;
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
pub mod site;
pub mod spec;
pub mod walk;

pub use chain_load::{ChainLoadConfig, ChainLoadError, ChainLoadReport, run_chain_load};
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
pub use walk::{Walk, calibration_walk};

/// Zone name of the open floor outside every zone, in ground truth and
/// as a path stop.
pub const HALL_ZONE: &str = "hall";

/// Default simulation start: 2026-11-22T08:00:00Z (09:00 in Berlin, when
/// the default opening hours begin), a rotation boundary.
pub const DEFAULT_START_UNIX_MS: i64 = 1_795_334_400_000;
