//! The chain's three messages (`<p>/chain/decisions|erasures|consent/<s>`,
//! docs/design.md, chain-wide caps), parsed strictly: every field named,
//! unknown ones refused, each error naming its field. Pure: the daemon
//! folds and applies what they say (`daemon/incoming/chain.rs`), `gateway
//! simulate` replays recorded decisions through the chain caps; what a
//! store publishes is written by `store::chain`.

use crate::decide::{ChainEntry, NudgeKind};
use crate::identity::person::parse_consent_changes;
use crate::identity::{Purpose, RecordError};
use crate::privacy::ChainPerson;

fn err(field: &str, reason: impl Into<String>) -> RecordError {
    RecordError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Earliest and latest time a chain message may carry (Unix ms, years
/// 2000 to 2100), as the app's messages.
const MIN_AT_MS: i64 = 946_684_800_000;
const MAX_AT_MS: i64 = 4_102_444_800_000;
/// Longest rule id or nudge id accepted from the chain.
const MAX_ID_CHARS: usize = 128;

/// Another store's decision: the person's chain hash and the entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainDecision {
    pub person: ChainPerson,
    pub entry: ChainEntry,
}

/// A person forgotten in another store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainErasure {
    pub person: ChainPerson,
    pub erased_at_ms: i64,
}

/// A consent change the app sent to another store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainConsent {
    pub person: ChainPerson,
    pub consent: Vec<(Purpose, bool)>,
    pub at_ms: i64,
}

type Object = serde_json::Map<String, serde_json::Value>;

fn object(payload: &[u8], fields: &[&str]) -> Result<Object, RecordError> {
    let text = std::str::from_utf8(payload).map_err(|_| err("payload", "not UTF-8"))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| err("payload", format!("not JSON: {e}")))?;
    let serde_json::Value::Object(obj) = value else {
        return Err(err("payload", "must be a JSON object"));
    };
    if let Some(unknown) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(err(unknown, "unknown field"));
    }
    match obj.get("v") {
        None => return Err(err("v", "missing")),
        Some(v) if v.as_i64() == Some(1) => {}
        Some(_) => return Err(err("v", "must be 1 (the only version there is)")),
    }
    Ok(obj)
}

fn person(obj: &Object) -> Result<ChainPerson, RecordError> {
    match obj.get("person") {
        None => Err(err("person", "missing")),
        Some(serde_json::Value::String(text)) => ChainPerson::from_hex(text)
            .ok_or_else(|| err("person", "must be 32 lowercase hex characters")),
        Some(_) => Err(err("person", "must be a string")),
    }
}

fn time(obj: &Object, field: &str) -> Result<i64, RecordError> {
    match obj.get(field) {
        None => Err(err(field, "missing")),
        Some(v) => match v.as_i64() {
            Some(ms) if (MIN_AT_MS..MAX_AT_MS).contains(&ms) => Ok(ms),
            _ => Err(err(
                field,
                "must be Unix time in milliseconds, an integer between 2000 and 2100",
            )),
        },
    }
}

fn id(obj: &Object, field: &str) -> Result<String, RecordError> {
    match obj.get(field) {
        None => Err(err(field, "missing")),
        Some(serde_json::Value::String(text))
            if !text.is_empty()
                && text.chars().count() <= MAX_ID_CHARS
                && !text.chars().any(char::is_control) =>
        {
            Ok(text.clone())
        }
        Some(_) => Err(err(
            field,
            format!("must be a string of 1 to {MAX_ID_CHARS} printable characters"),
        )),
    }
}

/// `{"v": 1, "person", "kind", "rule", "at_ms", "nudge_id"}`: exactly these.
pub fn parse_decision(payload: &[u8]) -> Result<ChainDecision, RecordError> {
    let obj = object(
        payload,
        &["v", "person", "kind", "rule", "at_ms", "nudge_id"],
    )?;
    let person = person(&obj)?;
    let kind = match obj.get("kind") {
        None => return Err(err("kind", "missing")),
        Some(v) => serde_json::from_value::<NudgeKind>(v.clone()).map_err(|_| {
            err(
                "kind",
                "must be one of info, compare, thanks, feedback, offer",
            )
        })?,
    };
    let rule = id(&obj, "rule")?;
    let at_ms = time(&obj, "at_ms")?;
    let nudge_id = id(&obj, "nudge_id")?;
    Ok(ChainDecision {
        person,
        entry: ChainEntry {
            at_ms,
            nudge_id,
            kind,
            rule,
        },
    })
}

/// `{"v": 1, "person", "erased_at_ms"}`.
pub fn parse_erasure(payload: &[u8]) -> Result<ChainErasure, RecordError> {
    let obj = object(payload, &["v", "person", "erased_at_ms"])?;
    Ok(ChainErasure {
        person: person(&obj)?,
        erased_at_ms: time(&obj, "erased_at_ms")?,
    })
}

/// `{"v": 1, "person", "consent": {purpose: bool, ...}, "at_ms"}`.
pub fn parse_consent(payload: &[u8]) -> Result<ChainConsent, RecordError> {
    let obj = object(payload, &["v", "person", "consent", "at_ms"])?;
    let person = person(&obj)?;
    let consent = match obj.get("consent") {
        None => return Err(err("consent", "missing")),
        Some(v) => parse_consent_changes("consent", v)?,
    };
    if consent.is_empty() {
        return Err(err("consent", "names no purpose"));
    }
    Ok(ChainConsent {
        person,
        consent,
        at_ms: time(&obj, "at_ms")?,
    })
}

/// Shared with the daemon's tests of what a store publishes.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const PERSON: &str = "d7d8958469d7ad49398d29056543538d";

    /// The field and reason of a refusal.
    pub(crate) fn field(result: Result<impl std::fmt::Debug, RecordError>) -> (String, String) {
        let e = result.expect_err("refused");
        (e.field, e.reason)
    }

    #[test]
    fn bad_chain_messages_are_refused_naming_the_field() {
        let good = serde_json::json!({"v": 1, "person": PERSON, "kind": "info",
            "rule": "r", "at_ms": 1_795_334_400_123i64, "nudge_id": "n-1"});
        let with = |key: &str, value: serde_json::Value| {
            let mut v = good.clone();
            v[key] = value;
            v.to_string()
        };
        let without = |key: &str| {
            let mut v = good.clone();
            v.as_object_mut().unwrap().remove(key);
            v.to_string()
        };
        for (payload, expected) in [
            (with("zone", "laptops".into()), "zone"),
            (with("v", 2.into()), "v"),
            (without("v"), "v"),
            (with("person", "P-1".into()), "person"),
            (with("person", PERSON.to_uppercase().into()), "person"),
            (without("person"), "person"),
            (with("kind", "spam".into()), "kind"),
            (without("kind"), "kind"),
            (with("rule", "".into()), "rule"),
            (with("rule", 7.into()), "rule"),
            (with("at_ms", 1_795_334_400i64.into()), "at_ms"),
            (with("at_ms", "soon".into()), "at_ms"),
            (without("at_ms"), "at_ms"),
            (with("nudge_id", "x".repeat(500).into()), "nudge_id"),
            (without("nudge_id"), "nudge_id"),
            ("[1]".into(), "payload"),
            ("{".into(), "payload"),
        ] {
            assert_eq!(
                field(parse_decision(payload.as_bytes())).0,
                expected,
                "{payload}"
            );
        }
        assert_eq!(field(parse_decision(&[0xff, 0xfe])).0, "payload");
    }
}
