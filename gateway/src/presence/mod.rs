//! Presence: noisy RSSI readings in, trustworthy events out. Pure: the caller
//! passes `at_ms`; no clock, no I/O. Lives in memory only (docs/design.md §4 inv. 3).
//!
//! Per (person, scanner) the readings go through a small 1-D Kalman filter
//! (a random-walk level, so the smoothing adapts to how often a phone
//! advertises) with an outlier gate, which shrugs off single outliers,
//! missed adverts and most of a body shadow. Levels are corrected by the
//! scanner's calibration offset and, when the advert announces its power at
//! 1 m, normalised to a reference phone, so that "how far" can be told from
//! "how loud".
//!
//! From a normalised level the log-distance model gives a distance:
//! `level = reference − 10 n log10(d)` ([`log_distance_m`]), with the
//! path-loss exponent `n` of the site file.
//!
//! The place of a person is a zone or the hall (the open floor, heard but
//! near no zone's scanner: further than `hall_distance_m` from every one).
//! A person moves to another zone only when that zone's best scanner has
//! been clearly stronger (by `switch_margin_db`),
//! backed by several readings, continuously for `switch_hold_ms`; to or from
//! the hall only when the best level has been clearly on the other side of
//! the hall level for [`PresenceTuning::hall_hold_ms`]: one reading never
//! flips a place. A zone's dwell time counts from when the evidence for it
//! began, not from when the hold ran out.
//!
//! `Entered` goes out with a visit's first place (a zone, or the hall once
//! only far scanners have heard the person for `FIRST_PLACE_GRACE_MS`), so
//! a visit never starts with a move the person did not make; its visit id
//! is still the time of the first reading.
//!
//! # With a radio map
//!
//! Given a radio map ([`radiomap`], `[presence] radio_map`, learned by
//! `gateway calibrate` from a walk), the place is no longer read from one
//! level against the hall level: per person, a forward filter (an HMM)
//! over the map's places (every zone and the hall) keeps the probability
//! of each. Between updates probability flows out of each place at the
//! rate [`MapTuning`] gives (a zone is left for the hall, the hall for any
//! zone, a zone for a zone where the walk went directly, anything for
//! anything with a small share); each reading multiplies in how likely its
//! level is at that scanner in each place, and each tick how likely the
//! scanners that did *not* hear the person's adverts were to miss them
//! there. The place is then the most probable one, taken once it is
//! probable enough ([`MapTuning::switch_p`]) for [`MapTuning::hold_ms`]:
//! the same entry, hold, dwell, zone-timeout and exit logic as without a
//! map. Without a map nothing of this runs.

pub mod eval;
pub mod gain;
pub mod radiomap;
pub mod tune;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::identity::PersonId;
use radiomap::RadioModel;

pub type ZoneId = Arc<str>;

/// Identifies a visit of one person: the Unix ms at which it started.
pub type VisitId = i64;

#[derive(Clone, Debug)]
pub struct PresenceConfig {
    /// Scanner id → zone id. Scanners not listed are their own zone.
    pub scanner_zone: HashMap<String, ZoneId>,
    /// Per-scanner calibration offset in dB, added to every reading.
    pub scanner_offset_db: HashMap<String, f32>,
    /// Dwell thresholds (seconds) at which `Dwell` events fire.
    pub dwell_thresholds_s: BTreeSet<u32>,
    /// Readings weaker than this are ignored as too far to matter.
    pub min_rssi: i16,
    pub switch_margin_db: f32,
    pub switch_hold_ms: i64,
    /// Readings older than this no longer count for a scanner.
    pub window_ms: i64,
    /// A zone is left when none of its scanners heard the person for this long.
    pub zone_timeout_ms: i64,
    /// A visit closes after this long without any reading.
    pub visit_gap_ms: i64,
    /// Path-loss exponent `n` of the log-distance model (2 in free space,
    /// 2-3 indoors).
    pub path_loss_exponent: f32,
    /// A person further than this (metres, straight line to the scanner's
    /// antenna) from every zone's scanner is in the hall, in no zone.
    /// `None`: no hall; a present person is always in the nearest zone.
    pub hall_distance_m: Option<f32>,
    /// The store's radio learned from a calibration walk; with it the place
    /// comes from the map's filter (module docs), without it from levels.
    pub radio_map: Option<Arc<RadioModel>>,
    /// `[presence.map]`: the filter's knobs the site file sets; they win
    /// over the map's own `tuning` and the defaults ([`MapTuning::resolve`]).
    pub map_tuning: MapTuningOverrides,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            scanner_zone: HashMap::new(),
            scanner_offset_db: HashMap::new(),
            dwell_thresholds_s: BTreeSet::new(),
            min_rssi: -95,
            switch_margin_db: 4.0,
            switch_hold_ms: 1_000,
            window_ms: 6_000,
            zone_timeout_ms: 15_000,
            visit_gap_ms: 45_000,
            path_loss_exponent: 2.2,
            hall_distance_m: Some(5.3),
            radio_map: None,
            map_tuning: MapTuningOverrides::default(),
        }
    }
}

/// Distance (m) at which the log-distance model puts a reading of
/// `level_dbm` from a transmitter whose level at 1 m is `at_1m_dbm`.
pub fn log_distance_m(level_dbm: f32, at_1m_dbm: f32, path_loss_exponent: f32) -> f32 {
    10f32.powf((at_1m_dbm - level_dbm) / (10.0 * path_loss_exponent))
}

