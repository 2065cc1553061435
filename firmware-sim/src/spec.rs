//! The store's floor plan, scanners, beacons and radio parameters, as TOML.
//!
//! Coordinates are metres on a 2-D floor plan, origin at one corner, `x`
//! along the width and `y` along the depth. Every table rejects unknown
//! fields so that a typo in a store file is an error, not a silent default.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::adverts;

/// UUID of the store's own iBeacons ("BlueCharmBeacons" in ASCII).
pub const STORE_IBEACON_UUID: &str = "426c7565-4368-6172-6d42-6561636f6e73";

/// Why a store spec could not be loaded. Every message is one line and names
/// the offending field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read store spec {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store spec{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Parse {
        line: Option<usize>,
        message: String,
    },
    #[error("invalid store spec: {}", problems.join("; "))]
    Invalid { problems: Vec<String> },
}

/// A whole store: what the simulator needs to know about the shop floor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    pub store: StoreInfo,
    pub floor: Floor,
    #[serde(default)]
    pub radio: RadioParams,
    pub scanners: Vec<ScannerSpec>,
    pub zones: Vec<ZoneSpec>,
    #[serde(default)]
    pub beacons: Vec<BeaconSpec>,
    /// Opening hours. Without them the store never closes; with them the
    /// simulation is silent while it is closed (see [`OpeningHours`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours: Option<OpeningHours>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreInfo {
    pub id: String,
}

/// The walkable floor. Anything on it that is not inside a zone is "hall".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Floor {
    pub width_m: f64,
    pub depth_m: f64,
    /// Where shoppers come in and leave.
    pub door: Point,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

impl Point {
    pub fn distance_to(self, other: Point) -> f64 {
        (self.x - other.x).hypot(self.y - other.y)
    }
}

/// An axis-aligned rectangle, `x0 <= x1`, `y0 <= y1`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rect {
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
}

impl Rect {
    pub fn contains(&self, p: Point) -> bool {
        p.x >= self.x0 && p.x <= self.x1 && p.y >= self.y0 && p.y <= self.y1
    }

    pub fn centre(&self) -> Point {
        Point {
            x: (self.x0 + self.x1) / 2.0,
            y: (self.y0 + self.y1) / 2.0,
        }
    }
}

/// How radio signals behave on this floor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RadioParams {
    /// Exponent `n` of the log-distance path loss model.
    pub path_loss_exponent: f64,
    /// Standard deviation of the Gaussian noise added to every reading.
    pub noise_sigma_db: f64,
    /// Probability that a scanner misses one advert it could have heard.
    pub miss_probability: f64,
    /// Readings weaker than this are not heard at all.
    pub floor_dbm: i16,
    /// Per advert, the chance that a body starts blocking the line of sight
    /// between a device and one scanner.
    pub shadow_probability: f64,
    /// How much such a body shadow attenuates, in dB.
    pub shadow_depth_db: f64,
    /// How long a body shadow lasts.
    pub shadow_duration_ms: u32,
    /// Scanners hang above the floor; phones are carried lower. The height
    /// difference keeps distances realistic when standing under a scanner.
    pub scanner_height_m: f64,
    pub device_height_m: f64,
}

impl Default for RadioParams {
    fn default() -> Self {
        Self {
            path_loss_exponent: 2.2,
            noise_sigma_db: 3.5,
            miss_probability: 0.1,
            floor_dbm: -95,
            shadow_probability: 0.005,
            shadow_depth_db: 10.0,
            shadow_duration_ms: 4000,
            scanner_height_m: 2.5,
            device_height_m: 1.2,
        }
    }
}

/// A BLE scanner (the gateway's own radio or a remote scanner node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScannerSpec {
    pub id: String,
    pub position: Point,
    /// Overrides `radio.noise_sigma_db` for this scanner (a cheaper antenna,
    /// a metal shelf nearby).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_sigma_db: Option<f64>,
    /// Added to everything this scanner reads, dB: a scanner gone deaf
    /// (-10: a knocked antenna, a node behind a shelf) or louder than the
    /// others. The site file the twin writes does not know it; the
    /// gateway learns it from the store's beacons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gain_db: Option<f64>,
}

/// A zone of the floor plan and the scanner that covers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSpec {
    pub id: String,
    pub scanner: String,
    pub area: Rect,
}

/// One of the store's fixed beacons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeaconSpec {
    pub id: String,
    /// Static BLE address, `aa:bb:cc:dd:ee:ff`.
    pub addr: String,
    pub position: Point,
    pub interval_ms: u32,
    /// Calibrated received power at 1 m (also what the frame announces).
    pub tx_power_1m: i8,
    pub frame: BeaconFrame,
    /// Interleave Eddystone-TLM telemetry frames with the main frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tlm: Option<TlmSpec>,
}

