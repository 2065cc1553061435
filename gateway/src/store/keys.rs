//! Every sled tree and key layout the gateway writes, in one place, with the
//! layout version. Change a layout here, bump [`LAYOUT_VERSION`] and add a
//! step to `super::migrate`.
//!
//! Layout 6 (current): layout 5 and the expiry index, so that the
//! retention sweep visits only what is past the window instead of walking
//! (and decrypting) the whole decision log, feedback and tombstones every
//! hour (BENCHMARKS.md §2a, "A month-old store").
//!
//! | tree | key | value |
//! |---|---|---|
//! | `expiry.v6` | time u64 BE (the entry's `at_ms`, a tombstone's erased-at; Unix ms, negative as 0) ‖ tree byte (`d` decisions, `f` feedback, `t` tombstones) ‖ the entry's key in its tree | empty |
//!
//! Exactly one index key per entry of the three trees, written in the same
//! transaction as the entry (a reservation batch, a feedback answer that
//! replaces an older one, a tombstone moved on by a later erasure). An
//! erasure removes the index keys of the person's decisions and answers
//! with them (it opens each to learn its time while the key still exists),
//! so the index keeps a forgotten person's tag only beside their tombstone,
//! which holds the same tag and time. 5 → 6 builds the index in one walk
//! of the three trees at open (removing, as the old sweep did, entries no
//! key opens any more).
//!
//! Layout 5: layout 4 and the people snapshot, a file beside the
//! sled files (`store::snapshot`) that the daemon reads at start instead of
//! scanning `people.v2`. It is current only while `meta` names it; every
//! change to the people removes that marker first. The version moved so
//! that a gateway that does not know the marker (and would change people
//! without removing it) refuses this store. 4 → 5 writes nothing.
//!
//! | tree or file | key | value |
//! |---|---|---|
//! | `meta` | `people_snapshot` | 16 bytes: the id in the current snapshot's header |
//! | `meta` | `chain_index_at` | 16 bytes: the snapshot id for which `chain_people.v4` was known to hold every person (a start skips the index sync while it is the current one) |
//! | file `people.snapshot` | | header `GWPEOPL1` ‖ id (16) ‖ count u64 LE ‖ flags (1: in vault slot order) ‖ 7 zero bytes; per person: tag(person) ‖ vault slot u32 LE ‖ length u32 LE ‖ sealed binary entry (person, recipient, identities, consent; `store::snapshot`); HMAC-SHA256 under tag(`people-snapshot-mac`, "") of all before it |
//!
//! Layout 4: layout 3 and the chain's trees (chain-wide caps,
//! docs/design.md). `chain(person)` is the chain person hash
//! (`privacy::chain_person`, 16 bytes): an HMAC under the chain secret,
//! which is not in the storage directory; the same in every store.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `chain_index_of` | 16 bytes: `chain_person(secret, "")`, the secret the `chain_people.v4` index was built under |
//! | `chain_ledgers.v4` | chain(person) | JSON [`crate::decide::ChainLedger`]: other stores' nudges (time, kind, rule, nudge id), the last eight days |
//! | `chain_folded.v4` | nudge id (UTF-8) | i64 BE: the entry's time; folding is idempotent by nudge id; dropped with the ledgers' window |
//! | `chain_outbox.v4` | seq u64 BE (the `outbox.v2` sequence: a decision's entry has its nudge's seq) | JSON [`super::chain::ChainOutboxEntry`] |
//! | `chain_people.v4` | chain(person) | tag(person) ‖ sealed person id: a chain erasure or consent change finds the local person |
//! | `chain_tombstones.v4` | chain(person) | erased at, i64 BE Unix ms: refuses older chain entries and CRM records |
//!
//! Layout 3 → 4 writes nothing: the chain trees start empty, and the
//! daemon fills `chain_people.v4` from the people when it starts in a
//! chain (`Store::chain_index_sync`).
//!
//! Layout 3. `tag(kind, id)` is an HMAC of the id under the site
//! secret kept in the key vault (`keys.vault`, beside the sled files), so no
//! person id or recipient appears in sled in the clear; `sealed` is
//! AES-256-GCM under the person's key from the vault, bound to the tag
//! (`store::vault`). Erasing a person destroys their key: every sealed copy
//! sled still holds in its segments becomes unreadable.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `layout_version` | u32 BE |
//! | `meta` | `next_seq` | u64 BE: next outbox / decision sequence |
//! | `meta` | `store_rate` | JSON [`crate::decide::StoreRateLedger`] |
//! | `people.v2` | tag(person) | sealed JSON [`crate::identity::PersonRecord`] |
//! | `recipients.v2` | tag(recipient) | tag(person), sealed: says only whether the recipient is taken, and by whom to whoever holds that person's key |
//! | `ledgers.v2` | tag(person) | sealed JSON [`crate::decide::Ledger`]: times, kinds, rule ids — what caps need |
//! | `outbox.v2` | seq u64 BE | tag(person) ‖ sealed JSON [`super::OutboxEntry`] |
//! | `decisions.v2` | tag(person) ‖ seq u64 BE | sealed JSON [`super::DecisionEntry`] |
//! | `visits.v2` | tag(person) | sealed JSON (person id, visit id, last seen) |
//! | `feedback.v2` | tag(person) ‖ nudge id (UTF-8) | sealed JSON [`super::FeedbackEntry`]: one answer per nudge, the latest (databases written before this held tag ‖ seq u64 BE keys; read alike, swept by age) |
//! | `tombstones.v2` | tag(person) | erased at, i64 BE Unix ms: refuses the person's older records until the retention window ends |
//!
//! After an erasure nothing in these trees links to the person: every value
//! that says something about them is sealed under the key the erasure
//! destroys, and no index maps a nudge id, a recipient or a time to their
//! tag (a nudge's decision is found by scanning the person's own log).
//!
//! Layout 2 (migrated on open): ledgers and recipients' owners in the
//! clear, and `decision_by_nudge.v2` (nudge id → key in `decisions.v2`).
//!
//! Layout 1 (migrated on open): the same trees without the `.v2` suffix,
//! keyed by the ids in the clear, values in plain JSON, and `decisions`
//! keyed by person id ‖ 0x00 ‖ seq.