/// The level the log-distance model expects at `distance_m` (the inverse
/// of [`log_distance_m`]).
pub fn log_distance_level_dbm(distance_m: f32, at_1m_dbm: f32, path_loss_exponent: f32) -> f32 {
    at_1m_dbm - 10.0 * path_loss_exponent * distance_m.log10()
}

impl PresenceConfig {
    pub fn zone_of(&self, scanner: &str) -> ZoneId {
        self.scanner_zone
            .get(scanner)
            .cloned()
            .unwrap_or_else(|| Arc::from(scanner))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum PresenceEvent {
    Entered {
        person: PersonId,
        visit: VisitId,
        at_ms: i64,
    },
    ZoneEntered {
        person: PersonId,
        visit: VisitId,
        zone: ZoneId,
        at_ms: i64,
    },
    Dwell {
        person: PersonId,
        visit: VisitId,
        zone: ZoneId,
        dwell_s: u32,
        at_ms: i64,
    },
    ZoneLeft {
        person: PersonId,
        visit: VisitId,
        zone: ZoneId,
        dwell_s: u32,
        at_ms: i64,
    },
    Exited {
        person: PersonId,
        visit: VisitId,
        at_ms: i64,
    },
}

impl PresenceEvent {
    pub fn person(&self) -> &PersonId {
        match self {
            PresenceEvent::Entered { person, .. }
            | PresenceEvent::ZoneEntered { person, .. }
            | PresenceEvent::Dwell { person, .. }
            | PresenceEvent::ZoneLeft { person, .. }
            | PresenceEvent::Exited { person, .. } => person,
        }
    }

    pub fn at_ms(&self) -> i64 {
        match self {
            PresenceEvent::Entered { at_ms, .. }
            | PresenceEvent::ZoneEntered { at_ms, .. }
            | PresenceEvent::Dwell { at_ms, .. }
            | PresenceEvent::ZoneLeft { at_ms, .. }
            | PresenceEvent::Exited { at_ms, .. } => *at_ms,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            PresenceEvent::Entered { .. } => "entered",
            PresenceEvent::ZoneEntered { .. } => "zone_entered",
            PresenceEvent::Dwell { .. } => "dwell",
            PresenceEvent::ZoneLeft { .. } => "zone_left",
            PresenceEvent::Exited { .. } => "exited",
        }
    }
}

/// How long after the first reading of a visit a zone may still be taken
/// at once (no hold) rather than from the hall.
const FIRST_PLACE_GRACE_MS: i64 = 2_000;

/// A zone needs this many readings of its best scanner before it can win.
const MIN_READINGS_TO_SWITCH: u32 = 3;

/// Knobs of the filter and of the hall decision. Kept apart from
/// [`PresenceConfig`] (whose fields the site file maps one to one); the
/// defaults are what `tests/presence_eval.rs` measures against the
/// simulated store.
#[derive(Clone, Debug, PartialEq)]
pub struct PresenceTuning {
    /// Kalman process noise: how fast a true level may drift, dB² per second.
    pub process_noise_db2_per_s: f32,
    /// Kalman measurement noise: variance of one reading, dB².
    pub measurement_noise_db2: f32,
    /// A reading further than this many standard deviations from the
    /// prediction is clamped to that distance (a reflection, a body).
    pub outlier_gate_sigma: f32,
    /// Power at 1 m that levels are normalised to when an advert says its
    /// own (`Frame::tx_power_at_1m`): a loud phone does not look closer.
    pub reference_tx_power_dbm: f32,
    /// Hysteresis around the hall's level (the level
    /// [`PresenceConfig::hall_distance_m`] gives): to enter a zone from the hall the
    /// level must be this much above it; to leave to the hall, this much
    /// below.
    pub hall_margin_db: f32,
    /// How long the hall (or a zone, from the hall) must look right before
    /// the place changes.
    pub hall_hold_ms: i64,
    /// The filter over places, used only with a radio map.
    pub map: MapTuning,
}

/// Knobs of the filter over places (a radio map's engine; module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct MapTuning {
    /// Mean time a person stays in a zone / in the hall before moving on:
    /// how fast probability flows out of a place between readings.
    pub zone_stay_s: f32,
    pub hall_stay_s: f32,
    /// Readings of one advert at several scanners, and readings close in
    /// time, are not independent: each reading's log-likelihood is scaled
    /// by this.
    pub evidence_weight: f32,
    /// A first place is taken at once when its probability reaches this.
    pub enter_p: f32,
    /// Another place is taken when its probability reaches this ...
    pub switch_p: f32,
    /// ... and stays the most probable place for this long.
    pub hold_ms: i64,
    /// How fast a person's device bias (louder or quieter than the walk's
    /// tag) is learned: the weight of each reading's residual (0: off) ...
    pub bias_rate: f32,
    /// ... and the largest bias believed.
    pub bias_max_db: f32,
}

impl Default for MapTuning {
    fn default() -> Self {
        MapTuning {
            // Swept on the twin's crowd (docs/experiments/presence.md).
            zone_stay_s: 300.0,
            hall_stay_s: 2.0,
            evidence_weight: 0.5,
            enter_p: 0.6,
            switch_p: 0.8,
            hold_ms: 300,
            bias_rate: 0.1,
            bias_max_db: 8.0,
        }
    }
}

/// Some of the [`MapTuning`] knobs, each optional: what a site file's
/// `[presence.map]` sets, and what `gateway calibrate --tune` writes into a
/// radio map's `tuning`. Unknown keys are refused.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapTuningOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_stay_s: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hall_stay_s: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_weight: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enter_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias_rate: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias_max_db: Option<f32>,
}

