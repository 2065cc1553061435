//! Hard per-person caps and quiet hours. Everything here is conservative
//! under clock steps: a record that appears to lie in the future still
//! counts against today, this week and the minimum gap.

use chrono::{Datelike, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::{NudgeKind, SkipReason};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    pub per_visit: u32,
    pub per_day: u32,
    pub per_week: u32,
    pub min_gap_s: u32,
    pub per_kind_per_day: Option<u32>,
    /// How long a rule stays silent for a person after it fired.
    pub rule_cooldown_s: u32,
    /// Store-wide: at most this many nudges in any 60 s.
    pub store_per_minute: Option<u32>,
}

#[cfg(test)]
impl Caps {
    /// Store caps so wide that a test's other caps (the chain's) are the
    /// only ones that can hold.
    pub(crate) fn wide() -> Caps {
        Caps {
            per_visit: 1000,
            per_day: 1000,
            per_week: 1000,
            min_gap_s: 0,
            per_kind_per_day: None,
            rule_cooldown_s: 0,
            store_per_minute: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl QuietHours {
    /// Whether `at_ms` falls in quiet hours, in the store's local time.
    pub fn contains(&self, tz: &Tz, at_ms: i64) -> bool {
        let Some(local) = Utc
            .timestamp_millis_opt(at_ms)
            .single()
            .map(|t| t.with_timezone(tz).time())
        else {
            return true;
        };
        if self.start <= self.end {
            self.start <= local && local < self.end
        } else {
            local >= self.start || local < self.end
        }
    }
}

/// One nudge already reserved for a person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentNudge {
    pub at_ms: i64,
    pub kind: NudgeKind,
    pub rule: String,
    pub visit: i64,
}

/// What caps need to know about a person: the nudges of the last eight days.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub sent: Vec<SentNudge>,
    /// Visits started so far (for "thank you on the n-th visit").
    #[serde(default)]
    pub visits: u32,
}

/// Longest window any cap looks back over (a calendar week plus a day of
/// slack for time-zone offsets).
const KEEP_MS: i64 = 8 * 24 * 3600 * 1000;

impl Ledger {
    /// Record a reservation and forget what no cap can see any more.
    pub fn record(&mut self, nudge: SentNudge) {
        let now = nudge.at_ms;
        self.sent.push(nudge);
        self.prune(now);
    }

    /// Drop entries older than every cap window. Future-dated entries (the
    /// clock stepped back) are kept: they still count.
    pub fn prune(&mut self, now_ms: i64) {
        self.sent.retain(|s| now_ms - s.at_ms <= KEEP_MS);
    }

    /// Entries dated more than [`FUTURE_TOLERANCE_MS`] ahead of `now_ms`
    /// cannot come from a clock that merely stepped back (a forged
    /// sighting moved an old gateway's clock, or the box's clock was far
    /// off): they are re-dated to `now_ms`, so that each counts once, as
    /// sent now, and then ages, instead of filling today and this week
    /// until that date. Smaller steps back keep their dates (conservative).
    /// Returns whether anything changed (the ledger must then be written).
    pub fn clamp_future(&mut self, now_ms: i64) -> bool {
        let mut changed = false;
        for sent in &mut self.sent {
            if sent.at_ms > now_ms.saturating_add(FUTURE_TOLERANCE_MS) {
                sent.at_ms = now_ms;
                changed = true;
            }
        }
        changed
    }
}

/// How far ahead of the decision clock a recorded send may be dated and
/// still be taken as a clock step back (see [`Ledger::clamp_future`]).
pub const FUTURE_TOLERANCE_MS: i64 = 3_600_000;

/// Store-wide send times of the last minute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRateLedger {
    pub sent_ms: Vec<i64>,
}

impl StoreRateLedger {
    pub fn record(&mut self, at_ms: i64) {
        self.sent_ms
            .retain(|t| (at_ms - t).abs() < 60_000 || *t > at_ms);
        self.sent_ms.push(at_ms);
    }
}

fn local_date(tz: &Tz, at_ms: i64) -> NaiveDate {
    Utc.timestamp_millis_opt(at_ms)
        .single()
        .map(|t| t.with_timezone(tz).date_naive())
        .unwrap_or(NaiveDate::MIN)
}

fn week_start(date: NaiveDate) -> NaiveDate {
    date - chrono::Days::new(date.weekday().num_days_from_monday() as u64)
}

