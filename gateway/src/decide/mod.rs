//! Deciding: presence events × rules × consent × caps × quiet hours → a
//! nudge or a reason to stay silent. Pure: `now` and the person's ledger come
//! in as data; the storage layer runs [`check_caps`] inside the same sled
//! transaction that reserves the slot (docs/design.md §4 invariant 1).

mod caps;
pub mod catalog;
pub mod kinds;
mod nudge;
pub mod offers;
pub mod step;
pub mod template;
pub mod wording;

pub use caps::{
    CHAIN_KEEP_MS, Caps, ChainCaps, ChainDay, ChainEntry, ChainLedger, Ledger, QuietHours,
    SentNudge, StoreRateLedger, check_caps, check_chain_caps,
};
pub use catalog::{Catalog, CatalogError, Item, comparison_items};
pub use kinds::{
    STORE_ZONE, ThanksEvent, Trigger, TriggeredRule, candidates_for_event, dwell_rules,
    feedback_candidates, thanks_candidates, validate_trigger,
};
pub use nudge::{
    ComposeError, MAX_COMPARE_ITEMS, NudgeContent, NudgePayload, Why, build_nudge, build_payload,
    compose, template_context,
};
pub use offers::{Offer, Segment, best_offer};
pub use step::{
    Ask, ChainView, Choice, Contender, ContentSources, Happening, Limits, NotReady, Prepared,
    Verdict, choose, choose_in_chain, prepare,
};
pub use template::{TemplateContext, TemplateError, render_template, validate_template};
pub use wording::check_wording;

use serde::{Deserialize, Serialize};

use crate::identity::{PersonRecord, Purpose};
use crate::presence::{PresenceEvent, ZoneId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NudgeKind {
    Info,
    Compare,
    Thanks,
    Feedback,
    Offer,
}

impl NudgeKind {
    pub const ALL: [NudgeKind; 5] = [
        NudgeKind::Info,
        NudgeKind::Compare,
        NudgeKind::Thanks,
        NudgeKind::Feedback,
        NudgeKind::Offer,
    ];

    /// The consent purpose a nudge of this kind needs.
    pub fn purpose(self) -> Purpose {
        match self {
            NudgeKind::Info | NudgeKind::Compare => Purpose::ProductInfo,
            NudgeKind::Thanks => Purpose::Thanks,
            NudgeKind::Feedback => Purpose::Feedback,
            NudgeKind::Offer => Purpose::Offers,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NudgeKind::Info => "info",
            NudgeKind::Compare => "compare",
            NudgeKind::Thanks => "thanks",
            NudgeKind::Feedback => "feedback",
            NudgeKind::Offer => "offer",
        }
    }

    pub fn parse(s: &str) -> Option<NudgeKind> {
        NudgeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A validated rule: when a person has dwelt `dwell_s` in `zone` and has
/// the `interest` (when set), offer a nudge of `kind`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub id: String,
    pub zone: ZoneId,
    pub dwell_s: u32,
    pub interest: Option<String>,
    pub kind: NudgeKind,
    pub title: String,
    pub body: String,
    /// Higher wins when several rules match the same event.
    pub priority: i32,
}

/// Why a nudge was not sent. Each is counted and written to the decision log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum SkipReason {
    KillSwitch,
    NoConsent {
        purpose: Purpose,
    },
    QuietHours,
    PerVisit {
        limit: u32,
    },
    PerDay {
        limit: u32,
    },
    PerWeek {
        limit: u32,
    },
    MinGap {
        gap_s: u32,
    },
    PerKindPerDay {
        limit: u32,
    },
    RuleCooldown {
        cooldown_s: u32,
    },
    StoreRate {
        per_minute: u32,
    },
    /// `[caps.chain]`: the person's nudges today across every store of the
    /// chain (this store's own and other stores' folded entries).
    ChainPerDay {
        limit: u32,
    },
    ChainPerWeek {
        limit: u32,
    },
    ChainMinGap {
        gap_s: u32,
    },
}

impl SkipReason {
    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SkipReason::KillSwitch => "kill_switch",
            SkipReason::NoConsent { .. } => "no_consent",
            SkipReason::QuietHours => "quiet_hours",
            SkipReason::PerVisit { .. } => "per_visit",
            SkipReason::PerDay { .. } => "per_day",
            SkipReason::PerWeek { .. } => "per_week",
            SkipReason::MinGap { .. } => "min_gap",
            SkipReason::PerKindPerDay { .. } => "per_kind_per_day",
            SkipReason::RuleCooldown { .. } => "rule_cooldown",
            SkipReason::StoreRate { .. } => "store_rate",
            SkipReason::ChainPerDay { .. } => "chain_per_day",
            SkipReason::ChainPerWeek { .. } => "chain_per_week",
            SkipReason::ChainMinGap { .. } => "chain_min_gap",
        }
    }

    /// Whether the next (lower-priority) candidate of the same decision may
    /// still be tried after this one was held. Only limits specific to one
    /// rule or kind leave room for another; consent is per purpose, so a
    /// candidate held for consent lets the next one try too. Anything that
    /// holds the person or the store as a whole ends the decision.
    pub fn lets_the_next_candidate_try(&self) -> bool {
        matches!(
            self,
            SkipReason::RuleCooldown { .. }
                | SkipReason::PerKindPerDay { .. }
                | SkipReason::NoConsent { .. }
        )
    }

    /// Plain words for `gateway explain`.
    pub fn explain(&self) -> String {
        match self {
            SkipReason::KillSwitch => "held back: the store switched nudges off".into(),
            SkipReason::NoConsent { purpose } => {
                format!("held back: no consent for {}", purpose.as_str())
            }
            SkipReason::QuietHours => "held back: quiet hours".into(),
            SkipReason::PerVisit { limit } => {
                format!("held back: already {limit} nudge(s) this visit")
            }
            SkipReason::PerDay { limit } => format!("held back: already {limit} nudge(s) today"),
            SkipReason::PerWeek { limit } => {
                format!("held back: already {limit} nudge(s) this week")
            }
            SkipReason::MinGap { gap_s } => {
                format!("held back: less than {gap_s} s since the last nudge")
            }
            SkipReason::PerKindPerDay { limit } => {
                format!("held back: already {limit} of this kind today")
            }
            SkipReason::RuleCooldown { cooldown_s } => {
                format!("held back: this rule fired less than {cooldown_s} s ago")
            }
            SkipReason::StoreRate { per_minute } => {
                format!("held back: store-wide limit of {per_minute} per minute")
            }
            SkipReason::ChainPerDay { limit } => {
                format!("held back: already {limit} nudge(s) today across the chain's stores")
            }
            SkipReason::ChainPerWeek { limit } => {
                format!("held back: already {limit} nudge(s) this week across the chain's stores")
            }
            SkipReason::ChainMinGap { gap_s } => {
                format!(
                    "held back: less than {gap_s} s since the last nudge in any of the chain's stores"
                )
            }
        }
    }
}

