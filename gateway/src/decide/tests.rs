use chrono::{NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;

use super::*;
use crate::identity::{PersonId, PersonRecord};

fn caps() -> Caps {
    Caps {
        per_visit: 2,
        per_day: 3,
        per_week: 7,
        min_gap_s: 1200,
        per_kind_per_day: None,
        rule_cooldown_s: 0,
        store_per_minute: None,
    }
}

fn berlin() -> Tz {
    "Europe/Berlin".parse().unwrap()
}

fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    berlin()
        .with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .unwrap()
        .timestamp_millis()
}

fn sent(at_ms: i64, visit: i64) -> SentNudge {
    SentNudge {
        at_ms,
        kind: NudgeKind::Compare,
        rule: "r".into(),
        visit,
    }
}

fn check(ledger: &Ledger, caps: &Caps, visit: i64, now: i64) -> Result<(), SkipReason> {
    check_caps(
        ledger,
        &StoreRateLedger::default(),
        caps,
        None,
        &berlin(),
        NudgeKind::Compare,
        "r",
        visit,
        now,
    )
}

#[test]
fn each_cap_holds_back_with_its_reason() {
    let t = ms(2026, 11, 23, 10, 0);
    let mut ledger = Ledger::default();
    assert_eq!(check(&ledger, &caps(), 1, t), Ok(()));
    ledger.record(sent(t, 1));
    assert_eq!(
        check(&ledger, &caps(), 1, t + 60_000),
        Err(SkipReason::MinGap { gap_s: 1200 })
    );
    ledger.record(sent(t + 1_300_000, 1));
    assert_eq!(
        check(&ledger, &caps(), 1, t + 2_600_000),
        Err(SkipReason::PerVisit { limit: 2 })
    );
    ledger.record(sent(t + 2_600_000, 2));
    assert_eq!(
        check(&ledger, &caps(), 3, t + 3_900_000),
        Err(SkipReason::PerDay { limit: 3 })
    );
    // The next local day is free again, in the store's time zone.
    assert_eq!(check(&ledger, &caps(), 3, ms(2026, 11, 24, 0, 30)), Ok(()));
}

#[test]
fn a_send_dated_far_ahead_counts_once_as_now_then_ages() {
    let t = ms(2026, 11, 23, 10, 0);
    let mut ledger = Ledger::default();
    // Left by a clock that a forged sighting pushed a year ahead.
    ledger.record(sent(ms(2027, 11, 23, 10, 0), 1));
    assert!(ledger.clamp_future(t));
    assert_eq!(ledger.sent[0].at_ms, t);
    assert!(!ledger.clamp_future(t), "re-dated once");
    // It still counts now (the gap), and then ages like any send.
    assert_eq!(
        check(&ledger, &caps(), 2, t + 60_000),
        Err(SkipReason::MinGap { gap_s: 1200 })
    );
    assert_eq!(check(&ledger, &caps(), 2, t + 1_300_000), Ok(()));
    // A small step back (within the tolerance) keeps its date: conservative.
    let mut stepped = Ledger::default();
    stepped.record(sent(t + 600_000, 1));
    assert!(!stepped.clamp_future(t));
}

#[test]
fn a_clock_step_backwards_does_not_reopen_a_day_or_the_gap() {
    let tomorrow = ms(2026, 11, 24, 10, 0);
    let mut ledger = Ledger::default();
    for i in 0..3 {
        ledger.record(sent(tomorrow + i * 1_300_000, i));
    }
    // The clock steps back a day: tomorrow's nudges still count today.
    assert_eq!(
        check(&ledger, &caps(), 9, ms(2026, 11, 23, 10, 0)),
        Err(SkipReason::PerDay { limit: 3 })
    );
    let mut one = Ledger::default();
    one.record(sent(tomorrow, 0));
    assert_eq!(
        check(&one, &caps(), 9, tomorrow - 60_000),
        Err(SkipReason::MinGap { gap_s: 1200 })
    );
}

