//! Presence: noisy RSSI readings in, trustworthy events out. Pure: the caller
//! passes `at_ms`; no clock, no I/O. Lives in memory only (DESIGN §4 inv. 3).
//!
//! Per (person, scanner) the last few readings inside a short window are
//! smoothed with a trimmed mean, which shrugs off single outliers and missed
//! adverts. A person moves to another zone only when that zone's best
//! scanner has been clearly stronger (by `switch_margin_db`) for
//! `switch_hold_ms`: one reading never flips a zone.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use crate::identity::PersonId;

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
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            scanner_zone: HashMap::new(),
            scanner_offset_db: HashMap::new(),
            dwell_thresholds_s: BTreeSet::new(),
            min_rssi: -95,
            switch_margin_db: 4.0,
            switch_hold_ms: 3_000,
            window_ms: 6_000,
            zone_timeout_ms: 15_000,
            visit_gap_ms: 45_000,
        }
    }
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

const READINGS_PER_SCANNER: usize = 8;
const MIN_READINGS_TO_SWITCH: usize = 3;

#[derive(Default)]
struct ScannerTrack {
    readings: VecDeque<(i64, f32)>,
}

impl ScannerTrack {
    fn push(&mut self, at_ms: i64, rssi: f32) {
        if self.readings.len() == READINGS_PER_SCANNER {
            self.readings.pop_front();
        }
        self.readings.push_back((at_ms, rssi));
    }

    fn last_ms(&self) -> i64 {
        self.readings.back().map_or(i64::MIN, |r| r.0)
    }

    /// Trimmed mean of the readings inside the window: drop the highest and
    /// lowest when there are enough to spare.
    fn smoothed(&self, now_ms: i64, window_ms: i64) -> Option<(f32, usize)> {
        let mut values: Vec<f32> = self
            .readings
            .iter()
            .filter(|(t, _)| now_ms - t <= window_ms)
            .map(|(_, r)| *r)
            .collect();
        if values.is_empty() {
            return None;
        }
        let count = values.len();
        values.sort_by(|a, b| a.total_cmp(b));
        let trimmed = if values.len() >= 4 {
            &values[1..values.len() - 1]
        } else {
            &values[..]
        };
        Some((trimmed.iter().sum::<f32>() / trimmed.len() as f32, count))
    }
}

struct PersonState {
    visit: VisitId,
    last_seen_ms: i64,
    scanners: HashMap<String, ScannerTrack>,
    zone: Option<(ZoneId, i64)>,
    /// A zone that looks better than the current one, and since when.
    candidate: Option<(ZoneId, i64)>,
    dwell_fired: BTreeSet<u32>,
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
    people: HashMap<PersonId, PersonState>,
    seeds: HashMap<PersonId, VisitSeed>,
}

impl PresenceEngine {
    pub fn new(config: PresenceConfig) -> Self {
        PresenceEngine {
            config,
            people: HashMap::new(),
            seeds: HashMap::new(),
        }
    }

    /// Replace the configuration (reload) without dropping who is present.
    pub fn set_config(&mut self, config: PresenceConfig) {
        self.config = config;
    }

