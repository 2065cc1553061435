//! The radio map filter's knobs chosen on the calibration walk itself
//! (`gateway calibrate --tune`, issue #20). Pure: sightings and truth in,
//! knobs and their held-out score out.
//!
//! A walk of several sessions (each a tag address of the truth: several
//! tags, or several walks each with its own tag) is cut by session: for
//! each session a map is learned from the *others* and the session is
//! replayed through the engine with that map, once per point of a small
//! grid ([`GRID`]). A session cannot be held out when the others miss a
//! place (no map can be learned without it); it is skipped and said so.
//! Each point is scored over the held-out sessions together:
//! person-seconds in the right place (hall included) less
//! [`TuneOptions::flip_penalty_s`] seconds per wrong move (a place change
//! to a place the truth is not in within 3 s, `eval::Scores::wrong_moves`),
//! over the seconds scored. The best point wins; the shipped
//! defaults come first in the grid, so a tie keeps them.
//!
//! What it cannot do: choose on people. A walk is one tag per session,
//! the store's phones differ from it (the device bias, `bias_rate`, is
//! for them); a knob that only a crowd needs is not seen on a walk.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::eval::{EvalOptions, TruthSpan, evaluate};
use super::radiomap::{CalibrateError, RadioModel, Site, calibrate};
use super::{MapTuning, MapTuningOverrides, PresenceConfig, PresenceTuning, ZoneId};
use crate::decode::DecodeOptions;
use crate::sighting::Sighting;

/// The grid, per knob; each list starts with the shipped default.
pub struct Grid {
    pub evidence_weight: &'static [f32],
    pub switch_p: &'static [f32],
    pub hall_stay_s: &'static [f32],
    pub zone_stay_s: &'static [f32],
    pub bias_rate: &'static [f32],
}

/// 3 x 3 x 3 x 2 x 2 = 108 points: the values the twin and the flat
/// (docs/experiments/presence.md sessions 6-8) moved between.
pub const GRID: Grid = Grid {
    evidence_weight: &[0.5, 0.7, 1.0],
    switch_p: &[0.8, 0.7, 0.9],
    hall_stay_s: &[2.0, 5.0, 15.0],
    zone_stay_s: &[300.0, 60.0],
    bias_rate: &[0.1, 0.0],
};

impl Grid {
    /// Every point, the defaults first.
    pub fn points(&self) -> Vec<MapTuningOverrides> {
        let mut out = Vec::new();
        for &evidence_weight in self.evidence_weight {
            for &switch_p in self.switch_p {
                for &hall_stay_s in self.hall_stay_s {
                    for &zone_stay_s in self.zone_stay_s {
                        for &bias_rate in self.bias_rate {
                            out.push(MapTuningOverrides {
                                evidence_weight: Some(evidence_weight),
                                switch_p: Some(switch_p),
                                hall_stay_s: Some(hall_stay_s),
                                zone_stay_s: Some(zone_stay_s),
                                bias_rate: Some(bias_rate),
                                ..Default::default()
                            });
                        }
                    }
                }
            }
        }
        out
    }
}

/// How to score.
#[derive(Clone, Debug)]
pub struct TuneOptions {
    /// Seconds of right place one wrong move costs.
    pub flip_penalty_s: f64,
    pub decode: DecodeOptions,
    /// Replay threads (the grid is split between them).
    pub threads: usize,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            flip_penalty_s: DEFAULT_FLIP_PENALTY_S,
            decode: DecodeOptions::default(),
            threads: 2,
        }
    }
}

/// One wrong move costs as much as 5 s in the wrong place: at the issue's
/// flip budget (one per person-hour) a fraction of a point.
pub const DEFAULT_FLIP_PENALTY_S: f64 = 5.0;

/// A point's score over the held-out sessions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeldOut {
    pub seconds: u64,
    pub correct: u64,
    /// Place changes beyond the true ones, summed over sessions.
    pub extra_flips: u64,
    /// Place changes to a place the truth was nowhere near
    /// (`Scores::wrong_moves`): what the penalty counts. On a walk, whose
    /// tag changes place every few seconds, an engine that misses true
    /// changes hides as many spurious ones from `extra_flips`.
    pub wrong_moves: u64,
}

impl HeldOut {
    pub fn accuracy(&self) -> f64 {
        if self.seconds == 0 {
            0.0
        } else {
            self.correct as f64 / self.seconds as f64
        }
    }

