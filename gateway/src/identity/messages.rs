//! Messages from the app and the till that concern a person (docs/design.md §5, §6):
//! consent and preference changes, iOS check-ins, feedback answers and
//! purchases. Each parser is strict: unknown fields are rejected by name, and
//! every error names the path of the offending field (`beacons[1].rssi`), so
//! the caller can publish it on `gateway/errors` without echoing the content.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::person::{
    PersonId, PersonRecord, Purpose, RecordError, err, parse_consent_changes, parse_identity,
    parse_key, required_str, string_list, unknown_field, validate_topic_id,
};
use super::{Identity, rotating};

type Object = Map<String, Value>;

fn parse_object(text: &str) -> Result<Object, RecordError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(err("message", "must be a JSON object")),
        Err(e) => Err(err("message", format!("not valid JSON: {e}"))),
    }
}

/// Rejects the first field of `obj` that is not in `known`, naming it.
fn reject_unknown(path: &str, obj: &Object, known: &[&str]) -> Result<(), RecordError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(unknown_field(path, unknown)),
        None => Ok(()),
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn optional_time(obj: &Object, field: &str) -> Result<Option<DateTime<Utc>>, RecordError> {
    match obj.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| err(field, format!("not an RFC 3339 time: {e}"))),
        Some(_) => Err(err(field, "must be an RFC 3339 time as a string")),
    }
}

/// A replacement list (`interests`, `owns`): absent means "unchanged"; present
/// must be an array (`null` is refused: it is ambiguous between the two).
fn replacement_list(obj: &Object, field: &str) -> Result<Option<Vec<String>>, RecordError> {
    match obj.get(field) {
        None => Ok(None),
        Some(Value::Null) => Err(err(
            field,
            "must be an array of strings (use [] to clear the list)",
        )),
        Some(_) => string_list(obj, field).map(Some),
    }
}

/// A short free-text field: 1..=`max` characters, no control characters
/// except newline and tab.
fn free_text(path: &str, value: &str, max: usize) -> Result<String, RecordError> {
    let chars = value.chars().count();
    if chars == 0 || chars > max {
        return Err(err(path, format!("must be 1 to {max} characters")));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(err(path, "may not contain control characters"));
    }
    Ok(value.to_string())
}

// ---------------------------------------------------------------------------
// Consent and preference changes
// ---------------------------------------------------------------------------

/// What a consent message asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeRequest {
    /// Change some purposes and/or replace the preference lists. Purposes not
    /// named keep their value; lists not given are unchanged.
    Update {
        consent: Vec<(Purpose, bool)>,
        interests: Option<Vec<String>>,
        owns: Option<Vec<String>>,
    },
    /// Erase the whole person (docs/design.md §4 invariant 2).
    Forget,
}

/// A consent or preference change from the app, received on
/// `<p>/<s>/consent/<recipient>` (docs/design.md §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentChange {
    /// The app's id for this change; the receipt carries it back.
    pub id: String,
    /// The recipient pseudonym of the topic it arrived on.
    pub recipient: String,
    /// When the customer made the change, if the app said.
    pub at: Option<DateTime<Utc>>,
    pub request: ChangeRequest,
}

/// What [`ConsentChange::apply`] did to the record; the caller acts on it.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The record was updated in place. `withdrawn` lists the purposes that
    /// went from yes to no: pending outbox entries of those kinds must be
    /// purged before the change is acknowledged.
    Updated { withdrawn: Vec<Purpose> },
    /// The person asked to be forgotten. The record has been stripped of all
    /// consent and preferences (so it cannot be used by mistake), but its
    /// identities are kept so that the caller can find and remove the keys;
    /// the caller must now erase the person everywhere.
    Forget,
}

