//! The store's radio, learned from a calibration walk (issue #20,
//! `gateway calibrate`). Pure: sightings and truth in, a map out; no clock,
//! no I/O.
//!
//! One scanner per zone cannot tell a zone's edge from the walk beside it
//! by its level alone; the pattern of levels across *all* scanners can.
//! A radio map holds, per place (every zone of the site and the hall) and
//! per scanner of the site:
//!
//! * `heard`: the share of a tag's adverts the scanner hears there (a
//!   scanner that does not hear a person is evidence too). Adverts are
//!   counted per second of the walk as the most readings any one scanner
//!   took of the tag in that second, so scanners whose clocks differ a
//!   little still count alike.
//! * `histogram`: the distribution of the levels it hears there
//!   (calibration offset of the site applied), in [`BIN_DB`] dB bins from
//!   [`LEVEL_MIN_DBM`] to [`LEVEL_MAX_DBM`], smoothed by a Gaussian of
//!   [`SMOOTH_SIGMA_DB`] (phones differ from the walk's tag by a few dB)
//!   and mixed with a uniform floor of [`FLOOR_SHARE`] (a body shadow, a
//!   reflection: no level is impossible);
//! * `mean_dbm` / `sd_db`: the raw mean and spread, for people.
//!
//! Beside them: each scanner's gain relative to the median of the others
//! (the mean level it hears in its own zone, `scanner_gain_db`), the zone
//! pairs the walk went between directly (`adjacency`; the hall is next to
//! every zone in any case) and how much of each place the walk covered
//! (`coverage`). The file is versioned ([`RADIO_MAP_VERSION`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::eval::{HALL, TruthSpan};
use crate::sighting::Sighting;

/// The version of a radio-map file without a `tuning` (what `gateway
/// calibrate` writes without `--tune`, so that older builds still read it).
pub const RADIO_MAP_VERSION: u32 = 1;
/// The version of a radio-map file that carries the filter's knobs
/// (`tuning`, chosen by `gateway calibrate --tune`). This build reads both.
pub const RADIO_MAP_VERSION_TUNED: u32 = 2;
/// The weakest level of the histograms; weaker readings count in the first bin.
pub const LEVEL_MIN_DBM: i16 = -100;
/// The strongest level of the histograms; stronger ones count in the last bin.
pub const LEVEL_MAX_DBM: i16 = -20;
/// Width of a histogram bin.
pub const BIN_DB: i16 = 2;
/// Bins of a histogram.
pub const BINS: usize = ((LEVEL_MAX_DBM - LEVEL_MIN_DBM) / BIN_DB) as usize + 1;
/// Spread of the Gaussian the histograms are smoothed with.
pub const SMOOTH_SIGMA_DB: f32 = 3.0;
/// Share of a histogram spread evenly over every bin.
pub const FLOOR_SHARE: f32 = 0.02;
/// A place the walk covered for less than this is warned about.
pub const MIN_COVERAGE_S: f64 = 10.0;
/// The window in which adverts are counted.
const WINDOW_MS: i64 = 1_000;

/// The bin of a level.
pub fn bin_of(level_dbm: f32) -> usize {
    let b = ((level_dbm - f32::from(LEVEL_MIN_DBM)) / f32::from(BIN_DB)).round();
    if b.is_nan() || b <= 0.0 {
        0
    } else {
        (b as usize).min(BINS - 1)
    }
}

/// A radio map, as the file holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RadioMap {
    pub version: u32,
    /// The site's scanners, in the order of every per-scanner list.
    pub scanners: Vec<String>,
    /// Every zone of the site and the hall.
    pub places: Vec<PlaceLevels>,
    /// Per scanner: the mean level it hears in its own zone, minus the
    /// median of the same over the scanners (0 when its zone was not walked).
    pub scanner_gain_db: Vec<f32>,
    /// Per scanner: its gain learned from the store's beacons during the
    /// walk (`presence::gain`), when the site file gave their positions.
    /// The engine corrects a scanner's later drift relative to this, so
    /// that the histograms, learned at these gains, still fit. Empty: not
    /// known (then no drift is corrected with this map).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub beacon_gain_db: BTreeMap<String, f32>,
    /// Zone pairs the walk went between without crossing the hall.
    pub adjacency: Vec<[String; 2]>,
    /// How much of each place the walk covered, in `places` order.
    pub coverage: Vec<Coverage>,
    /// The filter's knobs chosen for this map on the walk itself
    /// (`gateway calibrate --tune`); version 2 only. The site file's
    /// `[presence.map]` wins over them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<crate::presence::MapTuningOverrides>,
}