    /// Extra flips per subject-hour.
    pub fn flips_per_hour(&self) -> f64 {
        if self.seconds == 0 {
            0.0
        } else {
            self.extra_flips as f64 * 3600.0 / self.seconds as f64
        }
    }

    /// What is maximised.
    pub fn objective(&self, flip_penalty_s: f64) -> f64 {
        if self.seconds == 0 {
            return 0.0;
        }
        (self.correct as f64 - flip_penalty_s * self.wrong_moves as f64) / self.seconds as f64
    }
}

/// What `--tune` chose and why.
#[derive(Clone, Debug)]
pub struct Tuned {
    /// The chosen point (the five grid knobs), for the map's `tuning`.
    pub chosen: MapTuningOverrides,
    pub chosen_score: HeldOut,
    /// The shipped defaults on the same held-out sessions.
    pub default_score: HeldOut,
    /// The sessions held out (each scored with a map of the others).
    pub held_out: Vec<String>,
    /// Sessions that could not be held out, and why.
    pub skipped: Vec<(String, String)>,
    pub points: usize,
    pub flip_penalty_s: f64,
}

impl Tuned {
    /// A few lines for people.
    pub fn summary(&self) -> String {
        let knobs: Vec<String> = self
            .chosen
            .entries()
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let line = |s: &HeldOut| {
            format!(
                "{:.1} % of {} s, {} wrong move(s), {} extra flip(s) ({:.1} per hour), score {:.1} %",
                s.accuracy() * 100.0,
                s.seconds,
                s.wrong_moves,
                s.extra_flips,
                s.flips_per_hour(),
                s.objective(self.flip_penalty_s) * 100.0
            )
        };
        let mut out = format!(
            "tuning: {} point(s) scored, each session held out of the map it is scored with: {}\n",
            self.points,
            self.held_out.join(", ")
        );
        for (session, why) in &self.skipped {
            out.push_str(&format!("tuning: session {session} not held out: {why}\n"));
        }
        out.push_str(&format!("tuning: chosen {}\n", knobs.join(", ")));
        out.push_str(&format!(
            "tuning: held out, chosen:   {}\n",
            line(&self.chosen_score)
        ));
        out.push_str(&format!(
            "tuning: held out, defaults: {}\n",
            line(&self.default_score)
        ));
        out.push_str(&format!(
            "tuning: score = (right seconds - {} s per wrong move) / seconds, hall included; a wrong move is a place change to a place the truth is not in within 3 s\n",
            self.flip_penalty_s
        ));
        out
    }
}

/// Why the knobs cannot be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TuneError {
    #[error(
        "--tune needs a walk of at least two sessions (tag addresses in the truth, or several --capture/--truth pairs each with its own tag); this one has {sessions}: {names:?}"
    )]
    TooFewSessions { sessions: usize, names: Vec<String> },
    #[error("--tune: no session can be held out (the others always miss a place): {skipped:?}")]
    NothingHeldOut { skipped: Vec<(String, String)> },
}

/// A session held out: its map (learned on the others) and its readings.
struct Fold {
    session: String,
    config: PresenceConfig,
    sightings: Vec<Sighting>,
    truth: Vec<TruthSpan>,
}