#[test]
fn quiet_hours_follow_the_store_clock_across_daylight_saving() {
    let quiet = QuietHours {
        start: NaiveTime::from_hms_opt(21, 0, 0).unwrap(),
        end: NaiveTime::from_hms_opt(8, 0, 0).unwrap(),
    };
    // 2026-10-25: Berlin leaves summer time at 03:00 local.
    assert!(quiet.contains(&berlin(), ms(2026, 10, 25, 7, 30)));
    assert!(!quiet.contains(&berlin(), ms(2026, 10, 25, 8, 0)));
    // 07:30 UTC that day is 08:30 local (UTC+1): not quiet.
    assert!(
        !quiet.contains(
            &berlin(),
            Utc.with_ymd_and_hms(2026, 10, 25, 7, 30, 0)
                .unwrap()
                .timestamp_millis()
        )
    );
    // 2026-03-29: summer time starts; 06:30 UTC is 08:30 local (UTC+2).
    assert!(
        !quiet.contains(
            &berlin(),
            Utc.with_ymd_and_hms(2026, 3, 29, 6, 30, 0)
                .unwrap()
                .timestamp_millis()
        )
    );
    assert!(
        quiet.contains(
            &berlin(),
            Utc.with_ymd_and_hms(2026, 3, 29, 5, 30, 0)
                .unwrap()
                .timestamp_millis()
        )
    );
}

#[test]
fn store_rate_is_shared_by_everyone() {
    let t = ms(2026, 11, 23, 10, 0);
    let caps = Caps {
        store_per_minute: Some(2),
        ..caps()
    };
    let mut rate = StoreRateLedger::default();
    rate.record(t);
    rate.record(t + 1000);
    let r = check_caps(
        &Ledger::default(),
        &rate,
        &caps,
        None,
        &berlin(),
        NudgeKind::Info,
        "x",
        1,
        t + 2000,
    );
    assert_eq!(r, Err(SkipReason::StoreRate { per_minute: 2 }));
    // A minute later only one send is inside the window again.
    rate.record(t + 61_500);
    assert_eq!(
        check_caps(
            &Ledger::default(),
            &rate,
            &caps,
            None,
            &berlin(),
            NudgeKind::Info,
            "x",
            1,
            t + 62_000
        ),
        Ok(())
    );
    rate.record(t + 62_000);
    assert!(
        check_caps(
            &Ledger::default(),
            &rate,
            &caps,
            None,
            &berlin(),
            NudgeKind::Info,
            "x",
            1,
            t + 63_000
        )
        .is_err()
    );
}

fn person(interests: &[&str], product_info: bool) -> PersonRecord {
    let mut p = PersonRecord::from_json(r#"{"person": "p-1", "recipient": "r-1"}"#).unwrap();
    p.interests = interests.iter().map(|s| s.to_string()).collect();
    p.consent.proximity = true;
    p.consent.product_info = product_info;
    p
}

fn rule(id: &str, interest: Option<&str>, priority: i32) -> Rule {
    Rule {
        id: id.into(),
        zone: "laptops".into(),
        dwell_s: 20,
        interest: interest.map(str::to_string),
        kind: NudgeKind::Compare,
        title: "t".into(),
        body: "b".into(),
        priority,
    }
}

#[test]
fn rules_match_zone_dwell_and_interest_by_priority() {
    let rules = vec![
        rule("a", Some("laptops"), 1),
        rule("b", None, 5),
        rule("c", Some("phones"), 9),
    ];
    let event = crate::presence::PresenceEvent::Dwell {
        person: PersonId::from("p-1"),
        visit: 1,
        zone: "laptops".into(),
        dwell_s: 20,
        at_ms: 0,
    };
    let ids: Vec<_> = matching_rules(&event, &person(&["laptops"], true), &rules)
        .iter()
        .map(|c| c.rule.id.clone())
        .collect();
    assert_eq!(ids, ["b", "a"]);
    assert_eq!(
        check_consent(&person(&["laptops"], false), NudgeKind::Compare),
        Err(SkipReason::NoConsent {
            purpose: crate::identity::Purpose::ProductInfo
        })
    );
}

#[derive(Debug, Clone)]
enum Step {
    Attempt {
        advance_s: i64,
        visit: i64,
        rule: u8,
        kind: u8,
    },
    ClockBack {
        back_s: i64,
    },
    LowerCaps {
        per_visit: u32,
        per_day: u32,
        per_week: u32,
        per_kind_per_day: u32,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0i64..20_000, 0i64..4, 0u8..3, 0u8..5).prop_map(|(advance_s, visit, rule, kind)| Step::Attempt { advance_s, visit, rule, kind }),
        1 => (1i64..200_000).prop_map(|back_s| Step::ClockBack { back_s }),
        1 => (0u32..4, 0u32..5, 0u32..9, 0u32..3).prop_map(|(per_visit, per_day, per_week, per_kind_per_day)| Step::LowerCaps { per_visit, per_day, per_week, per_kind_per_day }),
    ]
}