/// Would one more nudge of `kind` from `rule` during `visit` at `now_ms`
/// break any cap? Returns the first cap it would break.
#[allow(clippy::too_many_arguments)]
pub fn check_caps(
    ledger: &Ledger,
    store_rate: &StoreRateLedger,
    caps: &Caps,
    quiet: Option<&QuietHours>,
    tz: &Tz,
    kind: NudgeKind,
    rule: &str,
    visit: i64,
    now_ms: i64,
) -> Result<(), SkipReason> {
    if quiet.is_some_and(|q| q.contains(tz, now_ms)) {
        return Err(SkipReason::QuietHours);
    }
    let today = local_date(tz, now_ms);
    let this_week = week_start(today);
    let mut in_visit = 0u32;
    let mut in_day = 0u32;
    let mut in_week = 0u32;
    let mut kind_in_day = 0u32;
    for sent in &ledger.sent {
        let day = local_date(tz, sent.at_ms);
        in_visit += u32::from(sent.visit == visit);
        in_day += u32::from(day >= today);
        in_week += u32::from(week_start(day) >= this_week);
        kind_in_day += u32::from(day >= today && sent.kind == kind);
        if (now_ms - sent.at_ms).abs() < caps.min_gap_s as i64 * 1000 {
            return Err(SkipReason::MinGap {
                gap_s: caps.min_gap_s,
            });
        }
        if sent.rule == rule && (now_ms - sent.at_ms).abs() < caps.rule_cooldown_s as i64 * 1000 {
            return Err(SkipReason::RuleCooldown {
                cooldown_s: caps.rule_cooldown_s,
            });
        }
    }
    if in_visit >= caps.per_visit {
        return Err(SkipReason::PerVisit {
            limit: caps.per_visit,
        });
    }
    if in_day >= caps.per_day {
        return Err(SkipReason::PerDay {
            limit: caps.per_day,
        });
    }
    if in_week >= caps.per_week {
        return Err(SkipReason::PerWeek {
            limit: caps.per_week,
        });
    }
    if let Some(limit) = caps.per_kind_per_day {
        if kind_in_day >= limit {
            return Err(SkipReason::PerKindPerDay { limit });
        }
    }
    if let Some(per_minute) = caps.store_per_minute {
        let recent = store_rate
            .sent_ms
            .iter()
            .filter(|t| (now_ms - **t).abs() < 60_000 || **t > now_ms)
            .count();
        if recent >= per_minute as usize {
            return Err(SkipReason::StoreRate { per_minute });
        }
    }
    Ok(())
}

/// `[caps.chain]`: caps that hold for a person across every store of the
/// chain, on top of (never instead of) the store's own [`Caps`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainCaps {
    pub per_day: u32,
    pub per_week: u32,
    pub min_gap_s: u32,
    pub day: ChainDay,
    /// The chain's time zone: days and weeks with `day = "chain"`, and
    /// with `day = "home"` for a person whose record names none.
    pub timezone: Tz,
}

/// Whose calendar a chain day (and week) follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainDay {
    /// The chain's time zone, the same for every store and person.
    Chain,
    /// The person's own time zone when their record has one, else the
    /// chain's: a day is the customer's day wherever they shop.
    Home,
}

/// One nudge another store of the chain reserved for a person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainEntry {
    pub at_ms: i64,
    pub nudge_id: String,
    pub kind: NudgeKind,
    pub rule: String,
}

/// The nudges other stores reserved for one person (keyed by the chain
/// person hash in storage), the last eight days of them. The store's own
/// sends are in the person's [`Ledger`]; together they are what
/// [`check_chain_caps`] counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLedger {
    pub entries: Vec<ChainEntry>,
}

impl ChainLedger {
    /// Fold another store's entry in, once per nudge id. An entry dated
    /// more than [`FUTURE_TOLERANCE_MS`] ahead of `now_ms` (a store with
    /// a clock far ahead) is re-dated to `now_ms`, as the store's own
    /// ledger does, so that it counts once and then ages. Entries no cap
    /// can see any more are dropped, the new one included (a late entry
    /// still counts while its week lasts). Returns whether it was new.
    pub fn fold(&mut self, mut entry: ChainEntry, now_ms: i64) -> bool {
        if self.entries.iter().any(|e| e.nudge_id == entry.nudge_id) {
            return false;
        }
        if entry.at_ms > now_ms.saturating_add(FUTURE_TOLERANCE_MS) {
            entry.at_ms = now_ms;
        }
        self.entries.push(entry);
        self.prune(now_ms);
        true
    }

    /// Drop entries older than every cap window (future-dated ones stay).
    pub fn prune(&mut self, now_ms: i64) {
        self.entries.retain(|e| now_ms - e.at_ms <= KEEP_MS);
    }
}

/// How long anything of the chain is kept: the longest window a chain cap
/// looks back over, as for the store's own [`Ledger`].
pub const CHAIN_KEEP_MS: i64 = KEEP_MS;

/// Would one more nudge at `now_ms` break a chain cap? Counts the store's
/// own sends (`own`) and other stores' folded entries (`others`) alike,
/// in the calendar [`ChainCaps::day`] names (`home`: the person's own
/// time zone, if their record has one). Conservative like [`check_caps`]:
/// an entry that looks future-dated counts against today and this week.
/// Checked in the order per day, per week, minimum gap.
pub fn check_chain_caps(
    own: &Ledger,
    others: &ChainLedger,
    caps: &ChainCaps,
    home: Option<&Tz>,
    now_ms: i64,
) -> Result<(), SkipReason> {
    let tz = match (caps.day, home) {
        (ChainDay::Home, Some(home)) => home,
        _ => &caps.timezone,
    };
    let today = local_date(tz, now_ms);
    let this_week = week_start(today);
    let times = own
        .sent
        .iter()
        .map(|s| s.at_ms)
        .chain(others.entries.iter().map(|e| e.at_ms));
    let (mut in_day, mut in_week, mut too_close) = (0u32, 0u32, false);
    for at_ms in times {
        let day = local_date(tz, at_ms);
        in_day += u32::from(day >= today);
        in_week += u32::from(week_start(day) >= this_week);
        too_close |= (now_ms - at_ms).abs() < caps.min_gap_s as i64 * 1000;
    }
    if in_day >= caps.per_day {
        return Err(SkipReason::ChainPerDay {
            limit: caps.per_day,
        });
    }
    if in_week >= caps.per_week {
        return Err(SkipReason::ChainPerWeek {
            limit: caps.per_week,
        });
    }
    if too_close {
        return Err(SkipReason::ChainMinGap {
            gap_s: caps.min_gap_s,
        });
    }
    Ok(())
}