/// The range each [`MapTuning`] knob may take: (name, least, most). Wide
/// enough for any store; outside them the filter stops making sense (a
/// probability of 1 is never reached, a stay of 0 s empties a place).
pub const MAP_TUNING_RANGES: [(&str, f64, f64); 8] = [
    ("zone_stay_s", 1.0, 86_400.0),
    ("hall_stay_s", 0.1, 86_400.0),
    ("evidence_weight", 0.01, 2.0),
    ("enter_p", 0.01, 0.99),
    ("switch_p", 0.01, 0.99),
    ("hold_ms", 0.0, 60_000.0),
    ("bias_rate", 0.0, 1.0),
    ("bias_max_db", 0.0, 30.0),
];

impl MapTuningOverrides {
    /// The knobs set, by name, as numbers.
    pub fn entries(&self) -> Vec<(&'static str, f64)> {
        // Six decimals: an f32's 0.8 reads 0.8, not 0.800000011920929.
        let f = |v: Option<f32>| v.map(|v| (f64::from(v) * 1e6).round() / 1e6);
        [
            ("zone_stay_s", f(self.zone_stay_s)),
            ("hall_stay_s", f(self.hall_stay_s)),
            ("evidence_weight", f(self.evidence_weight)),
            ("enter_p", f(self.enter_p)),
            ("switch_p", f(self.switch_p)),
            ("hold_ms", self.hold_ms.map(|v| v as f64)),
            ("bias_rate", f(self.bias_rate)),
            ("bias_max_db", f(self.bias_max_db)),
        ]
        .into_iter()
        .filter_map(|(name, v)| Some((name, v?)))
        .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// Every knob set in its range ([`MAP_TUNING_RANGES`]): each problem
    /// as (knob, reason).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        self.entries()
            .into_iter()
            .filter_map(|(name, v)| {
                let (_, lo, hi) = MAP_TUNING_RANGES.iter().find(|r| r.0 == name)?;
                (!(v.is_finite() && (*lo..=*hi).contains(&v)))
                    .then(|| (name, format!("must be between {lo} and {hi}")))
            })
            .collect()
    }

    /// `self`'s knobs over `base`'s.
    pub fn over(&self, base: &MapTuningOverrides) -> MapTuningOverrides {
        MapTuningOverrides {
            zone_stay_s: self.zone_stay_s.or(base.zone_stay_s),
            hall_stay_s: self.hall_stay_s.or(base.hall_stay_s),
            evidence_weight: self.evidence_weight.or(base.evidence_weight),
            enter_p: self.enter_p.or(base.enter_p),
            switch_p: self.switch_p.or(base.switch_p),
            hold_ms: self.hold_ms.or(base.hold_ms),
            bias_rate: self.bias_rate.or(base.bias_rate),
            bias_max_db: self.bias_max_db.or(base.bias_max_db),
        }
    }

    /// `base` with the knobs set here put in.
    pub fn apply(&self, base: &MapTuning) -> MapTuning {
        MapTuning {
            zone_stay_s: self.zone_stay_s.unwrap_or(base.zone_stay_s),
            hall_stay_s: self.hall_stay_s.unwrap_or(base.hall_stay_s),
            evidence_weight: self.evidence_weight.unwrap_or(base.evidence_weight),
            enter_p: self.enter_p.unwrap_or(base.enter_p),
            switch_p: self.switch_p.unwrap_or(base.switch_p),
            hold_ms: self.hold_ms.unwrap_or(base.hold_ms),
            bias_rate: self.bias_rate.unwrap_or(base.bias_rate),
            bias_max_db: self.bias_max_db.unwrap_or(base.bias_max_db),
        }
    }
}

impl MapTuning {
    /// The knobs the engine runs a map with: the site file's
    /// `[presence.map]` over the map's `tuning` (learned with the map by
    /// `gateway calibrate --tune`) over `defaults`.
    pub fn resolve(
        defaults: &MapTuning,
        map: Option<&MapTuningOverrides>,
        site: &MapTuningOverrides,
    ) -> MapTuning {
        match map {
            Some(map) => site.over(map).apply(defaults),
            None => site.apply(defaults),
        }
    }

