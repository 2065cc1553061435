//! A motion-aware emission for the radio map's filter (issue #20, session
//! 10 of docs/experiments/presence.md): what tells a walker from a stander
//! at the same spot is the trend of the levels, which per-place level
//! histograms do not see. Per person and scanner the engine keeps a fast
//! and a slow exponential average of the levels; their difference is the
//! level's trend over the last seconds. A statistic of the trends of the
//! loudest scanners (the motion feature) has one distribution in the hall
//! (people walking between zones) and another in the zones (people mostly
//! standing), both learned from the calibration walk labelled by its
//! truth. Each tick, its likelihood under the hall or under a zone is
//! multiplied into the filter with its own weight. Off unless a model is
//! put on the radio map ([`super::radiomap::RadioModel::with_motion`]).

use std::collections::{BTreeMap, HashMap};

use super::eval::{HALL, TruthSpan};
use crate::sighting::Sighting;

/// Histogram bins of the feature: 0.5 dB from -20 to +20 dB.
pub const BINS: usize = 80;
const BIN_DB: f32 = 0.5;
const LOW_DB: f32 = -20.0;

/// How the feature is made, and how much it weighs.
#[derive(Clone, Debug, PartialEq)]
pub struct MotionParams {
    /// Weight of the feature's log-likelihood at each tick (0: off).
    pub weight: f32,
    /// Time constants of the fast and the slow average, seconds.
    pub fast_s: f32,
    pub slow_s: f32,
    /// The loudest this many scanners (by slow average) make the feature.
    pub top: usize,
    /// 0: root mean square of their trends; 1: the loudest one's trend,
    /// signed; 2: the loudest one's trend less the second's (a walk from
    /// one scanner to another; a body on one link moves only one).
    pub kind: u8,
    /// Only scanners heard this recently, at least 3 times, count.
    pub recent_ms: i64,
    /// 0: the two distributions are learned for the hall and for the
    /// zones, as the walk's truth labels them. Above 0: for moving and
    /// for standing, the walk's tag taken as moving within this long of a
    /// change of place in its truth (it walks across every boundary), and
    /// the hall's and the zones' distributions are mixtures of the two
    /// with the shares below.
    pub edge_ms: i64,
    /// Share of moving in the hall, and in the zones (with `edge_ms`).
    pub hall_moving: f32,
    pub zone_moving: f32,
    /// A two-state (moving / standing) factor: the probability that the
    /// person is moving, from the feature's likelihood under the hall's
    /// distribution against the zones' with this prior, sets how fast
    /// probability leaves a zone (`moving_zone_stay_s` when moving, the
    /// map's zone stay when standing; 0: unchanged) and the switch
    /// threshold and hold (`moving_switch_p`, `moving_hold_ms` when moving;
    /// below 0: unchanged), mixed by that probability.
    pub prior: f32,
    pub moving_zone_stay_s: f32,
    pub moving_switch_p: f32,
    pub moving_hold_ms: i64,
    /// The leave rule of session 7, gated by motion: a zone is left for
    /// the hall when its own probability is under `leave_p` (0: off) for
    /// `leave_hold_ms`, while P(moving) is at least `leave_moving`.
    pub leave_p: f32,
    pub leave_hold_ms: i64,
    pub leave_moving: f32,
}

impl Default for MotionParams {
    fn default() -> Self {
        MotionParams {
            weight: 0.0,
            fast_s: 1.0,
            slow_s: 4.0,
            top: 2,
            kind: 0,
            recent_ms: 2_000,
            edge_ms: 0,
            hall_moving: 0.8,
            zone_moving: 0.2,
            prior: 0.2,
            moving_zone_stay_s: 0.0,
            moving_switch_p: -1.0,
            moving_hold_ms: -1,
            leave_p: 0.0,
            leave_hold_ms: 1_000,
            leave_moving: 0.5,
        }
    }
}