/// How a beacon's battery drains over days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainModel {
    /// `start - drain_mv_per_day * days`, never below `battery_min_mv`.
    #[default]
    Linear,
    /// Falls towards `battery_min_mv` exponentially; the first day's drop
    /// is `drain_mv_per_day`, later days drop less.
    Exponential,
}

/// Eddystone-TLM telemetry of one beacon: every `every`-th advert carries
/// a TLM frame (battery, temperature, advert count, uptime) instead of the
/// beacon's main frame, as real multi-frame beacons interleave them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlmSpec {
    /// One TLM frame every this many adverts (at least 2).
    pub every: u32,
    /// Battery voltage when the beacon was installed (powered on).
    pub battery_start_mv: u16,
    pub drain_mv_per_day: f64,
    /// The battery never reads below this.
    pub battery_min_mv: u16,
    pub model: DrainModel,
    /// How long before the simulation start the beacon was powered on.
    pub age_days: f64,
    /// Beacon temperature, reported in 8.8 fixed point.
    pub temperature_c: f64,
}

impl Default for TlmSpec {
    fn default() -> Self {
        Self {
            every: 10,
            battery_start_mv: 3000,
            drain_mv_per_day: 2.0,
            battery_min_mv: 2000,
            model: DrainModel::Linear,
            age_days: 0.0,
            temperature_c: 21.0,
        }
    }
}

impl TlmSpec {
    /// Battery voltage after `days` since power-on.
    pub fn battery_mv(&self, days: f64) -> u16 {
        let start = f64::from(self.battery_start_mv);
        let min = f64::from(self.battery_min_mv.min(self.battery_start_mv));
        let days = days.max(0.0);
        let mv = match self.model {
            DrainModel::Linear => start - self.drain_mv_per_day * days,
            DrainModel::Exponential => {
                let span = start - min;
                if span <= 0.0 {
                    start
                } else {
                    min + span * (-self.drain_mv_per_day * days / span).exp()
                }
            }
        };
        // Clamped into the u16 range of [min, start], so the cast is exact.
        mv.max(min).min(start).round() as u16
    }
}

/// Daily opening hours in the store's IANA time zone (DST-correct through
/// `chrono-tz`). `open` < `close`, both `HH:MM` local time; no overnight
/// opening.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpeningHours {
    pub timezone: String,
    pub open: String,
    pub close: String,
}

impl Default for OpeningHours {
    /// 09:00–20:00 in Europe/Berlin.
    fn default() -> Self {
        Self {
            timezone: "Europe/Berlin".to_owned(),
            open: "09:00".to_owned(),
            close: "20:00".to_owned(),
        }
    }
}

/// What a beacon advertises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BeaconFrame {
    Ibeacon {
        uuid: String,
        major: u16,
        minor: u16,
    },
    EddystoneUid {
        /// 10 bytes, 20 hex digits.
        namespace: String,
        /// 6 bytes, 12 hex digits.
        instance: String,
    },
    Altbeacon {
        manufacturer: u16,
        /// 16 bytes in UUID form.
        id1: String,
        id2: u16,
        id3: u16,
    },
}

