//! Per-scanner gain learned from the store's own fixed beacons (issue #20).
//! Pure: readings and `now` in, gains and status changes out; no clock, no
//! I/O.
//!
//! A scanner drifts: a knocked antenna, a node moved behind a shelf, a
//! cheaper replacement. Its readings then sit a few dB off what the radio
//! map (or the hall level) was made with, and people near it are placed
//! wrongly without anything saying why. The store's beacons do not move:
//! when the site file gives their positions and the scanners' positions,
//! the log-distance model says what each scanner should hear of each
//! beacon, so every beacon reading is a measurement of that scanner's gain,
//! with no walk needed.
//!
//! Per (scanner, beacon) the last [`SAMPLES`] residuals (reading plus the
//! scanner's calibration offset, minus the expected level) within
//! [`WINDOW_MS`] are kept; the scanner's gain is the median over its beacons
//! of each beacon's median residual. Medians, because a person standing
//! next to a beacon, a reflection or a missed advert move a mean but not a
//! median. Only links the model expects well above the weakest level read
//! ([`GainSetup::new`]'s `min_rssi` plus [`CENSOR_MARGIN_DB`]) count: a
//! weak link's low readings fall under the floor and would bias its median
//! up.
//!
//! Status per scanner: `ok`, `drifted` (the gain is more than
//! [`DRIFT_DB`] from its reference: 0, or the gain the radio map was
//! learned with) or `deaf` (it heard none of the beacons it should for
//! [`DEAF_AFTER_MS`] while another scanner did). Leaving `drifted` needs
//! the gain back within `DRIFT_DB - 1` dB, so a gain near the threshold
//! does not flap.

use std::collections::HashMap;

/// Residuals kept per (scanner, beacon): at a beacon's 1-2 adverts a
/// second, the last half minute to a minute.
pub const SAMPLES: usize = 48;
/// Residuals older than this no longer count.
pub const WINDOW_MS: i64 = 300_000;
/// A (scanner, beacon) pair needs this many residuals in the window to count.
pub const MIN_SAMPLES: usize = 8;
/// Links expected weaker than `min_rssi + CENSOR_MARGIN_DB` do not count.
pub const CENSOR_MARGIN_DB: f32 = 10.0;
/// A gain further than this from its reference is a drift.
pub const DRIFT_DB: f32 = 6.0;
/// A scanner that heard none of its beacons for this long (while another
/// scanner heard some) is deaf.
pub const DEAF_AFTER_MS: i64 = 120_000;

/// Where a fixed beacon is and how loud it is, from the site file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BeaconPlace {
    pub x_m: f32,
    pub y_m: f32,
    /// Received power at 1 m, dBm.
    pub tx_power_1m: f32,
}

/// What the tracker needs from the site, worked out once per config.
#[derive(Clone, Debug, PartialEq)]
pub struct GainSetup {
    /// The configured scanners with a position, sorted: the only scanners
    /// the tracker (and the metric) knows.
    pub scanners: Vec<String>,
    /// Per scanner: the site's calibration offset, added to every reading.
    pub offset_db: Vec<f32>,
    /// `[beacon][scanner]`: the level the model expects, `None` where the
    /// beacon has no position or the link is too weak to count. `beacon`
    /// is the index in the site's `[[beacons]]`.
    pub expected: Vec<Vec<Option<f32>>>,
}

impl GainSetup {
    /// `None` when nothing can be learned: no scanner with a position, or
    /// no beacon with a position that some scanner hears well enough.
    /// `antenna_height_m`: how far above the beacons the scanners hang.
    pub fn new(
        scanner_positions: &HashMap<String, (f32, f32)>,
        scanner_offset_db: &HashMap<String, f32>,
        beacons: &[Option<BeaconPlace>],
        path_loss_exponent: f32,
        antenna_height_m: f32,
        min_rssi: i16,
    ) -> Option<Self> {
        let mut scanners: Vec<String> = scanner_positions.keys().cloned().collect();
        scanners.sort();
        let floor = f32::from(min_rssi) + CENSOR_MARGIN_DB;
        let expected: Vec<Vec<Option<f32>>> = beacons
            .iter()
            .map(|b| {
                scanners
                    .iter()
                    .map(|s| {
                        let b = (*b)?;
                        let (x, y) = scanner_positions[s];
                        let flat = (b.x_m - x).hypot(b.y_m - y);
                        let d = flat.hypot(antenna_height_m).max(0.1);
                        let level =
                            super::log_distance_level_dbm(d, b.tx_power_1m, path_loss_exponent);
                        (level.is_finite() && level >= floor).then_some(level)
                    })
                    .collect()
            })
            .collect();
        if !expected.iter().flatten().any(Option::is_some) {
            return None;
        }
        let offset_db = scanners
            .iter()
            .map(|s| scanner_offset_db.get(s).copied().unwrap_or(0.0))
            .collect();
        Some(GainSetup {
            scanners,
            offset_db,
            expected,
        })
    }