/// What every scanner hears in one place.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceLevels {
    /// A zone id of the site, or `"hall"`.
    pub place: String,
    /// In [`RadioMap::scanners`] order.
    pub scanners: Vec<ScannerLevels>,
}

/// What one scanner hears in one place.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScannerLevels {
    /// Share (0..=1) of the tag's adverts this scanner heard there.
    pub heard: f32,
    /// Mean and standard deviation of the levels heard (None: never heard).
    pub mean_dbm: Option<f32>,
    pub sd_db: Option<f32>,
    /// [`BINS`] probabilities summing to 1, [`LEVEL_MIN_DBM`] first.
    pub histogram: Vec<f32>,
}

/// How much of a place the walk covered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coverage {
    pub place: String,
    /// Seconds the truth has the tag there.
    pub seconds: f64,
    /// Readings of the tag (all scanners) taken there.
    pub readings: u64,
}

/// A radio-map file that cannot be used: names the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct MapError {
    pub field: String,
    pub reason: String,
}

impl MapError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        MapError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl RadioMap {
    /// Parse and check a radio-map file (not yet against a site; see
    /// [`RadioMap::check_site`]).
    pub fn from_json(text: &str) -> Result<Self, MapError> {
        let map: RadioMap = serde_json::from_str(text).map_err(|e| {
            // serde names unknown and missing fields in its message.
            MapError::new("radio map", format!("not a radio map: {e}"))
        })?;
        map.validate()?;
        Ok(map)
    }