    pub fn config(&self) -> &PresenceConfig {
        &self.config
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

    /// One reading of one person by one scanner.
    pub fn observe(
        &mut self,
        person: &PersonId,
        scanner: &str,
        rssi: i16,
        at_ms: i64,
        out: &mut Vec<PresenceEvent>,
    ) {
        if rssi < self.config.min_rssi {
            return;
        }
        let offset = self
            .config
            .scanner_offset_db
            .get(scanner)
            .copied()
            .unwrap_or(0.0);
        let state = match self.people.get_mut(person) {
            Some(state) => state,
            None => {
                let visit = match self.seeds.remove(person) {
                    Some(seed) if at_ms - seed.last_seen_ms <= self.config.visit_gap_ms => {
                        seed.visit
                    }
                    _ => {
                        out.push(PresenceEvent::Entered {
                            person: person.clone(),
                            visit: at_ms,
                            at_ms,
                        });
                        at_ms
                    }
                };
                self.people.entry(person.clone()).or_insert(PersonState {
                    visit,
                    last_seen_ms: at_ms,
                    scanners: HashMap::new(),
                    zone: None,
                    candidate: None,
                    dwell_fired: BTreeSet::new(),
                })
            }
        };
        // Out-of-order readings (a late UDP datagram) must not move time back.
        state.last_seen_ms = state.last_seen_ms.max(at_ms);
        state
            .scanners
            .entry(scanner.to_string())
            .or_default()
            .push(at_ms, rssi as f32 + offset);
        let now = state.last_seen_ms;
        Self::update_zone(&self.config, person, state, now, out);
    }

    /// Advance time: dwell thresholds, zone timeouts, visit ends.
    pub fn tick(&mut self, now_ms: i64, out: &mut Vec<PresenceEvent>) {
        let config = &self.config;
        let mut gone = Vec::new();
        for (person, state) in self.people.iter_mut() {
            if now_ms - state.last_seen_ms > config.visit_gap_ms {
                if let Some((zone, since)) = state.zone.take() {
                    let dwell_s = secs(state.last_seen_ms - since);
                    out.push(PresenceEvent::ZoneLeft {
                        person: person.clone(),
                        visit: state.visit,
                        zone,
                        dwell_s,
                        at_ms: now_ms,
                    });
                }
                out.push(PresenceEvent::Exited {
                    person: person.clone(),
                    visit: state.visit,
                    at_ms: now_ms,
                });
                gone.push(person.clone());
                continue;
            }
            Self::update_zone(config, person, state, now_ms, out);
        }
        for person in gone {
            self.people.remove(&person);
        }
    }

    fn update_zone(
        config: &PresenceConfig,
        person: &PersonId,
        state: &mut PersonState,
        now_ms: i64,
        out: &mut Vec<PresenceEvent>,
    ) {
        // Best smoothed reading per zone.
        let mut best: Option<(ZoneId, f32, usize)> = None;
        let mut current_strength: Option<f32> = None;
        for (scanner, track) in &state.scanners {
            let Some((level, count)) = track.smoothed(now_ms, config.window_ms) else {
                continue;
            };
            let zone = config.zone_of(scanner);
            if let Some((current, _)) = &state.zone {
                if *current == zone {
                    current_strength = Some(current_strength.map_or(level, |c: f32| c.max(level)));
                }
            }
            if best.as_ref().is_none_or(|(_, b, _)| level > *b) {
                best = Some((zone, level, count));
            }
        }
        state
            .scanners
            .retain(|_, t| now_ms - t.last_ms() <= config.zone_timeout_ms.max(config.window_ms));

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

        match &state.zone {
            None => {
                out.push(PresenceEvent::ZoneEntered {
                    person: person.clone(),
                    visit: state.visit,
                    zone: best_zone.clone(),
                    at_ms: now_ms,
                });
                state.zone = Some((best_zone, now_ms));
                state.candidate = None;
                state.dwell_fired.clear();
            }
            Some((current, _)) if *current == best_zone => state.candidate = None,
            Some((current, since)) => {
                // A zone backed by a single reading is an outlier, not a move.
                let clearly_better = best_count >= MIN_READINGS_TO_SWITCH
                    && current_strength.is_none_or(|c| best_level >= c + config.switch_margin_db);
                if !clearly_better {
                    state.candidate = None;
                } else {
                    let candidate_since = match &state.candidate {
                        Some((zone, since)) if *zone == best_zone => *since,
                        _ => {
                            state.candidate = Some((best_zone.clone(), now_ms));
                            now_ms
                        }
                    };
                    if now_ms - candidate_since >= config.switch_hold_ms {
                        let dwell_s = secs(now_ms - since);
                        out.push(PresenceEvent::ZoneLeft {
                            person: person.clone(),
                            visit: state.visit,
                            zone: current.clone(),
                            dwell_s,
                            at_ms: now_ms,
                        });
                        out.push(PresenceEvent::ZoneEntered {
                            person: person.clone(),
                            visit: state.visit,
                            zone: best_zone.clone(),
                            at_ms: now_ms,
                        });
                        state.zone = Some((best_zone, now_ms));
                        state.candidate = None;
                        state.dwell_fired.clear();
                    }
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
}

fn secs(ms: i64) -> u32 {
    (ms.max(0) / 1000).min(u32::MAX as i64) as u32
}

#[cfg(test)]
mod tests;
