//! Opening hours in the store's IANA time zone: when the store is open,
//! which local day an instant falls on, and the open stretches of a span.

use chrono::{NaiveDate, NaiveTime, TimeZone};
use chrono_tz::Tz;

use crate::spec::OpeningHours;

const DAY_MS: i64 = 86_400_000;

/// Validated opening hours, ready for time arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    tz: Tz,
    open: NaiveTime,
    close: NaiveTime,
}

impl Hours {
    /// The error names the field (`timezone`, `open`, `close`).
    pub fn new(spec: &OpeningHours) -> Result<Self, String> {
        let tz: Tz = spec
            .timezone
            .parse()
            .map_err(|_| format!("timezone: {:?} is not an IANA time zone", spec.timezone))?;
        let time = |field: &str, text: &str| {
            NaiveTime::parse_from_str(text, "%H:%M")
                .map_err(|_| format!("{field}: {text:?} is not a time like 09:00"))
        };
        let open = time("open", &spec.open)?;
        let close = time("close", &spec.close)?;
        if open >= close {
            return Err("close: must be later than open (no overnight opening)".into());
        }
        Ok(Self { tz, open, close })
    }

    /// The store's local calendar date at a Unix time.
    pub fn local_date(&self, unix_ms: i64) -> NaiveDate {
        match self.tz.timestamp_millis_opt(unix_ms).earliest() {
            Some(t) => t.date_naive(),
            None => NaiveDate::MIN,
        }
    }

    /// Unix milliseconds of a local wall-clock time on `date`. In a DST gap
    /// the time moves forward to the first instant that exists.
    fn instant(&self, date: NaiveDate, time: NaiveTime) -> i64 {
        let naive = date.and_time(time);
        for shift_min in [0, 30, 60, 90, 120] {
            let shifted = naive + chrono::Duration::minutes(shift_min);
            if let Some(t) = self.tz.from_local_datetime(&shifted).earliest() {
                return t.timestamp_millis();
            }
        }
        naive.and_utc().timestamp_millis()
    }

    /// `[open, close)` of a local date in Unix milliseconds.
    pub fn open_span(&self, date: NaiveDate) -> (i64, i64) {
        (
            self.instant(date, self.open),
            self.instant(date, self.close),
        )
    }

    pub fn is_open(&self, unix_ms: i64) -> bool {
        let (open, close) = self.open_span(self.local_date(unix_ms));
        (open..close).contains(&unix_ms)
    }

    /// `unix_ms` itself if open, else the next opening instant.
    pub fn next_open(&self, unix_ms: i64) -> i64 {
        let date = self.local_date(unix_ms);
        let (open, close) = self.open_span(date);
        if unix_ms < open {
            open
        } else if unix_ms < close {
            unix_ms
        } else {
            let next = date.succ_opt().unwrap_or(date);
            self.open_span(next).0.max(unix_ms)
        }
    }

    /// The opening instant of the local day that contains `unix_ms`.
    pub fn opening_of_day(&self, unix_ms: i64) -> i64 {
        self.open_span(self.local_date(unix_ms)).0
    }

    /// Open stretches intersected with `[from_ms, to_ms)`, in order.
    pub fn open_intervals(&self, from_ms: i64, to_ms: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        if from_ms >= to_ms {
            return out;
        }
        let mut date = self.local_date(from_ms);
        let last = self.local_date(to_ms.saturating_sub(1));
        // Bounded: a span of more than ~270 years of days is cut short.
        for _ in 0..100_000 {
            let (open, close) = self.open_span(date);
            let (a, b) = (open.max(from_ms), close.min(to_ms));
            if a < b {
                out.push((a, b));
            }
            if date >= last {
                break;
            }
            match date.succ_opt() {
                Some(next) => date = next,
                None => break,
            }
        }
        out
    }

    /// Whole local days between two instants' dates (`b - a`).
    pub fn days_between(&self, a_ms: i64, b_ms: i64) -> i64 {
        (self.local_date(b_ms) - self.local_date(a_ms)).num_days()
    }
}

/// Milliseconds in a (non-DST) day, for rough schedules.
pub const fn day_ms() -> i64 {
    DAY_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin() -> Hours {
        Hours::new(&OpeningHours::default()).expect("valid")
    }

    #[test]
    fn berlin_winter_opening_is_08_utc() {
        // 2026-11-23 09:00 CET = 08:00 UTC.
        let h = berlin();
        let date = NaiveDate::from_ymd_opt(2026, 11, 23).expect("date");
        let (open, close) = h.open_span(date);
        // 2026-11-22T08:00Z is 1_795_334_400_000; a day later.
        assert_eq!(open, 1_795_334_400_000 + DAY_MS);
        assert_eq!(close - open, 11 * 3_600_000);
        assert!(h.is_open(open) && !h.is_open(close) && !h.is_open(open - 1));
        assert_eq!(h.next_open(close), open + DAY_MS);
    }

    #[test]
    fn summer_time_shifts_opening_by_an_hour_in_utc() {
        let h = berlin();
        let winter = h
            .open_span(NaiveDate::from_ymd_opt(2026, 3, 28).expect("date"))
            .0;
        let summer = h
            .open_span(NaiveDate::from_ymd_opt(2026, 3, 30).expect("date"))
            .0;
        assert_eq!(summer - winter, 2 * DAY_MS - 3_600_000);
    }

    #[test]
    fn bad_hours_name_the_field() {
        let bad = |tz: &str, open: &str, close: &str| {
            Hours::new(&OpeningHours {
                timezone: tz.into(),
                open: open.into(),
                close: close.into(),
            })
            .expect_err("invalid")
        };
        assert!(bad("Mars/Base", "09:00", "20:00").starts_with("timezone"));
        assert!(bad("UTC", "9am", "20:00").starts_with("open"));
        assert!(bad("UTC", "20:00", "09:00").starts_with("close"));
    }
}