    fn beacons(&self) -> usize {
        self.expected.len()
    }

    /// Whether the model expects `scanner` to hear any beacon well.
    fn hears_any(&self, scanner: usize) -> bool {
        self.expected.iter().any(|row| row[scanner].is_some())
    }
}

/// A scanner's health, as the metric and the events name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GainStatus {
    /// Not enough beacon readings yet.
    Unknown,
    Ok,
    Drifted,
    Deaf,
}

impl GainStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GainStatus::Unknown => "unknown",
            GainStatus::Ok => "ok",
            GainStatus::Drifted => "drifted",
            GainStatus::Deaf => "deaf",
        }
    }
}

/// A scanner whose status changed at an [`GainTracker::evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct GainChange {
    pub scanner: String,
    pub from: GainStatus,
    pub to: GainStatus,
    /// The gain at the change (the last one known, for a deaf scanner).
    pub gain_db: Option<f32>,
}

/// The last residuals of one (scanner, beacon) pair: a fixed ring.
#[derive(Clone)]
struct Ring {
    at_ms: [i64; SAMPLES],
    residual: [f32; SAMPLES],
    len: usize,
    next: usize,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            at_ms: [0; SAMPLES],
            residual: [0.0; SAMPLES],
            len: 0,
            next: 0,
        }
    }
}

impl Ring {
    fn push(&mut self, at_ms: i64, residual: f32) {
        self.at_ms[self.next] = at_ms;
        self.residual[self.next] = residual;
        self.next = (self.next + 1) % SAMPLES;
        self.len = (self.len + 1).min(SAMPLES);
    }

    /// The median of the residuals no older than `WINDOW_MS` at `now_ms`,
    /// if there are enough of them.
    fn median(&self, now_ms: i64, scratch: &mut Vec<f32>) -> Option<f32> {
        scratch.clear();
        scratch.extend(
            (0..self.len)
                .filter(|&i| now_ms.saturating_sub(self.at_ms[i]) <= WINDOW_MS)
                .map(|i| self.residual[i]),
        );
        (scratch.len() >= MIN_SAMPLES).then(|| median(scratch))
    }
}

