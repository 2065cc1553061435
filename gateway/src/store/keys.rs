//! Every sled tree and key layout the gateway writes, in one place, with the
//! layout version. Change a layout here, bump [`LAYOUT_VERSION`] and add a
//! step to `super::migrate`.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `layout_version` | u32 BE |
//! | `meta` | `next_seq` | u64 BE: next outbox / decision sequence |
//! | `meta` | `store_rate` | JSON [`crate::decide::StoreRateLedger`] |
//! | `people` | person id | JSON [`crate::identity::PersonRecord`] |
//! | `recipients` | recipient pseudonym | person id |
//! | `ledgers` | person id | JSON [`crate::decide::Ledger`]: what caps need |
//! | `outbox` | seq u64 BE | JSON [`super::OutboxEntry`] |
//! | `decisions` | person id, 0x00, seq u64 BE | JSON [`super::DecisionEntry`] |
//! | `decision_by_nudge` | nudge id | key in `decisions` |
//! | `visits` | person id | JSON [`crate::presence::VisitSeed`] fields |
//!
//! Person ids never contain 0x00 (they are validated to a safe alphabet),
//! so the `decisions` prefix scan per person is exact.

pub const LAYOUT_VERSION: u32 = 1;

pub const META: &str = "meta";
pub const PEOPLE: &str = "people";
pub const RECIPIENTS: &str = "recipients";
pub const LEDGERS: &str = "ledgers";
pub const OUTBOX: &str = "outbox";
pub const DECISIONS: &str = "decisions";
pub const DECISION_BY_NUDGE: &str = "decision_by_nudge";
pub const VISITS: &str = "visits";

pub const META_LAYOUT_VERSION: &[u8] = b"layout_version";
pub const META_NEXT_SEQ: &[u8] = b"next_seq";
pub const META_STORE_RATE: &[u8] = b"store_rate";

pub fn person(id: &str) -> Vec<u8> {
    id.as_bytes().to_vec()
}

pub fn outbox(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn outbox_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

pub fn decision(person: &str, seq: u64) -> Vec<u8> {
    let mut key = decision_prefix(person);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub fn decision_prefix(person: &str) -> Vec<u8> {
    let mut key = person.as_bytes().to_vec();
    key.push(0);
    key
}