impl ConsentChange {
    /// Parses a consent message that arrived on the topic of
    /// `expected_recipient`. A `recipient` field, if present, must name the
    /// same recipient.
    pub fn from_json(text: &str, expected_recipient: &str) -> Result<Self, RecordError> {
        validate_topic_id("topic recipient", expected_recipient)?;
        let obj = &parse_object(text)?;
        reject_unknown(
            "",
            obj,
            &[
                "id",
                "recipient",
                "consent",
                "forget",
                "at",
                "interests",
                "owns",
            ],
        )?;
        let id = required_str(obj, "id")?;
        validate_topic_id("id", id)?;
        match obj.get("recipient") {
            None => {}
            Some(Value::String(r)) if r == expected_recipient => {}
            Some(Value::String(_)) => {
                return Err(err(
                    "recipient",
                    "a consent message for another recipient: it does not match the topic",
                ));
            }
            Some(_) => return Err(err("recipient", "must be a string")),
        }
        let at = optional_time(obj, "at")?;
        let request = match obj.get("forget") {
            Some(Value::Bool(true)) => {
                if let Some(other) = ["consent", "interests", "owns"]
                    .into_iter()
                    .find(|f| obj.contains_key(*f))
                {
                    return Err(err(other, "cannot be combined with \"forget\""));
                }
                ChangeRequest::Forget
            }
            Some(_) => {
                return Err(err(
                    "forget",
                    "must be true (leave it out to keep the person)",
                ));
            }
            None => {
                let consent = match obj.get("consent") {
                    None => Vec::new(),
                    Some(v) => parse_consent_changes("consent", v)?,
                };
                let interests = replacement_list(obj, "interests")?;
                let owns = replacement_list(obj, "owns")?;
                if consent.is_empty() && interests.is_none() && owns.is_none() {
                    return Err(err(
                        "consent",
                        "the message changes nothing: name at least one purpose, \
                         \"interests\", \"owns\" or \"forget\"",
                    ));
                }
                ChangeRequest::Update {
                    consent,
                    interests,
                    owns,
                }
            }
        };
        Ok(ConsentChange {
            id: id.to_string(),
            recipient: expected_recipient.to_string(),
            at,
            request,
        })
    }

    /// When the change counts as said: the app's `at`, but never later
    /// than the gateway's wall clock (a phone cannot date its word ahead
    /// to outrank the back office's next record), and now if it gave none.
    pub fn said_at_ms(&self, wall_now_ms: i64) -> i64 {
        self.at
            .map_or(wall_now_ms, |at| at.timestamp_millis().min(wall_now_ms))
    }

    /// Applies the change to `record`, as said at `at_ms` (see
    /// [`ConsentChange::said_at_ms`]): each purpose and the preference
    /// lists change only if this is the newest word on them. The caller
    /// checks beforehand that `record.recipient` is this change's
    /// recipient.
    pub fn apply(&self, record: &mut PersonRecord, at_ms: i64) -> Applied {
        match &self.request {
            ChangeRequest::Update {
                consent,
                interests,
                owns,
            } => {
                let withdrawn = record.set_consent(consent, at_ms);
                record.set_prefs(interests.as_ref(), owns.as_ref(), at_ms);
                Applied::Updated { withdrawn }
            }
            ChangeRequest::Forget => {
                record.consent = Default::default();
                record.interests.clear();
                record.owns.clear();
                Applied::Forget
            }
        }
    }
}

// ---------------------------------------------------------------------------
// iOS check-in
// ---------------------------------------------------------------------------

/// A store beacon the phone heard, as iOS ranging reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeardBeacon {
    /// The iBeacon proximity UUID, as bytes (as [`crate::decode`] holds it).
    pub uuid: [u8; 16],
    pub major: u16,
    pub minor: u16,
    /// dBm; iOS reports 0 when it could not measure it.
    pub rssi: i8,
}

/// An iOS check-in on `<p>/<s>/checkin/<recipient>` (docs/design.md §5): the app's
/// current rotating identifier and the store beacons it hears. It resolves
/// through the same rotating-ID table as an advert; the caller checks that the
/// resolved person's recipient is the topic's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckIn {
    pub rotating_id: [u8; 16],
    /// Unix time in milliseconds, from the phone's clock.
    pub at_ms: i64,
    pub beacons: Vec<HeardBeacon>,
}