    /// Where each knob of [`MapTuning::resolve`] comes from, for people
    /// (`check-config`): `name value (site file | radio map | default)`.
    pub fn describe(
        defaults: &MapTuning,
        map: Option<&MapTuningOverrides>,
        site: &MapTuningOverrides,
    ) -> String {
        let resolved = MapTuning::resolve(defaults, map, site);
        let all = MapTuningOverrides::from(&resolved);
        let site_set: Vec<&str> = site.entries().iter().map(|e| e.0).collect();
        let map_set: Vec<&str> = map
            .map(|m| m.entries().iter().map(|e| e.0).collect())
            .unwrap_or_default();
        all.entries()
            .into_iter()
            .map(|(name, v)| {
                let from = if site_set.contains(&name) {
                    "site file"
                } else if map_set.contains(&name) {
                    "radio map"
                } else {
                    "default"
                };
                format!("{name} {v} ({from})")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl From<&MapTuning> for MapTuningOverrides {
    fn from(t: &MapTuning) -> Self {
        MapTuningOverrides {
            zone_stay_s: Some(t.zone_stay_s),
            hall_stay_s: Some(t.hall_stay_s),
            evidence_weight: Some(t.evidence_weight),
            enter_p: Some(t.enter_p),
            switch_p: Some(t.switch_p),
            hold_ms: Some(t.hold_ms),
            bias_rate: Some(t.bias_rate),
            bias_max_db: Some(t.bias_max_db),
        }
    }
}

/// A map with more places than this is refused (the filter keeps its
/// scratch on the stack).
pub const MAX_MAP_PLACES: usize = 64;

impl Default for PresenceTuning {
    fn default() -> Self {
        PresenceTuning {
            process_noise_db2_per_s: 4.0,
            measurement_noise_db2: 12.0,
            outlier_gate_sigma: 2.0,
            reference_tx_power_dbm: -59.0,
            hall_margin_db: 1.0,
            hall_hold_ms: 7_000,
            map: MapTuning::default(),
        }
    }
}

/// The hall decision, worked out once from the config and the tuning (the
/// level from `hall_distance_m` needs a logarithm), not once per reading.
#[derive(Clone, Copy, Debug)]
struct HallRule {
    level_dbm: Option<f32>,
    margin_db: f32,
    hold_ms: i64,
}

impl HallRule {
    fn new(config: &PresenceConfig, tuning: &PresenceTuning) -> Self {
        let n = config.path_loss_exponent;
        HallRule {
            // The site file's validation keeps both in range; a config built
            // in code with a distance or exponent that is not a positive
            // number gets no hall rather than an infinite or NaN level.
            level_dbm: config
                .hall_distance_m
                .filter(|d| d.is_finite() && *d > 0.0 && n.is_finite() && n > 0.0)
                .map(|d| log_distance_level_dbm(d, tuning.reference_tx_power_dbm, n)),
            margin_db: tuning.hall_margin_db,
            hold_ms: tuning.hall_hold_ms,
        }
    }
}

/// A scanner as the engine knows it: its zone and calibration, looked up
/// once per scanner, not once per advert.
struct ScannerInfo {
    name: Box<str>,
    zone: ZoneId,
    offset_db: f32,
    /// The drift of its gain learned from the store's beacons ([`gain`]),
    /// taken off every reading (0 when unknown).
    gain_db: f32,
    /// The scanner's index in the radio map, if there is a map and it
    /// has the scanner.
    map_index: Option<u16>,
}

/// Filtered level of one person at one scanner.
#[derive(Clone, Copy)]
struct Track {
    scanner: u32,
    count: u32,
    level: f32,
    variance: f32,
    last_ms: i64,
}

struct PersonState {
    visit: VisitId,
    last_seen_ms: i64,
    /// The first reading of this stay in memory (of the visit, or since a
    /// restart).
    visit_seen_since_ms: i64,
    /// Correction that normalises this person's levels to the reference
    /// power (0 when the adverts do not say their power).
    tx_correction_db: f32,
    tracks: Vec<Track>,
    /// Current zone and since when (None: in the hall, or not placed yet).
    zone: Option<(ZoneId, i64)>,
    /// A place that looks better than the current one, and since when.
    /// `Some(None)` is the hall.
    candidate: Option<(Option<ZoneId>, i64)>,
    dwell_fired: BTreeSet<u32>,
    /// Whether the person has ever been placed in a zone this visit.
    placed: bool,
    /// Whether `Entered` has gone out for this visit. It goes out with the
    /// first place (a zone or the hall), not at the first reading: until
    /// then the engine does not know where the person is, and "entered,
    /// in no zone" followed a moment later by the real zone would be a
    /// place change nobody made. A visit continued after a restart was
    /// announced before it.
    announced: bool,
    /// The filter over the radio map's places (only with a map).
    map: Option<Box<MapState>>,
}

/// One person's filter over the radio map's places.
struct MapState {
    /// Probability of each place, in the map's order.
    p: Box<[f32]>,
    /// Time the probabilities are for.
    at_ms: i64,
    /// Readings per map scanner since the last tick.
    heard: Box<[u16]>,
    /// How much louder (dB) this person's device is than the walk's tag,
    /// learned from the readings.
    bias_db: f32,
    /// The most probable place and its probability right after the last
    /// evidence: what the place is decided on. Probability flowing between
    /// places with time alone (a tick without readings) only changes what
    /// the next evidence starts from, so a hold is not broken by a tick.
    decided: (usize, f32),
}

impl MapState {
    fn new(model: &RadioModel, at_ms: i64) -> Self {
        let n = model.place_count();
        MapState {
            p: vec![1.0 / n as f32; n].into_boxed_slice(),
            at_ms,
            heard: vec![0; model.scanner_count()].into_boxed_slice(),
            bias_db: 0.0,
            decided: (0, 0.0),
        }
    }

    /// Let time pass: probability flows out of each place.
    fn predict(&mut self, model: &RadioModel, t: &MapTuning, now_ms: i64) {
        let dt_s = (now_ms - self.at_ms) as f32 / 1000.0;
        if dt_s <= 0.0 {
            return;
        }
        self.at_ms = now_ms;
        let n = self.p.len();
        let mut next = [0f32; MAX_MAP_PLACES];
        let mut leaving = [0f32; MAX_MAP_PLACES];
        let zone_stay = (-dt_s / t.zone_stay_s.max(0.1)).exp();
        let hall_stay = (-dt_s / t.hall_stay_s.max(0.1)).exp();
        for from in 0..n {
            let stay = if model.is_hall(from) {
                hall_stay
            } else {
                zone_stay
            };
            let mass = self.p[from];
            next[from] = mass * stay;
            leaving[from] = mass * (1.0 - stay);
        }
        model.spread(&leaving[..n], &mut next[..n]);
        self.p.copy_from_slice(&next[..n]);
    }

    /// Multiply in evidence (per place log-likelihoods), then normalise.
    fn update(&mut self, log_likelihood: &[f32], weight: f32) {
        let max = log_likelihood
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return;
        }
        let mut sum = 0.0;
        for (p, ll) in self.p.iter_mut().zip(log_likelihood) {
            *p *= ((ll - max) * weight).exp();
            sum += *p;
        }
        let n = self.p.len() as f32;
        if !(sum.is_finite() && sum > 0.0) {
            self.p.fill(1.0 / n);
            return;
        }
        // A floor, so that no place becomes impossible to come back to.
        let floor = 1e-4 / n;
        let mut total = 0.0;
        for p in self.p.iter_mut() {
            *p = (*p / sum).max(floor);
            total += *p;
        }
        for p in self.p.iter_mut() {
            *p /= total;
        }
        self.decided = self.best();
    }

    /// One reading of `scanner` (map index) at `level`.
    fn observe(
        &mut self,
        model: &RadioModel,
        t: &MapTuning,
        scanner: usize,
        level: f32,
        at_ms: i64,
    ) {
        self.predict(model, t, at_ms);
        let n = self.p.len();
        let mut ll = [0f32; MAX_MAP_PLACES];
        let corrected = level - self.bias_db;
        for (place, slot) in ll.iter_mut().enumerate().take(n) {
            *slot = model.log_reading(place, scanner, corrected);
        }
        self.update(&ll[..n], t.evidence_weight);
        if t.bias_rate > 0.0 {
            let expected: f32 = (0..n)
                .map(|place| self.p[place] * model.mean_level(place, scanner))
                .sum();
            let residual = (level - expected).clamp(-t.bias_max_db, t.bias_max_db);
            self.bias_db += t.bias_rate * (residual - self.bias_db);
        }
        if let Some(h) = self.heard.get_mut(scanner) {
            *h = h.saturating_add(1);
        }
    }

    /// A tick: the scanners that heard fewer of the person's adverts than
    /// the best-hearing one missed the rest.
    fn tick(&mut self, model: &RadioModel, t: &MapTuning, now_ms: i64) {
        self.predict(model, t, now_ms);
        let adverts = self.heard.iter().copied().max().unwrap_or(0);
        if adverts > 0 {
            let n = self.p.len();
            let mut ll = [0f32; MAX_MAP_PLACES];
            let mut any = false;
            for (scanner, &k) in self.heard.iter().enumerate() {
                let missed = f32::from(adverts - k);
                if missed == 0.0 {
                    continue;
                }
                any = true;
                for (place, slot) in ll.iter_mut().enumerate().take(n) {
                    *slot += missed * model.log_missed(place, scanner);
                }
            }
            // No miss is no evidence: nothing to decide on again.
            if any {
                self.update(&ll[..n], t.evidence_weight);
            }
        }
        self.heard.fill(0);
    }

    /// The most probable place and its probability.
    fn best(&self) -> (usize, f32) {
        self.p
            .iter()
            .copied()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, p)| {
                if p > best.1 { (i, p) } else { best }
            })
    }
}

/// What the engine remembers of a visit across a restart: enough to keep
/// per-visit caps honest, nothing about where the person was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VisitSeed {
    pub visit: VisitId,
    pub last_seen_ms: i64,
}

