//! The decision step: `prepare` (order, consent, content) and the
//! properties of `choose` across many decisions (proptest).

use std::collections::HashMap;

use chrono::{Datelike, TimeZone, Utc};
use proptest::prelude::*;

use super::*;
use crate::decide::{ChainDay, ChainEntry, Rule, Trigger};
use crate::identity::{PersonId, Purpose};

fn berlin() -> Tz {
    chrono_tz::Europe::Berlin
}

fn person(product_info: bool, thanks: bool) -> PersonRecord {
    let mut p = PersonRecord::from_json(r#"{"person": "p-1", "recipient": "r-1"}"#).unwrap();
    p.consent.proximity = true;
    p.consent.product_info = product_info;
    p.consent.thanks = thanks;
    p.interests = vec!["laptops".into()];
    p
}

fn rule(id: &str, kind: NudgeKind, priority: i32, title: &str) -> Rule {
    Rule {
        id: id.into(),
        zone: "laptops".into(),
        dwell_s: 20,
        interest: None,
        kind,
        title: title.into(),
        body: "Specs and prices for the models on this table.".into(),
        priority,
    }
}

fn dwell(at_ms: i64) -> PresenceEvent {
    PresenceEvent::Dwell {
        person: PersonId::from("p-1"),
        visit: 1,
        zone: "laptops".into(),
        dwell_s: 20,
        at_ms,
    }
}

#[test]
fn prepare_sorts_once_checks_consent_and_composes() {
    let rules: Vec<TriggeredRule> = vec![
        TriggeredRule::dwell(rule("low", NudgeKind::Info, 1, "Low")),
        TriggeredRule::dwell(rule("high", NudgeKind::Compare, 9, "High")),
        TriggeredRule::dwell(rule("broken", NudgeKind::Info, 5, "{offer_title}")),
        TriggeredRule::dwell(rule("b-same", NudgeKind::Info, 1, "Same")),
    ];
    let event = dwell(1_000);
    let got = prepare(
        &Happening::Presence {
            event: &event,
            visit_number: None,
        },
        &person(true, true),
        &rules,
        &ContentSources::default(),
    );
    let order: Vec<&str> = got.iter().map(|p| p.candidate.rule.id.as_str()).collect();
    assert_eq!(order, ["high", "broken", "b-same", "low"]);
    assert!(got[0].content.is_ok());
    assert_eq!(
        got[1].content.as_ref().map_err(NotReady::label),
        Err("template")
    );

    let without = prepare(
        &Happening::Presence {
            event: &event,
            visit_number: None,
        },
        &person(false, true),
        &rules,
        &ContentSources::default(),
    );
    assert!(without.iter().all(|p| matches!(
        &p.content,
        Err(NotReady::Consent(SkipReason::NoConsent {
            purpose: Purpose::ProductInfo
        }))
    )));
}

#[test]
fn prepare_counts_the_visit_for_nth_visit_rules_only_on_entry() {
    let rules = vec![TriggeredRule::new(
        rule("thanks-2nd", NudgeKind::Thanks, 0, "Thank you"),
        Trigger::NthVisit(2),
    )];
    let entered = PresenceEvent::Entered {
        person: PersonId::from("p-1"),
        visit: 7,
        at_ms: 5,
    };
    let on = |visit_number| {
        prepare(
            &Happening::Presence {
                event: &entered,
                visit_number,
            },
            &person(true, true),
            &rules,
            &ContentSources::default(),
        )
        .len()
    };
    assert_eq!((on(Some(1)), on(Some(2)), on(None)), (0, 1, 0));
}

// ---- choose ----------------------------------------------------------

const RULES: [&str; 4] = ["r0", "r1", "r2", "r3"];
const KINDS: [NudgeKind; 3] = [NudgeKind::Info, NudgeKind::Compare, NudgeKind::Feedback];

#[derive(Clone, Debug)]
struct Gen {
    rule: usize,
    kind: usize,
    ready: bool,
}

#[derive(Clone, Debug)]
struct Decision {
    /// Milliseconds after the previous decision.
    after_ms: i64,
    /// A new visit starts with this decision.
    new_visit: bool,
    candidates: Vec<Gen>,
}

fn caps_strategy() -> impl Strategy<Value = Caps> {
    (
        1u32..4,
        1u32..6,
        1u32..10,
        prop_oneof![Just(0u32), 1u32..600],
        proptest::option::of(1u32..3),
        prop_oneof![Just(0u32), 1u32..3600],
        proptest::option::of(1u32..4),
    )
        .prop_map(
            |(
                per_visit,
                per_day,
                per_week,
                min_gap_s,
                per_kind_per_day,
                rule_cooldown_s,
                store_per_minute,
            )| Caps {
                per_visit,
                per_day,
                per_week,
                min_gap_s,
                per_kind_per_day,
                rule_cooldown_s,
                store_per_minute,
            },
        )
}

fn decisions_strategy() -> impl Strategy<Value = Vec<Decision>> {
    let candidate = (
        0..RULES.len(),
        0..KINDS.len(),
        proptest::bool::weighted(0.8),
    )
        .prop_map(|(rule, kind, ready)| Gen { rule, kind, ready });
    let decision = (
        prop_oneof![0i64..120_000, 0i64..(3 * 86_400_000)],
        proptest::bool::weighted(0.2),
        proptest::collection::vec(candidate, 0..5),
    )
        .prop_map(|(after_ms, new_visit, candidates)| Decision {
            after_ms,
            new_visit,
            candidates,
        });
    proptest::collection::vec(decision, 1..40)
}

fn asks(d: &Decision, visit: i64, at_ms: i64) -> Vec<Ask<'static>> {
    d.candidates
        .iter()
        .map(|c| Ask {
            kind: KINDS[c.kind],
            rule: RULES[c.rule],
            visit,
            at_ms,
            ready: c.ready,
        })
        .collect()
}