proptest! {
    /// Whatever the sequence of attempts, clock steps backwards and caps
    /// lowered mid-run: at the moment of every grant, the person's nudges
    /// (including that one) fit every cap then in force.
    #[test]
    fn no_grant_ever_exceeds_a_cap(
        start_caps in (1u32..4, 1u32..6, 1u32..10, 0u32..3000, proptest::option::of(1u32..3), 0u32..7200),
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let tz = berlin();
        let mut caps = Caps {
            per_visit: start_caps.0, per_day: start_caps.1, per_week: start_caps.2, min_gap_s: start_caps.3,
            per_kind_per_day: start_caps.4, rule_cooldown_s: start_caps.5, store_per_minute: None,
        };
        let mut ledger = Ledger::default();
        let mut now = ms(2026, 10, 24, 12, 0); // spans the DST change on the 25th
        let mut all: Vec<SentNudge> = Vec::new();
        for step in steps {
            match step {
                Step::ClockBack { back_s } => now -= back_s * 1000,
                Step::LowerCaps { per_visit, per_day, per_week, per_kind_per_day } => {
                    caps.per_visit = caps.per_visit.min(per_visit);
                    caps.per_day = caps.per_day.min(per_day);
                    caps.per_week = caps.per_week.min(per_week);
                    // A config reload can introduce a per-kind cap or lower it.
                    caps.per_kind_per_day = Some(caps.per_kind_per_day.map_or(per_kind_per_day, |k| k.min(per_kind_per_day)));
                }
                Step::Attempt { advance_s, visit, rule, kind } => {
                    now += advance_s * 1000;
                    let kind = NudgeKind::ALL[kind as usize];
                    let rule = format!("rule-{rule}");
                    if check_caps(&ledger, &StoreRateLedger::default(), &caps, None, &tz, kind, &rule, visit, now).is_ok() {
                        let granted = SentNudge { at_ms: now, kind, rule: rule.clone(), visit };
                        ledger.record(granted.clone());
                        all.push(granted);
                        let day = |t: i64| Utc.timestamp_millis_opt(t).unwrap().with_timezone(&tz).date_naive();
                        let week = |t: i64| { let d = day(t); d - chrono::Days::new(chrono::Datelike::weekday(&d).num_days_from_monday() as u64) };
                        let same_day = all.iter().filter(|s| day(s.at_ms) == day(now)).count() as u32;
                        let same_week = all.iter().filter(|s| week(s.at_ms) == week(now)).count() as u32;
                        let same_visit = all.iter().filter(|s| s.visit == visit).count() as u32;
                        prop_assert!(same_day <= caps.per_day, "day {same_day} > {}", caps.per_day);
                        prop_assert!(same_week <= caps.per_week);
                        prop_assert!(same_visit <= caps.per_visit);
                        if let Some(limit) = caps.per_kind_per_day {
                            prop_assert!(all.iter().filter(|s| s.kind == kind && day(s.at_ms) == day(now)).count() as u32 <= limit);
                        }
                        for other in &all[..all.len() - 1] {
                            prop_assert!((other.at_ms - now).abs() >= caps.min_gap_s as i64 * 1000);
                            if other.rule == rule {
                                prop_assert!((other.at_ms - now).abs() >= caps.rule_cooldown_s as i64 * 1000);
                            }
                        }
                    }
                }
            }
        }
    }
}
