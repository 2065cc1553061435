//! Kinds beyond "dwell in a zone": thanks after a purchase or on the n-th
//! visit, a feedback question on the way out. Pure functions from an event
//! and a person to the candidates they trigger; consent and caps come after,
//! exactly as for dwell rules.
//!
//! [`Rule`] keeps its fields (`zone`, `dwell_s`) so that existing code keeps
//! building; the trigger travels next to it in a [`TriggeredRule`]. A rule
//! without an explicit trigger is a dwell rule on its own zone and dwell.

use std::sync::Arc;

use super::{Candidate, Cause, NudgeKind, Rule, by_priority};
use crate::identity::{Buyer, PersonRecord, Purchase};
use crate::presence::{PresenceEvent, VisitId, ZoneId};

/// The zone name a payload carries when the event has no zone (a purchase,
/// the start of a visit, leaving the store).
pub const STORE_ZONE: &str = "store";

/// What makes a rule fire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The person has been in `zone` for `dwell_s` seconds (the default).
    Dwell { zone: ZoneId, dwell_s: u32 },
    /// The person left `zone` (`ZoneLeft`), or the store when `None`
    /// (`Exited`). Config: `on = "exit"`, optional `zone`.
    Exit { zone: Option<ZoneId> },
    /// The till reported a purchase by the person. Config: `on = "purchase"`.
    Purchase,
    /// The person's n-th visit has started. Config: `on_visit = n`.
    NthVisit(u32),
}

impl Trigger {
    /// The trigger of a plain [`Rule`]: dwell on its zone for its dwell time.
    pub fn of_rule(rule: &Rule) -> Trigger {
        Trigger::Dwell {
            zone: rule.zone.clone(),
            dwell_s: rule.dwell_s,
        }
    }
}

/// Which kinds make sense for which trigger; the config layer calls this
/// and reports the error at the rule's `on` (or `kind`) path.
pub fn validate_trigger(kind: NudgeKind, trigger: &Trigger) -> Result<(), String> {
    let ok = match trigger {
        Trigger::Dwell { .. } => !matches!(kind, NudgeKind::Thanks),
        Trigger::Exit { .. } => matches!(kind, NudgeKind::Feedback | NudgeKind::Thanks),
        Trigger::Purchase | Trigger::NthVisit(_) => kind == NudgeKind::Thanks,
    };
    if let Trigger::NthVisit(0) = trigger {
        return Err("on_visit counts from 1".into());
    }
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a {} nudge cannot be sent {}",
            kind.as_str(),
            match trigger {
                Trigger::Dwell { .. } => "on dwell (thanks follow a purchase or a visit count)",
                Trigger::Exit { .. } => "on exit (only feedback or thanks)",
                Trigger::Purchase => "after a purchase (only thanks)",
                Trigger::NthVisit(_) => "on a visit count (only thanks)",
            }
        ))
    }
}

/// A rule with its trigger.
#[derive(Clone, Debug, PartialEq)]
pub struct TriggeredRule {
    pub rule: Rule,
    pub trigger: Trigger,
}

impl TriggeredRule {
    pub fn new(rule: Rule, trigger: Trigger) -> Self {
        TriggeredRule { rule, trigger }
    }

    /// A plain dwell rule.
    pub fn dwell(rule: Rule) -> Self {
        let trigger = Trigger::of_rule(&rule);
        TriggeredRule { rule, trigger }
    }
}

impl From<Rule> for TriggeredRule {
    fn from(rule: Rule) -> Self {
        TriggeredRule::dwell(rule)
    }
}

/// Plain rules (today's `Config::rules`) as dwell rules.
pub fn dwell_rules(rules: &[Rule]) -> Vec<TriggeredRule> {
    rules.iter().cloned().map(TriggeredRule::dwell).collect()
}

fn relevant(rule: &Rule, person: &PersonRecord) -> bool {
    rule.interest
        .as_ref()
        .is_none_or(|i| person.interests.iter().any(|p| p == i))
}

fn store_zone() -> ZoneId {
    Arc::from(STORE_ZONE)
}