    pub fn to_json(&self) -> String {
        // A map holds only strings and finite numbers: serialising cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Every field in range; the first problem is the error.
    pub fn validate(&self) -> Result<(), MapError> {
        if self.version != RADIO_MAP_VERSION && self.version != RADIO_MAP_VERSION_TUNED {
            return Err(MapError::new(
                "version",
                format!(
                    "{} is not supported (this build reads versions {RADIO_MAP_VERSION} and {RADIO_MAP_VERSION_TUNED}; run `gateway calibrate` again)",
                    self.version
                ),
            ));
        }
        if let Some(tuning) = &self.tuning {
            if self.version < RADIO_MAP_VERSION_TUNED {
                return Err(MapError::new(
                    "tuning",
                    format!(
                        "needs version {RADIO_MAP_VERSION_TUNED} (a version {} map has no tuning)",
                        self.version
                    ),
                ));
            }
            if let Some((knob, reason)) = tuning.problems().into_iter().next() {
                return Err(MapError::new(format!("tuning.{knob}"), reason));
            }
        }
        if self.scanners.is_empty() {
            return Err(MapError::new("scanners", "must not be empty"));
        }
        let mut seen = BTreeSet::new();
        for (i, s) in self.scanners.iter().enumerate() {
            if s.is_empty() || !seen.insert(s.as_str()) {
                return Err(MapError::new(
                    format!("scanners[{i}]"),
                    "must be a non-empty id, each once",
                ));
            }
        }
        let n = self.scanners.len();
        let mut places = BTreeSet::new();
        for (i, place) in self.places.iter().enumerate() {
            if place.place.is_empty() || !places.insert(place.place.as_str()) {
                return Err(MapError::new(
                    format!("places[{i}].place"),
                    "must be a non-empty id, each once",
                ));
            }
            if place.scanners.len() != n {
                return Err(MapError::new(
                    format!("places[{i}].scanners"),
                    format!("must have one entry per scanner ({n})"),
                ));
            }
            for (j, s) in place.scanners.iter().enumerate() {
                let field = |name: &str| format!("places[{i}].scanners[{j}].{name}");
                if !(s.heard.is_finite() && (0.0..=1.0).contains(&s.heard)) {
                    return Err(MapError::new(field("heard"), "must be between 0 and 1"));
                }
                if s.histogram.len() != BINS {
                    return Err(MapError::new(
                        field("histogram"),
                        format!("must have {BINS} entries"),
                    ));
                }
                if s.histogram.iter().any(|p| !(p.is_finite() && *p >= 0.0)) {
                    return Err(MapError::new(
                        field("histogram"),
                        "entries must be numbers >= 0",
                    ));
                }
                let sum: f32 = s.histogram.iter().sum();
                if !(0.99..=1.01).contains(&sum) {
                    return Err(MapError::new(field("histogram"), "must sum to 1"));
                }
                for (name, v) in [("mean_dbm", s.mean_dbm), ("sd_db", s.sd_db)] {
                    if v.is_some_and(|v| !v.is_finite()) {
                        return Err(MapError::new(field(name), "must be a finite number"));
                    }
                }
            }
        }
        if !places.contains(HALL) {
            return Err(MapError::new("places", "must include the hall (\"hall\")"));
        }
        if places.len() < 2 {
            return Err(MapError::new(
                "places",
                "must include a zone besides the hall",
            ));
        }
        if self.scanner_gain_db.len() != n || self.scanner_gain_db.iter().any(|g| !g.is_finite()) {
            return Err(MapError::new(
                "scanner_gain_db",
                format!("must be {n} finite numbers, one per scanner"),
            ));
        }
        for (s, g) in &self.beacon_gain_db {
            if !self.scanners.contains(s) || !g.is_finite() {
                return Err(MapError::new(
                    format!("beacon_gain_db.{s}"),
                    "must be a finite number for a scanner of the map",
                ));
            }
        }
        for (i, [a, b]) in self.adjacency.iter().enumerate() {
            if !places.contains(a.as_str()) || !places.contains(b.as_str()) || a == b {
                return Err(MapError::new(
                    format!("adjacency[{i}]"),
                    "must name two different places of the map",
                ));
            }
        }
        if self.coverage.len() != self.places.len()
            || self
                .coverage
                .iter()
                .zip(&self.places)
                .any(|(c, p)| c.place != p.place || !c.seconds.is_finite() || c.seconds < 0.0)
        {
            return Err(MapError::new(
                "coverage",
                "must have one entry per place, in the order of places",
            ));
        }
        Ok(())
    }

    /// A map is for one site: the same scanners, the same zones (and the
    /// hall). Anything else is refused, naming what differs.
    pub fn check_site(
        &self,
        scanners: &BTreeSet<String>,
        zones: &BTreeSet<String>,
    ) -> Result<(), MapError> {
        let mine: BTreeSet<String> = self.scanners.iter().cloned().collect();
        if &mine != scanners {
            let only_map: Vec<&String> = mine.difference(scanners).collect();
            let only_site: Vec<&String> = scanners.difference(&mine).collect();
            return Err(MapError::new(
                "scanners",
                format!(
                    "the map is for other scanners than the site's (only in the map: {only_map:?}; only in the site: {only_site:?})"
                ),
            ));
        }
        let places: BTreeSet<String> = self
            .places
            .iter()
            .map(|p| p.place.clone())
            .filter(|p| p != HALL)
            .collect();
        if &places != zones {
            let only_map: Vec<&String> = places.difference(zones).collect();
            let only_site: Vec<&String> = zones.difference(&places).collect();
            return Err(MapError::new(
                "places",
                format!(
                    "the map is for other zones than the site's (only in the map: {only_map:?}; only in the site: {only_site:?})"
                ),
            ));
        }
        Ok(())
    }

    /// A short summary for people: coverage per place, gains.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "radio map v{}: {} scanner(s), {} place(s)",
            self.version,
            self.scanners.len(),
            self.places.len()
        );
        for c in &self.coverage {
            let _ = writeln!(
                out,
                "  {:<20} {:>7.1} s walked, {:>6} readings",
                c.place, c.seconds, c.readings
            );
        }
        for (s, g) in self.scanners.iter().zip(&self.scanner_gain_db) {
            let _ = write!(out, "  scanner {s:<20} gain {g:+.1} dB");
            if let Some(b) = self.beacon_gain_db.get(s) {
                let _ = write!(out, ", {b:+.1} dB from the store's beacons");
            }
            let _ = writeln!(out);
        }
        if let Some(t) = &self.tuning {
            let knobs: Vec<String> = t
                .entries()
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "  tuning: {}", knobs.join(", "));
        }
        out
    }

    /// Carry `tuning` (the file becomes version 2), or none (version 1).
    pub fn set_tuning(&mut self, tuning: Option<crate::presence::MapTuningOverrides>) {
        self.version = if tuning.is_some() {
            RADIO_MAP_VERSION_TUNED
        } else {
            RADIO_MAP_VERSION
        };
        self.tuning = tuning;
    }
}