impl MotionParams {
    /// Fold one reading into a scanner's averages, `dt_s` after its last.
    #[inline]
    pub fn fold(&self, fast: &mut f32, slow: &mut f32, reading: f32, dt_s: f32) {
        let a_fast = 1.0 - (-dt_s / self.fast_s.max(0.05)).exp();
        let a_slow = 1.0 - (-dt_s / self.slow_s.max(0.05)).exp();
        *fast += a_fast * (reading - *fast);
        *slow += a_slow * (reading - *slow);
    }

    /// The feature from each scanner's (fast, slow, last reading, count),
    /// `None` when no scanner qualifies.
    pub fn feature(
        &self,
        tracks: impl Iterator<Item = (f32, f32, i64, u32)>,
        now_ms: i64,
    ) -> Option<f32> {
        // The loudest few (slow level, trend), loudest first.
        let mut top = [(f32::NEG_INFINITY, 0f32); 4];
        let k = self.top.clamp(1, 4);
        let mut n = 0;
        for (fast, slow, last_ms, count) in tracks {
            if count < 3 || now_ms - last_ms > self.recent_ms {
                continue;
            }
            let item = (slow, fast - slow);
            let mut i = if n < k {
                n += 1;
                n - 1
            } else if slow > top[k - 1].0 {
                k - 1
            } else {
                continue;
            };
            while i > 0 && top[i - 1].0 < slow {
                top[i] = top[i - 1];
                i -= 1;
            }
            top[i] = item;
        }
        if n == 0 {
            return None;
        }
        Some(match self.kind {
            1 => top[0].1,
            2 if n >= 2 => top[0].1 - top[1].1,
            2 => top[0].1,
            _ => (top[..n].iter().map(|t| t.1 * t.1).sum::<f32>() / n as f32).sqrt(),
        })
    }
}

fn bin(v: f32) -> usize {
    (((v - LOW_DB) / BIN_DB).floor().max(0.0) as usize).min(BINS - 1)
}

/// The learned distributions of the feature in the hall and in the zones.
#[derive(Clone, Debug, PartialEq)]
pub struct MotionModel {
    pub params: MotionParams,
    log_hall: Vec<f32>,
    log_zone: Vec<f32>,
    /// Ticks of the walk each was learned from.
    pub samples: (u64, u64),
}

impl MotionModel {
    /// log P(feature | the hall) or log P(feature | a zone).
    #[inline]
    pub fn log_p(&self, hall: bool, v: f32) -> f32 {
        if hall {
            self.log_hall[bin(v)]
        } else {
            self.log_zone[bin(v)]
        }
    }

    /// P(moving | feature), with the hall's distribution as moving's and
    /// the zones' as standing's.
    pub fn p_moving(&self, v: f32) -> f32 {
        let prior = self.params.prior.clamp(1e-3, 1.0 - 1e-3);
        let logit = self.log_p(true, v) - self.log_p(false, v) + (prior / (1.0 - prior)).ln();
        1.0 / (1.0 + (-logit).exp())
    }

    /// The feature's mean in the hall and in the zones (for people), and
    /// the share above 2 / 4 dB.
    pub fn summary(&self) -> String {
        let above = |l: &[f32], db: f32| -> f32 { l[bin(db)..].iter().map(|lp| lp.exp()).sum() };
        let mean = |l: &[f32]| -> f32 {
            l.iter()
                .enumerate()
                .map(|(i, lp)| lp.exp() * (LOW_DB + (i as f32 + 0.5) * BIN_DB))
                .sum()
        };
        format!(
            "motion: hall (or moving) mean {:.2} dB, >2 dB {:.2}, >4 dB {:.2} ({} ticks); zones (or standing) {:.2} dB, {:.2}, {:.2} ({} ticks)",
            mean(&self.log_hall),
            above(&self.log_hall, 2.0),
            above(&self.log_hall, 4.0),
            self.samples.0,
            mean(&self.log_zone),
            above(&self.log_zone, 2.0),
            above(&self.log_zone, 4.0),
            self.samples.1
        )
    }