/// Choose the grid knobs by leave-one-session-out on the walk. `config`
/// is the site's (scanners, zones, offsets, and its `[presence.map]`, whose
/// knobs outside the grid stay in force while scoring).
pub fn tune(
    config: &PresenceConfig,
    sightings: &[Sighting],
    truth: &[TruthSpan],
    options: &TuneOptions,
) -> Result<Tuned, TuneError> {
    let mut by_session: BTreeMap<&str, Vec<TruthSpan>> = BTreeMap::new();
    for span in truth {
        by_session
            .entry(span.addr.as_str())
            .or_default()
            .push(span.clone());
    }
    if by_session.len() < 2 {
        return Err(TuneError::TooFewSessions {
            sessions: by_session.len(),
            names: by_session.keys().map(|s| s.to_string()).collect(),
        });
    }
    let site = Site::from_presence(config);
    let mut zone_ids: Vec<ZoneId> = config.scanner_zone.values().cloned().collect();
    zone_ids.sort();
    zone_ids.dedup();
    // The grid's knobs are what is chosen: the site's own values for them
    // would hide every point's; its other knobs stay.
    let site_rest = MapTuningOverrides {
        evidence_weight: None,
        switch_p: None,
        hall_stay_s: None,
        zone_stay_s: None,
        bias_rate: None,
        ..config.map_tuning.clone()
    };
    let mut folds = Vec::new();
    let mut skipped = Vec::new();
    for (session, spans) in &by_session {
        let others: Vec<TruthSpan> = truth
            .iter()
            .filter(|s| s.addr != *session)
            .cloned()
            .collect();
        match calibrate(&site, sightings, &others) {
            Ok(cal) => {
                let mine: Vec<Sighting> = sightings
                    .iter()
                    .filter(|s| s.addr.to_string() == *session)
                    .cloned()
                    .collect();
                folds.push(Fold {
                    session: session.to_string(),
                    config: PresenceConfig {
                        radio_map: Some(Arc::new(RadioModel::new(cal.map, &zone_ids))),
                        map_tuning: site_rest.clone(),
                        ..config.clone()
                    },
                    sightings: mine,
                    truth: spans.clone(),
                });
            }
            Err(CalibrateError::MissingPlaces { missing }) => skipped.push((
                session.to_string(),
                format!("the other sessions miss {missing:?}"),
            )),
            Err(e) => skipped.push((session.to_string(), e.to_string())),
        }
    }
    if folds.is_empty() {
        return Err(TuneError::NothingHeldOut { skipped });
    }

    let points = GRID.points();
    let threads = options.threads.clamp(1, 8);
    let chunk = points.len().div_ceil(threads);
    let scores: Vec<HeldOut> = std::thread::scope(|scope| {
        let handles: Vec<_> = points
            .chunks(chunk)
            .map(|part| {
                let folds = &folds;
                scope.spawn(move || {
                    part.iter()
                        .map(|point| score_point(folds, point, options))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            // A replay does not panic on data; if one did, the point scores nothing.
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if s.objective(options.flip_penalty_s) > scores[best].objective(options.flip_penalty_s) {
            best = i;
        }
    }
    let held_out: Vec<String> = folds.iter().map(|f| f.session.clone()).collect();
    Ok(Tuned {
        chosen: points[best].clone(),
        chosen_score: scores[best].clone(),
        default_score: scores.first().cloned().unwrap_or_default(),
        held_out,
        skipped,
        points: points.len(),
        flip_penalty_s: options.flip_penalty_s,
    })
}

fn score_point(folds: &[Fold], point: &MapTuningOverrides, options: &TuneOptions) -> HeldOut {
    let tuning = PresenceTuning {
        map: point.apply(&MapTuning::default()),
        ..PresenceTuning::default()
    };
    let eval = EvalOptions {
        decode: options.decode,
        tuning,
        ..EvalOptions::default()
    };
    let mut total = HeldOut::default();
    for fold in folds {
        let report = evaluate(&fold.config, &fold.sightings, &fold.truth, &eval);
        let e = &report.engine;
        total.seconds += e.subject_seconds;
        total.correct += (e.accuracy * e.subject_seconds as f64).round() as u64;
        total.extra_flips += e.flips.saturating_sub(e.true_flips);
        total.wrong_moves += e.wrong_moves;
    }
    total
}

/// The sessions of a walk: its truth's addresses.
pub fn sessions(truth: &[TruthSpan]) -> BTreeSet<&str> {
    truth.iter().map(|s| s.addr.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_starts_with_the_shipped_defaults_and_stays_in_range() {
        let points = GRID.points();
        assert_eq!(points.len(), 108);
        let first = points[0].apply(&MapTuning::default());
        assert_eq!(first, MapTuning::default());
        assert!(points.iter().all(|p| p.problems().is_empty()));
    }

    #[test]
    fn the_objective_takes_the_flip_penalty_off_the_right_seconds() {
        let s = HeldOut {
            seconds: 100,
            correct: 90,
            extra_flips: 3,
            wrong_moves: 2,
        };
        assert!((s.accuracy() - 0.9).abs() < 1e-9);
        assert!((s.objective(5.0) - 0.8).abs() < 1e-9);
        assert!((s.flips_per_hour() - 108.0).abs() < 1e-9);
    }

    #[test]
    fn one_session_is_refused() {
        let truth = vec![TruthSpan {
            addr: "aa:bb:cc:dd:ee:ff".into(),
            from_ms: 0,
            to_ms: 1_000,
            zone: "a".into(),
        }];
        let config = super::super::eval::presence_config_from_zones([("s-a", "a")]);
        let err = tune(&config, &[], &truth, &TuneOptions::default()).unwrap_err();
        assert!(matches!(err, TuneError::TooFewSessions { sessions: 1, .. }));
        assert!(err.to_string().contains("at least two sessions"), "{err}");
    }
}
