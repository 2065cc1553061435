//! Thanks, feedback, compare with a catalog, offers: from event to payload.

use super::wording::{commercial_words, pressure_phrases};
use super::*;
use crate::identity::{PersonId, PersonRecord, Purchase};
use crate::presence::PresenceEvent;

const CATALOG: &str = include_str!("../../../config/catalog-example.toml");

fn ana() -> PersonRecord {
    PersonRecord::from_json(
        r#"{"person": "p-1001", "recipient": "r-5f2c9a",
            "identities": [{"kind": "app", "key": "75c734c6dd1a782de7a965da5eb93125"},
                           {"kind": "email", "value": "ana@example.com"}],
            "consent": {"proximity": true, "product_info": true, "offers": false, "thanks": true, "feedback": true},
            "interests": ["laptops", "headphones"], "owns": ["phone:pixel-8"]}"#,
    )
    .unwrap()
}

fn rule(id: &str, kind: NudgeKind, title: &str, body: &str) -> Rule {
    Rule {
        id: id.into(),
        zone: "laptops".into(),
        dwell_s: 20,
        interest: None,
        kind,
        title: title.into(),
        body: body.into(),
        priority: 0,
    }
}

fn rules() -> Vec<TriggeredRule> {
    vec![
        TriggeredRule::new(
            rule(
                "thanks-purchase",
                NudgeKind::Thanks,
                "Thank you",
                "Thank you for shopping with us today. Enjoy your new things!",
            ),
            Trigger::Purchase,
        ),
        TriggeredRule::new(
            rule(
                "thanks-10th",
                NudgeKind::Thanks,
                "Thank you for coming back",
                "This is your tenth visit. Thank you for being with us.",
            ),
            Trigger::NthVisit(10),
        ),
        TriggeredRule::new(
            rule(
                "exit-feedback",
                NudgeKind::Feedback,
                "One question",
                "Did you find what you came for?",
            ),
            Trigger::Exit { zone: None },
        ),
        TriggeredRule::new(
            rule(
                "laptops-left",
                NudgeKind::Feedback,
                "Laptops",
                "Was the {zone} table helpful?",
            ),
            Trigger::Exit {
                zone: Some("laptops".into()),
            },
        ),
        TriggeredRule::dwell(Rule {
            interest: Some("laptops".into()),
            ..rule(
                "laptop-compare",
                NudgeKind::Compare,
                "Comparing {person.first_interest}?",
                "{catalog.count} models here; best rated: {catalog.top_name} ({catalog.top_rating}/5).",
            )
        }),
    ]
}