fn local_day(tz: &Tz, at_ms: i64) -> chrono::NaiveDate {
    Utc.timestamp_millis_opt(at_ms)
        .unwrap()
        .with_timezone(tz)
        .date_naive()
}

/// Every cap, checked on the sends themselves (not on the ledger, which
/// forgets old entries).
fn assert_caps_hold(
    sends: &[(i64, Ask<'static>)],
    caps: &Caps,
    tz: &Tz,
) -> Result<(), TestCaseError> {
    let mut per_visit: HashMap<i64, u32> = HashMap::new();
    let mut per_day: HashMap<chrono::NaiveDate, u32> = HashMap::new();
    let mut per_week: HashMap<chrono::NaiveDate, u32> = HashMap::new();
    let mut kind_day: HashMap<(NudgeKind, chrono::NaiveDate), u32> = HashMap::new();
    for (i, (at, ask)) in sends.iter().enumerate() {
        let day = local_day(tz, *at);
        let week = day - chrono::Days::new(day.weekday().num_days_from_monday() as u64);
        *per_visit.entry(ask.visit).or_default() += 1;
        *per_day.entry(day).or_default() += 1;
        *per_week.entry(week).or_default() += 1;
        *kind_day.entry((ask.kind, day)).or_default() += 1;
        prop_assert!(per_visit[&ask.visit] <= caps.per_visit, "per visit");
        prop_assert!(per_day[&day] <= caps.per_day, "per day");
        prop_assert!(per_week[&week] <= caps.per_week, "per week");
        if let Some(limit) = caps.per_kind_per_day {
            prop_assert!(kind_day[&(ask.kind, day)] <= limit, "per kind per day");
        }
        for (earlier_at, earlier) in &sends[..i] {
            let gap = at - earlier_at;
            prop_assert!(gap >= i64::from(caps.min_gap_s) * 1000, "min gap");
            if earlier.rule == ask.rule {
                prop_assert!(gap >= i64::from(caps.rule_cooldown_s) * 1000, "cooldown");
            }
        }
        if let Some(per_minute) = caps.store_per_minute {
            let in_minute = sends[..=i].iter().filter(|(t, _)| at - t < 60_000).count();
            prop_assert!(in_minute <= per_minute as usize, "store rate");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Across any sequence of decisions: at most one sent per call, no cap
    /// ever exceeded, a candidate held before the caps never sent, and the
    /// decision goes on past a held candidate exactly when the reason
    /// lets the next one try.
    #[test]
    fn choose_keeps_every_cap_and_the_fall_through_rule(
        caps in caps_strategy(),
        decisions in decisions_strategy(),
        enabled in proptest::bool::weighted(0.9),
    ) {
        let tz = berlin();
        let limits = Limits { caps: &caps, quiet: None, tz: &tz, enabled };
        let mut ledger = Ledger::default();
        let mut rate = StoreRateLedger::default();
        let mut at_ms = 1_795_334_400_000i64;
        let mut visit = at_ms;
        let mut sends = Vec::new();
        for d in &decisions {
            at_ms += d.after_ms;
            // A visit ends after a long silence (the presence engine's
            // visit gap); the ledger forgets sends older than every cap
            // window, so a visit may not outlive them.
            if d.new_visit || d.after_ms > 3_600_000 {
                visit = at_ms;
            }
            let asks = asks(d, visit, at_ms);
            let choice = choose(&asks, &mut ledger, &mut rate, &limits);
            let v = &choice.verdicts;

            prop_assert!(v.len() <= asks.len());
            prop_assert!(v.iter().filter(|v| **v == Verdict::Sent).count() <= 1);
            for (ask, verdict) in asks.iter().zip(v) {
                // Held before the caps: never sent, always reported so.
                prop_assert_eq!(!ask.ready, *verdict == Verdict::NotReady);
            }
            // Fall-through: every verdict but the last lets the next try.
            for verdict in v.iter().take(v.len().saturating_sub(1)) {
                let goes_on = match verdict {
                    Verdict::NotReady => true,
                    Verdict::Held(reason) => reason.lets_the_next_candidate_try(),
                    Verdict::Sent => false,
                };
                prop_assert!(goes_on, "{:?} then more", verdict);
            }
            // Stopping early means the last one ended the decision.
            if v.len() < asks.len() {
                let ended = match v.last() {
                    Some(Verdict::Sent) => true,
                    Some(Verdict::Held(reason)) => !reason.lets_the_next_candidate_try(),
                    _ => false,
                };
                prop_assert!(ended, "stopped after {:?}", v.last());
            }
            if !enabled {
                prop_assert!(v.iter().all(|v| matches!(v, Verdict::NotReady | Verdict::Held(SkipReason::KillSwitch))));
            }
            if let Some(i) = choice.sent() {
                prop_assert!(choice.ledger_changed);
                sends.push((at_ms, asks[i]));
            }
            assert_caps_hold(&sends, &caps, &tz)?;
        }
    }

    /// The lower-priority candidate gets its turn exactly when the higher
    /// one is held for a reason specific to its rule or kind.
    #[test]
    fn a_cooldown_lets_the_next_rule_go_and_a_person_cap_does_not(
        cooldown in proptest::bool::ANY,
    ) {
        let tz = berlin();
        let caps = Caps {
            per_visit: if cooldown { 5 } else { 1 },
            per_day: 5,
            per_week: 10,
            min_gap_s: 0,
            per_kind_per_day: None,
            rule_cooldown_s: if cooldown { 3600 } else { 0 },
            store_per_minute: None,
        };
        let limits = Limits { caps: &caps, quiet: None, tz: &tz, enabled: true };
        let ask = |rule, at_ms| Ask { kind: NudgeKind::Info, rule, visit: 1, at_ms, ready: true };
        let mut ledger = Ledger::default();
        let mut rate = StoreRateLedger::default();
        let t = 1_795_334_400_000i64;
        let first = choose(&[ask("high", t)], &mut ledger, &mut rate, &limits);
        prop_assert_eq!(first.verdicts, vec![Verdict::Sent]);
        let second = choose(&[ask("high", t + 1000), ask("low", t + 1000)], &mut ledger, &mut rate, &limits);
        if cooldown {
            prop_assert_eq!(second.verdicts, vec![
                Verdict::Held(SkipReason::RuleCooldown { cooldown_s: 3600 }),
                Verdict::Sent,
            ]);
        } else {
            prop_assert_eq!(second.verdicts, vec![Verdict::Held(SkipReason::PerVisit { limit: 1 })]);
        }
    }
}

// ---------------------------------------------------------------------------
// Chain-wide caps (`[caps.chain]`)
// ---------------------------------------------------------------------------

/// One step of a chain's life as one store sees it: its own decision, or
/// another store's entry folded in (dated `offset_ms` from now: late ones
/// in the past, a few from a clock ahead).
#[derive(Clone, Debug)]
enum ChainStep {
    Own {
        after_ms: i64,
    },
    Folded {
        after_ms: i64,
        offset_ms: i64,
        id: u8,
    },
}

fn chain_steps() -> impl Strategy<Value = Vec<ChainStep>> {
    let after = prop_oneof![0i64..120_000, 0i64..7_200_000, 0i64..2 * 86_400_000];
    let step = prop_oneof![
        after
            .clone()
            .prop_map(|after_ms| ChainStep::Own { after_ms }),
        (after, -3 * 86_400_000i64..7_200_000, 0u8..40).prop_map(|(after_ms, offset_ms, id)| {
            ChainStep::Folded {
                after_ms,
                offset_ms,
                id,
            }
        }),
    ];
    proptest::collection::vec(step, 1..60)
}

fn chain_caps_strategy() -> impl Strategy<Value = (ChainCaps, Option<Tz>)> {
    (
        1u32..4,
        1u32..8,
        prop_oneof![Just(0u32), 0u32..7200],
        proptest::bool::ANY,
        proptest::option::of(Just(chrono_tz::America::New_York)),
    )
        .prop_map(|(per_day, per_week, min_gap_s, home, home_tz)| {
            (
                ChainCaps {
                    per_day,
                    per_week,
                    min_gap_s,
                    day: if home {
                        ChainDay::Home
                    } else {
                        ChainDay::Chain
                    },
                    timezone: berlin(),
                },
                home_tz,
            )
        })
}

/// The chain caps, counted again from scratch (a second formulation, not
/// `check_chain_caps`): would a send at `at` keep every cap over what
/// was known then (`known`: own sends and folded entries)?
fn chain_allows(known: &[i64], at: i64, caps: &ChainCaps, home: Option<&Tz>) -> Option<SkipReason> {
    let tz = match (caps.day, home) {
        (ChainDay::Home, Some(tz)) => *tz,
        _ => caps.timezone,
    };
    let date = |ms: i64| {
        Utc.timestamp_millis_opt(ms)
            .unwrap()
            .with_timezone(&tz)
            .date_naive()
    };
    let monday = |ms: i64| {
        let d = date(ms);
        d - chrono::Days::new(d.weekday().num_days_from_monday().into())
    };
    // Conservative like the store's caps: a send dated later still counts.
    let today = known.iter().filter(|&&t| date(t) >= date(at)).count() as u32;
    let week = known.iter().filter(|&&t| monday(t) >= monday(at)).count() as u32;
    if today >= caps.per_day {
        return Some(SkipReason::ChainPerDay {
            limit: caps.per_day,
        });
    }
    if week >= caps.per_week {
        return Some(SkipReason::ChainPerWeek {
            limit: caps.per_week,
        });
    }
    if known
        .iter()
        .any(|&t| (at - t).abs() < i64::from(caps.min_gap_s) * 1000)
    {
        return Some(SkipReason::ChainMinGap {
            gap_s: caps.min_gap_s,
        });
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Over any interleaving of this store's decisions and other stores'
    /// folded entries (late, duplicated, from a clock ahead), a send never
    /// breaks a chain cap over what was known when it was decided, and a
    /// hold names the chain cap it would have broken: `choose_in_chain`
    /// sends exactly when the independent count allows. The store's own
    /// caps are set so wide that only the chain's can hold.
    #[test]
    fn no_person_ever_exceeds_the_chain_caps(
        (chain, home) in chain_caps_strategy(),
        steps in chain_steps(),
    ) {
        let tz = berlin();
        let caps = Caps::wide();
        let limits = Limits { caps: &caps, quiet: None, tz: &tz, enabled: true };
        let mut ledger = Ledger::default();
        let mut others = ChainLedger::default();
        let mut rate = StoreRateLedger::default();
        let mut now = 1_795_334_400_000i64;
        for step in &steps {
            match *step {
                ChainStep::Own { after_ms } => {
                    now += after_ms;
                    let known: Vec<i64> = ledger
                        .sent
                        .iter()
                        .map(|s| s.at_ms)
                        .chain(others.entries.iter().map(|e| e.at_ms))
                        .collect();
                    let expected = chain_allows(&known, now, &chain, home.as_ref());
                    let view = ChainView { caps: &chain, others: &others, home: home.as_ref() };
                    let ask = Ask { kind: NudgeKind::Info, rule: "r", visit: now, at_ms: now, ready: true };
                    let choice = choose_in_chain(&[ask], &mut ledger, Some(&view), &mut rate, &limits);
                    match expected {
                        None => prop_assert_eq!(choice.verdicts, vec![Verdict::Sent]),
                        Some(reason) => {
                            prop_assert_eq!(choice.verdicts, vec![Verdict::Held(reason.clone())]);
                            prop_assert!(!reason.lets_the_next_candidate_try());
                        }
                    }
                }
                ChainStep::Folded { after_ms, offset_ms, id } => {
                    now += after_ms;
                    others.fold(
                        ChainEntry {
                            at_ms: now + offset_ms,
                            nudge_id: format!("other-{id}"),
                            kind: NudgeKind::Info,
                            rule: "r".into(),
                        },
                        now,
                    );
                }
            }
        }
    }

    /// Folding is idempotent by nudge id: any sequence of entries, with
    /// repeats, folds to what its first occurrences alone fold to, and
    /// folding it all again changes nothing.
    #[test]
    fn folding_is_idempotent_by_nudge_id(
        entries in proptest::collection::vec((0u8..20, -86_400_000i64..3_600_000), 0..60),
    ) {
        let now = 1_795_334_400_000i64;
        let entry = |(id, offset): (u8, i64)| ChainEntry {
            at_ms: now + offset,
            nudge_id: format!("n-{id}"),
            kind: NudgeKind::Thanks,
            rule: "r".into(),
        };
        let mut all = ChainLedger::default();
        let mut new = 0;
        for e in &entries {
            new += usize::from(all.fold(entry(*e), now));
        }
        let mut seen = std::collections::HashSet::new();
        let mut firsts = ChainLedger::default();
        for e in entries.iter().filter(|(id, _)| seen.insert(*id)) {
            prop_assert!(firsts.fold(entry(*e), now));
        }
        prop_assert_eq!(&all, &firsts);
        prop_assert_eq!(new, seen.len());
        let before = all.clone();
        for e in &entries {
            prop_assert!(!all.fold(entry(*e), now));
        }
        prop_assert_eq!(all, before);
    }
}

#[test]
fn chain_caps_count_own_and_folded_sends_in_the_chosen_calendar() {
    // 2026-12-07 23:30 in Berlin is 17:30 in New York.
    let late = Utc
        .with_ymd_and_hms(2026, 12, 7, 22, 30, 0)
        .unwrap()
        .timestamp_millis();
    let mut chain = ChainCaps {
        per_day: 1,
        per_week: 5,
        min_gap_s: 1800,
        day: ChainDay::Chain,
        timezone: berlin(),
    };
    let ny = chrono_tz::America::New_York;
    let own = Ledger::default();
    let others = ChainLedger {
        entries: vec![ChainEntry {
            at_ms: late,
            nudge_id: "n-1".into(),
            kind: NudgeKind::Info,
            rule: "r".into(),
        }],
    };
    // One hour later it is the next day in Berlin, still the same in New York.
    let next = late + 3_600_000;
    assert_eq!(
        check_chain_caps(&own, &others, &chain, Some(&ny), next),
        Ok(())
    );
    chain.day = ChainDay::Home;
    assert_eq!(
        check_chain_caps(&own, &others, &chain, Some(&ny), next),
        Err(SkipReason::ChainPerDay { limit: 1 })
    );
    // Home without a time zone of their own: the chain's.
    assert_eq!(check_chain_caps(&own, &others, &chain, None, next), Ok(()));
    // The gap, across stores.
    chain.day = ChainDay::Chain;
    chain.per_day = 5;
    assert_eq!(
        check_chain_caps(&own, &others, &chain, None, late + 60_000),
        Err(SkipReason::ChainMinGap { gap_s: 1800 })
    );
    // The store's own sends count the same as other stores'.
    let mine = Ledger {
        sent: vec![SentNudge {
            at_ms: late,
            kind: NudgeKind::Info,
            rule: "r".into(),
            visit: 1,
        }],
        visits: 1,
    };
    chain.per_week = 2;
    assert_eq!(
        check_chain_caps(&mine, &others, &chain, None, late + 7_200_000),
        Err(SkipReason::ChainPerWeek { limit: 2 })
    );
}