use super::vault::Tag;

pub const LAYOUT_VERSION: u32 = 6;

pub const META: &str = "meta";
pub const PEOPLE: &str = "people.v2";
pub const RECIPIENTS: &str = "recipients.v2";
pub const LEDGERS: &str = "ledgers.v2";
pub const OUTBOX: &str = "outbox.v2";
pub const DECISIONS: &str = "decisions.v2";
pub const VISITS: &str = "visits.v2";
pub const FEEDBACK: &str = "feedback.v2";
pub const TOMBSTONES: &str = "tombstones.v2";
pub const CHAIN_LEDGERS: &str = "chain_ledgers.v4";
pub const CHAIN_FOLDED: &str = "chain_folded.v4";
pub const CHAIN_OUTBOX: &str = "chain_outbox.v4";
pub const CHAIN_PEOPLE: &str = "chain_people.v4";
pub const CHAIN_TOMBSTONES: &str = "chain_tombstones.v4";
pub const EXPIRY: &str = "expiry.v6";

/// The tree an `expiry.v6` key points into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Expiring {
    Decision,
    Feedback,
    Tombstone,
}

impl Expiring {
    fn byte(self) -> u8 {
        match self {
            Expiring::Decision => b'd',
            Expiring::Feedback => b'f',
            Expiring::Tombstone => b't',
        }
    }

    fn of(byte: u8) -> Option<Expiring> {
        match byte {
            b'd' => Some(Expiring::Decision),
            b'f' => Some(Expiring::Feedback),
            b't' => Some(Expiring::Tombstone),
            _ => None,
        }
    }
}

/// The `expiry.v6` key of an entry of `tree` at `at_ms` under `key`.
pub fn expiry(at_ms: i64, tree: Expiring, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.len());
    out.extend_from_slice(&expiry_time(at_ms));
    out.push(tree.byte());
    out.extend_from_slice(key);
    out
}

/// Where the index keys of entries dated before `at_ms` end (exclusive).
pub fn expiry_time(at_ms: i64) -> [u8; 8] {
    (at_ms.max(0) as u64).to_be_bytes()
}

/// An `expiry.v6` key's tree and the entry's key in it.
pub fn expiry_entry(key: &[u8]) -> Option<(Expiring, &[u8])> {
    let tree = Expiring::of(*key.get(8)?)?;
    Some((tree, &key[9..]))
}

/// Layout 2's trees that layout 3 dropped.
pub mod v2 {
    pub const DECISION_BY_NUDGE: &str = "decision_by_nudge.v2";
}

/// Layout 1's trees, read only by the migration.
pub mod v1 {
    pub const PEOPLE: &str = "people";
    pub const RECIPIENTS: &str = "recipients";
    pub const LEDGERS: &str = "ledgers";
    pub const OUTBOX: &str = "outbox";
    pub const DECISIONS: &str = "decisions";
    pub const DECISION_BY_NUDGE: &str = "decision_by_nudge";
    pub const VISITS: &str = "visits";
    pub const ALL: [&str; 7] = [
        PEOPLE,
        RECIPIENTS,
        LEDGERS,
        OUTBOX,
        DECISIONS,
        DECISION_BY_NUDGE,
        VISITS,
    ];
}

pub const META_LAYOUT_VERSION: &[u8] = b"layout_version";
pub const META_NEXT_SEQ: &[u8] = b"next_seq";
pub const META_STORE_RATE: &[u8] = b"store_rate";
pub const META_CHAIN_INDEX_OF: &[u8] = b"chain_index_of";
pub const META_PEOPLE_SNAPSHOT: &[u8] = b"people_snapshot";
pub const META_CHAIN_INDEX_AT: &[u8] = b"chain_index_at";

/// The key vault's file name inside the storage directory.
pub const VAULT_FILE: &str = "keys.vault";
/// The people snapshot's file name inside the storage directory.
pub const PEOPLE_SNAPSHOT_FILE: &str = "people.snapshot";

pub const TAG_PERSON: &str = "person";
pub const TAG_RECIPIENT: &str = "recipient";
/// The log salt is the tag of this kind (and an empty id) under the site
/// secret: random per gateway, kept with the vault, nothing more to store.
pub const TAG_LOG_SALT: &str = "log-salt";
/// The people snapshot's MAC key is the tag of this kind (and an empty id).
pub const TAG_SNAPSHOT_MAC: &str = "people-snapshot-mac";

pub fn outbox(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn outbox_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

pub fn decision(person: &Tag, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(person);
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub fn feedback(person: &Tag, nudge_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + nudge_id.len());
    key.extend_from_slice(person);
    key.extend_from_slice(nudge_id.as_bytes());
    key
}

/// The person tag a `decisions` key or an outbox value starts with.
pub fn leading_tag(bytes: &[u8]) -> Option<Tag> {
    bytes.get(..16)?.try_into().ok()
}

/// A chain person's key in the chain trees.
pub fn chain(person: &crate::privacy::ChainPerson) -> [u8; 16] {
    person.0
}
