//! Pacing and timing the rotating-ID table's roll (`People::roll_toward`).
//!
//! A roll by one interval is done in steps from the pipeline's own task,
//! in two ways:
//!
//! - When nothing waits for the pipeline (its queues are empty), a step
//!   runs at once, step after step: a quiet store rolls in about the
//!   roll's work (a few hundred ms at a million keys), and a sighting
//!   arriving meanwhile waits for one step at most. Driven only by the
//!   pipeline's 500-ms tick, a quiet store's roll at a million keys took
//!   245 ticks, two minutes (BENCHMARKS.md, "A quiet store's roll").
//! - When work is waiting, a step rides on that work (each sighting and
//!   tick), paced: after each step no other runs for as long as it took,
//!   so the pipeline keeps at least half of its time. Unpaced, a step on
//!   every sighting saturated it whenever a step took longer than the gap
//!   between two sightings, and decisions made during a roll at a million
//!   people waited 100-500 ms (BENCHMARKS.md, "Decisions across a roll").
//!
//! Wall time, not event time: what is paced is the pipeline's share of a
//! core.

use std::time::{Duration, Instant};

use crate::people::RollProgress;

/// A roll of the rotating-ID table by one interval, done: from its first
/// step to its last, how many steps, and the longest of them (the most a
/// sighting waited for the roll).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RollDone {
    pub took: Duration,
    pub steps: u32,
    pub longest_step: Duration,
}

/// A roll under way, timed.
#[derive(Debug, Clone, Copy)]
struct UnderWay {
    started: Instant,
    steps: u32,
    longest_step: Duration,
    /// No step before this: the last step's start plus twice its length.
    next_step: Instant,
}

impl UnderWay {
    fn done(self) -> RollDone {
        RollDone {
            took: self.started.elapsed(),
            steps: self.steps,
            longest_step: self.longest_step,
        }
    }
}

/// Whether a step would keep work waiting for the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pace {
    /// Sightings or messages wait (the step rides on one of them): paced.
    WorkWaiting,
    /// The pipeline's queues are empty: nobody waits for the step.
    Idle,
}

#[derive(Debug, Default)]
pub(super) struct RollPacer {
    under_way: Option<UnderWay>,
}

impl RollPacer {
    /// Runs `step` (one call of `People::roll_toward`) unless work is
    /// waiting and the last step's pause is not over. Returns the roll
    /// this call finished, if any, for the log and the metrics.
    pub fn advance(&mut self, pace: Pace, step: impl FnOnce() -> RollProgress) -> Option<RollDone> {
        let at = Instant::now();
        if pace == Pace::WorkWaiting && self.under_way.is_some_and(|roll| at < roll.next_step) {
            return None;
        }
        let progress = step();
        let took = at.elapsed();
        let mut finished = None;
        if progress.began {
            // One still under way was finished by the new one.
            finished = self.under_way.take().map(UnderWay::done);
            self.under_way = Some(UnderWay {
                started: at,
                steps: 0,
                longest_step: Duration::ZERO,
                next_step: at,
            });
        }
        if let Some(roll) = &mut self.under_way {
            if progress.stepped {
                roll.steps = roll.steps.saturating_add(1);
                roll.longest_step = roll.longest_step.max(took);
                roll.next_step = at + 2 * took;
            }
            if progress.centred {
                finished = self.under_way.take().map(UnderWay::done);
            }
        }
        finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(began: bool, stepped: bool, centred: bool) -> RollProgress {
        RollProgress {
            began,
            stepped,
            centred,
        }
    }

    /// A step that takes `ms` of wall time.
    fn working(ms: u64, result: RollProgress) -> impl FnOnce() -> RollProgress {
        move || {
            std::thread::sleep(Duration::from_millis(ms));
            result
        }
    }

    /// Whether `advance` ran the step (which returns `result`); it must
    /// not have finished a roll.
    fn ran_step(pacer: &mut RollPacer, pace: Pace, result: RollProgress) -> bool {
        let mut ran = false;
        let finished = pacer.advance(pace, || {
            ran = true;
            result
        });
        assert_eq!(finished, None);
        ran
    }

    #[test]
    fn after_a_step_none_runs_for_as_long_as_it_took_and_the_roll_is_timed_once() {
        let mut pacer = RollPacer::default();
        // Centred and nothing under way: every call steps, nothing timed.
        assert_eq!(
            pacer.advance(Pace::WorkWaiting, || progress(false, false, true)),
            None
        );
        assert_eq!(
            pacer.advance(Pace::WorkWaiting, || progress(false, false, true)),
            None
        );

        assert_eq!(
            pacer.advance(Pace::WorkWaiting, working(40, progress(true, true, false))),
            None
        );
        // Within the 40 ms pause: the step is not run.
        assert!(
            !ran_step(&mut pacer, Pace::WorkWaiting, progress(false, true, true)),
            "a step ran inside the pause"
        );
        std::thread::sleep(Duration::from_millis(60));
        let roll = pacer
            .advance(Pace::WorkWaiting, working(5, progress(false, true, true)))
            .expect("the roll is done");
        assert_eq!(roll.steps, 2);
        assert!(roll.longest_step >= Duration::from_millis(40));
        assert!(roll.took >= Duration::from_millis(85));
        // Done: the next call steps at once and times nothing.
        assert!(ran_step(
            &mut pacer,
            Pace::WorkWaiting,
            progress(false, false, true)
        ));
    }

    #[test]
    fn when_nothing_waits_steps_run_back_to_back() {
        let mut pacer = RollPacer::default();
        assert_eq!(
            pacer.advance(Pace::WorkWaiting, working(40, progress(true, true, false))),
            None
        );
        // Inside the 40-ms pause, but the pipeline is idle: it steps.
        assert!(
            ran_step(&mut pacer, Pace::Idle, progress(false, true, false)),
            "an idle pipeline waited out the pause"
        );
        let roll = pacer
            .advance(Pace::Idle, || progress(false, true, true))
            .expect("the roll is done");
        assert_eq!(roll.steps, 3);
        // Idle steps do not shorten the pause work waiting gets next time:
        // the roll's wall time is its work, not twice it.
        assert!(roll.took < Duration::from_millis(80), "{:?}", roll.took);
    }

    #[test]
    fn a_roll_finished_by_the_next_one_or_by_a_jump_is_reported() {
        let mut pacer = RollPacer::default();
        assert_eq!(
            pacer.advance(Pace::WorkWaiting, || progress(true, true, false)),
            None
        );
        std::thread::sleep(Duration::from_millis(5));
        // A new interval before the last roll was done: it is reported
        // with the one step it had, and the new one is timed.
        let first = pacer
            .advance(Pace::WorkWaiting, || progress(true, true, false))
            .expect("the first roll is reported");
        assert_eq!(first.steps, 1);
        std::thread::sleep(Duration::from_millis(5));
        // A jump of several intervals finishes it at once.
        let second = pacer
            .advance(Pace::WorkWaiting, || progress(false, false, true))
            .expect("the second roll is reported");
        assert_eq!(second.steps, 1);
    }
}