/// Read a radio-map file and make it ready for the engine of a site with
/// these scanners (scanner id → zone id): refused, naming the field, if it
/// is not a map of this version or is for other scanners or zones.
pub fn load_for_site(
    path: &std::path::Path,
    scanner_zone: &HashMap<String, super::ZoneId>,
) -> Result<std::sync::Arc<RadioModel>, MapError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| MapError::new("radio map", format!("cannot read {}: {e}", path.display())))?;
    for_site(&text, scanner_zone)
}

/// A radio map's text, checked against the site's scanners and zones and
/// made ready for the engine: pure (the config's read step read the file).
pub fn for_site(
    text: &str,
    scanner_zone: &HashMap<String, super::ZoneId>,
) -> Result<std::sync::Arc<RadioModel>, MapError> {
    let map = RadioMap::from_json(text)?;
    let scanners: BTreeSet<String> = scanner_zone.keys().cloned().collect();
    let zones: BTreeSet<String> = scanner_zone.values().map(|z| z.to_string()).collect();
    map.check_site(&scanners, &zones)?;
    if map.places.len() > super::MAX_MAP_PLACES {
        return Err(MapError::new(
            "places",
            format!("at most {} places", super::MAX_MAP_PLACES),
        ));
    }
    let mut zone_ids: Vec<super::ZoneId> = scanner_zone.values().cloned().collect();
    zone_ids.sort();
    zone_ids.dedup();
    Ok(std::sync::Arc::new(RadioModel::new(map, &zone_ids)))
}

/// What the site says the walk must cover, and how to read levels.
#[derive(Clone, Debug, Default)]
pub struct Site {
    /// Scanner id → zone id (the site's `[[zones]]`).
    pub scanner_zone: BTreeMap<String, String>,
    /// Per-scanner calibration offsets of the site, added to every reading.
    pub scanner_offset_db: HashMap<String, f32>,
    /// Readings weaker than this are ignored (as the engine does).
    pub min_rssi: i16,
}

impl Site {
    pub fn from_presence(config: &super::PresenceConfig) -> Self {
        Site {
            scanner_zone: config
                .scanner_zone
                .iter()
                .map(|(s, z)| (s.clone(), z.to_string()))
                .collect(),
            scanner_offset_db: config.scanner_offset_db.clone(),
            min_rssi: config.min_rssi,
        }
    }

    fn zones(&self) -> BTreeSet<String> {
        self.scanner_zone.values().cloned().collect()
    }
}

/// Why a walk cannot make a map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalibrateError {
    #[error("the site has no zones and scanners to calibrate")]
    EmptySite,
    #[error("truth: zone {zone:?} (address {addr}) is neither a zone of the site nor \"hall\"")]
    UnknownPlace { addr: String, zone: String },
    #[error(
        "the walk misses {missing:?}: no reading of the walked tag there; walk every zone and the hall"
    )]
    MissingPlaces { missing: Vec<String> },
}

/// A map, and what the walk left to be desired.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub map: RadioMap,
    pub warnings: Vec<String>,
}

#[derive(Default, Clone)]
struct Acc {
    counts: Vec<f64>,
    sum: f64,
    sum_sq: f64,
    n: u64,
    heard: u64,
    adverts: u64,
}