impl StoreSpec {
    /// Parse and validate a store spec from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, SpecError> {
        let spec: StoreSpec = toml::from_str(text).map_err(|err| SpecError::Parse {
            line: err.span().map(|span| line_of(text, span.start)),
            message: err.message().replace('\n', " "),
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Read, parse and validate a store spec file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SpecError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// The built-in small store: an entrance and two product zones
    /// ("laptops", "headphones"), one scanner each, and three store beacons.
    /// `config/sim/small-store.toml` holds the same store.
    pub fn small_store() -> Self {
        let point = |x, y| Point { x, y };
        let rect = |x0, y0, x1, y1| Rect { x0, y0, x1, y1 };
        let scanner = |id: &str, position| ScannerSpec {
            id: id.to_owned(),
            position,
            noise_sigma_db: None,
            gain_db: None,
        };
        let zone = |id: &str, area| ZoneSpec {
            id: id.to_owned(),
            scanner: id.to_owned(),
            area,
        };
        StoreSpec {
            store: StoreInfo {
                id: "store-042".to_owned(),
            },
            floor: Floor {
                width_m: 18.0,
                depth_m: 15.0,
                door: point(0.0, 2.0),
            },
            radio: RadioParams::default(),
            scanners: vec![
                scanner("entrance", point(2.0, 2.0)),
                scanner("laptops", point(11.0, 3.0)),
                scanner("headphones", point(11.0, 12.0)),
            ],
            zones: vec![
                zone("entrance", rect(0.0, 0.0, 4.0, 4.0)),
                zone("laptops", rect(8.0, 0.0, 14.0, 6.0)),
                zone("headphones", rect(8.0, 9.0, 14.0, 15.0)),
            ],
            beacons: vec![
                BeaconSpec {
                    id: "ibeacon-entrance".to_owned(),
                    addr: "c0:42:00:00:01:01".to_owned(),
                    position: point(1.0, 3.5),
                    interval_ms: 1000,
                    tx_power_1m: -59,
                    frame: BeaconFrame::Ibeacon {
                        uuid: STORE_IBEACON_UUID.to_owned(),
                        major: 1,
                        minor: 1,
                    },
                    tlm: None,
                },
                BeaconSpec {
                    id: "ibeacon-laptops".to_owned(),
                    addr: "c0:42:00:00:01:02".to_owned(),
                    position: point(13.5, 0.5),
                    interval_ms: 1000,
                    tx_power_1m: -59,
                    frame: BeaconFrame::Ibeacon {
                        uuid: STORE_IBEACON_UUID.to_owned(),
                        major: 1,
                        minor: 2,
                    },
                    tlm: None,
                },
                BeaconSpec {
                    id: "ibeacon-headphones".to_owned(),
                    addr: "c0:42:00:00:01:03".to_owned(),
                    position: point(13.5, 14.5),
                    interval_ms: 1000,
                    tx_power_1m: -59,
                    frame: BeaconFrame::Ibeacon {
                        uuid: STORE_IBEACON_UUID.to_owned(),
                        major: 1,
                        minor: 3,
                    },
                    tlm: None,
                },
                BeaconSpec {
                    id: "eddystone-hall".to_owned(),
                    addr: "c0:42:00:00:02:01".to_owned(),
                    position: point(6.0, 7.5),
                    interval_ms: 1000,
                    tx_power_1m: -61,
                    frame: BeaconFrame::EddystoneUid {
                        namespace: "73746f72652d30343200".to_owned(),
                        instance: "000000000001".to_owned(),
                    },
                    tlm: None,
                },
                BeaconSpec {
                    id: "altbeacon-hall".to_owned(),
                    addr: "c0:42:00:00:03:01".to_owned(),
                    position: point(16.0, 7.5),
                    interval_ms: 1000,
                    tx_power_1m: -60,
                    frame: BeaconFrame::Altbeacon {
                        manufacturer: 0x0118,
                        id1: STORE_IBEACON_UUID.to_owned(),
                        id2: 1,
                        id3: 100,
                    },
                    tlm: None,
                },
            ],
            hours: None,
        }
    }

    /// The same store with opening hours.
    pub fn with_hours(mut self, hours: OpeningHours) -> Self {
        self.hours = Some(hours);
        self
    }

    /// The zone whose area contains `p`, if any (first match wins).
    pub fn zone_at(&self, p: Point) -> Option<&ZoneSpec> {
        self.zones.iter().find(|z| z.area.contains(p))
    }

    pub fn zone(&self, id: &str) -> Option<&ZoneSpec> {
        self.zones.iter().find(|z| z.id == id)
    }

    /// Check everything serde cannot: references, ranges, frame contents.
    /// Reports every problem at once, each with its path.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        check(
            !self.store.id.is_empty(),
            "store.id: must not be empty".into(),
        );
        check(
            finite_pos(self.floor.width_m) && finite_pos(self.floor.depth_m),
            "floor: width_m and depth_m must be positive".into(),
        );
        let on_floor = |p: Point| {
            p.x.is_finite()
                && p.y.is_finite()
                && (0.0..=self.floor.width_m).contains(&p.x)
                && (0.0..=self.floor.depth_m).contains(&p.y)
        };
        check(
            on_floor(self.floor.door),
            "floor.door: must be on the floor".into(),
        );

        let r = &self.radio;
        check(
            (1.0..=6.0).contains(&r.path_loss_exponent),
            "radio.path_loss_exponent: must be between 1 and 6".into(),
        );
        check(
            (0.0..=20.0).contains(&r.noise_sigma_db),
            "radio.noise_sigma_db: must be between 0 and 20".into(),
        );
        check(
            (0.0..=1.0).contains(&r.miss_probability),
            "radio.miss_probability: must be between 0 and 1".into(),
        );
        check(
            (-100..=-30).contains(&r.floor_dbm),
            "radio.floor_dbm: must be between -100 and -30".into(),
        );
        check(
            (0.0..=1.0).contains(&r.shadow_probability),
            "radio.shadow_probability: must be between 0 and 1".into(),
        );
        check(
            (0.0..=60.0).contains(&r.shadow_depth_db),
            "radio.shadow_depth_db: must be between 0 and 60".into(),
        );
        check(
            r.scanner_height_m.is_finite()
                && r.device_height_m.is_finite()
                && r.scanner_height_m >= 0.0
                && r.device_height_m >= 0.0,
            "radio: heights must be finite and not negative".into(),
        );

        check(
            !self.scanners.is_empty(),
            "scanners: need at least one".into(),
        );
        let mut scanner_ids = BTreeSet::new();
        for (i, s) in self.scanners.iter().enumerate() {
            check(
                !s.id.is_empty(),
                format!("scanners[{i}].id: must not be empty"),
            );
            check(
                scanner_ids.insert(s.id.as_str()),
                format!("scanners[{i}].id: duplicate id {:?}", s.id),
            );
            check(
                on_floor(s.position),
                format!("scanners[{i}].position: must be on the floor"),
            );
            if let Some(sigma) = s.noise_sigma_db {
                check(
                    (0.0..=20.0).contains(&sigma),
                    format!("scanners[{i}].noise_sigma_db: must be between 0 and 20"),
                );
            }
            if let Some(gain) = s.gain_db {
                check(
                    (-40.0..=20.0).contains(&gain),
                    format!("scanners[{i}].gain_db: must be between -40 and 20"),
                );
            }
        }

        let mut zone_ids = BTreeSet::new();
        for (i, z) in self.zones.iter().enumerate() {
            check(
                !z.id.is_empty(),
                format!("zones[{i}].id: must not be empty"),
            );
            check(
                z.id != crate::HALL_ZONE,
                format!("zones[{i}].id: {:?} is reserved for the open floor", z.id),
            );
            check(
                zone_ids.insert(z.id.as_str()),
                format!("zones[{i}].id: duplicate id {:?}", z.id),
            );
            check(
                scanner_ids.contains(z.scanner.as_str()),
                format!("zones[{i}].scanner: no scanner with id {:?}", z.scanner),
            );
            let a = z.area;
            check(
                on_floor(Point { x: a.x0, y: a.y0 })
                    && on_floor(Point { x: a.x1, y: a.y1 })
                    && a.x0 < a.x1
                    && a.y0 < a.y1,
                format!("zones[{i}].area: must be a non-empty rectangle on the floor"),
            );
        }

        let mut beacon_ids = BTreeSet::new();
        for (i, b) in self.beacons.iter().enumerate() {
            check(
                beacon_ids.insert(b.id.as_str()),
                format!("beacons[{i}].id: duplicate id {:?}", b.id),
            );
            check(
                adverts::parse_addr(&b.addr).is_some(),
                format!("beacons[{i}].addr: not an address like aa:bb:cc:dd:ee:ff"),
            );
            check(
                on_floor(b.position),
                format!("beacons[{i}].position: must be on the floor"),
            );
            check(
                (20..=10_240).contains(&b.interval_ms),
                format!("beacons[{i}].interval_ms: must be between 20 and 10240"),
            );
            let frame = adverts::beacon_advert(&b.frame, b.tx_power_1m);
            check(
                frame.is_ok(),
                format!("beacons[{i}].frame.{}", frame.err().unwrap_or_default()),
            );
            if let Some(t) = &b.tlm {
                check(
                    t.every >= 2,
                    format!("beacons[{i}].tlm.every: must be at least 2"),
                );
                check(
                    (1000..=4000).contains(&t.battery_start_mv),
                    format!("beacons[{i}].tlm.battery_start_mv: must be between 1000 and 4000"),
                );
                check(
                    t.battery_min_mv <= t.battery_start_mv,
                    format!("beacons[{i}].tlm.battery_min_mv: must not exceed battery_start_mv"),
                );
                check(
                    t.drain_mv_per_day.is_finite() && (0.0..=1000.0).contains(&t.drain_mv_per_day),
                    format!("beacons[{i}].tlm.drain_mv_per_day: must be between 0 and 1000"),
                );
                check(
                    t.age_days.is_finite() && (0.0..=36_500.0).contains(&t.age_days),
                    format!("beacons[{i}].tlm.age_days: must be between 0 and 36500"),
                );
                check(
                    t.temperature_c.is_finite() && (-40.0..=85.0).contains(&t.temperature_c),
                    format!("beacons[{i}].tlm.temperature_c: must be between -40 and 85"),
                );
            }
        }

        if let Some(h) = &self.hours {
            if let Err(problem) = crate::hours::Hours::new(h) {
                problems.push(format!("hours.{problem}"));
            }
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(SpecError::Invalid { problems })
        }
    }
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_store_is_valid() {
        StoreSpec::small_store()
            .validate()
            .expect("built-in store is valid");
    }

    #[test]
    fn dangling_scanner_reference_is_named() {
        let mut spec = StoreSpec::small_store();
        spec.zones[1].scanner = "nowhere".into();
        let err = spec.validate().expect_err("must be rejected").to_string();
        assert!(err.contains("zones[1].scanner"), "{err}");
        assert!(err.contains("nowhere"), "{err}");
    }
}