/// Every candidate a presence event triggers: dwell rules on `Dwell`, exit
/// rules on `ZoneLeft` (rules with that zone) and `Exited` (rules without a
/// zone). Highest priority first. Rules whose interest the person never gave
/// are not candidates.
pub fn candidates_for_event<'a>(
    event: &PresenceEvent,
    person: &PersonRecord,
    rules: &'a [TriggeredRule],
) -> Vec<Candidate<'a>> {
    let mut matched: Vec<Candidate<'a>> = rules
        .iter()
        .filter(|r| relevant(&r.rule, person))
        .filter_map(|r| {
            let (zone, visit, at_ms, cause) = match (&r.trigger, event) {
                (
                    Trigger::Dwell { zone, dwell_s },
                    PresenceEvent::Dwell {
                        zone: z,
                        dwell_s: d,
                        visit,
                        at_ms,
                        ..
                    },
                ) if zone == z && dwell_s == d => {
                    (z.clone(), *visit, *at_ms, Cause::Dwell { dwell_s: *d })
                }
                (
                    Trigger::Exit { zone: Some(zone) },
                    PresenceEvent::ZoneLeft {
                        zone: z,
                        visit,
                        at_ms,
                        ..
                    },
                ) if zone == z => (z.clone(), *visit, *at_ms, Cause::Left),
                (Trigger::Exit { zone: None }, PresenceEvent::Exited { visit, at_ms, .. }) => {
                    (store_zone(), *visit, *at_ms, Cause::Left)
                }
                _ => return None,
            };
            Some(Candidate {
                rule: &r.rule,
                zone,
                visit,
                at_ms,
                cause,
            })
        })
        .collect();
    by_priority(&mut matched);
    matched
}

/// Feedback (and other exit-triggered) candidates for an `Exited` or
/// `ZoneLeft` event: a short question on the way out. Empty for any other
/// event.
pub fn feedback_candidates<'a>(
    event: &PresenceEvent,
    person: &PersonRecord,
    rules: &'a [TriggeredRule],
) -> Vec<Candidate<'a>> {
    if !matches!(
        event,
        PresenceEvent::Exited { .. } | PresenceEvent::ZoneLeft { .. }
    ) {
        return Vec::new();
    }
    candidates_for_event(event, person, rules)
}

/// What can earn a thank-you.
#[derive(Clone, Debug, PartialEq)]
pub enum ThanksEvent<'p> {
    /// A purchase from the till, already resolved to the person. `visit` is
    /// the person's current visit if they are in the store; otherwise the
    /// purchase counts as a visit of its own (starting at its time).
    Purchase {
        purchase: &'p Purchase,
        visit: Option<VisitId>,
    },
    /// The person's visit number `number` (1 = first) started: the pipeline
    /// counts visits and calls this on `Entered`.
    Visit {
        number: u32,
        visit: VisitId,
        at_ms: i64,
    },
}

fn buyer_is(person: &PersonRecord, buyer: &Buyer) -> bool {
    match buyer {
        Buyer::Person(id) => *id == person.person,
        Buyer::Identity(identity) => person.identities.contains(identity),
    }
}

/// Thanks candidates: rules `on = "purchase"` after a purchase by this
/// person, rules `on_visit = n` when their n-th visit starts. A purchase
/// whose buyer is not this person triggers nothing.
pub fn thanks_candidates<'a>(
    event: &ThanksEvent<'_>,
    person: &PersonRecord,
    rules: &'a [TriggeredRule],
) -> Vec<Candidate<'a>> {
    let mut matched: Vec<Candidate<'a>> = rules
        .iter()
        .filter(|r| relevant(&r.rule, person))
        .filter_map(|r| {
            let (visit, at_ms, cause) = match (&r.trigger, event) {
                (Trigger::Purchase, ThanksEvent::Purchase { purchase, visit })
                    if buyer_is(person, &purchase.buyer) =>
                {
                    let at_ms = purchase.at.timestamp_millis();
                    (visit.unwrap_or(at_ms), at_ms, Cause::Purchase)
                }
                (
                    Trigger::NthVisit(n),
                    ThanksEvent::Visit {
                        number,
                        visit,
                        at_ms,
                    },
                ) if n == number => (*visit, *at_ms, Cause::Visit { number: *number }),
                _ => return None,
            };
            Some(Candidate {
                rule: &r.rule,
                zone: store_zone(),
                visit,
                at_ms,
                cause,
            })
        })
        .collect();
    by_priority(&mut matched);
    matched
}
