//! Offers, fairly: a person gets the best offer that ANY of their identities
//! qualifies for, whichever identity the event came from, and never more
//! for a dormant identity than the person gets (docs/design.md §1, §5). Offers are
//! only ever sent with `offers` consent (checked by [`super::check_consent`]).

use serde::{Deserialize, Serialize};

use crate::identity::Identity;

/// Who an offer is for, by identity kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    /// People with the app installed.
    AppUsers,
    /// People with a loyalty card.
    LoyaltyCardHolders,
    /// People who gave an e-mail address.
    EmailSubscribers,
    /// Every person with offers consent.
    Everyone,
}

impl Segment {
    pub fn includes(self, identity: &Identity) -> bool {
        match self {
            Segment::AppUsers => matches!(identity, Identity::App { .. }),
            Segment::LoyaltyCardHolders => matches!(identity, Identity::Card { .. }),
            Segment::EmailSubscribers => matches!(identity, Identity::Email { .. }),
            Segment::Everyone => true,
        }
    }
}

/// One offer, as marketing configures it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    pub id: String,
    pub title: String,
    pub segments: Vec<Segment>,
    /// What the customer saves, in cents: the one measure offers are ranked by.
    pub value_cents: u64,
    /// Valid from (inclusive), Unix ms; absent = always.
    #[serde(default)]
    pub valid_from_ms: Option<i64>,
    /// Valid until (exclusive), Unix ms; absent = no end.
    #[serde(default)]
    pub valid_until_ms: Option<i64>,
}

impl Offer {
    pub fn valid_at(&self, now_ms: i64) -> bool {
        self.valid_from_ms.is_none_or(|f| f <= now_ms)
            && self.valid_until_ms.is_none_or(|u| now_ms < u)
    }

    /// Whether a person holding `identities` qualifies. `Everyone` needs no
    /// particular identity.
    pub fn qualifies(&self, identities: &[Identity]) -> bool {
        self.segments.iter().any(|s| {
            *s == Segment::Everyone || identities.iter().any(|identity| s.includes(identity))
        })
    }
}

/// The order offers are ranked in: more value first, then the lower id, so
/// the choice is total and does not depend on the order of the list.
fn better(a: &Offer, b: &Offer) -> bool {
    a.value_cents > b.value_cents || (a.value_cents == b.value_cents && a.id < b.id)
}

/// The best offer valid at `now_ms` that any of the person's identities
/// qualifies for. Pass ALL the person's identities (the record's
/// `identities`), never only the one the event came from.
pub fn best_offer(
    offers: &[Offer],
    identities_of_person: &[Identity],
    now_ms: i64,
) -> Option<Offer> {
    let mut best: Option<&Offer> = None;
    for offer in offers {
        if offer.valid_at(now_ms)
            && offer.qualifies(identities_of_person)
            && best.is_none_or(|b| better(offer, b))
        {
            best = Some(offer);
        }
    }
    best.cloned()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn identity() -> impl Strategy<Value = Identity> {
        prop_oneof![
            any::<[u8; 16]>().prop_map(|key| Identity::App { key }),
            (0u32..50).prop_map(|n| Identity::Email {
                value: format!("u{n}@example.com")
            }),
            (0u32..50).prop_map(|n| Identity::Card {
                value: format!("card-{n}")
            }),
        ]
    }

    fn segment() -> impl Strategy<Value = Segment> {
        prop_oneof![
            Just(Segment::AppUsers),
            Just(Segment::LoyaltyCardHolders),
            Just(Segment::EmailSubscribers),
            Just(Segment::Everyone),
        ]
    }

    fn offer() -> impl Strategy<Value = Offer> {
        (
            0u32..20,
            proptest::collection::vec(segment(), 0..3),
            0u64..5000,
            proptest::option::of(-1000i64..1000),
            proptest::option::of(-1000i64..1000),
        )
            .prop_map(|(id, segments, value_cents, from, until)| Offer {
                id: format!("o-{id}"),
                title: format!("offer {id}"),
                segments,
                value_cents,
                valid_from_ms: from,
                valid_until_ms: until,
            })
    }

    /// What the pipeline does for an event from one identity: resolve it to
    /// the person, then rank over all of the person's identities.
    fn offer_for_event(
        people: &[Vec<Identity>],
        event_identity: &Identity,
        offers: &[Offer],
        now: i64,
    ) -> Option<Offer> {
        let person = people.iter().find(|ids| ids.contains(event_identity))?;
        best_offer(offers, person, now)
    }

    proptest! {
        #[test]
        fn the_offer_is_the_persons_not_the_identitys(
            identities in proptest::collection::vec(identity(), 1..5),
            offers in proptest::collection::vec(offer(), 0..12),
            now in -1200i64..1200,
        ) {
            // Offer ids are unique in a valid config (it rejects
            // duplicates); two offers with one id and one value would make
            // the winner depend on list order.
            let mut seen = std::collections::BTreeSet::new();
            let offers: Vec<Offer> = offers.into_iter().filter(|o| seen.insert(o.id.clone())).collect();
            let mut ids = identities;
            ids.dedup();
            let people = vec![ids.clone()];
            let computed = best_offer(&offers, &ids, now);
            // Same offer whichever identity the event came from.
            for id in &ids {
                prop_assert_eq!(offer_for_event(&people, id, &offers, now), computed.clone());
            }
            // It is the maximum over identities: no identity alone does better,
            // and the chosen offer is one some identity qualifies for.
            let per_identity: Vec<Option<Offer>> = ids
                .iter()
                .map(|id| best_offer(&offers, std::slice::from_ref(id), now))
                .collect();
            for alone in per_identity.iter().flatten() {
                let got = computed.as_ref().expect("a qualifying identity means an offer");
                prop_assert!(got.value_cents >= alone.value_cents);
            }
            let max = per_identity.iter().flatten().map(|o| o.value_cents).max();
            prop_assert_eq!(computed.as_ref().map(|o| o.value_cents), max);
            if let Some(o) = &computed {
                prop_assert!(o.valid_at(now));
                prop_assert!(o.qualifies(&ids));
            }
            // The order of the offer list does not matter.
            let mut reversed = offers.clone();
            reversed.reverse();
            prop_assert_eq!(best_offer(&reversed, &ids, now), computed);
        }
    }

    #[test]
    fn card_holders_offer_reaches_the_app_event_too() {
        let ids = vec![
            Identity::App { key: [7; 16] },
            Identity::Card {
                value: "4711".into(),
            },
        ];
        let offers = vec![
            Offer {
                id: "app-5".into(),
                title: "5 off for app users".into(),
                segments: vec![Segment::AppUsers],
                value_cents: 500,
                valid_from_ms: None,
                valid_until_ms: None,
            },
            Offer {
                id: "card-20".into(),
                title: "20 off for card holders".into(),
                segments: vec![Segment::LoyaltyCardHolders],
                value_cents: 2000,
                valid_from_ms: None,
                valid_until_ms: Some(1000),
            },
        ];
        assert_eq!(best_offer(&offers, &ids, 0).unwrap().id, "card-20");
        // Expired: the next best.
        assert_eq!(best_offer(&offers, &ids, 1000).unwrap().id, "app-5");
        assert_eq!(
            best_offer(
                &offers,
                &[Identity::Email {
                    value: "x@y.z".into()
                }],
                0
            ),
            None
        );
    }
}
