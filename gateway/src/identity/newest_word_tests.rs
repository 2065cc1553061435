//! "Newest word wins, and a withdrawal sticks", as a property: whatever
//! order the CRM's records (retained, republished, delayed, duplicated),
//! the app's consent changes and erasures arrive in, the gateway ends with
//! what applying them in the order they were said gives.
//!
//! The arrival orders are the ones the world can produce: a phone's
//! messages arrive in the order it said them, each at or after its `at`
//! (the gateway clamps a later `at` to its clock); a CRM record may arrive
//! late and again at any later moment. A change refused because its person
//! was unknown then gets no receipt, so the app sends it again: each run
//! ends by retrying those once.

use proptest::prelude::*;

use super::messages::{Applied, ChangeRequest, ConsentChange};
use super::person::{Consent, PersonId, PersonRecord, Purpose, Stamps};

#[derive(Clone, Debug)]
enum Op {
    Record(PersonRecord),
    Change(ConsentChange),
    Erase { at_ms: i64 },
}

impl Op {
    fn at_ms(&self) -> i64 {
        match self {
            Op::Record(r) => r.stamps.record_ms,
            Op::Change(c) => c.at.map(|t| t.timestamp_millis()).unwrap_or_default(),
            Op::Erase { at_ms } => *at_ms,
        }
    }
}

/// What the gateway holds of the one person, and their tombstone.
#[derive(Clone, Debug, Default, PartialEq)]
struct Held {
    record: Option<PersonRecord>,
    erased_at_ms: Option<i64>,
}

impl Held {
    /// One message, as the daemon handles it (`on_person`, `on_consent`,
    /// `erase`). Returns false for a change refused as unknown.
    fn apply(&mut self, op: &Op) -> bool {
        match op {
            Op::Record(incoming) => {
                // Refused (older than the erasure): nothing changes.
                if let Ok(folded) = PersonRecord::fold(
                    self.record.clone(),
                    incoming.clone(),
                    self.erased_at_ms,
                    i64::MAX,
                ) {
                    self.record = Some(folded);
                }
                true
            }
            Op::Change(change) => {
                let Some(record) = &mut self.record else {
                    return false;
                };
                let at = change.said_at_ms(i64::MAX);
                match change.apply(record, at) {
                    Applied::Updated { .. } => {}
                    Applied::Forget => unreachable!("forgets are Op::Erase here"),
                }
                true
            }
            Op::Erase { at_ms } => {
                self.record = None;
                self.erased_at_ms = Some(self.erased_at_ms.map_or(*at_ms, |t| t.max(*at_ms)));
                true
            }
        }
    }

    fn run<'a>(ops: impl IntoIterator<Item = &'a Op>) -> Held {
        let mut held = Held::default();
        let mut refused = Vec::new();
        for op in ops {
            if !held.apply(op) {
                refused.push(op);
            }
        }
        for op in refused {
            held.apply(op);
        }
        held
    }
}

fn record(at_ms: i64, consent: [bool; 5], interests: Vec<String>) -> PersonRecord {
    let mut c = Consent::default();
    for (purpose, on) in Purpose::ALL.into_iter().zip(consent) {
        c.set(purpose, on);
    }
    PersonRecord {
        person: PersonId::from("p-1"),
        recipient: "r-1".into(),
        timezone: None,
        identities: vec![],
        consent: c,
        interests,
        owns: vec![],
        stamps: Stamps::all_at(at_ms),
    }
}

fn change(at_ms: i64, words: Vec<(Purpose, bool)>, interests: Option<Vec<String>>) -> Op {
    Op::Change(ConsentChange {
        id: format!("c-{at_ms}"),
        recipient: "r-1".into(),
        at: chrono::DateTime::from_timestamp_millis(at_ms),
        request: ChangeRequest::Update {
            consent: words,
            interests,
            owns: None,
        },
    })
}

fn interests() -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence(
        vec!["laptops".to_string(), "tv".into(), "audio".into()],
        0..3,
    )
}

fn purpose() -> impl Strategy<Value = Purpose> {
    proptest::sample::select(Purpose::ALL.to_vec())
}