/// Plausible `at_ms` values: 2000-01-01 to 2100-01-01. Catches seconds sent
/// where milliseconds are expected.
const MIN_AT_MS: i64 = 946_684_800_000;
const MAX_AT_MS: i64 = 4_102_444_800_000;
const MAX_BEACONS: usize = 64;

impl CheckIn {
    pub fn from_json(text: &str) -> Result<Self, RecordError> {
        let obj = &parse_object(text)?;
        reject_unknown("", obj, &["rotating_id", "at_ms", "beacons"])?;
        let rotating_id = parse_key(required_str(obj, "rotating_id")?)
            .map_err(|reason| err("rotating_id", reason))?;
        let at_ms = match obj.get("at_ms") {
            Some(v) => match v.as_i64() {
                Some(ms) if (MIN_AT_MS..MAX_AT_MS).contains(&ms) => ms,
                Some(ms) if (MIN_AT_MS / 1000..MAX_AT_MS / 1000).contains(&ms) => {
                    return Err(err(
                        "at_ms",
                        "must be Unix time in milliseconds (this looks like seconds)",
                    ));
                }
                _ => {
                    return Err(err(
                        "at_ms",
                        "must be Unix time in milliseconds, an integer between 2000 and 2100",
                    ));
                }
            },
            None => return Err(err("at_ms", "missing")),
        };
        let beacons = match obj.get("beacons") {
            Some(Value::Array(items)) => {
                if items.len() > MAX_BEACONS {
                    return Err(err("beacons", format!("at most {MAX_BEACONS} entries")));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| parse_beacon(&format!("beacons[{i}]"), item))
                    .collect::<Result<_, _>>()?
            }
            Some(_) => return Err(err("beacons", "must be an array")),
            None => return Err(err("beacons", "missing")),
        };
        Ok(CheckIn {
            rotating_id,
            at_ms,
            beacons,
        })
    }

    /// The rotation interval the phone's clock was in.
    pub fn interval(&self) -> u32 {
        rotating::interval_of(self.at_ms.div_euclid(1000))
    }
}

fn parse_beacon(path: &str, item: &Value) -> Result<HeardBeacon, RecordError> {
    let obj = item
        .as_object()
        .ok_or_else(|| err(path, "must be an object"))?;
    reject_unknown(path, obj, &["uuid", "major", "minor", "rssi"])?;
    let uuid = match obj.get("uuid") {
        Some(Value::String(s)) => uuid::Uuid::try_parse(s)
            .map(|u| *u.as_bytes())
            .map_err(|_| err(join(path, "uuid"), "not a UUID"))?,
        Some(_) => return Err(err(join(path, "uuid"), "must be a UUID string")),
        None => return Err(err(join(path, "uuid"), "missing")),
    };
    let integer = |name: &str, min: i64, max: i64| -> Result<i64, RecordError> {
        match obj.get(name) {
            Some(v) => v
                .as_i64()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    err(
                        join(path, name),
                        format!("must be an integer from {min} to {max}"),
                    )
                }),
            None => Err(err(join(path, name), "missing")),
        }
    };
    Ok(HeardBeacon {
        uuid,
        major: integer("major", 0, u16::MAX.into())? as u16,
        minor: integer("minor", 0, u16::MAX.into())? as u16,
        rssi: integer("rssi", -127, 0)? as i8,
    })
}

// ---------------------------------------------------------------------------
// Feedback
// ---------------------------------------------------------------------------

/// An answer to a feedback nudge, on `<p>/<s>/feedback/<recipient>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feedback {
    /// The `id` of the nudge being answered.
    pub nudge_id: String,
    /// The option the customer chose (the nudge template defines them).
    pub answer: String,
    pub comment: Option<String>,
}

