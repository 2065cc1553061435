//! The pipeline's clock. Decisions run on the time the sightings carry, so
//! that a capture or a simulator running N× faster than real time is judged
//! as it happened; between sightings the clock advances with the wall clock,
//! so people still leave when the radio goes quiet. It never runs backwards
//! on a late datagram. A sighting is believed only up to `max_skew` ahead
//! of the gateway's own *wall* clock, never of the time it last saw: a
//! device on the store's network cannot walk the clock forward datagram by
//! datagram (which would make every real phone's rotating id look stale
//! and close every open visit). A simulation that runs faster than real
//! time says so with a large `max_future_skew_ms`.

use std::time::Instant;

#[derive(Clone, Debug)]
pub struct EventClock {
    latest_ms: i64,
    at: Instant,
}

impl EventClock {
    pub fn starting_at(now_ms: i64) -> Self {
        EventClock {
            latest_ms: now_ms,
            at: Instant::now(),
        }
    }

    /// Current time in Unix ms.
    pub fn now_ms(&self) -> i64 {
        self.latest_ms + self.at.elapsed().as_millis() as i64
    }

    /// Take a sighting's time into account. Returns false (and changes
    /// nothing) when it is more than `max_skew_ms` ahead of `wall_now_ms`.
    pub fn observe(&mut self, at_ms: i64, wall_now_ms: i64, max_skew_ms: i64) -> bool {
        if at_ms > wall_now_ms.saturating_add(max_skew_ms) {
            return false;
        }
        if at_ms > self.now_ms() {
            self.latest_ms = at_ms;
            self.at = Instant::now();
        }
        true
    }
}

pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_sightings_forward_never_back_and_refuses_far_future() {
        let wall = 1_000_000;
        let mut clock = EventClock::starting_at(wall);
        assert!(clock.observe(1_060_000, wall, 600_000));
        assert!(clock.now_ms() >= 1_060_000);
        assert!(clock.observe(1_000_000, wall, 600_000));
        assert!(
            clock.now_ms() >= 1_060_000,
            "a late sighting does not move time back"
        );
        assert!(!clock.observe(9_000_000_000, wall, 600_000));
        assert!(clock.now_ms() < 2_000_000);
    }

    #[test]
    fn forged_sightings_cannot_walk_the_clock_past_the_wall_clock_bound() {
        let wall = 1_000_000;
        let skew = 5_000;
        let mut clock = EventClock::starting_at(wall);
        // Each datagram just inside the bound of the clock it moved: under
        // the old rule (skew from the event clock) three of these moved it
        // three skews ahead.
        for _ in 0..3 {
            let next = clock.now_ms() + skew;
            clock.observe(next, wall, skew);
        }
        assert!(clock.now_ms() <= wall + skew + 100, "{}", clock.now_ms());
    }
}