pub struct PresenceEngine {
    config: PresenceConfig,
    tuning: PresenceTuning,
    /// The filter's knobs in force: `tuning.map` as defaults, under the
    /// map's `tuning` and the site's `[presence.map]` ([`MapTuning::resolve`]).
    map_tuning: MapTuning,
    hall: HallRule,
    scanners: Vec<ScannerInfo>,
    scanner_index: HashMap<Box<str>, u32>,
    people: HashMap<PersonId, PersonState>,
    seeds: HashMap<PersonId, VisitSeed>,
    /// Gain drifts set by [`PresenceEngine::set_scanner_gain`], for
    /// scanners not heard yet.
    gains: HashMap<Box<str>, f32>,
}

fn same_zone(a: &ZoneId, b: &ZoneId) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

fn same_place(a: &Option<ZoneId>, b: &Option<ZoneId>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => same_zone(a, b),
        _ => false,
    }
}

impl PresenceEngine {
    pub fn new(config: PresenceConfig) -> Self {
        Self::with_tuning(config, PresenceTuning::default())
    }

    pub fn with_tuning(config: PresenceConfig, tuning: PresenceTuning) -> Self {
        PresenceEngine {
            hall: HallRule::new(&config, &tuning),
            map_tuning: resolve_map_tuning(&config, &tuning),
            config,
            tuning,
            scanners: Vec::new(),
            scanner_index: HashMap::new(),
            people: HashMap::new(),
            seeds: HashMap::new(),
            gains: HashMap::new(),
        }
    }

