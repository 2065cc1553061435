//! The person record (docs/design.md §5) and its validation. The CRM topic, the
//! import file and the store all go through [`PersonRecord::from_json`].

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A CRM person id. Cheap to clone; never logged in the clear (see
/// [`crate::privacy`]).
///
/// An id of up to [`PersonId::INLINE_BYTES`] bytes (CRM numbers, loyalty
/// card numbers, short codes) is held in the value itself; a longer one
/// (a UUID) is shared behind an `Arc`. Every enrolled person's id is in
/// memory (`people.rs`), and at a million people a heap block for each
/// short id was 32 MB of the daemon's footprint (BENCHMARKS.md §2a).
/// Equality, order, hashing and serde see only the string.
#[derive(Clone)]
pub struct PersonId(Repr);

#[derive(Clone)]
enum Repr {
    Inline {
        len: u8,
        bytes: [u8; PersonId::INLINE_BYTES],
    },
    Shared(Arc<str>),
}

impl PersonId {
    /// The longest id held without an allocation: what fits beside the
    /// length and the variant in the 24 bytes the shared form takes.
    pub const INLINE_BYTES: usize = 22;

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => bytes
                .get(..usize::from(*len))
                .and_then(|b| std::str::from_utf8(b).ok())
                // Only ever made from a `&str` of `len` bytes (`From`).
                .unwrap_or_default(),
            Repr::Shared(s) => s,
        }
    }

    /// Heap bytes this id holds beyond its own size: none when inline,
    /// the shared string and its two counts otherwise.
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Repr::Inline { .. } => 0,
            Repr::Shared(s) => s.len() + 2 * size_of::<usize>(),
        }
    }
}

impl From<&str> for PersonId {
    fn from(s: &str) -> Self {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= Self::INLINE_BYTES => {
                let mut bytes = [0; Self::INLINE_BYTES];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                PersonId(Repr::Inline { len, bytes })
            }
            _ => PersonId(Repr::Shared(Arc::from(s))),
        }
    }
}

impl PartialEq for PersonId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for PersonId {}

impl PartialOrd for PersonId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PersonId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for PersonId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Serialize for PersonId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PersonId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(PersonId::from(s.as_ref()))
    }
}

impl fmt::Display for PersonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The salted hash once the salt is installed (`privacy::install_salt`, at
/// daemon start), else only a placeholder: Debug itself never makes a salt
/// (no randomness, clock or environment in formatting a value).
impl fmt::Debug for PersonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match crate::privacy::hashed_if_salted(self.as_str()) {
            Some(hash) => write!(f, "PersonId({hash})"),
            None => f.write_str("PersonId(***)"),
        }
    }
}

/// A purpose a person can consent to (docs/design.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Proximity,
    ProductInfo,
    Offers,
    Thanks,
    Feedback,
}

