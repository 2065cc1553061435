//! Per-recipient token buckets for the app topics (consent, check-ins,
//! feedback): one phone, or someone posting on its topics, cannot take the
//! pipeline's time from everybody else.
//!
//! The table is bounded. A bucket that has refilled to its burst is the
//! same as no bucket, so such idle ones are dropped whenever the table is
//! full. If it is still full (more busy recipients than
//! `max_recipients`), recipients without a bucket share one overflow
//! bucket: someone rotating through made-up recipients gets one recipient's
//! rate in total, and the recipients already tracked keep their own.
//! Buckets are keyed by a hash of (kind, recipient) under a per-process
//! random key, so an entry has a fixed size whatever the topic, and
//! nobody can aim collisions at a given recipient (a collision would only
//! make two recipients share a bucket).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

/// How fast each recipient may send on each app topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Messages per minute, sustained (at least 1).
    pub per_minute: u32,
    /// Messages at once after a quiet spell (at least 1).
    pub burst: u32,
    /// Recipients tracked at once (at least 1).
    pub max_recipients: usize,
}

impl Default for RateLimit {
    /// As `config/default.toml`.
    fn default() -> Self {
        RateLimit {
            per_minute: 60,
            burst: 20,
            max_recipients: 10_000,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl Bucket {
    fn full(limit: &RateLimit, now_ms: i64) -> Bucket {
        Bucket {
            tokens: f64::from(limit.burst),
            at_ms: now_ms,
        }
    }

    /// Tokens at `now_ms`. A clock step back refills nothing (and is not
    /// an error: the caller's clock is monotonic, tests' need not be).
    fn refilled(&self, limit: &RateLimit, now_ms: i64) -> f64 {
        let elapsed_ms = now_ms.saturating_sub(self.at_ms).max(0) as f64;
        (self.tokens + elapsed_ms * f64::from(limit.per_minute) / 60_000.0)
            .min(f64::from(limit.burst))
    }

    fn take(&mut self, limit: &RateLimit, now_ms: i64) -> bool {
        self.tokens = self.refilled(limit, now_ms);
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn idle(&self, limit: &RateLimit, now_ms: i64) -> bool {
        self.refilled(limit, now_ms) >= f64::from(limit.burst)
    }
}

/// Idle buckets are looked for at most this often when the table is full,
/// so a full table of busy recipients does not cost a scan per message.
const SWEEP_EVERY_MS: i64 = 1_000;

pub struct RecipientLimiter {
    limit: RateLimit,
    keys: RandomState,
    buckets: HashMap<u64, Bucket>,
    overflow: Bucket,
    last_sweep_ms: i64,
    /// Where the wall-clock milliseconds of [`Self::allow`] count from.
    epoch: std::time::Instant,
}

impl RecipientLimiter {
    pub fn new(limit: RateLimit) -> RecipientLimiter {
        RecipientLimiter {
            limit,
            keys: RandomState::new(),
            buckets: HashMap::new(),
            overflow: Bucket::full(&limit, 0),
            last_sweep_ms: i64::MIN,
            epoch: std::time::Instant::now(),
        }
    }

    /// A reloaded configuration: the buckets stay (a lower burst caps them
    /// at their next use), the table shrinks at its next sweep.
    pub fn set_limit(&mut self, limit: RateLimit) {
        self.limit = limit;
    }

    /// Whether a message of `kind` for `recipient` may be handled now.
    pub fn allow(&mut self, kind: &str, recipient: &str) -> bool {
        let now_ms = i64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.allow_at(kind, recipient, now_ms)
    }

    /// [`Self::allow`] at a given time, in milliseconds of a monotonic clock.
    pub fn allow_at(&mut self, kind: &str, recipient: &str, now_ms: i64) -> bool {
        let key = self.keys.hash_one((kind, recipient));
        let limit = self.limit;
        if let Some(bucket) = self.buckets.get_mut(&key) {
            return bucket.take(&limit, now_ms);
        }
        if self.buckets.len() >= limit.max_recipients {
            self.sweep(now_ms);
        }
        if self.buckets.len() >= limit.max_recipients {
            return self.overflow.take(&limit, now_ms);
        }
        let mut bucket = Bucket::full(&limit, now_ms);
        let allowed = bucket.take(&limit, now_ms);
        self.buckets.insert(key, bucket);
        allowed
    }

    fn sweep(&mut self, now_ms: i64) {
        if now_ms.saturating_sub(self.last_sweep_ms) < SWEEP_EVERY_MS {
            return;
        }
        self.last_sweep_ms = now_ms;
        let limit = self.limit;
        self.buckets.retain(|_, b| !b.idle(&limit, now_ms));
        // A table that once held many recipients gives the memory back.
        if self.buckets.capacity() > 2 * limit.max_recipients.max(self.buckets.len()) {
            self.buckets.shrink_to(limit.max_recipients);
        }
    }

    /// Recipients (and kinds) with a bucket now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// At most `max` events per wall-clock second, for the whole gateway: the
/// error reports on `gateway/errors`. Each one is a QoS 1 publish; a flood
/// of junk on many topics made one per message, and the gateway's acks to
/// the broker queued behind them (the broker then held the unacked
/// messages, the gateway a pending ack for each).
#[derive(Clone, Copy, Debug)]
pub struct PerSecond {
    max: u32,
    second: i64,
    used: u32,
}

impl PerSecond {
    pub fn new(max: u32) -> PerSecond {
        PerSecond {
            max,
            second: i64::MIN,
            used: 0,
        }
    }

    /// Whether one more event fits in the second `now_s`.
    pub fn allow_at(&mut self, now_s: i64) -> bool {
        if now_s != self.second {
            self.second = now_s;
            self.used = 0;
        }
        if self.used < self.max {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_second_allows_max_in_each_second() {
        let mut p = PerSecond::new(3);
        assert_eq!((0..10).filter(|_| p.allow_at(5)).count(), 3);
        assert_eq!((0..10).filter(|_| p.allow_at(6)).count(), 3);
        // A step back is a new second too: never more than max in a row.
        assert_eq!((0..10).filter(|_| p.allow_at(5)).count(), 3);
    }

    fn limiter(per_minute: u32, burst: u32, max_recipients: usize) -> RecipientLimiter {
        RecipientLimiter::new(RateLimit {
            per_minute,
            burst,
            max_recipients,
        })
    }

    fn allowed(l: &mut RecipientLimiter, kind: &str, who: &str, n: usize, now_ms: i64) -> usize {
        (0..n).filter(|_| l.allow_at(kind, who, now_ms)).count()
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let mut l = limiter(60, 5, 100);
        assert_eq!(allowed(&mut l, "feedback", "r-1", 100, 0), 5);
        // One token a second.
        assert_eq!(allowed(&mut l, "feedback", "r-1", 10, 999), 0);
        assert_eq!(allowed(&mut l, "feedback", "r-1", 10, 1_000), 1);
        assert_eq!(allowed(&mut l, "feedback", "r-1", 10, 3_500), 2);
        // Never more than the burst after a long quiet spell.
        assert_eq!(allowed(&mut l, "feedback", "r-1", 100, 3_600_000), 5);
    }

    #[test]
    fn recipients_and_kinds_have_their_own_buckets() {
        let mut l = limiter(60, 3, 100);
        assert_eq!(allowed(&mut l, "feedback", "r-1", 50, 0), 3);
        assert_eq!(allowed(&mut l, "feedback", "r-2", 50, 0), 3);
        assert_eq!(allowed(&mut l, "consent", "r-1", 50, 0), 3);
    }

    #[test]
    fn a_clock_step_back_refills_nothing() {
        let mut l = limiter(60, 2, 100);
        assert_eq!(allowed(&mut l, "checkin", "r-1", 5, 10_000), 2);
        assert_eq!(allowed(&mut l, "checkin", "r-1", 5, 0), 0);
        assert_eq!(allowed(&mut l, "checkin", "r-1", 5, 10_999), 0);
        assert_eq!(allowed(&mut l, "checkin", "r-1", 5, 11_000), 1);
    }

    #[test]
    fn rotating_recipients_neither_grow_the_table_nor_starve_the_tracked() {
        let mut l = limiter(60, 3, 1_000);
        assert_eq!(allowed(&mut l, "feedback", "r-real", 1, 0), 1);
        for i in 0..999 {
            assert!(l.allow_at("feedback", &format!("fake-{i}"), 0));
        }
        // Full of busy buckets: newcomers share one, at one recipient's rate.
        let through = (0..10_000)
            .filter(|i| l.allow_at("feedback", &format!("more-{i}"), 500))
            .count();
        assert_eq!(through, 3);
        assert_eq!(l.tracked(), 1_000);
        // The tracked recipient still has its own tokens.
        assert_eq!(allowed(&mut l, "feedback", "r-real", 5, 500), 2);
        // Over a long rotation the table never grows past its bound, and
        // at most max_recipients newcomers a second (as the busy buckets
        // turn idle) get in.
        let mut through = 0;
        for i in 0..100_000 {
            let now = 1_000 + i64::from(i / 10);
            through += usize::from(l.allow_at("feedback", &format!("rot-{i}"), now));
            assert!(l.tracked() <= 1_000);
        }
        assert!(through <= 11 * 1_000 + 3 * 11, "{through}");
    }

    #[test]
    fn idle_buckets_make_room_for_new_recipients() {
        let mut l = limiter(60, 3, 100);
        for i in 0..100 {
            assert!(l.allow_at("consent", &format!("r-{i}"), 0));
        }
        assert_eq!(l.tracked(), 100);
        // Three seconds later every bucket is full again: all are dropped
        // and the newcomer gets a bucket of its own.
        assert_eq!(allowed(&mut l, "consent", "r-new", 10, 3_000), 3);
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn a_lower_limit_applies_at_once() {
        let mut l = limiter(60, 20, 100);
        assert_eq!(allowed(&mut l, "feedback", "r-1", 1, 0), 1);
        l.set_limit(RateLimit {
            per_minute: 60,
            burst: 2,
            max_recipients: 100,
        });
        assert_eq!(allowed(&mut l, "feedback", "r-1", 10, 0), 2);
    }
}
