//! End-to-end test harness for the store proximity gateway.
//!
//! Everything here starts real processes (Mosquitto, the `gateway` and
//! `firmware-sim` binaries) on loopback, with their own temp dirs, and stops
//! them again when the owning guard is dropped, also on panic. All waits are
//! bounded.
//!
//! Prefer `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` for
//! async tests: a few helpers (broker start/stop, child waits) block briefly,
//! and a multi-thread runtime keeps the [`Phone`] tasks running meanwhile.
//!
//! ```no_run
//! use std::{process::Command, time::Duration};
//! use e2e::*;
//!
//! # async fn example() -> anyhow::Result<()> {
//! let broker = Mosquitto::start(MosquittoOptions::default())?;
//! let phone = Phone::connect(PhoneOptions::new(broker.port(), "app-alice", "p/s1/nudges/alice")).await?;
//! let mut cmd = Command::new(gateway_bin()?);
//! cmd.args(["run", "--broker", &broker.url()]); // illustrative flags
//! let gateway = spawn_guarded(cmd)?;
//! let nudges = phone.wait_for(1, Duration::from_secs(10)).await;
//! let nudges = nudges.map_err(|e| e.context(gateway.logs()))?;
//! assert!(nudges[0].message_expiry_interval.is_some());
//! # Ok(())
//! # }
//! ```

pub mod bins;
pub mod chain;
pub mod flood;
pub mod mosquitto;
pub mod phone;
pub mod pki;
pub mod powercut;
pub mod process;
pub mod site;
pub mod util;

pub use bins::{firmware_sim_bin, gateway_bin};
pub use mosquitto::{Mosquitto, MosquittoOptions};
pub use phone::{Phone, PhoneOptions, Received};
pub use pki::Pki;
pub use process::{ChildGuard, spawn_guarded, spawn_guarded_in, spawn_guarded_with_input};
pub use rumqttc::v5::mqttbytes::QoS;
pub use rumqttc::v5::mqttbytes::v5::PublishProperties;
pub use site::Site;
pub use util::{Workdir, free_tcp_port, free_udp_port, wait_until, wait_until_blocking};