    /// The drift of a scanner's gain learned from the store's beacons
    /// (`gain::GainTracker::correction`): taken off its readings from now
    /// on. `None` (not known, or deaf) takes nothing off.
    pub fn set_scanner_gain(&mut self, scanner: &str, drift_db: Option<f32>) {
        let drift = drift_db.filter(|g| g.is_finite()).unwrap_or(0.0);
        if drift == 0.0 {
            self.gains.remove(scanner);
        } else {
            self.gains.insert(scanner.into(), drift);
        }
        if let Some(&id) = self.scanner_index.get(scanner) {
            self.scanners[id as usize].gain_db = drift;
        }
    }

    /// Replace the configuration (reload) without dropping who is present.
    pub fn set_config(&mut self, config: PresenceConfig) {
        self.hall = HallRule::new(&config, &self.tuning);
        let same_map = match (&self.config.radio_map, &config.radio_map) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a.same_as(b),
            (None, None) => true,
            _ => false,
        };
        self.map_tuning = resolve_map_tuning(&config, &self.tuning);
        self.config = config;
        // Zones and offsets may have changed: look them up again.
        for info in &mut self.scanners {
            info.zone = self.config.zone_of(&info.name);
            info.offset_db = offset_of(&self.config, &info.name);
            info.map_index = map_index_of(&self.config, &info.name);
        }
        if !same_map {
            // Another map has other places: each filter starts again (from
            // the next reading); the places people are in stay until then.
            for state in self.people.values_mut() {
                state.map = None;
            }
        }
    }

    pub fn config(&self) -> &PresenceConfig {
        &self.config
    }

    pub fn set_tuning(&mut self, tuning: PresenceTuning) {
        self.hall = HallRule::new(&self.config, &tuning);
        self.map_tuning = resolve_map_tuning(&self.config, &tuning);
        self.tuning = tuning;
    }

    pub fn tuning(&self) -> &PresenceTuning {
        &self.tuning
    }

    /// The radio map filter's knobs in force (defaults, the map's, the
    /// site file's).
    pub fn map_tuning(&self) -> &MapTuning {
        &self.map_tuning
    }

    /// After a restart: a person seen again within the visit gap continues
    /// the visit recorded before the restart.
    pub fn seed_visit(&mut self, person: PersonId, seed: VisitSeed) {
        self.seeds.insert(person, seed);
    }

    pub fn present_count(&self) -> usize {
        self.people.len()
    }

    /// Drop everything about a person at once (consent withdrawn, erased).
    pub fn forget(&mut self, person: &PersonId) {
        self.people.remove(person);
        self.seeds.remove(person);
    }

    pub fn visit_of(&self, person: &PersonId) -> Option<VisitId> {
        self.people.get(person).map(|s| s.visit)
    }

    /// The zone a present person is in now (`None`: in the hall, or absent).
    pub fn zone_of(&self, person: &PersonId) -> Option<&ZoneId> {
        self.people
            .get(person)
            .and_then(|s| s.zone.as_ref().map(|(z, _)| z))
    }

    /// One reading of one person by one scanner.
    pub fn observe(
        &mut self,
        person: &PersonId,
        scanner: &str,
        rssi: i16,
        at_ms: i64,
        out: &mut Vec<PresenceEvent>,
    ) {
        self.observe_with_power(person, scanner, rssi, None, at_ms, out);
    }

    /// One reading, with the power at 1 m the advert announced (if any), so
    /// that a loud phone is not taken for a near one.
    pub fn observe_with_power(
        &mut self,
        person: &PersonId,
        scanner: &str,
        rssi: i16,
        tx_power_at_1m: Option<i8>,
        at_ms: i64,
        out: &mut Vec<PresenceEvent>,
    ) {
        if rssi < self.config.min_rssi {
            return;
        }
        let scanner = self.scanner_id(scanner);
        let info = &self.scanners[scanner as usize];
        let offset = info.offset_db - info.gain_db;
        // Time can jump (a replay, a restart, a simulated night): a reading
        // after more than the visit gap ends the old visit before it starts
        // a new one, whether or not a tick saw the gap.
        if let Some(state) = self.people.get_mut(person) {
            if at_ms - state.last_seen_ms > self.config.visit_gap_ms {
                let ended_at = state.last_seen_ms + self.config.visit_gap_ms;
                close_visit(person, state, ended_at, out);
                self.people.remove(person);
            }
        }
        let state = match self.people.get_mut(person) {
            Some(state) => state,
            None => {
                let (visit, announced) = match self.seeds.remove(person) {
                    Some(seed) if at_ms - seed.last_seen_ms <= self.config.visit_gap_ms => {
                        (seed.visit, true)
                    }
                    _ => (at_ms, false),
                };
                self.people.entry(person.clone()).or_insert(PersonState {
                    visit,
                    last_seen_ms: at_ms,
                    visit_seen_since_ms: at_ms,
                    tx_correction_db: 0.0,
                    tracks: Vec::with_capacity(4),
                    zone: None,
                    candidate: None,
                    dwell_fired: BTreeSet::new(),
                    placed: false,
                    announced,
                    map: None,
                })
            }
        };
        if let Some(tx) = tx_power_at_1m {
            // Absurd announced powers (a broken tag) are ignored.
            if (-100..=20).contains(&tx) {
                state.tx_correction_db = self.tuning.reference_tx_power_dbm - f32::from(tx);
            }
        }
        // Out-of-order readings (a late UDP datagram) must not move time back.
        state.last_seen_ms = state.last_seen_ms.max(at_ms);
        let reading = f32::from(rssi) + offset;
        let t = &self.tuning;
        match state.tracks.iter_mut().find(|tr| tr.scanner == scanner) {
            Some(track) => {
                let dt_s = (at_ms - track.last_ms).max(0) as f32 / 1000.0;
                let predicted = track.variance + t.process_noise_db2_per_s * dt_s;
                let s = predicted + t.measurement_noise_db2;
                let gate = t.outlier_gate_sigma * s.sqrt();
                let innovation = (reading - track.level).clamp(-gate, gate);
                let gain = predicted / s;
                track.level += gain * innovation;
                track.variance = (1.0 - gain) * predicted;
                track.count = track.count.saturating_add(1);
                track.last_ms = track.last_ms.max(at_ms);
            }
            None => state.tracks.push(Track {
                scanner,
                count: 1,
                level: reading,
                variance: t.measurement_noise_db2,
                last_ms: at_ms,
            }),
        }
        if let (Some(model), Some(index)) = (
            &self.config.radio_map,
            self.scanners[scanner as usize].map_index,
        ) {
            let map = state
                .map
                .get_or_insert_with(|| Box::new(MapState::new(model, at_ms)));
            map.observe(model, &self.map_tuning, usize::from(index), reading, at_ms);
        }
        let now = state.last_seen_ms;
        Self::update_zone(
            &self.config,
            &self.hall,
            &self.map_tuning,
            &self.scanners,
            person,
            state,
            now,
            out,
        );
    }

    /// Advance time: dwell thresholds, zone timeouts, visit ends.
    pub fn tick(&mut self, now_ms: i64, out: &mut Vec<PresenceEvent>) {
        let config = &self.config;
        let keep_ms = config.zone_timeout_ms.max(config.window_ms);
        let mut gone = Vec::new();
        for (person, state) in self.people.iter_mut() {
            if now_ms - state.last_seen_ms > config.visit_gap_ms {
                close_visit(person, state, now_ms, out);
                gone.push(person.clone());
                continue;
            }
            state.tracks.retain(|t| now_ms - t.last_ms <= keep_ms);
            if let (Some(model), Some(map)) = (&config.radio_map, state.map.as_deref_mut()) {
                map.tick(model, &self.map_tuning, now_ms);
            }
            Self::update_zone(
                config,
                &self.hall,
                &self.map_tuning,
                &self.scanners,
                person,
                state,
                now_ms,
                out,
            );
        }
        for person in gone {
            self.people.remove(&person);
        }
    }

    fn scanner_id(&mut self, scanner: &str) -> u32 {
        if let Some(&id) = self.scanner_index.get(scanner) {
            return id;
        }
        let id = self.scanners.len() as u32;
        self.scanners.push(ScannerInfo {
            name: scanner.into(),
            zone: self.config.zone_of(scanner),
            offset_db: offset_of(&self.config, scanner),
            gain_db: self.gains.get(scanner).copied().unwrap_or(0.0),
            map_index: map_index_of(&self.config, scanner),
        });
        self.scanner_index.insert(scanner.into(), id);
        id
    }

    #[allow(clippy::too_many_arguments)]
    fn update_zone(
        config: &PresenceConfig,
        hall_rule: &HallRule,
        map_tuning: &MapTuning,
        scanners: &[ScannerInfo],
        person: &PersonId,
        state: &mut PersonState,
        now_ms: i64,
        out: &mut Vec<PresenceEvent>,
    ) {
        // Best filtered level overall, and the current zone's best level.
        let mut best: Option<(&ZoneId, f32, u32)> = None;
        let mut current_level: Option<f32> = None;
        for track in &state.tracks {
            if now_ms - track.last_ms > config.window_ms {
                continue;
            }
            let zone = &scanners[track.scanner as usize].zone;
            let level = track.level;
            if let Some((current, _)) = &state.zone {
                if same_zone(current, zone) {
                    current_level = Some(current_level.map_or(level, |c: f32| c.max(level)));
                }
            }
            if best.is_none_or(|(_, b, _)| level > b) {
                best = Some((zone, level, track.count));
            }
        }

        let Some((best_zone, best_level, best_count)) = best else {
            // Nobody hears the person right now: leave the zone after the timeout.
            if let Some((zone, since)) = &state.zone {
                if now_ms - state.last_seen_ms > config.zone_timeout_ms {
                    let dwell_s = secs(state.last_seen_ms - since);
                    out.push(PresenceEvent::ZoneLeft {
                        person: person.clone(),
                        visit: state.visit,
                        zone: zone.clone(),
                        dwell_s,
                        at_ms: now_ms,
                    });
                    state.zone = None;
                    state.dwell_fired.clear();
                }
            }
            state.candidate = None;
            return;
        };
        let best_zone = best_zone.clone();
        let normalised = best_level + state.tx_correction_db;
        let hall = hall_rule.level_dbm;
        let margin = hall_rule.margin_db;

        // Where the evidence points, and how long it must keep pointing there.
        let wanted: Option<(Option<ZoneId>, i64)> = if let (Some(model), Some(map)) =
            (&config.radio_map, state.map.as_deref())
        {
            map_wanted(model, map_tuning, map, state, now_ms)
        } else {
            match &state.zone {
                None if !state.placed => {
                    // First placement of a visit: no hold, so an entry is
                    // reported at once. The first reading may well come from
                    // a far scanner: for a moment, a weak level only means
                    // "not placed yet" (as good as the hall), not the hall.
                    let waited = now_ms - state.visit_seen_since_ms;
                    match hall {
                        None => Some((Some(best_zone), 0)),
                        Some(h) if normalised >= h + margin => Some((Some(best_zone), 0)),
                        Some(_) if waited < FIRST_PLACE_GRACE_MS => None,
                        Some(h) if normalised < h => Some((None, 0)),
                        Some(_) => Some((Some(best_zone), 0)),
                    }
                }
                None => match hall {
                    Some(h) if normalised < h + margin || best_count < MIN_READINGS_TO_SWITCH => {
                        None
                    }
                    // Back in range after a zone timeout: at once without a hall.
                    None => Some((Some(best_zone), 0)),
                    Some(_) => Some((Some(best_zone), hall_rule.hold_ms)),
                },
                Some((current, _)) => {
                    let current_level = current_level.unwrap_or(f32::NEG_INFINITY);
                    match hall {
                        Some(h) if normalised < h - margin => Some((None, hall_rule.hold_ms)),
                        _ if same_zone(current, &best_zone) => None,
                        _ if best_count >= MIN_READINGS_TO_SWITCH
                            && best_level >= current_level + config.switch_margin_db =>
                        {
                            Some((Some(best_zone), config.switch_hold_ms))
                        }
                        _ => None,
                    }
                }
            }
        };

        match wanted {
            None => state.candidate = None,
            Some((place, hold_ms)) => {
                let since = match &state.candidate {
                    Some((c, since)) if same_place(c, &place) => *since,
                    _ => {
                        state.candidate = Some((place.clone(), now_ms));
                        now_ms
                    }
                };
                if now_ms - since >= hold_ms {
                    // Dwell counts from when the evidence began.
                    Self::move_to(person, state, place, since, now_ms, out);
                }
            }
        }

        if let Some((zone, since)) = &state.zone {
            let dwelt = secs(now_ms - since);
            for &threshold in config.dwell_thresholds_s.range(..=dwelt) {
                if state.dwell_fired.insert(threshold) {
                    out.push(PresenceEvent::Dwell {
                        person: person.clone(),
                        visit: state.visit,
                        zone: zone.clone(),
                        dwell_s: threshold,
                        at_ms: now_ms,
                    });
                }
            }
        }
    }

    fn move_to(
        person: &PersonId,
        state: &mut PersonState,
        place: Option<ZoneId>,
        since_ms: i64,
        now_ms: i64,
        out: &mut Vec<PresenceEvent>,
    ) {
        state.candidate = None;
        state.placed = true;
        if !state.announced {
            state.announced = true;
            out.push(PresenceEvent::Entered {
                person: person.clone(),
                visit: state.visit,
                at_ms: now_ms,
            });
        }
        if let Some((zone, since)) = state.zone.take() {
            out.push(PresenceEvent::ZoneLeft {
                person: person.clone(),
                visit: state.visit,
                zone,
                dwell_s: secs(since_ms - since),
                at_ms: now_ms,
            });
        }
        state.dwell_fired.clear();
        if let Some(zone) = place {
            out.push(PresenceEvent::ZoneEntered {
                person: person.clone(),
                visit: state.visit,
                zone: zone.clone(),
                at_ms: now_ms,
            });
            state.zone = Some((zone, since_ms));
        }
    }
}

