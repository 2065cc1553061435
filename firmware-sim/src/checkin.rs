//! iOS check-ins (docs/design.md §5, §6): an iOS app cannot advertise in the
//! background, so when the phone hears a store iBeacon the app sends its
//! current rotating identifier and the beacons it hears over MQTT to
//! `<prefix>/<store>/checkin/<recipient>`.

use serde::{Deserialize, Serialize};

/// Check-ins of one shopper are at least this far apart in sim time.
pub const CHECKIN_MIN_GAP_MS: i64 = 30_000;

/// At most this many beacons are listed in one check-in (strongest first),
/// as iOS ranging reports the nearest ones.
pub const CHECKIN_MAX_BEACONS: usize = 5;

/// One beacon the phone heard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeardBeacon {
    /// Lowercase, hyphenated.
    pub uuid: String,
    pub major: u16,
    pub minor: u16,
    pub rssi: i16,
}

/// The check-in payload, exactly the docs/design.md §5 shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    /// 32 lowercase hex digits: the app's identifier for the interval of
    /// `at_ms`.
    pub rotating_id: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub beacons: Vec<HeardBeacon>,
}

/// A check-in and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInRecord {
    /// The shopper's recipient pseudonym.
    pub recipient: String,
    /// `checkin/<recipient>`: the topic below `<prefix>/<store>/`.
    pub topic_suffix: String,
    pub payload: CheckIn,
}

impl CheckInRecord {
    pub fn new(recipient: &str, payload: CheckIn) -> Self {
        Self {
            recipient: recipient.to_owned(),
            topic_suffix: format!("checkin/{recipient}"),
            payload,
        }
    }

    /// `<prefix>/<store>/checkin/<recipient>`.
    pub fn topic(&self, prefix: &str, store: &str) -> String {
        format!("{prefix}/{store}/{}", self.topic_suffix)
    }

    pub fn at_ms(&self) -> i64 {
        self.payload.at_ms
    }
}