impl Purpose {
    pub const ALL: [Purpose; 5] = [
        Purpose::Proximity,
        Purpose::ProductInfo,
        Purpose::Offers,
        Purpose::Thanks,
        Purpose::Feedback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Proximity => "proximity",
            Purpose::ProductInfo => "product_info",
            Purpose::Offers => "offers",
            Purpose::Thanks => "thanks",
            Purpose::Feedback => "feedback",
        }
    }

    pub fn parse(s: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Its position in [`Purpose::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Consent per purpose. Anything absent is no.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub proximity: bool,
    pub product_info: bool,
    pub offers: bool,
    pub thanks: bool,
    pub feedback: bool,
}

impl Consent {
    /// Whether the person opted in to being recognised in the store at
    /// all. Without it they are a stranger: not resolved, not stored, not
    /// logged, never nudged. The one place this question is answered.
    pub fn opted_in_to_proximity(&self) -> bool {
        self.proximity
    }

    /// Whether a purpose is allowed. Without `proximity` nothing is.
    pub fn allows(&self, purpose: Purpose) -> bool {
        self.proximity && self.get(purpose)
    }

    pub fn get(&self, purpose: Purpose) -> bool {
        match purpose {
            Purpose::Proximity => self.proximity,
            Purpose::ProductInfo => self.product_info,
            Purpose::Offers => self.offers,
            Purpose::Thanks => self.thanks,
            Purpose::Feedback => self.feedback,
        }
    }

    pub fn set(&mut self, purpose: Purpose, value: bool) {
        match purpose {
            Purpose::Proximity => self.proximity = value,
            Purpose::ProductInfo => self.product_info = value,
            Purpose::Offers => self.offers = value,
            Purpose::Thanks => self.thanks = value,
            Purpose::Feedback => self.feedback = value,
        }
    }
}

/// One way of recognising a person: an app install's key, an e-mail address
/// (stored lower-case) or a loyalty card number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Identity {
    App {
        #[serde(with = "hex_key")]
        key: [u8; 16],
    },
    Email {
        value: String,
    },
    Card {
        value: String,
    },
}

mod hex_key {
    pub fn serialize<S: serde::Serializer>(key: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(key))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        super::parse_key(&text).map_err(serde::de::Error::custom)
    }
}

/// A validated person record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonRecord {
    pub person: PersonId,
    pub recipient: String,
    pub timezone: Option<String>,
    pub identities: Vec<Identity>,
    pub consent: Consent,
    pub interests: Vec<String>,
    pub owns: Vec<String>,
    /// When each part was last set. Records stored before stamps existed
    /// read as older than anything (`Stamps::default`).
    #[serde(default)]
    pub stamps: Stamps,
}

/// When each part of a person's record was last set, in Unix ms
/// (docs: "newest word wins"). The CRM and the app both write a person;
/// their messages arrive in any order (a retained record comes again after
/// every reconnect), so a part changes only for a newer word, never
/// because a message arrived later. `i64::MIN` is "older than anything":
/// a CRM record without `updated_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamps {
    /// Recipient, time zone and identities: written by the CRM only.
    pub record_ms: i64,
    /// Interests and owned products: the CRM and the app.
    pub prefs_ms: i64,
    /// Each purpose of [`Purpose::ALL`], in that order.
    pub consent_ms: [i64; 5],
}

impl Default for Stamps {
    fn default() -> Self {
        Stamps::all_at(i64::MIN)
    }
}

impl Stamps {
    pub fn all_at(at_ms: i64) -> Self {
        Stamps {
            record_ms: at_ms,
            prefs_ms: at_ms,
            consent_ms: [at_ms; 5],
        }
    }

    pub fn consent_at(&self, purpose: Purpose) -> i64 {
        self.consent_ms[purpose.index()]
    }

    /// The newest time any part was set.
    pub fn newest(&self) -> i64 {
        self.consent_ms
            .into_iter()
            .fold(self.record_ms.max(self.prefs_ms), i64::max)
    }
}

/// Whether a word said at `at_ms` replaces a purpose held as `held` since
/// `held_ms`. Newer wins; at the same instant "no" wins, so that the
/// outcome does not depend on which of the two arrived first.
pub fn consent_word_wins(at_ms: i64, on: bool, held_ms: i64, held: bool) -> bool {
    at_ms > held_ms || (at_ms == held_ms && held && !on)
}

impl PersonRecord {
    /// What the gateway holds after a CRM record (or an imported one)
    /// arrives: the held record with `incoming` folded in (see
    /// [`PersonRecord::merge_record`]), or the refusal of a record that is
    /// not later than the person's erasure. A record dated ahead of the
    /// wall clock counts as said now, so that it cannot outrank the
    /// customer's next word.
    pub fn fold(
        held: Option<PersonRecord>,
        mut incoming: PersonRecord,
        erased_at_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<PersonRecord, RecordError> {
        if incoming.stamps.newest() > now_ms {
            incoming.stamps = Stamps::all_at(now_ms);
        }
        if erased_at_ms.is_some_and(|erased| incoming.stamps.record_ms <= erased) {
            return Err(err(
                "updated_at",
                "not later than the person's erasure: refused (a re-enrolment must be dated after it)",
            ));
        }
        Ok(match held {
            Some(mut held) => {
                let _ = held.merge_record(&incoming);
                held
            }
            None => incoming,
        })
    }

    /// Fold a newer or older CRM record for the same person into this
    /// one, part by part: each part takes `incoming`'s value only if
    /// `incoming` said it later. Returns the purposes switched off.
    pub fn merge_record(&mut self, incoming: &PersonRecord) -> Vec<Purpose> {
        let at = incoming.stamps.record_ms;
        if at > self.stamps.record_ms {
            self.recipient.clone_from(&incoming.recipient);
            self.timezone.clone_from(&incoming.timezone);
            self.identities.clone_from(&incoming.identities);
            self.stamps.record_ms = at;
        }
        if at > self.stamps.prefs_ms {
            self.interests.clone_from(&incoming.interests);
            self.owns.clone_from(&incoming.owns);
            self.stamps.prefs_ms = at;
        }
        let words: Vec<(Purpose, bool)> = Purpose::ALL
            .into_iter()
            .map(|p| (p, incoming.consent.get(p)))
            .collect();
        self.set_consent(&words, at)
    }

    /// Set purposes said at `at_ms`, each only if that word is the newest.
    /// Returns the purposes that went from yes to no.
    pub fn set_consent(&mut self, words: &[(Purpose, bool)], at_ms: i64) -> Vec<Purpose> {
        let mut withdrawn = Vec::new();
        for &(purpose, on) in words {
            let i = purpose.index();
            let held = self.consent.get(purpose);
            if !consent_word_wins(at_ms, on, self.stamps.consent_ms[i], held) {
                continue;
            }
            if held && !on && !withdrawn.contains(&purpose) {
                withdrawn.push(purpose);
            }
            self.consent.set(purpose, on);
            self.stamps.consent_ms[i] = at_ms;
        }
        withdrawn
    }

    /// Replace interests and owned products said at `at_ms`, if newest.
    pub fn set_prefs(
        &mut self,
        interests: Option<&Vec<String>>,
        owns: Option<&Vec<String>>,
        at_ms: i64,
    ) {
        if at_ms <= self.stamps.prefs_ms || (interests.is_none() && owns.is_none()) {
            return;
        }
        if let Some(list) = interests {
            self.interests.clone_from(list);
        }
        if let Some(list) = owns {
            self.owns.clone_from(list);
        }
        self.stamps.prefs_ms = at_ms;
    }
}

/// Why a record was rejected: the field path and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RecordError {
    pub field: String,
    pub reason: String,
}

/// An object key the format does not have, named by its path. The empty
/// key is a key too (`{"": 1}`): it is named `""`, so that every error
/// names a field.
pub(super) fn unknown_field(path: &str, key: &str) -> RecordError {
    let key = if key.is_empty() { "\"\"" } else { key };
    let field = if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    };
    err(field, "unknown field")
}

pub(super) fn err(field: impl Into<String>, reason: impl Into<String>) -> RecordError {
    RecordError {
        field: field.into(),
        reason: reason.into(),
    }
}

pub fn parse_key(text: &str) -> Result<[u8; 16], String> {
    if text.len() != 32 {
        return Err(format!(
            "must be 16 bytes as 32 hex digits, got {} characters",
            text.len()
        ));
    }
    let bytes = hex::decode(text).map_err(|e| format!("not hex: {e}"))?;
    bytes.try_into().map_err(|_| "must be 16 bytes".to_string())
}

/// Ids end up in MQTT topics and sled keys: keep them to a safe alphabet.
pub fn validate_topic_id(field: &str, value: &str) -> Result<(), RecordError> {
    if value.is_empty() || value.len() > 64 {
        return Err(err(field, "must be 1 to 64 characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(err(
            field,
            "may hold only letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(())
}

const MAX_LIST: usize = 64;
const MAX_TEXT: usize = 128;

impl PersonRecord {
    pub fn from_json(text: &str) -> Result<Self, RecordError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| err("record", format!("not valid JSON: {e}")))?;
        Self::from_value(&value)
    }

    /// Field-by-field validation so that every error names its path.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, RecordError> {
        let obj = value
            .as_object()
            .ok_or_else(|| err("record", "must be a JSON object"))?;
        const FIELDS: [&str; 8] = [
            "person",
            "updated_at",
            "recipient",
            "timezone",
            "identities",
            "consent",
            "interests",
            "owns",
        ];
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(unknown_field("", unknown));
        }
        let person = required_str(obj, "person")?;
        validate_topic_id("person", person)?;
        let recipient = required_str(obj, "recipient")?;
        validate_topic_id("recipient", recipient)?;
        let timezone = match obj.get("timezone") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(tz)) => {
                tz.parse::<chrono_tz::Tz>()
                    .map_err(|_| err("timezone", format!("unknown IANA time zone {tz:?}")))?;
                Some(tz.clone())
            }
            Some(_) => return Err(err("timezone", "must be a string or null")),
        };
        let identities = match obj.get("identities") {
            None => Vec::new(),
            Some(serde_json::Value::Array(items)) => {
                if items.len() > MAX_LIST {
                    return Err(err("identities", format!("at most {MAX_LIST} entries")));
                }
                let mut identities: Vec<Identity> = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let path = format!("identities[{i}]");
                    let identity = parse_identity(&path, item)?;
                    if let Some(j) = identities.iter().position(|seen| seen == &identity) {
                        return Err(err(path, format!("same identity as identities[{j}]")));
                    }
                    identities.push(identity);
                }
                identities
            }
            Some(_) => return Err(err("identities", "must be an array")),
        };
        let consent = match obj.get("consent") {
            None => Consent::default(),
            Some(v) => parse_consent_changes("consent", v)?.into_iter().fold(
                Consent::default(),
                |mut c, (p, on)| {
                    c.set(p, on);
                    c
                },
            ),
        };
        let updated_at_ms = match obj.get("updated_at") {
            None | Some(serde_json::Value::Null) => i64::MIN,
            Some(serde_json::Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| err("updated_at", format!("not an RFC 3339 time: {e}")))?
                .timestamp_millis(),
            Some(_) => return Err(err("updated_at", "must be an RFC 3339 time as a string")),
        };
        Ok(PersonRecord {
            person: PersonId::from(person),
            recipient: recipient.to_string(),
            timezone,
            identities,
            consent,
            interests: string_list(obj, "interests")?,
            owns: string_list(obj, "owns")?,
            stamps: Stamps::all_at(updated_at_ms),
        })
    }

    pub fn app_keys(&self) -> impl Iterator<Item = &[u8; 16]> {
        self.identities.iter().filter_map(|i| match i {
            Identity::App { key } => Some(key),
            _ => None,
        })
    }

    /// The record in the CRM's form (what `from_json` reads): `updated_at`
    /// is the time of the record's own parts; per-purpose times are kept
    /// only in storage.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("a person record always serialises");
        if let Some(obj) = value.as_object_mut() {
            obj.remove("stamps");
            if let Some(at) = chrono::DateTime::from_timestamp_millis(self.stamps.record_ms)
                .filter(|_| self.stamps.record_ms != i64::MIN)
            {
                obj.insert(
                    "updated_at".into(),
                    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                        .into(),
                );
            }
        }
        value.to_string()
    }
}