/// With a map: the place the filter points to, and the hold it needs.
fn map_wanted(
    model: &RadioModel,
    t: &MapTuning,
    map: &MapState,
    state: &PersonState,
    now_ms: i64,
) -> Option<(Option<ZoneId>, i64)> {
    let (best, p) = map.decided;
    let place = model.place(best).cloned();
    match &state.zone {
        None if !state.placed => {
            let waited = now_ms - state.visit_seen_since_ms;
            (p >= t.enter_p || waited >= FIRST_PLACE_GRACE_MS).then_some((place, 0))
        }
        current => {
            let current = current.as_ref().map(|(z, _)| z.clone());
            (!same_place(&current, &place) && p >= t.switch_p).then_some((place, t.hold_ms))
        }
    }
}

fn resolve_map_tuning(config: &PresenceConfig, tuning: &PresenceTuning) -> MapTuning {
    let map = config
        .radio_map
        .as_ref()
        .and_then(|m| m.map().tuning.as_ref());
    MapTuning::resolve(&tuning.map, map, &config.map_tuning)
}

fn map_index_of(config: &PresenceConfig, scanner: &str) -> Option<u16> {
    config
        .radio_map
        .as_ref()
        .and_then(|m| m.scanner_index(scanner))
}

fn offset_of(config: &PresenceConfig, scanner: &str) -> f32 {
    config
        .scanner_offset_db
        .get(scanner)
        .copied()
        .unwrap_or(0.0)
}

/// The events that end a visit: leaving the zone (if in one), then the store.
fn close_visit(
    person: &PersonId,
    state: &mut PersonState,
    at_ms: i64,
    out: &mut Vec<PresenceEvent>,
) {
    if !state.announced {
        // Heard, never placed: nothing went out, so nothing ends.
        return;
    }
    if let Some((zone, since)) = state.zone.take() {
        let dwell_s = secs(state.last_seen_ms - since);
        out.push(PresenceEvent::ZoneLeft {
            person: person.clone(),
            visit: state.visit,
            zone,
            dwell_s,
            at_ms,
        });
    }
    out.push(PresenceEvent::Exited {
        person: person.clone(),
        visit: state.visit,
        at_ms,
    });
}

fn secs(ms: i64) -> u32 {
    (ms.max(0) / 1000).min(u32::MAX as i64) as u32
}

#[cfg(test)]
mod tests;