/// Learn a radio map from a calibration walk: the sightings of the
/// addresses the truth lists (a tag carried through every zone and the
/// hall), labelled by the truth. Every other address is ignored, so a
/// capture with the store's beacons and passers-by in it is fine.
pub fn calibrate(
    site: &Site,
    sightings: &[Sighting],
    truth: &[TruthSpan],
) -> Result<Calibration, CalibrateError> {
    if site.scanner_zone.is_empty() {
        return Err(CalibrateError::EmptySite);
    }
    let scanners: Vec<String> = site.scanner_zone.keys().cloned().collect();
    let scanner_index: HashMap<&str, usize> = scanners
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let mut places: Vec<String> = site.zones().into_iter().collect();
    places.push(HALL.to_owned());
    let place_index: HashMap<&str, usize> = places
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    let (np, ns) = (places.len(), scanners.len());

    // Truth per address, in time order, each span's place checked.
    let mut by_addr: BTreeMap<&str, Vec<(i64, i64, usize)>> = BTreeMap::new();
    for span in truth {
        let Some(&p) = place_index.get(span.zone.as_str()) else {
            return Err(CalibrateError::UnknownPlace {
                addr: span.addr.clone(),
                zone: span.zone.clone(),
            });
        };
        by_addr
            .entry(span.addr.as_str())
            .or_default()
            .push((span.from_ms, span.to_ms, p));
    }
    for spans in by_addr.values_mut() {
        spans.sort_unstable();
    }
    let place_at = |addr: &str, t: i64| -> Option<usize> {
        let spans = by_addr.get(addr)?;
        let i = spans.partition_point(|s| s.0 <= t);
        let (from, to, p) = *spans.get(i.checked_sub(1)?)?;
        (from <= t && t < to).then_some(p)
    };

    let mut acc = vec![
        Acc {
            counts: vec![0.0; BINS],
            ..Acc::default()
        };
        np * ns
    ];
    let mut readings = vec![0u64; np];
    let mut unknown_scanners: BTreeSet<&str> = BTreeSet::new();
    // Per (address, second): readings per scanner, for the advert counts.
    let mut windows: BTreeMap<(&str, i64), (usize, Vec<u32>)> = BTreeMap::new();
    for s in sightings {
        let addr = s.addr.to_string();
        let Some((addr, _)) = by_addr.get_key_value(addr.as_str()) else {
            continue;
        };
        let Some(p) = place_at(addr, s.at_ms) else {
            continue;
        };
        let Some(&j) = scanner_index.get(s.scanner.as_str()) else {
            unknown_scanners.insert(s.scanner.as_str());
            continue;
        };
        if s.rssi < site.min_rssi {
            continue;
        }
        let level = f32::from(s.rssi)
            + site
                .scanner_offset_db
                .get(&s.scanner)
                .copied()
                .unwrap_or(0.0);
        let a = &mut acc[p * ns + j];
        a.counts[bin_of(level)] += 1.0;
        a.sum += f64::from(level);
        a.sum_sq += f64::from(level) * f64::from(level);
        a.n += 1;
        readings[p] += 1;
        let window = windows
            .entry((addr, s.at_ms.div_euclid(WINDOW_MS)))
            .or_insert_with(|| (p, vec![0; ns]));
        window.1[j] += 1;
    }
    for (p, counts) in windows.values() {
        let adverts = counts.iter().copied().max().unwrap_or(0);
        for (j, &k) in counts.iter().enumerate() {
            let a = &mut acc[p * ns + j];
            a.heard += u64::from(k);
            a.adverts += u64::from(adverts);
        }
    }

    let missing: Vec<String> = (0..np)
        .filter(|&p| readings[p] == 0)
        .map(|p| places[p].clone())
        .collect();
    if !missing.is_empty() {
        return Err(CalibrateError::MissingPlaces { missing });
    }

    let mut seconds = vec![0f64; np];
    let mut adjacency: BTreeSet<[String; 2]> = BTreeSet::new();
    let hall = np - 1;
    for spans in by_addr.values() {
        for (from, to, p) in spans {
            seconds[*p] += (to - from) as f64 / 1000.0;
        }
        for pair in spans.windows(2) {
            let (a, b) = (pair[0].2, pair[1].2);
            if a != b && a != hall && b != hall && pair[0].1 == pair[1].0 {
                let (x, y) = (places[a].clone(), places[b].clone());
                adjacency.insert(if x < y { [x, y] } else { [y, x] });
            }
        }
    }

    let mut warnings = Vec::new();
    if !unknown_scanners.is_empty() {
        warnings.push(format!(
            "readings of scanners the site does not have were ignored: {unknown_scanners:?}"
        ));
    }
    for p in 0..np {
        if seconds[p] < MIN_COVERAGE_S {
            warnings.push(format!(
                "{} was walked for only {:.1} s (at least {MIN_COVERAGE_S} s is better)",
                places[p], seconds[p]
            ));
        }
        for (j, scanner) in scanners.iter().enumerate() {
            if p < hall && site.scanner_zone[scanner] == places[p] && acc[p * ns + j].n == 0 {
                warnings.push(format!(
                    "scanner {scanner} never heard the tag in its own zone {}",
                    places[p]
                ));
            }
        }
    }

    let kernel = gaussian_kernel();
    let place_levels = (0..np)
        .map(|p| PlaceLevels {
            place: places[p].clone(),
            scanners: (0..ns)
                .map(|j| scanner_levels(&acc[p * ns + j], &kernel))
                .collect(),
        })
        .collect();

    // Gain: the mean level each scanner hears in its own zone, relative to
    // the median of those.
    let own: Vec<Option<f64>> = scanners
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let p = place_index[site.scanner_zone[s].as_str()];
            let a = &acc[p * ns + j];
            (a.n > 0).then(|| a.sum / a.n as f64)
        })
        .collect();
    let mut known: Vec<f64> = own.iter().flatten().copied().collect();
    known.sort_by(f64::total_cmp);
    let median = if known.is_empty() {
        0.0
    } else if known.len() % 2 == 1 {
        known[known.len() / 2]
    } else {
        (known[known.len() / 2 - 1] + known[known.len() / 2]) / 2.0
    };
    let scanner_gain_db = own
        .iter()
        .map(|m| m.map_or(0.0, |m| round1(m - median)))
        .collect();

    let coverage = (0..np)
        .map(|p| Coverage {
            place: places[p].clone(),
            seconds: (seconds[p] * 10.0).round() / 10.0,
            readings: readings[p],
        })
        .collect();
    Ok(Calibration {
        map: RadioMap {
            version: RADIO_MAP_VERSION,
            scanners,
            places: place_levels,
            scanner_gain_db,
            beacon_gain_db: BTreeMap::new(),
            adjacency: adjacency.into_iter().collect(),
            coverage,
            tuning: None,
        },
        warnings,
    })
}