/// The median of a non-empty slice (reordered in place).
fn median(values: &mut [f32]) -> f32 {
    values.sort_by(f32::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Learns every scanner's gain from the fixed beacons' readings.
pub struct GainTracker {
    setup: GainSetup,
    index: HashMap<String, usize>,
    /// `[scanner * beacons + beacon]`.
    rings: Vec<Ring>,
    /// Per scanner: the last reading of a beacon it should hear.
    last_heard_ms: Vec<Option<i64>>,
    /// The last reading of any counted link, any scanner.
    any_heard_ms: Option<i64>,
    /// When the tracker first saw time (deafness needs that long to show).
    started_ms: Option<i64>,
    gain: Vec<Option<f32>>,
    status: Vec<GainStatus>,
    /// Per scanner: the gain taken as normal (the map's, or 0).
    reference: Vec<f32>,
    scratch: Vec<f32>,
}

impl GainTracker {
    pub fn new(setup: GainSetup) -> Self {
        let n = setup.scanners.len();
        let index = setup
            .scanners
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i))
            .collect();
        GainTracker {
            rings: vec![Ring::default(); n * setup.beacons()],
            index,
            last_heard_ms: vec![None; n],
            any_heard_ms: None,
            started_ms: None,
            gain: vec![None; n],
            status: vec![GainStatus::Unknown; n],
            reference: vec![0.0; n],
            scratch: Vec::with_capacity(SAMPLES),
            setup,
        }
    }

    pub fn setup(&self) -> &GainSetup {
        &self.setup
    }

    /// The gains taken as normal, by scanner id (a radio map's, learned
    /// with the walk); scanners not named keep 0.
    pub fn set_reference(&mut self, reference: &HashMap<String, f32>) {
        for (i, s) in self.setup.scanners.iter().enumerate() {
            self.reference[i] = reference
                .get(s)
                .copied()
                .filter(|g| g.is_finite())
                .unwrap_or(0.0);
        }
    }

    /// One reading of the site's beacon number `beacon` by `scanner`.
    /// Readings of scanners or beacons the setup does not know, and of
    /// links too weak to count, are ignored.
    pub fn observe(&mut self, beacon: usize, scanner: &str, rssi: i16, at_ms: i64) {
        let Some(&s) = self.index.get(scanner) else {
            return;
        };
        let Some(expected) = self.setup.expected.get(beacon).and_then(|row| row[s]) else {
            return;
        };
        let residual = f32::from(rssi) + self.setup.offset_db[s] - expected;
        let nb = self.setup.beacons();
        self.rings[s * nb + beacon].push(at_ms, residual);
        self.started_ms = Some(self.started_ms.map_or(at_ms, |t| t.min(at_ms)));
        self.last_heard_ms[s] = Some(self.last_heard_ms[s].map_or(at_ms, |t| t.max(at_ms)));
        self.any_heard_ms = Some(self.any_heard_ms.map_or(at_ms, |t| t.max(at_ms)));
    }

    /// Work out every scanner's gain and status at `now_ms`; the changes
    /// of status since the last call are returned.
    pub fn evaluate(&mut self, now_ms: i64) -> Vec<GainChange> {
        self.started_ms.get_or_insert(now_ms);
        let nb = self.setup.beacons();
        let mut changes = Vec::new();
        let mut per_beacon = Vec::with_capacity(nb);
        for s in 0..self.setup.scanners.len() {
            per_beacon.clear();
            for b in 0..nb {
                if let Some(m) = self.rings[s * nb + b].median(now_ms, &mut self.scratch) {
                    per_beacon.push(m);
                }
            }
            if !per_beacon.is_empty() {
                self.gain[s] = Some((median(&mut per_beacon) * 10.0).round() / 10.0);
            }
            let deaf = self.setup.hears_any(s) && {
                let since = self.last_heard_ms[s].or(self.started_ms).unwrap_or(now_ms);
                let others_heard = self
                    .any_heard_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) < DEAF_AFTER_MS);
                now_ms.saturating_sub(since) >= DEAF_AFTER_MS && others_heard
            };
            let from = self.status[s];
            let to = if deaf {
                GainStatus::Deaf
            } else if per_beacon.is_empty() {
                // Nothing recent enough: keep what was known.
                if from == GainStatus::Deaf {
                    GainStatus::Unknown
                } else {
                    from
                }
            } else {
                let off = (self.gain[s].unwrap_or(0.0) - self.reference[s]).abs();
                match from {
                    GainStatus::Drifted if off > DRIFT_DB - 1.0 => GainStatus::Drifted,
                    _ if off > DRIFT_DB => GainStatus::Drifted,
                    _ => GainStatus::Ok,
                }
            };
            if to != from {
                self.status[s] = to;
                changes.push(GainChange {
                    scanner: self.setup.scanners[s].clone(),
                    from,
                    to,
                    gain_db: self.gain[s],
                });
            }
        }
        changes
    }

    /// Per scanner (setup order): the gain learned, if any.
    pub fn gains(&self) -> impl Iterator<Item = (&str, Option<f32>, GainStatus)> {
        self.setup
            .scanners
            .iter()
            .zip(&self.gain)
            .zip(&self.status)
            .map(|((s, g), st)| (s.as_str(), *g, *st))
    }

    pub fn gain(&self, scanner: &str) -> Option<f32> {
        self.index.get(scanner).and_then(|&s| self.gain[s])
    }

    pub fn status(&self, scanner: &str) -> Option<GainStatus> {
        self.index.get(scanner).map(|&s| self.status[s])
    }

    /// What presence should take off `scanner`'s readings: its gain minus
    /// its reference, once known (`None`: nothing to correct, or deaf).
    pub fn correction(&self, scanner: &str) -> Option<f32> {
        let &s = self.index.get(scanner)?;
        match self.status[s] {
            GainStatus::Ok | GainStatus::Drifted => self.gain[s].map(|g| g - self.reference[s]),
            GainStatus::Unknown | GainStatus::Deaf => None,
        }
    }
}

#[cfg(test)]
mod tests;
