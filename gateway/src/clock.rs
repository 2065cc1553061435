//! The pipeline's clock. Decisions run on the time the sightings carry, so
//! that a capture or a simulator running N× faster than real time is judged
//! as it happened; between sightings the clock advances with the wall clock,
//! so people still leave when the radio goes quiet. It never runs backwards
//! on a late datagram; a sighting stamped too far ahead is refused.

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
    /// nothing) when it is more than `max_skew_ms` ahead of the clock.
    pub fn observe(&mut self, at_ms: i64, max_skew_ms: i64) -> bool {
        let now = self.now_ms();
        if at_ms > now.saturating_add(max_skew_ms) {
            return false;
        }
        if at_ms > now {
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
        let mut clock = EventClock::starting_at(1_000_000);
        assert!(clock.observe(1_060_000, 600_000));
        assert!(clock.now_ms() >= 1_060_000);
        assert!(clock.observe(1_000_000, 600_000));
        assert!(
            clock.now_ms() >= 1_060_000,
            "a late sighting does not move time back"
        );
        assert!(!clock.observe(9_000_000_000, 600_000));
        assert!(clock.now_ms() < 2_000_000);
    }
}