fn round1(v: f64) -> f32 {
    ((v * 10.0).round() / 10.0) as f32
}

fn gaussian_kernel() -> Vec<f64> {
    let sigma_bins = f64::from(SMOOTH_SIGMA_DB) / f64::from(BIN_DB);
    let half = (3.0 * sigma_bins).ceil() as i64;
    (-half..=half)
        .map(|k| (-0.5 * (k as f64 / sigma_bins).powi(2)).exp())
        .collect()
}

fn scanner_levels(a: &Acc, kernel: &[f64]) -> ScannerLevels {
    let half = (kernel.len() / 2) as i64;
    let mut smooth = vec![0f64; BINS];
    for (b, &c) in a.counts.iter().enumerate() {
        if c == 0.0 {
            continue;
        }
        for (k, w) in kernel.iter().enumerate() {
            let to = b as i64 + k as i64 - half;
            // Mass smoothed past either end stays in the end bin.
            let to = to.clamp(0, BINS as i64 - 1) as usize;
            smooth[to] += c * w;
        }
    }
    let total: f64 = smooth.iter().sum();
    let floor = f64::from(FLOOR_SHARE);
    let histogram = smooth
        .iter()
        .map(|v| {
            let shaped = if total > 0.0 { v / total } else { 0.0 };
            let p = if total > 0.0 {
                (1.0 - floor) * shaped + floor / BINS as f64
            } else {
                1.0 / BINS as f64
            };
            // Six digits are plenty and keep the file readable.
            ((p * 1e6).round() / 1e6) as f32
        })
        .collect::<Vec<f32>>();
    // Rounding may leave the sum a hair off 1: put it on the largest bin.
    let sum: f32 = histogram.iter().sum();
    let mut histogram = histogram;
    if let Some(max) = histogram.iter_mut().max_by(|x, y| x.total_cmp(y)) {
        *max += 1.0 - sum;
    }
    let (mean, sd) = if a.n == 0 {
        (None, None)
    } else {
        let mean = a.sum / a.n as f64;
        let var = (a.sum_sq / a.n as f64 - mean * mean).max(0.0);
        (Some(round1(mean)), Some(round1(var.sqrt())))
    };
    ScannerLevels {
        // Laplace: a scanner heard in 0 of 3 adverts is not deaf for sure.
        heard: ((a.heard as f64 + 1.0) / (a.adverts as f64 + 2.0)).min(1.0) as f32,
        mean_dbm: mean,
        sd_db: sd,
        histogram,
    }
}

