//! ESPresense output: what an ESPresense room node would publish for the
//! iBeacons it hears, on `espresense/devices/<id>/<room>`.
//!
//! ESPresense sends no advert bytes, only a device id and filtered RSSI and
//! distance. Only iBeacon-form devices are converted (the store's iBeacons
//! and foreign iBeacon tags): their id `iBeacon:<uuid>-<major>-<minor>` is
//! stable. App tokens are not converted: they are manufacturer data under
//! a test company id, so ESPresense would report them by random address
//! only, and the rotating identifier (the whole point) would be lost —
//! docs/design.md §6 says the same.
//!
//! Per room and device the distance is smoothed (exponential moving
//! average) and a report goes out when it moved by more than
//! [`SKIP_DISTANCE_M`] or [`SKIP_MS`] passed since the last one, like
//! ESPresense's `skip_distance` / `skip_ms` settings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sim::SightingRecord;

/// Report when the filtered distance moved by more than this.
pub const SKIP_DISTANCE_M: f64 = 0.5;
/// Report at least this often while the device is heard.
pub const SKIP_MS: i64 = 5000;
/// ESPresense's default absorption factor for distance estimates.
pub const ABSORPTION: f64 = 3.5;
/// Weight of a new reading in the distance filter.
const ALPHA: f64 = 0.3;

/// The JSON body of one ESPresense device report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EspresenseReport {
    /// `iBeacon:<uuid>-<major>-<minor>`.
    pub id: String,
    pub rssi: i16,
    /// Calibrated RSSI at 1 m, from the iBeacon's measured power.
    #[serde(rename = "rssi@1m")]
    pub rssi_at_1m: i16,
    /// Filtered distance estimate in metres (2 decimals).
    pub distance: f64,
    /// Unfiltered distance from this reading (2 decimals).
    pub raw: f64,
    /// Change of the filtered distance in m/s (positive: moving away).
    pub speed: f64,
    /// Advertiser address, 12 lowercase hex digits without colons.
    pub mac: String,
    /// Milliseconds between the last two adverts this room heard.
    pub interval: i64,
}

/// A report and its topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EspresenseMessage {
    /// `espresense/devices/<id>/<room>`.
    pub topic: String,
    /// When the room node heard the advert (Unix ms); not in the payload.
    pub at_ms: i64,
    pub payload: EspresenseReport,
}

#[derive(Debug, Clone)]
struct Track {
    filtered: f64,
    last_seen_ms: i64,
    reported: Option<(i64, f64)>,
}

/// Turns sighting records into ESPresense reports, one room per scanner.
#[derive(Debug, Clone, Default)]
pub struct Espresense {
    tracks: BTreeMap<(String, String), Track>,
}

impl Espresense {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one record (in time order); returns a report when one is due.
    pub fn push(&mut self, record: &SightingRecord) -> Option<EspresenseMessage> {
        let (id, rssi_at_1m) = ibeacon_id(&record.adv)?;
        let raw = distance(record.rssi, rssi_at_1m);
        let key = (record.scanner.clone(), id.clone());
        let Some(track) = self.tracks.get_mut(&key) else {
            // First advert: remember it; report from the second on, when
            // the interval is known.
            self.tracks.insert(
                key,
                Track {
                    filtered: raw,
                    last_seen_ms: record.at_ms,
                    reported: None,
                },
            );
            return None;
        };
        let interval = record.at_ms - track.last_seen_ms;
        track.last_seen_ms = record.at_ms;
        track.filtered = ALPHA * raw + (1.0 - ALPHA) * track.filtered;
        let due = match track.reported {
            None => true,
            Some((at, d)) => {
                record.at_ms - at >= SKIP_MS || (track.filtered - d).abs() > SKIP_DISTANCE_M
            }
        };
        if !due {
            return None;
        }
        let speed = match track.reported {
            Some((at, d)) if record.at_ms > at => {
                (track.filtered - d) / ((record.at_ms - at) as f64 / 1000.0)
            }
            _ => 0.0,
        };
        track.reported = Some((record.at_ms, track.filtered));
        let payload = EspresenseReport {
            id: id.clone(),
            rssi: record.rssi,
            rssi_at_1m,
            distance: round2(track.filtered),
            raw: round2(raw),
            speed: round2(speed),
            mac: record.addr.replace(':', ""),
            interval,
        };
        Some(EspresenseMessage {
            topic: format!("espresense/devices/{id}/{}", record.scanner),
            at_ms: record.at_ms,
            payload,
        })
    }
}

/// All reports for a stream of records.
pub fn to_espresense<'a>(
    records: impl IntoIterator<Item = &'a SightingRecord>,
) -> Vec<EspresenseMessage> {
    let mut conv = Espresense::new();
    records.into_iter().filter_map(|r| conv.push(r)).collect()
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// `10 ^ ((rssi@1m - rssi) / (10 * absorption))`.
pub fn distance(rssi: i16, rssi_at_1m: i16) -> f64 {
    10f64.powf(f64::from(rssi_at_1m - rssi) / (10.0 * ABSORPTION))
}

/// ESPresense id and measured power of an iBeacon advert, if it is one.
pub fn ibeacon_id(adv_hex: &str) -> Option<(String, i16)> {
    let adv = hex::decode(adv_hex).ok()?;
    let mut i = 0;
    while i < adv.len() {
        let len = usize::from(adv[i]);
        let s = adv.get(i + 1..i + 1 + len)?;
        if len == 26 && s[0] == 0xFF && s[1..5] == [0x4C, 0x00, 0x02, 0x15] {
            let u = hex::encode(&s[5..21]);
            let uuid = format!(
                "{}-{}-{}-{}-{}",
                &u[..8],
                &u[8..12],
                &u[12..16],
                &u[16..20],
                &u[20..]
            );
            let major = u16::from_be_bytes([s[21], s[22]]);
            let minor = u16::from_be_bytes([s[23], s[24]]);
            let power = i16::from(s[25] as i8);
            return Some((format!("iBeacon:{uuid}-{major}-{minor}"), power));
        }
        i += 1 + len;
    }
    None
}
