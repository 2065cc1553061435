//! The one decision step. The daemon (inside the reservation transaction,
//! `store::Store::reserve_batch`), `gateway simulate` and the benchmarks all
//! decide through these two functions, so a dry run predicts what the
//! daemon sends:
//!
//! - [`prepare`]: what happened (a presence event, a purchase) × the person
//!   × the rules → candidates, sorted by priority once, each either ready
//!   (its content composed: templates, catalog, best offer) or held before
//!   any cap (no consent for its purpose, nothing to compose);
//! - [`choose`]: those candidates × the person's [`Ledger`] × the store's
//!   rate ledger × the limits in force × the candidates' time → sent or
//!   held (and why) per candidate tried, at most one sent, with the single
//!   fall-through rule ([`SkipReason::lets_the_next_candidate_try`]); the
//!   sent one is recorded in the ledgers.
//!
//! Pure: data and `now` in, data out; no clock, no I/O.

use chrono_tz::Tz;

use super::{
    Candidate, Caps, Catalog, ChainCaps, ChainLedger, ComposeError, Ledger, NudgeContent,
    NudgeKind, Offer, QuietHours, SentNudge, SkipReason, StoreRateLedger, ThanksEvent,
    TriggeredRule, best_offer, by_priority, candidates_for_event, check_caps, check_chain_caps,
    check_consent, compose, thanks_candidates,
};
use crate::identity::{PersonRecord, Purchase};
use crate::presence::{PresenceEvent, VisitId};

/// What happened that may earn the person a nudge.
#[derive(Clone, Copy, Debug)]
pub enum Happening<'e> {
    /// A presence event. On `Entered`, `visit_number` is the person's
    /// count of visits including this one (for `on_visit = n` rules);
    /// `None` when it could not be counted.
    Presence {
        event: &'e PresenceEvent,
        visit_number: Option<u32>,
    },
    /// A purchase from the till by this person; `visit` is their current
    /// visit if they are in the store.
    Purchase {
        purchase: &'e Purchase,
        visit: Option<VisitId>,
    },
}

/// Where nudge content comes from beyond the rule itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct ContentSources<'c> {
    pub catalog: Option<&'c Catalog>,
    pub offers: &'c [Offer],
}

/// Why a candidate was held before the caps were asked. Either way the
/// next candidate may still go: consent is per purpose, content per rule.
#[derive(Clone, Debug, PartialEq)]
pub enum NotReady {
    /// No consent for the nudge's purpose.
    Consent(SkipReason),
    /// Its content could not be made (a template with nothing to fill in,
    /// an offer rule with no offer for the person).
    NotComposed(ComposeError),
}

impl NotReady {
    /// Short label for reports: `no_consent`, `template` or `no_offer`.
    pub fn label(&self) -> &'static str {
        match self {
            NotReady::Consent(reason) => reason.label(),
            NotReady::NotComposed(ComposeError::Template(_)) => "template",
            NotReady::NotComposed(ComposeError::NoOffer) => "no_offer",
        }
    }
}

/// A candidate after consent and composition.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared<'a> {
    pub candidate: Candidate<'a>,
    pub content: Result<NudgeContent, NotReady>,
}

/// Every candidate `happening` triggers for `person`, highest priority
/// first, consent checked and content composed.
pub fn prepare<'a>(
    happening: &Happening<'_>,
    person: &PersonRecord,
    rules: &'a [TriggeredRule],
    sources: &ContentSources<'_>,
) -> Vec<Prepared<'a>> {
    let mut candidates = match happening {
        Happening::Presence {
            event,
            visit_number,
        } => {
            let mut candidates = candidates_for_event(event, person, rules);
            if let (PresenceEvent::Entered { visit, at_ms, .. }, Some(number)) =
                (event, visit_number)
            {
                candidates.extend(thanks_candidates(
                    &ThanksEvent::Visit {
                        number: *number,
                        visit: *visit,
                        at_ms: *at_ms,
                    },
                    person,
                    rules,
                ));
            }
            candidates
        }
        Happening::Purchase { purchase, visit } => thanks_candidates(
            &ThanksEvent::Purchase {
                purchase,
                visit: *visit,
            },
            person,
            rules,
        ),
    };
    by_priority(&mut candidates);
    candidates
        .into_iter()
        .map(|candidate| {
            let content = prepare_one(&candidate, person, sources);
            Prepared { candidate, content }
        })
        .collect()
}

fn prepare_one(
    candidate: &Candidate<'_>,
    person: &PersonRecord,
    sources: &ContentSources<'_>,
) -> Result<NudgeContent, NotReady> {
    let kind = candidate.rule.kind;
    check_consent(person, kind).map_err(NotReady::Consent)?;
    // The best offer any of the person's identities qualifies for: never a
    // better deal for a dormant one.
    let offer = (kind == NudgeKind::Offer)
        .then(|| best_offer(sources.offers, &person.identities, candidate.at_ms))
        .flatten();
    compose(candidate, person, sources.catalog, offer.as_ref()).map_err(NotReady::NotComposed)
}