/// A map made ready for the engine: logarithms looked up per reading, the
/// places as the engine names them, the motion model's moves.
pub struct RadioModel {
    map: RadioMap,
    /// Per place: its zone, `None` for the hall.
    places: Vec<Option<super::ZoneId>>,
    hall: usize,
    /// `[place * scanners + scanner]`: log P(heard), log P(not heard) per advert.
    log_heard: Vec<f32>,
    log_missed: Vec<f32>,
    /// `[(place * scanners + scanner) * BINS + bin]`: log P(level | heard).
    log_level: Vec<f32>,
    /// `[place * scanners + scanner]`: the mean level heard there (the
    /// weakest level of the histograms where never heard).
    mean: Vec<f32>,
    /// `[from * places + to]`: where a person leaving `from` goes (rows sum
    /// to 1, 0 on the diagonal): the hall from any zone and back, zone to
    /// zone where the walk went directly, and a little to anywhere.
    moves: Vec<f32>,
    /// The same, sparse, for the filter: per place its direct neighbours
    /// (`near[near_at[p]..near_at[p + 1]]`) and the share each gets.
    near: Vec<u16>,
    near_at: Vec<usize>,
    direct_share: Vec<f32>,
}

impl std::fmt::Debug for RadioModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RadioModel")
            .field("scanners", &self.map.scanners)
            .field("places", &self.places)
            .finish_non_exhaustive()
    }
}

/// Share of a leaving person's probability spread over every other place
/// (a move the walk did not show is unlikely, never impossible).
const ANYWHERE_SHARE: f32 = 0.05;

impl RadioModel {
    /// Whether two models are built from the same map for the same places:
    /// a reload reads the map file again, and an unchanged map must not
    /// restart every present person's filter.
    pub fn same_as(&self, other: &RadioModel) -> bool {
        self.map == other.map && self.places == other.places
    }

    /// `zone_ids`: the engine's zone ids, so that the map's places are the
    /// very ids events carry.
    pub fn new(map: RadioMap, zone_ids: &[super::ZoneId]) -> Self {
        let ns = map.scanners.len();
        let np = map.places.len();
        let places: Vec<Option<super::ZoneId>> = map
            .places
            .iter()
            .map(|p| {
                if p.place == HALL {
                    None
                } else {
                    Some(
                        zone_ids
                            .iter()
                            .find(|z| ***z == *p.place)
                            .cloned()
                            .unwrap_or_else(|| super::ZoneId::from(p.place.as_str())),
                    )
                }
            })
            .collect();
        let hall = places.iter().position(Option::is_none).unwrap_or(np - 1);
        let mut log_heard = Vec::with_capacity(np * ns);
        let mut log_missed = Vec::with_capacity(np * ns);
        let mut log_level = Vec::with_capacity(np * ns * BINS);
        let mut mean = Vec::with_capacity(np * ns);
        for place in &map.places {
            for s in &place.scanners {
                mean.push(s.mean_dbm.unwrap_or(f32::from(LEVEL_MIN_DBM)));
                // Never certain either way: a deaf moment, a lucky advert.
                let h = s.heard.clamp(0.01, 0.99);
                log_heard.push(h.ln());
                log_missed.push((1.0 - h).ln());
                log_level.extend(s.histogram.iter().map(|p| p.max(1e-6).ln()));
            }
        }
        let index: HashMap<&str, usize> = map
            .places
            .iter()
            .enumerate()
            .map(|(i, p)| (p.place.as_str(), i))
            .collect();
        let mut near = vec![false; np * np];
        for p in 0..np {
            if p != hall {
                near[p * np + hall] = true;
                near[hall * np + p] = true;
            }
        }
        for [a, b] in &map.adjacency {
            if let (Some(&a), Some(&b)) = (index.get(a.as_str()), index.get(b.as_str())) {
                near[a * np + b] = true;
                near[b * np + a] = true;
            }
        }
        let mut near_list = Vec::new();
        let mut near_at = vec![0];
        let mut direct_share = Vec::with_capacity(np);
        for p in 0..np {
            let list: Vec<u16> = (0..np)
                .filter(|&q| near[p * np + q])
                .map(|q| q as u16)
                .collect();
            direct_share.push((1.0 - ANYWHERE_SHARE) / list.len().max(1) as f32);
            near_list.extend(list);
            near_at.push(near_list.len());
        }
        let mut moves = vec![0f32; np * np];
        for p in 0..np {
            let neighbours = (0..np).filter(|&q| near[p * np + q]).count().max(1) as f32;
            for q in 0..np {
                if q == p {
                    continue;
                }
                let direct = if near[p * np + q] {
                    (1.0 - ANYWHERE_SHARE) / neighbours
                } else {
                    0.0
                };
                moves[p * np + q] = direct + ANYWHERE_SHARE / (np - 1) as f32;
            }
        }
        RadioModel {
            map,
            places,
            hall,
            log_heard,
            log_missed,
            log_level,
            mean,
            moves,
            near: near_list,
            near_at,
            direct_share,
        }
    }

