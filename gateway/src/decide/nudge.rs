//! The nudge as the phone receives it (docs/design.md §6).

use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, Item, comparison_items, items_json};
use super::kinds::STORE_ZONE;
use super::offers::Offer;
use super::template::{TemplateContext, TemplateError, render_template};
use super::{Candidate, Cause, NudgeKind};
use crate::identity::PersonRecord;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Why {
    pub rule: String,
    pub preference: Option<String>,
    pub zone: String,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    pub purpose: String,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NudgePayload {
    pub id: String,
    pub kind: NudgeKind,
    pub title: String,
    pub body: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<serde_json::Value>>,
    pub zone: String,
    pub created_at: String,
    pub expires_at: String,
    pub why: Why,
    pub stop: Stop,
}

fn rfc3339(at_ms: i64) -> String {
    Utc.timestamp_millis_opt(at_ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn purpose_words(kind: NudgeKind) -> &'static str {
    match kind {
        NudgeKind::Info | NudgeKind::Compare => "product information",
        NudgeKind::Thanks => "thank-you messages",
        NudgeKind::Feedback => "feedback questions",
        NudgeKind::Offer => "offers",
    }
}

/// Title, body and items of one nudge, after templates are filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct NudgeContent {
    pub title: String,
    pub body: String,
    pub items: Option<Vec<Item>>,
    /// The offer an `offer` nudge carries (its id goes in `why`).
    pub offer: Option<Offer>,
}

/// At most this many products in a comparison.
pub const MAX_COMPARE_ITEMS: usize = 4;

/// Why [`compose`] could not build a nudge; the caller holds it back and
/// logs the reason (it is not a cap).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ComposeError {
    #[error("template: {0}")]
    Template(#[from] TemplateError),
    /// An `offer` rule, but no offer the person qualifies for right now.
    #[error("no offer this person qualifies for")]
    NoOffer,
}

/// The category a rule's catalog fields and comparison refer to: the rule's
/// interest, or else its zone when the catalog has products of that name.
fn category_of(candidate: &Candidate<'_>, catalog: Option<&Catalog>) -> Option<String> {
    candidate.rule.interest.clone().or_else(|| {
        let zone = candidate.zone.as_ref();
        catalog
            .filter(|c| c.products.iter().any(|p| p.category == zone))
            .map(|_| zone.to_string())
    })
}

/// The values templates may use for this candidate.
pub fn template_context(
    candidate: &Candidate<'_>,
    person: &PersonRecord,
    catalog: Option<&Catalog>,
    offer: Option<&Offer>,
) -> TemplateContext {
    let category = category_of(candidate, catalog);
    let in_category = match (catalog, &category) {
        (Some(c), Some(cat)) => c.in_category(cat),
        _ => Vec::new(),
    };
    TemplateContext {
        first_interest: person.interests.first().cloned(),
        zone: (candidate.zone.as_ref() != STORE_ZONE).then(|| candidate.zone.to_string()),
        catalog_category: category.clone(),
        catalog_count: category.as_ref().and(catalog).map(|_| in_category.len()),
        catalog_top_name: in_category.first().map(|p| p.name.clone()),
        catalog_top_rating: in_category.first().map(|p| p.rating),
        offer_title: offer.map(|o| o.title.clone()),
    }
}

/// Fill in the rule's title and body, and for `compare` the comparison
/// items (from the catalog, with what works with what the person owns).
/// For `offer` rules pass the result of [`super::best_offer`]; `None` gives
/// [`ComposeError::NoOffer`].
pub fn compose(
    candidate: &Candidate<'_>,
    person: &PersonRecord,
    catalog: Option<&Catalog>,
    offer: Option<&Offer>,
) -> Result<NudgeContent, ComposeError> {
    let rule = candidate.rule;
    if rule.kind == NudgeKind::Offer && offer.is_none() {
        return Err(ComposeError::NoOffer);
    }
    let ctx = template_context(candidate, person, catalog, offer);
    let title = render_template(&rule.title, &ctx)?;
    let body = render_template(&rule.body, &ctx)?;
    let items = match (rule.kind, catalog, category_of(candidate, catalog)) {
        (NudgeKind::Compare, Some(catalog), Some(category)) => {
            let items = comparison_items(catalog, &category, &person.owns, MAX_COMPARE_ITEMS);
            (!items.is_empty()).then_some(items)
        }
        _ => None,
    };
    Ok(NudgeContent {
        title,
        body,
        items,
        offer: if rule.kind == NudgeKind::Offer {
            offer.cloned()
        } else {
            None
        },
    })
}

fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn why_text(candidate: &Candidate<'_>) -> String {
    let rule = candidate.rule;
    let zone = &candidate.zone;
    let asked = purpose_words(rule.kind);
    let what = match candidate.cause {
        Cause::Dwell { .. } => match &rule.interest {
            Some(interest) => {
                return format!(
                    "You told us you are interested in {interest} and you spent a while in the {zone} area, so we sent {asked}."
                );
            }
            None => format!("You spent a while in the {zone} area"),
        },
        Cause::Left if zone.as_ref() == STORE_ZONE => "You were on your way out".to_string(),
        Cause::Left => format!("You left the {zone} area"),
        Cause::Purchase => "You bought something from us".to_string(),
        Cause::Visit { number } => format!("This is your {} visit", ordinal(number)),
    };
    format!("{what} and you asked for {asked}.")
}

/// Build the payload from composed content, for a candidate that passed
/// consent and caps.
pub fn build_nudge(
    candidate: &Candidate<'_>,
    person: &PersonRecord,
    id: String,
    expiry_ms: i64,
    content: NudgeContent,
) -> NudgePayload {
    let rule = candidate.rule;
    let zone = candidate.zone.to_string();
    let mut text = why_text(candidate);
    if let Some(offer) = &content.offer {
        text.push_str(&format!(
            " It is the best offer any of your linked accounts qualifies for ({}).",
            offer.id
        ));
    }
    let _ = person;
    NudgePayload {
        id,
        kind: rule.kind,
        title: content.title,
        body: content.body,
        items: content.items.as_deref().map(items_json),
        zone: zone.clone(),
        created_at: rfc3339(candidate.at_ms),
        expires_at: rfc3339(candidate.at_ms + expiry_ms),
        why: Why {
            rule: rule.id.clone(),
            preference: rule.interest.clone(),
            zone,
            text,
        },
        stop: Stop {
            purpose: rule.kind.purpose().as_str().to_string(),
            text: format!(
                "To stop {}, turn off \"{}\" in the app's privacy settings.",
                purpose_words(rule.kind),
                rule.kind.purpose().as_str()
            ),
        },
    }
}

/// Build the payload for a candidate that passed consent and caps, with the
/// rule's title and body as written (no templates, no items).
pub fn build_payload(
    candidate: &Candidate<'_>,
    person: &PersonRecord,
    id: String,
    expiry_ms: i64,
) -> NudgePayload {
    let content = NudgeContent {
        title: candidate.rule.title.clone(),
        body: candidate.rule.body.clone(),
        items: None,
        offer: None,
    };
    build_nudge(candidate, person, id, expiry_ms, content)
}