/// What [`choose`] needs of a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask<'s> {
    pub kind: NudgeKind,
    pub rule: &'s str,
    pub visit: VisitId,
    /// The decision's time (the event's), in Unix ms.
    pub at_ms: i64,
    /// False if it was held before the caps (see [`NotReady`]).
    pub ready: bool,
}

/// Anything [`choose`] can decide on: a [`Prepared`] candidate here, a
/// reservation candidate in the store.
pub trait Contender {
    fn ask(&self) -> Ask<'_>;
}

impl Contender for Prepared<'_> {
    fn ask(&self) -> Ask<'_> {
        Ask {
            kind: self.candidate.rule.kind,
            rule: &self.candidate.rule.id,
            visit: self.candidate.visit,
            at_ms: self.candidate.at_ms,
            ready: self.content.is_ok(),
        }
    }
}

impl<'s> Contender for Ask<'s> {
    fn ask(&self) -> Ask<'_> {
        *self
    }
}

/// The limits in force for a decision.
#[derive(Clone, Copy, Debug)]
pub struct Limits<'l> {
    pub caps: &'l Caps,
    pub quiet: Option<&'l QuietHours>,
    pub tz: &'l Tz,
    /// The store's kill switch: false holds everything.
    pub enabled: bool,
}

/// What became of one candidate that [`choose`] tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Sent,
    /// Held by the kill switch, quiet hours or a cap.
    Held(SkipReason),
    /// Held before the caps ([`Ask::ready`] false); the caller knows why.
    NotReady,
}

/// The outcome of one decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// One per candidate tried, in order: a prefix of the candidates.
    pub verdicts: Vec<Verdict>,
    /// The person's ledger changed (a send recorded, or future-dated
    /// entries re-dated) and must be written.
    pub ledger_changed: bool,
    /// The store's rate ledger changed and must be written.
    pub rate_changed: bool,
}

impl Choice {
    /// The index of the candidate sent, if any.
    pub fn sent(&self) -> Option<usize> {
        self.verdicts.iter().position(|v| *v == Verdict::Sent)
    }
}

/// What the chain knows of a person, for [`choose_in_chain`]: the chain
/// caps in force, the nudges other stores reserved for them (folded) and
/// their own time zone (for `day = "home"`).
#[derive(Clone, Copy, Debug)]
pub struct ChainView<'c> {
    pub caps: &'c ChainCaps,
    pub others: &'c ChainLedger,
    pub home: Option<&'c Tz>,
}

/// Decide one person's candidates (highest priority first): the first one
/// the limits allow is sent and recorded in `ledger` (and `rate`, when the
/// store rate is capped). A held candidate lets the next one try only if
/// its reason [lets it](SkipReason::lets_the_next_candidate_try), and a
/// candidate held before the caps always does; anything that holds the
/// person or the store as a whole ends the decision.
pub fn choose<C: Contender>(
    candidates: &[C],
    ledger: &mut Ledger,
    rate: &mut StoreRateLedger,
    limits: &Limits<'_>,
) -> Choice {
    choose_in_chain(candidates, ledger, None, rate, limits)
}

/// [`choose`], with the chain's caps (`[caps.chain]`) checked after the
/// store's own: a candidate the store's caps allow is held if one more
/// nudge would break a chain cap, counting the store's own sends in
/// `ledger` and the other stores' in `chain.others` (docs/design.md,
/// chain-wide caps). `None`: the store's caps alone, as without a chain.
pub fn choose_in_chain<C: Contender>(
    candidates: &[C],
    ledger: &mut Ledger,
    chain: Option<&ChainView<'_>>,
    rate: &mut StoreRateLedger,
    limits: &Limits<'_>,
) -> Choice {
    let mut choice = Choice {
        verdicts: Vec::with_capacity(1),
        ledger_changed: false,
        rate_changed: false,
    };
    for candidate in candidates {
        let ask = candidate.ask();
        if !ask.ready {
            choice.verdicts.push(Verdict::NotReady);
            continue;
        }
        if ledger.clamp_future(ask.at_ms) {
            choice.ledger_changed = true;
        }
        let verdict = if limits.enabled {
            check_caps(
                ledger,
                rate,
                limits.caps,
                limits.quiet,
                limits.tz,
                ask.kind,
                ask.rule,
                ask.visit,
                ask.at_ms,
            )
            .and_then(|()| match chain {
                Some(chain) => {
                    check_chain_caps(ledger, chain.others, chain.caps, chain.home, ask.at_ms)
                }
                None => Ok(()),
            })
        } else {
            Err(SkipReason::KillSwitch)
        };
        match verdict {
            Ok(()) => {
                ledger.record(SentNudge {
                    at_ms: ask.at_ms,
                    kind: ask.kind,
                    rule: ask.rule.to_string(),
                    visit: ask.visit,
                });
                choice.ledger_changed = true;
                if limits.caps.store_per_minute.is_some() {
                    rate.record(ask.at_ms);
                    choice.rate_changed = true;
                }
                choice.verdicts.push(Verdict::Sent);
                break;
            }
            Err(reason) => {
                let next = reason.lets_the_next_candidate_try();
                choice.verdicts.push(Verdict::Held(reason));
                if !next {
                    break;
                }
            }
        }
    }
    choice
}

#[cfg(test)]
mod tests;