    pub fn map(&self) -> &RadioMap {
        &self.map
    }

    pub fn scanner_index(&self, scanner: &str) -> Option<u16> {
        self.map
            .scanners
            .iter()
            .position(|s| s == scanner)
            .and_then(|i| u16::try_from(i).ok())
    }

    pub fn place_count(&self) -> usize {
        self.places.len()
    }

    pub fn scanner_count(&self) -> usize {
        self.map.scanners.len()
    }

    pub fn place(&self, index: usize) -> Option<&super::ZoneId> {
        self.places.get(index).and_then(Option::as_ref)
    }

    pub fn is_hall(&self, index: usize) -> bool {
        index == self.hall
    }

    /// log P(a reading of `level` by `scanner` | place), heard included.
    #[inline]
    pub fn log_reading(&self, place: usize, scanner: usize, level: f32) -> f32 {
        let k = place * self.scanner_count() + scanner;
        self.log_heard[k] + self.log_level[k * BINS + bin_of(level)]
    }

    /// The mean level `scanner` hears in `place`.
    #[inline]
    pub fn mean_level(&self, place: usize, scanner: usize) -> f32 {
        self.mean[place * self.scanner_count() + scanner]
    }

    /// log P(`scanner` missed one advert | place).
    #[inline]
    pub fn log_missed(&self, place: usize, scanner: usize) -> f32 {
        self.log_missed[place * self.scanner_count() + scanner]
    }

    /// Move the probability `leaving[p]` leaving each place `p` into
    /// `next` (the diagonal excluded), in O(places + neighbours): the
    /// sparse form of [`RadioModel::move_share`].
    #[inline]
    pub fn spread(&self, leaving: &[f32], next: &mut [f32]) {
        let n = leaving.len();
        if n < 2 {
            return;
        }
        let total: f32 = leaving.iter().sum();
        let anywhere = ANYWHERE_SHARE / (n - 1) as f32;
        for (q, slot) in next.iter_mut().enumerate().take(n) {
            *slot += (total - leaving[q]) * anywhere;
        }
        for (p, &mass) in leaving.iter().enumerate() {
            if mass <= 0.0 {
                continue;
            }
            let share = mass * self.direct_share[p];
            for &q in &self.near[self.near_at[p]..self.near_at[p + 1]] {
                next[usize::from(q)] += share;
            }
        }
    }

    /// Share of the mass leaving `from` that goes to `to`.
    #[inline]
    pub fn move_share(&self, from: usize, to: usize) -> f32 {
        self.moves[from * self.places.len() + to]
    }
}

#[cfg(test)]
mod tests;
