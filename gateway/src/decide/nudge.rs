//! The nudge as the phone receives it (DESIGN §6).

use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::{Candidate, NudgeKind};
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

/// Build the payload for a candidate that passed consent and caps.
pub fn build_payload(
    candidate: &Candidate<'_>,
    person: &PersonRecord,
    id: String,
    expiry_ms: i64,
) -> NudgePayload {
    let rule = candidate.rule;
    let zone = candidate.zone.to_string();
    let text = match &rule.interest {
        Some(interest) => format!(
            "You told us you are interested in {interest} and you spent a while in the {zone} area, so we sent {}.",
            purpose_words(rule.kind)
        ),
        None => format!(
            "You spent a while in the {zone} area and you asked for {}.",
            purpose_words(rule.kind)
        ),
    };
    let _ = person;
    NudgePayload {
        id,
        kind: rule.kind,
        title: rule.title.clone(),
        body: rule.body.clone(),
        items: None,
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