/// An op said at `at_ms` (the first one is always the enrolment record).
fn op(at_ms: i64) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<[bool; 5]>(), interests()).prop_map(move |(c, i)| Op::Record(record(at_ms, c, i))),
        4 => (proptest::collection::vec((purpose(), any::<bool>()), 1..3), proptest::option::of(interests()))
            .prop_map(move |(w, i)| change(at_ms, w, i)),
        1 => Just(Op::Erase { at_ms }),
    ]
}

/// Ops said at 1 s, 2 s, …, and an arrival order the world can produce:
/// (op index, arrival key) pairs, records possibly delayed and repeated.
fn said_and_arrived() -> impl Strategy<Value = (Vec<Op>, Vec<(usize, u64)>)> {
    (2usize..14)
        .prop_flat_map(|n| {
            let ops: Vec<_> = (0..n)
                .map(|i| {
                    let at = (i as i64 + 1) * 1_000;
                    if i == 0 {
                        (any::<[bool; 5]>(), interests())
                            .prop_map(move |(c, i)| Op::Record(record(at, c, i)))
                            .boxed()
                    } else {
                        op(at).boxed()
                    }
                })
                .collect();
            let delays = proptest::collection::vec((0u64..6, 0usize..3), n);
            (ops, delays)
        })
        .prop_flat_map(|(ops, delays)| {
            let repeats: Vec<_> = delays
                .iter()
                .map(|&(_, copies)| proptest::collection::vec(1u64..20, copies))
                .collect();
            (Just(ops), Just(delays), repeats)
        })
        .prop_map(|(ops, delays, repeats)| {
            let mut arrivals = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                // Arrival keys: ten per second said; a phone's message
                // arrives in its own second, a record up to 5 s late and
                // again later (the .5 keeps records after the phone's
                // messages of the same second).
                let said = (i as u64 + 1) * 10;
                match op {
                    Op::Record(_) => {
                        let first = said + delays[i].0 * 10 + 5;
                        arrivals.push((i, first));
                        for r in &repeats[i] {
                            arrivals.push((i, first + r * 10));
                        }
                    }
                    _ => arrivals.push((i, said)),
                }
            }
            arrivals.sort_by_key(|&(i, key)| (key, i));
            (ops, arrivals)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_arrival_order_ends_as_the_order_said((ops, arrivals) in said_and_arrived()) {
        let mut said: Vec<&Op> = ops.iter().collect();
        said.sort_by_key(|op| op.at_ms());
        let expected = Held::run(said);
        let got = Held::run(arrivals.iter().map(|&(i, _)| &ops[i]));
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn a_republished_record_does_not_undo_a_withdrawal() {
    let enrol = Op::Record(record(1_000, [true; 5], vec!["laptops".into()]));
    let withdraw = change(2_000, vec![(Purpose::Offers, false)], None);
    let held = Held::run([&enrol, &withdraw, &enrol, &enrol]);
    let record = held.record.expect("still enrolled");
    assert!(
        !record.consent.offers,
        "the old record did not switch it back on"
    );
    assert!(record.consent.product_info);
    assert_eq!(record.stamps.consent_at(Purpose::Offers), 2_000);
}

#[test]
fn a_forgotten_persons_old_record_is_refused_and_a_reenrolment_accepted() {
    let enrol = Op::Record(record(1_000, [true; 5], vec![]));
    let forget = Op::Erase { at_ms: 5_000 };
    let held = Held::run([&enrol, &forget, &enrol]);
    assert_eq!(held.record, None, "the retained record came again: refused");
    let again = Op::Record(record(6_000, [true, false, false, false, false], vec![]));
    let held = Held::run([&enrol, &forget, &enrol, &again]);
    let record = held.record.expect("re-enrolled after the erasure");
    assert!(record.consent.proximity && !record.consent.offers);
}

#[test]
fn a_record_without_updated_at_changes_nothing_held() {
    let enrol = Op::Record(record(1_000, [true; 5], vec!["tv".into()]));
    let undated = Op::Record(record(i64::MIN, [false; 5], vec![]));
    let held = Held::run([&enrol, &undated]);
    let record = held.record.unwrap();
    assert!(record.consent.offers);
    assert_eq!(record.interests, vec!["tv".to_string()]);
    // A newcomer without one is taken as it is.
    assert!(Held::run([&undated]).record.is_some());
}