fn ids(candidates: &[Candidate<'_>]) -> Vec<String> {
    candidates.iter().map(|c| c.rule.id.clone()).collect()
}

#[test]
fn thanks_follow_a_purchase_by_any_identity_of_the_person_or_the_nth_visit() {
    let rules = rules();
    let by_email = Purchase::from_json(
        r#"{"identity": {"kind": "email", "value": "Ana@Example.com"}, "items": ["lt-aero-14"], "at": "2026-11-23T10:20:00Z"}"#,
    )
    .unwrap();
    let event = ThanksEvent::Purchase {
        purchase: &by_email,
        visit: None,
    };
    let found = thanks_candidates(&event, &ana(), &rules);
    assert_eq!(ids(&found), ["thanks-purchase"]);
    assert_eq!(found[0].at_ms, by_email.at.timestamp_millis());
    assert_eq!(found[0].visit, found[0].at_ms, "a purchase outside a visit");
    assert_eq!(found[0].zone.as_ref(), STORE_ZONE);

    let someone_else = Purchase::from_json(
        r#"{"identity": {"kind": "card", "value": "999"}, "items": ["x"], "at": "2026-11-23T10:20:00Z"}"#,
    )
    .unwrap();
    let event = ThanksEvent::Purchase {
        purchase: &someone_else,
        visit: Some(5),
    };
    assert!(thanks_candidates(&event, &ana(), &rules).is_empty());

    let visit = |number| ThanksEvent::Visit {
        number,
        visit: 42,
        at_ms: 1000,
    };
    assert!(thanks_candidates(&visit(9), &ana(), &rules).is_empty());
    assert_eq!(
        ids(&thanks_candidates(&visit(10), &ana(), &rules)),
        ["thanks-10th"]
    );
    assert!(thanks_candidates(&visit(11), &ana(), &rules).is_empty());
}

#[test]
fn thanks_payloads_ask_for_nothing_in_return() {
    let rules = rules();
    let purchase = Purchase::from_json(
        r#"{"person": "p-1001", "items": ["a"], "at": "2026-11-23T10:20:00Z"}"#,
    )
    .unwrap();
    let mut payloads = Vec::new();
    for event in [
        ThanksEvent::Purchase {
            purchase: &purchase,
            visit: Some(7),
        },
        ThanksEvent::Visit {
            number: 10,
            visit: 42,
            at_ms: 1000,
        },
    ] {
        for c in thanks_candidates(&event, &ana(), &rules) {
            assert_eq!(check_consent(&ana(), c.rule.kind), Ok(()));
            let content = compose(&c, &ana(), None, None).unwrap();
            payloads.push(build_nudge(&c, &ana(), "n-1".into(), 60_000, content));
        }
    }
    assert_eq!(payloads.len(), 2);
    for p in &payloads {
        assert_eq!(p.kind, NudgeKind::Thanks);
        assert!(p.items.is_none());
        for text in [&p.title, &p.body, &p.why.text] {
            assert!(commercial_words(text).is_empty(), "{text:?}");
            assert!(pressure_phrases(text).is_empty(), "{text:?}");
            assert!(check_wording(NudgeKind::Thanks, text).is_ok(), "{text:?}");
        }
    }
    assert!(payloads[1].why.text.contains("10th visit"));
}

#[test]
fn feedback_is_asked_on_the_way_out_only() {
    let rules = rules();
    let person = PersonId::from("p-1001");
    let exited = PresenceEvent::Exited {
        person: person.clone(),
        visit: 7,
        at_ms: 5000,
    };
    let found = feedback_candidates(&exited, &ana(), &rules);
    assert_eq!(ids(&found), ["exit-feedback"]);
    assert_eq!(found[0].cause, Cause::Left);
    let left = PresenceEvent::ZoneLeft {
        person: person.clone(),
        visit: 7,
        zone: "laptops".into(),
        dwell_s: 60,
        at_ms: 4000,
    };
    let found = feedback_candidates(&left, &ana(), &rules);
    assert_eq!(ids(&found), ["laptops-left"]);
    let content = compose(&found[0], &ana(), None, None).unwrap();
    assert_eq!(content.body, "Was the laptops table helpful?");
    let dwell = PresenceEvent::Dwell {
        person,
        visit: 7,
        zone: "laptops".into(),
        dwell_s: 20,
        at_ms: 3000,
    };
    assert!(feedback_candidates(&dwell, &ana(), &rules).is_empty());
    assert_eq!(
        ids(&candidates_for_event(&dwell, &ana(), &rules)),
        ["laptop-compare"]
    );
    let mut no_feedback = ana();
    no_feedback.consent.feedback = false;
    assert!(check_consent(&no_feedback, NudgeKind::Feedback).is_err());
}

#[test]
fn a_compare_nudge_carries_objective_items_and_filled_templates() {
    let rules = rules();
    let catalog = Catalog::from_toml_str("example", CATALOG).unwrap();
    let dwell = PresenceEvent::Dwell {
        person: PersonId::from("p-1001"),
        visit: 7,
        zone: "laptops".into(),
        dwell_s: 20,
        at_ms: 1_795_334_400_000,
    };
    let found = candidates_for_event(&dwell, &ana(), &rules);
    // The same as the old entry point for the plain (dwell) rules. Note that
    // `matching_rules` treats every `Rule` as a dwell rule: rules with other
    // triggers must go through `candidates_for_event` only.
    let plain: Vec<Rule> = rules
        .iter()
        .filter(|r| matches!(r.trigger, Trigger::Dwell { .. }))
        .map(|r| r.rule.clone())
        .collect();
    assert_eq!(ids(&matching_rules(&dwell, &ana(), &plain)), ids(&found));
    let content = compose(&found[0], &ana(), Some(&catalog), None).unwrap();
    assert_eq!(content.title, "Comparing laptops?");
    assert_eq!(content.body, "4 models here; best rated: Air 13 (4.7/5).");
    let payload = build_nudge(&found[0], &ana(), "n-2".into(), 900_000, content);
    let items = payload.items.as_ref().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(items[0]["name"], "Air 13");
    assert_eq!(items[1]["name"], "Aero 14");
    assert_eq!(items[1]["compatible_with"][0], "phone:pixel-8");
    assert_eq!(items[1]["price"], "1099.00 EUR");
    let json = serde_json::to_string(&payload).unwrap();
    assert!(pressure_phrases(&json).is_empty());
    // Without a catalog the same template cannot be filled: held back.
    assert_eq!(
        compose(&found[0], &ana(), None, None),
        Err(ComposeError::Template(TemplateError::Missing(
            "catalog.count"
        )))
    );
}

#[test]
fn an_offer_nudge_needs_an_offer_and_says_it_is_the_best_for_the_person() {
    let offer_rule = TriggeredRule::dwell(rule(
        "headphones-offer",
        NudgeKind::Offer,
        "{offer.title}",
        "{offer.title}, in the app until Sunday.",
    ));
    let rules = [offer_rule];
    let dwell = PresenceEvent::Dwell {
        person: PersonId::from("p-1001"),
        visit: 7,
        zone: "laptops".into(),
        dwell_s: 20,
        at_ms: 0,
    };
    let found = candidates_for_event(&dwell, &ana(), &rules);
    assert_eq!(
        check_consent(&ana(), NudgeKind::Offer),
        Err(SkipReason::NoConsent {
            purpose: crate::identity::Purpose::Offers
        })
    );
    assert_eq!(
        compose(&found[0], &ana(), None, None),
        Err(ComposeError::NoOffer)
    );
    let offers = [Offer {
        id: "email-10".into(),
        title: "10 EUR off headphones".into(),
        segments: vec![Segment::EmailSubscribers],
        value_cents: 1000,
        valid_from_ms: None,
        valid_until_ms: None,
    }];
    let best = best_offer(&offers, &ana().identities, 0);
    let content = compose(&found[0], &ana(), None, best.as_ref()).unwrap();
    assert_eq!(content.title, "10 EUR off headphones");
    let payload = build_nudge(&found[0], &ana(), "n-3".into(), 1000, content);
    assert!(
        payload.why.text.contains("email-10"),
        "{}",
        payload.why.text
    );
}

#[test]
fn triggers_fit_their_kinds() {
    assert!(validate_trigger(NudgeKind::Thanks, &Trigger::Purchase).is_ok());
    assert!(validate_trigger(NudgeKind::Thanks, &Trigger::NthVisit(5)).is_ok());
    assert!(validate_trigger(NudgeKind::Thanks, &Trigger::NthVisit(0)).is_err());
    assert!(validate_trigger(NudgeKind::Offer, &Trigger::Purchase).is_err());
    assert!(validate_trigger(NudgeKind::Feedback, &Trigger::Exit { zone: None }).is_ok());
    assert!(validate_trigger(NudgeKind::Compare, &Trigger::Exit { zone: None }).is_err());
    let r = rule("r", NudgeKind::Compare, "t", "b");
    assert_eq!(
        TriggeredRule::from(r.clone()).trigger,
        Trigger::Dwell {
            zone: "laptops".into(),
            dwell_s: 20
        }
    );
    assert!(validate_trigger(NudgeKind::Thanks, &Trigger::of_rule(&r)).is_err());
}