    /// Learn from a walk: the truth's addresses' readings replayed through
    /// the averages, the feature taken every `tick_ms` and counted for the
    /// hall or the zones by the truth. `None` if either has no sample.
    pub fn learn(
        params: MotionParams,
        sightings: &[Sighting],
        truth: &[TruthSpan],
        offsets: &HashMap<String, f32>,
        tick_ms: i64,
    ) -> Option<MotionModel> {
        let mut spans: BTreeMap<&str, Vec<(i64, i64, bool)>> = BTreeMap::new();
        for t in truth {
            spans
                .entry(t.addr.as_str())
                .or_default()
                .push((t.from_ms, t.to_ms, t.zone == HALL));
        }
        for s in spans.values_mut() {
            s.sort_unstable_by_key(|s| s.0);
        }
        // The class of a tick: hall / zone, or (with `edge_ms`) moving /
        // standing: near a change of place (the start of a span that
        // follows another, or the end of one that another follows).
        let edge = params.edge_ms;
        let hall_at = |addr: &str, t: i64| -> Option<bool> {
            let s = spans.get(addr)?;
            let i = s.partition_point(|s| s.0 <= t);
            let j = i.checked_sub(1)?;
            let (from, to, hall) = *s.get(j)?;
            if !(from <= t && t < to) {
                return None;
            }
            if edge <= 0 {
                return Some(hall);
            }
            let after_change = j > 0 && s[j - 1].1 >= from - 1_000 && t - from < edge;
            let before_change = s.get(j + 1).is_some_and(|n| n.0 <= to + 1_000) && to - t <= edge;
            Some(after_change || before_change)
        };
        let mut order: Vec<&Sighting> = sightings.iter().collect();
        order.sort_by_key(|s| s.at_ms);
        // Per address: per scanner (fast, slow, last, count), next tick.
        type Tracks = HashMap<String, (f32, f32, i64, u32)>;
        let mut people: BTreeMap<String, (Tracks, i64)> = BTreeMap::new();
        let mut hall = vec![0f64; BINS];
        let mut zone = vec![0f64; BINS];
        let mut count = |addr: &str, tracks: &Tracks, at: i64| {
            let Some(is_hall) = hall_at(addr, at) else {
                return;
            };
            if let Some(v) = params.feature(tracks.values().copied(), at) {
                if is_hall {
                    hall[bin(v)] += 1.0;
                } else {
                    zone[bin(v)] += 1.0;
                }
            }
        };
        for s in order {
            let addr = s.addr.to_string();
            if !spans.contains_key(addr.as_str()) {
                continue;
            }
            let (tracks, next_tick) = people
                .entry(addr.clone())
                .or_insert_with(|| (HashMap::new(), (s.at_ms / tick_ms + 1) * tick_ms));
            while *next_tick <= s.at_ms {
                count(&addr, tracks, *next_tick);
                *next_tick += tick_ms;
            }
            let reading = f32::from(s.rssi) + offsets.get(&s.scanner).copied().unwrap_or(0.0);
            match tracks.get_mut(&s.scanner) {
                Some((fast, slow, last, n)) => {
                    let dt_s = (s.at_ms - *last).max(0) as f32 / 1000.0;
                    params.fold(fast, slow, reading, dt_s);
                    *last = (*last).max(s.at_ms);
                    *n = n.saturating_add(1);
                }
                None => {
                    tracks.insert(s.scanner.clone(), (reading, reading, s.at_ms, 1));
                }
            }
        }
        Self::from_counts(params, &hall, &zone)
    }

    /// A model from counts of the feature per bin ([`BINS`] of 0.5 dB
    /// from -20 dB) in the hall (or moving) and in the zones (or standing).
    pub fn from_counts(params: MotionParams, hall: &[f64], zone: &[f64]) -> Option<MotionModel> {
        let edge = params.edge_ms;
        let (nh, nz) = (hall.iter().sum::<f64>(), zone.iter().sum::<f64>());
        if nh == 0.0 || nz == 0.0 || hall.len() != BINS || zone.len() != BINS {
            return None;
        }
        let (log_hall, log_zone) = if edge <= 0 {
            (smooth_log(hall), smooth_log(zone))
        } else {
            // `hall` counted moving, `zone` standing: mix them per place.
            let (moving, standing) = (smooth_log(hall), smooth_log(zone));
            let mix = |share: f32| -> Vec<f32> {
                let share = share.clamp(0.0, 1.0);
                moving
                    .iter()
                    .zip(&standing)
                    .map(|(m, s)| (share * m.exp() + (1.0 - share) * s.exp()).ln())
                    .collect()
            };
            (mix(params.hall_moving), mix(params.zone_moving))
        };
        Some(MotionModel {
            params,
            log_hall,
            log_zone,
            samples: (nh as u64, nz as u64),
        })
    }
}