pub(super) fn required_str<'a>(
    obj: &'a serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<&'a str, RecordError> {
    match obj.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(_) => Err(err(field, "must be a string")),
        None => Err(err(field, "missing")),
    }
}

pub(super) fn string_list(
    obj: &serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<Vec<String>, RecordError> {
    match obj.get(field) {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => {
            if items.len() > MAX_LIST {
                return Err(err(field, format!("at most {MAX_LIST} entries")));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| match v.as_str() {
                    Some(s) if !s.is_empty() && s.len() <= MAX_TEXT => Ok(s.to_string()),
                    _ => Err(err(
                        format!("{field}[{i}]"),
                        format!("must be a string of 1 to {MAX_TEXT} characters"),
                    )),
                })
                .collect()
        }
        Some(_) => Err(err(field, "must be an array of strings")),
    }
}

pub(super) fn parse_identity(
    path: &str,
    item: &serde_json::Value,
) -> Result<Identity, RecordError> {
    let obj = item
        .as_object()
        .ok_or_else(|| err(path, "must be an object"))?;
    let kind = match obj.get("kind") {
        Some(serde_json::Value::String(k)) => k.as_str(),
        _ => {
            return Err(err(
                format!("{path}.kind"),
                "must be one of \"app\", \"email\", \"card\"",
            ));
        }
    };
    let field_of = |name: &str| -> Result<&str, RecordError> {
        if let Some(unknown) = obj
            .keys()
            .find(|k| k.as_str() != "kind" && k.as_str() != name)
        {
            return Err(unknown_field(path, unknown));
        }
        match obj.get(name) {
            Some(serde_json::Value::String(s)) => Ok(s),
            _ => Err(err(format!("{path}.{name}"), "must be a string")),
        }
    };
    match kind {
        "app" => {
            let key = parse_key(field_of("key")?).map_err(|r| err(format!("{path}.key"), r))?;
            Ok(Identity::App { key })
        }
        "email" => {
            let value = field_of("value")?;
            if !value.contains('@') || value.len() > 254 {
                return Err(err(format!("{path}.value"), "not an e-mail address"));
            }
            Ok(Identity::Email {
                value: value.to_ascii_lowercase(),
            })
        }
        "card" => {
            let value = field_of("value")?;
            if value.is_empty() || value.len() > MAX_TEXT {
                return Err(err(
                    format!("{path}.value"),
                    format!("must be 1 to {MAX_TEXT} characters"),
                ));
            }
            Ok(Identity::Card {
                value: value.to_string(),
            })
        }
        other => Err(err(
            format!("{path}.kind"),
            format!("unknown identity kind {other:?}"),
        )),
    }
}

/// Parse a `{"purpose": bool, ...}` object; unknown purposes are errors.
pub fn parse_consent_changes(
    path: &str,
    value: &serde_json::Value,
) -> Result<Vec<(Purpose, bool)>, RecordError> {
    let obj = value
        .as_object()
        .ok_or_else(|| err(path, "must be an object of purpose: true/false"))?;
    obj.iter()
        .map(|(name, on)| {
            let purpose = Purpose::parse(name)
                .ok_or_else(|| err(format!("{path}.{name}"), "unknown purpose"))?;
            let on = on
                .as_bool()
                .ok_or_else(|| err(format!("{path}.{name}"), "must be true or false"))?;
            Ok((purpose, on))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_salted_hash_never_the_id() {
        let id = PersonId::from("ana@example.com");
        let hash = crate::privacy::hashed("ana@example.com");
        assert_eq!(format!("{id:?}"), format!("PersonId({hash})"));
        assert!(!format!("{:?}", PersonId::from("p-77")).contains("p-77"));
    }

    #[test]
    fn a_person_id_is_24_bytes_and_short_ids_take_no_heap() {
        assert_eq!(size_of::<PersonId>(), 24);
        assert_eq!(size_of::<Option<PersonId>>(), 24);
        let short = "x".repeat(PersonId::INLINE_BYTES);
        let long = "x".repeat(PersonId::INLINE_BYTES + 1);
        assert_eq!(PersonId::from(short.as_str()).heap_bytes(), 0);
        assert_eq!(PersonId::from(long.as_str()).heap_bytes(), long.len() + 16);
        assert_eq!(PersonId::from("").as_str(), "");
    }

    proptest::proptest! {
        /// Inline or shared, an id is its string: same text back, same
        /// order, equality, hash and JSON as the `str` it was made from.
        #[test]
        fn a_person_id_behaves_as_its_string(a in "\\PC{0,40}", b in "\\PC{0,40}") {
            use std::hash::BuildHasher;
            let (ia, ib) = (PersonId::from(a.as_str()), PersonId::from(b.as_str()));
            proptest::prop_assert_eq!(ia.as_str(), a.as_str());
            proptest::prop_assert_eq!(ia.cmp(&ib), a.cmp(&b));
            proptest::prop_assert_eq!(ia == ib, a == b);
            let hasher = std::hash::RandomState::new();
            proptest::prop_assert_eq!(hasher.hash_one(&ia), hasher.hash_one(a.as_str()));
            let json = serde_json::to_string(&ia).unwrap();
            proptest::prop_assert_eq!(&json, &serde_json::to_string(&a).unwrap());
            proptest::prop_assert_eq!(serde_json::from_str::<PersonId>(&json).unwrap(), ia);
        }
    }

    const DESIGN_EXAMPLE: &str = r#"{"person": "p-1001", "recipient": "r-5f2c9a", "timezone": null,
 "identities": [{"kind": "app", "key": "75c734c6dd1a782de7a965da5eb93125"},
                {"kind": "email", "value": "ana@example.com"}],
 "consent": {"proximity": true, "product_info": true, "offers": false,
             "thanks": true, "feedback": true},
 "interests": ["laptops", "headphones"],
 "owns": ["phone:pixel-8"]}"#;

    #[test]
    fn the_design_example_parses_and_round_trips() {
        let record = PersonRecord::from_json(DESIGN_EXAMPLE).unwrap();
        assert_eq!(record.person.as_str(), "p-1001");
        assert!(record.consent.allows(Purpose::ProductInfo));
        assert!(!record.consent.allows(Purpose::Offers));
        assert_eq!(record.app_keys().count(), 1);
        assert_eq!(PersonRecord::from_json(&record.to_json()).unwrap(), record);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (DESIGN_EXAMPLE.replace("\"owns\"", "\"pets\""), "pets"),
            (
                DESIGN_EXAMPLE.replace("75c734c6dd1a782de7a965da5eb93125", "75c7"),
                "identities[0].key",
            ),
            (
                DESIGN_EXAMPLE.replace("\"offers\"", "\"spam\""),
                "consent.spam",
            ),
            (DESIGN_EXAMPLE.replace("r-5f2c9a", "r/5f"), "recipient"),
            (
                DESIGN_EXAMPLE.replace("\"timezone\": null", "\"timezone\": \"Mars/Base\""),
                "timezone",
            ),
            (
                DESIGN_EXAMPLE.replace("\"kind\": \"email\"", "\"kind\": \"fax\""),
                "identities[1].kind",
            ),
            (
                DESIGN_EXAMPLE
                    .replace("ana@example.com", "75c734c6dd1a782de7a965da5eb93125")
                    .replace(
                        "\"kind\": \"email\", \"value\"",
                        "\"kind\": \"app\", \"key\"",
                    ),
                "identities[1]",
            ),
        ];
        for (text, field) in cases {
            assert_eq!(PersonRecord::from_json(&text).unwrap_err().field, field);
        }
    }

    #[test]
    fn without_proximity_nothing_is_allowed() {
        let consent = Consent {
            proximity: false,
            product_info: true,
            offers: true,
            thanks: true,
            feedback: true,
        };
        assert!(Purpose::ALL.iter().all(|p| !consent.allows(*p)));
    }
}