/// What happened that made a rule a candidate; `why` is worded from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The person has been in the candidate's zone for `dwell_s` seconds.
    Dwell { dwell_s: u32 },
    /// The person left the zone (or the store, zone [`STORE_ZONE`]).
    Left,
    /// The till reported a purchase.
    Purchase,
    /// The person's visit number `number` started.
    Visit { number: u32 },
}

/// A rule that matched an event, before consent and caps.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate<'a> {
    pub rule: &'a Rule,
    pub zone: ZoneId,
    pub visit: i64,
    pub at_ms: i64,
    pub cause: Cause,
}

/// Rules triggered by `event` for this person, highest priority first. A
/// rule whose interest the person never gave is not a candidate at all: it
/// is not relevant to them, so there is nothing to explain.
pub fn matching_rules<'a>(
    event: &PresenceEvent,
    person: &PersonRecord,
    rules: &'a [Rule],
) -> Vec<Candidate<'a>> {
    let PresenceEvent::Dwell {
        zone,
        dwell_s,
        visit,
        at_ms,
        ..
    } = event
    else {
        return Vec::new();
    };
    let mut matched: Vec<Candidate<'a>> = rules
        .iter()
        .filter(|r| r.zone == *zone && r.dwell_s == *dwell_s)
        .filter(|r| {
            r.interest
                .as_ref()
                .is_none_or(|i| person.interests.iter().any(|p| p == i))
        })
        .map(|rule| Candidate {
            rule,
            zone: zone.clone(),
            visit: *visit,
            at_ms: *at_ms,
            cause: Cause::Dwell { dwell_s: *dwell_s },
        })
        .collect();
    by_priority(&mut matched);
    matched
}

/// The one priority order of a decision's candidates: higher `priority`
/// first, then rule id (so that equal priorities decide the same way
/// everywhere).
pub fn by_priority(candidates: &mut [Candidate<'_>]) {
    candidates.sort_by(|a, b| {
        b.rule
            .priority
            .cmp(&a.rule.priority)
            .then_with(|| a.rule.id.cmp(&b.rule.id))
    });
}

/// Consent gate, checked before any cap: no nudge without opt-in to its purpose.
pub fn check_consent(person: &PersonRecord, kind: NudgeKind) -> Result<(), SkipReason> {
    if person.consent.allows(kind.purpose()) {
        Ok(())
    } else {
        Err(SkipReason::NoConsent {
            purpose: kind.purpose(),
        })
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_kinds;