const MAX_ANSWER: usize = 64;
const MAX_COMMENT: usize = 1000;

impl Feedback {
    pub fn from_json(text: &str) -> Result<Self, RecordError> {
        let obj = &parse_object(text)?;
        reject_unknown("", obj, &["nudge_id", "answer", "comment"])?;
        let nudge_id = required_str(obj, "nudge_id")?;
        validate_topic_id("nudge_id", nudge_id)?;
        let answer = free_text("answer", required_str(obj, "answer")?, MAX_ANSWER)?;
        let comment = match obj.get("comment") {
            None | Some(Value::Null) => None,
            Some(Value::String(c)) => Some(free_text("comment", c, MAX_COMMENT)?),
            Some(_) => return Err(err("comment", "must be a string")),
        };
        Ok(Feedback {
            nudge_id: nudge_id.to_string(),
            answer,
            comment,
        })
    }
}

// ---------------------------------------------------------------------------
// Purchases
// ---------------------------------------------------------------------------

/// Who bought: the till knows either the CRM person or one of their
/// identities (typically the loyalty card or e-mail).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Buyer {
    Person(PersonId),
    Identity(Identity),
}

/// A purchase from the till, on `<p>/<s>/purchases`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purchase {
    pub buyer: Buyer,
    pub items: Vec<String>,
    pub at: DateTime<Utc>,
}