/// Counts to log probabilities: smoothed by a Gaussian of one bin (0.5
/// dB), with a 2 % uniform floor.
fn smooth_log(counts: &[f64]) -> Vec<f32> {
    let kernel: Vec<f64> = (-3..=3)
        .map(|d: i32| (-(f64::from(d * d)) / 2.0).exp())
        .collect();
    let mut smooth = vec![0f64; counts.len()];
    for (i, slot) in smooth.iter_mut().enumerate() {
        for (k, w) in kernel.iter().enumerate() {
            let j = i as i64 + k as i64 - 3;
            if (0..counts.len() as i64).contains(&j) {
                *slot += w * counts[j as usize];
            }
        }
    }
    let total: f64 = smooth.iter().sum();
    let n = counts.len() as f64;
    smooth
        .iter()
        .map(|c| ((0.98 * c / total + 0.02 / n) as f32).ln())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feature_is_the_trend_of_the_loudest_scanners() {
        let p = MotionParams {
            top: 2,
            ..MotionParams::default()
        };
        // (fast, slow, last, count): the loudest two trend by +3 and -4 dB,
        // a faint one by 10 dB, one heard too long ago, one heard twice.
        let tracks = [
            (-57.0, -60.0, 1_000, 5),
            (-74.0, -70.0, 1_000, 5),
            (-80.0, -90.0, 1_000, 5),
            (-40.0, -50.0, -5_000, 5),
            (-40.0, -50.0, 1_000, 2),
        ];
        let v = p.feature(tracks.iter().copied(), 1_500).unwrap();
        assert!((v - 12.5f32.sqrt()).abs() < 1e-4, "{v}");
        let kind1 = MotionParams {
            kind: 1,
            ..p.clone()
        };
        assert_eq!(kind1.feature(tracks.iter().copied(), 1_500), Some(3.0));
        let kind2 = MotionParams {
            kind: 2,
            ..p.clone()
        };
        assert_eq!(kind2.feature(tracks.iter().copied(), 1_500), Some(7.0));
        assert_eq!(p.feature(tracks[3..].iter().copied(), 1_500), None);
    }

    #[test]
    fn a_steady_walk_reads_as_moving_and_standing_as_not() {
        let p = MotionParams::default();
        // Learned: the hall's trends around 4 dB, the zones' around 0.5.
        let hump = |mean: f32| -> Vec<f64> {
            (0..BINS)
                .map(|b| {
                    f64::from((-0.5 * ((LOW_DB + b as f32 * BIN_DB - mean) / 1.0).powi(2)).exp())
                })
                .collect()
        };
        let m = MotionModel::from_counts(p.clone(), &hump(4.0), &hump(0.5)).unwrap();
        // A reading every 250 ms: standing at -65 dBm, then walking away
        // at 2.5 dB per second.
        let (mut fast, mut slow) = (-65.0f32, -65.0f32);
        for _ in 0..40 {
            p.fold(&mut fast, &mut slow, -65.0, 0.25);
        }
        let standing = p
            .feature([(fast, slow, 10_000, 40)].into_iter(), 10_000)
            .unwrap();
        assert!(m.p_moving(standing) < 0.3, "{}", m.p_moving(standing));
        for i in 1..=16 {
            p.fold(&mut fast, &mut slow, -65.0 - 2.5 * 0.25 * i as f32, 0.25);
        }
        let walking = p
            .feature([(fast, slow, 14_000, 56)].into_iter(), 14_000)
            .unwrap();
        assert!(
            m.p_moving(walking) > 0.7,
            "{walking} {}",
            m.p_moving(walking)
        );
    }
}