impl Purchase {
    pub fn from_json(text: &str) -> Result<Self, RecordError> {
        let obj = &parse_object(text)?;
        reject_unknown("", obj, &["person", "identity", "items", "at"])?;
        let buyer = match (obj.get("person"), obj.get("identity")) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "identity",
                    "give either \"person\" or \"identity\", not both",
                ));
            }
            (Some(_), None) => {
                let person = required_str(obj, "person")?;
                validate_topic_id("person", person)?;
                Buyer::Person(PersonId::from(person))
            }
            (None, Some(identity)) => Buyer::Identity(parse_identity("identity", identity)?),
            (None, None) => return Err(err("person", "missing: give \"person\" or \"identity\"")),
        };
        let items = match obj.get("items") {
            None => return Err(err("items", "missing")),
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(err("items", "must list at least one item"));
            }
            Some(_) => string_list(obj, "items")?,
        };
        let at = optional_time(obj, "at")?.ok_or_else(|| err("at", "missing"))?;
        Ok(Purchase { buyer, items, at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Consent;

    fn record() -> PersonRecord {
        PersonRecord {
            person: PersonId::from("p-1"),
            recipient: "r-1".into(),
            timezone: None,
            identities: vec![],
            consent: Consent {
                proximity: true,
                product_info: true,
                offers: true,
                thanks: false,
                feedback: true,
            },
            interests: vec!["laptops".into()],
            owns: vec![],
            stamps: Default::default(),
        }
    }

    /// 2026-11-23T10:20:00Z, after every `at` below.
    const NOW_MS: i64 = 1_795_429_200_000;

    #[test]
    fn design_consent_example_withdraws_offers() {
        let change = ConsentChange::from_json(
            r#"{"id": "c-7f3e", "consent": {"offers": false}, "at": "2026-11-23T10:15:00Z"}"#,
            "r-1",
        )
        .unwrap();
        assert_eq!(change.id, "c-7f3e");
        assert_eq!(
            change.at.map(|t| t.to_rfc3339()),
            Some("2026-11-23T10:15:00+00:00".to_string())
        );
        let mut r = record();
        let applied = change.apply(&mut r, change.said_at_ms(NOW_MS));
        assert_eq!(
            applied,
            Applied::Updated {
                withdrawn: vec![Purpose::Offers]
            }
        );
        assert!(!r.consent.offers);
        assert!(r.consent.product_info, "unnamed purposes keep their value");
        assert_eq!(r.interests, vec!["laptops".to_string()]);
    }

    #[test]
    fn granting_and_preferences_are_not_withdrawals() {
        let change = ConsentChange::from_json(
            r#"{"id": "c-1", "recipient": "r-1", "consent": {"thanks": true, "proximity": true},
                "interests": ["tv"], "owns": []}"#,
            "r-1",
        )
        .unwrap();
        let mut r = record();
        assert_eq!(
            change.apply(&mut r, NOW_MS),
            Applied::Updated { withdrawn: vec![] }
        );
        assert!(r.consent.thanks);
        assert_eq!(r.interests, vec!["tv".to_string()]);
        assert!(r.owns.is_empty());
    }

    #[test]
    fn an_older_word_changes_nothing_and_a_phone_cannot_date_ahead() {
        let mut r = record();
        r.stamps = crate::identity::person::Stamps::all_at(NOW_MS - 1_000);
        // Said before the record's time: neither the purpose nor the list moves.
        let stale = ConsentChange::from_json(
            r#"{"id": "c-2", "consent": {"offers": false}, "interests": ["tv"],
                "at": "2026-11-23T10:15:00Z"}"#,
            "r-1",
        )
        .unwrap();
        let at = stale.said_at_ms(NOW_MS);
        assert_eq!(
            stale.apply(&mut r, at),
            Applied::Updated { withdrawn: vec![] }
        );
        assert!(r.consent.offers);
        assert_eq!(r.interests, vec!["laptops".to_string()]);
        // Dated a year ahead: counts as now, so the next record still wins.
        let ahead = ConsentChange::from_json(
            r#"{"id": "c-3", "consent": {"offers": false}, "at": "2027-11-23T10:15:00Z"}"#,
            "r-1",
        )
        .unwrap();
        assert_eq!(ahead.said_at_ms(NOW_MS), NOW_MS);
        let _ = ahead.apply(&mut r, NOW_MS);
        assert!(!r.consent.offers);
        assert_eq!(r.stamps.consent_at(Purpose::Offers), NOW_MS);
    }

    #[test]
    fn an_empty_key_is_named_too() {
        // Found by gateway/tests/parsers_fuzz.rs: the error named no field.
        let e =
            ConsentChange::from_json(r#"{"id":"-2","":"-2","forget": true}"#, "r-1").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("\"\"", "unknown field")
        );
        let e =
            PersonRecord::from_json(r#"{"person": "p-1", "recipient": "r-1", "": 1}"#).unwrap_err();
        assert_eq!(e.field, "\"\"");
    }

    #[test]
    fn forget_strips_the_record_and_says_so() {
        let change =
            ConsentChange::from_json(r#"{"id": "c-8a01", "forget": true}"#, "r-1").unwrap();
        assert_eq!(change.request, ChangeRequest::Forget);
        let mut r = record();
        assert_eq!(change.apply(&mut r, NOW_MS), Applied::Forget);
        assert!(Purpose::ALL.iter().all(|p| !r.consent.get(*p)));
        assert!(r.interests.is_empty());
    }

    #[test]
    fn consent_errors_name_the_field() {
        let cases = [
            (
                r#"{"id": "c-1", "consent": {"spam": true}}"#,
                "consent.spam",
            ),
            (
                r#"{"id": "c-1", "consent": {"offers": "no"}}"#,
                "consent.offers",
            ),
            (r#"{"consent": {"offers": false}}"#, "id"),
            (r#"{"id": "c/1", "consent": {"offers": false}}"#, "id"),
            (
                r#"{"id": "c-1", "consent": {"offers": false}, "colour": 1}"#,
                "colour",
            ),
            (
                r#"{"id": "c-1", "consent": {"offers": false}, "at": "yesterday"}"#,
                "at",
            ),
            (r#"{"id": "c-1", "forget": false}"#, "forget"),
            (
                r#"{"id": "c-1", "forget": true, "consent": {"offers": true}}"#,
                "consent",
            ),
            (r#"{"id": "c-1"}"#, "consent"),
            (r#"{"id": "c-1", "interests": null}"#, "interests"),
            (r#"{"id": "c-1", "owns": ["", "x"]}"#, "owns[0]"),
            (
                r#"{"id": "c-1", "recipient": 7, "forget": true}"#,
                "recipient",
            ),
            (r#"[1]"#, "message"),
            (r#"{"id": "c-1""#, "message"),
        ];
        for (text, field) in cases {
            let e = ConsentChange::from_json(text, "r-1").unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
        }
    }

    #[test]
    fn a_consent_message_for_another_recipient_is_refused() {
        let e = ConsentChange::from_json(
            r#"{"id": "c-1", "recipient": "r-2", "forget": true}"#,
            "r-1",
        )
        .unwrap_err();
        assert_eq!(e.field, "recipient");
        assert!(e.reason.contains("another recipient"), "{e}");
        assert!(!e.reason.contains("r-2"), "the error does not echo ids");
        assert_eq!(
            ConsentChange::from_json(r#"{"id": "c-1", "forget": true}"#, "r/1")
                .unwrap_err()
                .field,
            "topic recipient"
        );
    }

    const CHECKIN: &str = r#"{"rotating_id": "8be6cd371c5c891604bfbe49df845096", "at_ms": 1795334400123,
 "beacons": [{"uuid": "426c7565-4368-6172-6d42-6561636f6e73", "major": 1, "minor": 7, "rssi": -61}]}"#;

    #[test]
    fn design_checkin_example_parses() {
        let c = CheckIn::from_json(CHECKIN).unwrap();
        assert_eq!(
            hex::encode(c.rotating_id),
            "8be6cd371c5c891604bfbe49df845096"
        );
        assert_eq!(c.at_ms, 1_795_334_400_123);
        assert_eq!(c.interval(), 2_992_224);
        assert_eq!(
            c.beacons,
            vec![HeardBeacon {
                uuid: *b"BlueCharmBeacons",
                major: 1,
                minor: 7,
                rssi: -61
            }]
        );
    }

    #[test]
    fn checkin_errors_name_the_path() {
        let two = CHECKIN.replace(
            "\"rssi\": -61}]",
            "\"rssi\": -61}, {\"uuid\": \"426c7565-4368-6172-6d42-6561636f6e73\", \"major\": 1, \"minor\": 8, \"rssi\": 5}]",
        );
        let cases = [
            (two.clone(), "beacons[1].rssi"),
            (
                two.replace("\"minor\": 8", "\"minor\": 70000"),
                "beacons[1].minor",
            ),
            (
                two.replace("\"minor\": 8,", "\"minor\": 8, \"tx\": 1,"),
                "beacons[1].tx",
            ),
            (
                CHECKIN.replace("\"major\": 1", "\"major\": -1"),
                "beacons[0].major",
            ),
            (CHECKIN.replace("\"major\": 1,", ""), "beacons[0].major"),
            (CHECKIN.replace("426c7565-", "zz6c7565-"), "beacons[0].uuid"),
            (CHECKIN.replace("8be6cd37", "8be6"), "rotating_id"),
            (CHECKIN.replace("8be6cd37", "xxe6cd37"), "rotating_id"),
            (CHECKIN.replace("1795334400123", "1795334400"), "at_ms"),
            (CHECKIN.replace("1795334400123", "1.5"), "at_ms"),
            (CHECKIN.replace("\"at_ms\"", "\"at\""), "at"),
            (
                r#"{"rotating_id": "8be6cd371c5c891604bfbe49df845096", "at_ms": 1795334400123}"#
                    .into(),
                "beacons",
            ),
        ];
        for (text, field) in cases {
            let e = CheckIn::from_json(&text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
        }
        assert!(
            CheckIn::from_json(&CHECKIN.replace("1795334400123", "1795334400"))
                .unwrap_err()
                .reason
                .contains("seconds")
        );
    }

    #[test]
    fn feedback_parses_strictly() {
        let f = Feedback::from_json(
            r#"{"nudge_id": "0193a5c2-7e1f", "answer": "yes", "comment": "found it quickly"}"#,
        )
        .unwrap();
        assert_eq!(f.nudge_id, "0193a5c2-7e1f");
        assert_eq!(f.answer, "yes");
        assert_eq!(f.comment.as_deref(), Some("found it quickly"));
        assert_eq!(
            Feedback::from_json(r#"{"nudge_id": "n-1", "answer": "no"}"#)
                .unwrap()
                .comment,
            None
        );
        let long = "x".repeat(MAX_COMMENT + 1);
        let cases = [
            (r#"{"answer": "yes"}"#.to_string(), "nudge_id"),
            (r#"{"nudge_id": "n 1", "answer": "yes"}"#.into(), "nudge_id"),
            (r#"{"nudge_id": "n-1", "answer": ""}"#.into(), "answer"),
            (
                r#"{"nudge_id": "n-1", "answer": "a\u0007"}"#.into(),
                "answer",
            ),
            (
                r#"{"nudge_id": "n-1", "answer": "yes", "comment": 3}"#.into(),
                "comment",
            ),
            (
                format!(r#"{{"nudge_id": "n-1", "answer": "yes", "comment": "{long}"}}"#),
                "comment",
            ),
            (
                r#"{"nudge_id": "n-1", "answer": "yes", "stars": 5}"#.into(),
                "stars",
            ),
        ];
        for (text, field) in cases {
            let e = Feedback::from_json(&text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
        }
    }

    #[test]
    fn purchase_by_identity_or_person() {
        let p = Purchase::from_json(
            r#"{"identity": {"kind": "email", "value": "Ana@Example.com"}, "items": ["sku-123"], "at": "2026-11-23T10:20:00Z"}"#,
        )
        .unwrap();
        assert_eq!(
            p.buyer,
            Buyer::Identity(Identity::Email {
                value: "ana@example.com".into()
            })
        );
        assert_eq!(p.items, vec!["sku-123".to_string()]);
        assert_eq!(p.at.timestamp(), 1_795_429_200);
        let p = Purchase::from_json(
            r#"{"person": "p-1001", "items": ["a", "b"], "at": "2026-11-23T11:20:00+01:00"}"#,
        )
        .unwrap();
        assert_eq!(p.buyer, Buyer::Person(PersonId::from("p-1001")));
        assert_eq!(p.at.timestamp(), 1_795_429_200);
    }

    #[test]
    fn purchase_errors_name_the_path() {
        let cases = [
            (
                r#"{"items": ["a"], "at": "2026-11-23T10:20:00Z"}"#,
                "person",
            ),
            (
                r#"{"person": "p-1", "identity": {"kind": "card", "value": "1"}, "items": ["a"], "at": "2026-11-23T10:20:00Z"}"#,
                "identity",
            ),
            (
                r#"{"identity": {"kind": "card", "value": ""}, "items": ["a"], "at": "2026-11-23T10:20:00Z"}"#,
                "identity.value",
            ),
            (
                r#"{"identity": {"kind": "app", "key": "00"}, "items": ["a"], "at": "2026-11-23T10:20:00Z"}"#,
                "identity.key",
            ),
            (
                r#"{"person": "p-1", "items": [], "at": "2026-11-23T10:20:00Z"}"#,
                "items",
            ),
            (
                r#"{"person": "p-1", "items": ["a", 2], "at": "2026-11-23T10:20:00Z"}"#,
                "items[1]",
            ),
            (r#"{"person": "p-1", "items": ["a"]}"#, "at"),
            (
                r#"{"person": "p-1", "items": ["a"], "at": "2026-11-23 10:20"}"#,
                "at",
            ),
            (
                r#"{"person": "p-1", "items": ["a"], "at": "2026-11-23T10:20:00Z", "till": 4}"#,
                "till",
            ),
        ];
        for (text, field) in cases {
            let e = Purchase::from_json(text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
        }
    }
}
