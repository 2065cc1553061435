//! Storage: the only module that touches sled. Reservations of cap slots,
//! the outbox and the decision log are written in one transaction
//! (docs/design.md §4 invariant 1), and flushed before anything is published.

mod chain;
mod commit;
pub mod keys;
mod snapshot;
pub mod vault;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::decide::{
    Ask, ChainEntry, ChainLedger, ChainView, Contender, Ledger, Limits, NudgeKind, SkipReason,
    StoreRateLedger, Verdict, choose_in_chain,
};
use crate::identity::{PersonId, PersonRecord};
use crate::presence::VisitSeed;
pub use chain::{
    ChainJob, ChainOutboxEntry, FoldOutcome, consent_entry, decision_payload, erasure_entry,
};
pub use snapshot::PeopleSource;
use vault::{Tag, Vault};

/// The default bound on sled's page cache, in MiB (`[storage] cache_mb`).
/// sled's own default is 1 GiB, which a gateway holding a million people
/// fills: the hot set (today's visitors' records and ledgers, the outbox)
/// fits in far less, and a miss costs one read from the page files.
pub const DEFAULT_CACHE_MB: u64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error(
        "storage layout version {found} was written by a newer gateway (this one knows up to {known})"
    )]
    TooNew { found: u32, known: u32 },
    #[error("storage: corrupt value in {tree}: {reason}")]
    Corrupt { tree: &'static str, reason: String },
    #[error("recipient {recipient:?} already belongs to another person")]
    RecipientTaken { recipient: String },
    #[error(transparent)]
    Vault(#[from] vault::VaultError),
    #[error("storage: flush did not finish: {0}")]
    Flush(String),
}

/// A nudge waiting for the broker's acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub nudge_id: String,
    pub person: String,
    pub recipient: String,
    pub topic: String,
    pub payload: String,
    pub created_ms: i64,
    pub expires_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionOutcome {
    Sent,
    Held,
}

/// One line of the decision log, for `gateway explain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionEntry {
    pub at_ms: i64,
    pub person: String,
    pub nudge_id: String,
    pub rule: String,
    pub kind: NudgeKind,
    pub zone: String,
    pub visit: i64,
    pub outcome: DecisionOutcome,
    pub reason: Option<SkipReason>,
}

/// A customer's answer to a feedback nudge, kept for the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackEntry {
    pub nudge_id: String,
    pub answer: String,
    pub comment: Option<String>,
    pub at_ms: i64,
}

/// Everything a reservation needs; built outside the transaction so the
/// closure can safely be retried (ids and payload are made once).
pub struct ReserveRequest<'a> {
    pub person: &'a PersonId,
    pub recipient: &'a str,
    pub topic: String,
    pub nudge_id: String,
    pub payload: String,
    pub kind: NudgeKind,
    pub rule: &'a str,
    pub zone: &'a str,
    pub visit: i64,
    pub now_ms: i64,
    pub expires_at_ms: i64,
    /// Caps, quiet hours, time zone and kill switch in force.
    pub limits: Limits<'a>,
}

/// One candidate of a decision, prepared (ids, payload) outside the
/// transaction. See [`Store::reserve_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReserveCandidate {
    pub nudge_id: String,
    pub topic: String,
    pub payload: String,
    pub kind: NudgeKind,
    pub rule: String,
    pub zone: String,
    pub visit: i64,
    pub now_ms: i64,
    pub expires_at_ms: i64,
    /// Held before the caps were asked (no consent for its purpose): only
    /// logged, and the next candidate is tried.
    pub held: Option<SkipReason>,
}

impl Contender for ReserveCandidate {
    fn ask(&self) -> Ask<'_> {
        Ask {
            kind: self.kind,
            rule: &self.rule,
            visit: self.visit,
            at_ms: self.now_ms,
            ready: self.held.is_none(),
        }
    }
}

/// One person's decision: the candidates in priority order, and the caps
/// in force when they were made.
#[derive(Clone, Copy, Debug)]
pub struct ReserveJob<'a> {
    pub person: &'a PersonId,
    pub recipient: &'a str,
    pub candidates: &'a [ReserveCandidate],
    /// Caps, quiet hours, time zone and kill switch in force.
    pub limits: Limits<'a>,
    /// In a chain (`[caps.chain]`): the chain's caps are checked too, and
    /// a reserved nudge goes into the chain outbox in the same
    /// transaction. `None`: the store's caps alone.
    pub chain: Option<ChainJob<'a>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation {
    Reserved { seq: u64 },
    Held(SkipReason),
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    vault: Arc<Mutex<Vault>>,
    meta: sled::Tree,
    people: sled::Tree,
    recipients: sled::Tree,
    ledgers: sled::Tree,
    outbox: sled::Tree,
    decisions: sled::Tree,
    visits: sled::Tree,
    feedback: sled::Tree,
    tombstones: sled::Tree,
    chain_ledgers: sled::Tree,
    chain_folded: sled::Tree,
    chain_outbox: sled::Tree,
    chain_people: sled::Tree,
    chain_tombstones: sled::Tree,
    /// What expires when: the retention sweep's index (`keys::EXPIRY`).
    expiry: sled::Tree,
    group_commit: Arc<commit::GroupCommit>,
    /// The fsyncs that make a flush survive a power cut, not only a crash.
    files: Arc<commit::FileSync>,
    /// Every sequence number below this is on disk. The outbox shows
    /// delivery only those: a reservation committed but not yet flushed
    /// (its batch's flush still running) is never published, so a crash
    /// cannot lose a slot whose nudge went out.
    durable_below: Arc<AtomicU64>,
    /// Whether the people snapshot file is current (`store::snapshot`).
    snapshot: Arc<Mutex<snapshot::SnapshotState>>,
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("storage values always serialise")
}

fn parse<T: for<'de> Deserialize<'de>>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    })
}

/// The value of `META_NEXT_SEQ`: the next sequence number to hand out
/// (1 in a new database).
fn seq_value(stored: Option<&[u8]>) -> u64 {
    stored
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(1)
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn tx_parse<T: for<'de> Deserialize<'de>>(tree: &'static str, bytes: &[u8]) -> TxResult<T> {
    parse(tree, bytes).map_err(ConflictableTransactionError::Abort)
}

/// What one reservation batch carries from candidate to candidate inside
/// its transaction: each person's ledger by the index of their sealer
/// (read once; `true` once changed), the store-wide rate ledger and the
/// next sequence number.
struct BatchState {
    ledgers: HashMap<usize, (Ledger, bool)>,
    /// Chain ledgers (other stores' entries) by the index of the person's
    /// sealer: read once, only read.
    chain: HashMap<usize, ChainLedger>,
    rate: StoreRateLedger,
    rate_changed: bool,
    seq: u64,
}

/// The trees a reservation batch writes, inside its transaction.
struct BatchTrees<'t> {
    ledgers: &'t sled::transaction::TransactionalTree,
    outbox: &'t sled::transaction::TransactionalTree,
    decisions: &'t sled::transaction::TransactionalTree,
    chain_ledgers: &'t sled::transaction::TransactionalTree,
    chain_outbox: &'t sled::transaction::TransactionalTree,
    expiry: &'t sled::transaction::TransactionalTree,
}

impl BatchTrees<'_> {
    /// The person's ledger for this batch: read (and opened) the first
    /// time one of their candidates reaches the caps, then carried through
    /// the batch.
    fn ledger<'b>(
        &self,
        ledgers: &'b mut HashMap<usize, (Ledger, bool)>,
        sealer: &Sealer,
        sealer_index: usize,
    ) -> TxResult<&'b mut (Ledger, bool)> {
        Ok(match ledgers.entry(sealer_index) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let ledger = match self.ledgers.get(sealer.tag)? {
                    Some(v) => sealer
                        .open(keys::LEDGERS, &v)
                        .map_err(ConflictableTransactionError::Abort)?,
                    None => Ledger::default(),
                };
                e.insert((ledger, false))
            }
        })
    }

    /// The other stores' entries for a chain person, as this transaction
    /// sees them: read once per person and batch.
    fn chain_ledger<'b>(
        &self,
        chain: &'b mut HashMap<usize, ChainLedger>,
        person: &crate::privacy::ChainPerson,
        sealer_index: usize,
    ) -> TxResult<&'b ChainLedger> {
        Ok(match chain.entry(sealer_index) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(match self.chain_ledgers.get(keys::chain(person))? {
                Some(v) => tx_parse(keys::CHAIN_LEDGERS, &v)?,
                None => ChainLedger::default(),
            }),
        })
    }

    /// Write the decision log entry of one candidate (sent or held, and
    /// why), sealed under the person's key, and its expiry index key.
    fn log_decision(
        &self,
        job: &ReserveJob<'_>,
        sealer: &Sealer,
        candidate: &ReserveCandidate,
        verdict: &Result<(), SkipReason>,
        seq: u64,
        nonce: &[u8; 12],
    ) -> TxResult<()> {
        let entry = DecisionEntry {
            at_ms: candidate.now_ms,
            person: job.person.as_str().to_string(),
            nudge_id: candidate.nudge_id.clone(),
            rule: candidate.rule.clone(),
            kind: candidate.kind,
            zone: candidate.zone.clone(),
            visit: candidate.visit,
            outcome: if verdict.is_ok() {
                DecisionOutcome::Sent
            } else {
                DecisionOutcome::Held
            },
            reason: verdict.clone().err(),
        };
        let key = keys::decision(&sealer.tag, seq);
        self.decisions
            .insert(&key, sealer.seal(&json(&entry), nonce))?;
        self.expiry.insert(
            keys::expiry(entry.at_ms, keys::Expiring::Decision, &key),
            &[],
        )?;
        Ok(())
    }
}

fn unwrap_tx<T>(result: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    })
}

fn tag_of(bytes: &[u8], tree: &'static str) -> Result<Tag, StoreError> {
    keys::leading_tag(bytes).ok_or(StoreError::Corrupt {
        tree,
        reason: "value or key shorter than a tag".into(),
    })
}

/// People sealed for [`Store::upsert_prepared_people`] by
/// [`Store::prepare_people`], in the order given.
pub struct PreparedPeople(Vec<PreparedPerson>);

impl PreparedPeople {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

struct PreparedPerson {
    recipient: String,
    recipient_tag: Tag,
    sealer: Sealer,
    /// The record, sealed.
    sealed: Vec<u8>,
    /// The person's tag, sealed: the recipient's value.
    owner: Vec<u8>,
}

/// What sealing a value for one person needs, fetched before a transaction.
struct Sealer {
    tag: Tag,
    key: [u8; 32],
}

impl Sealer {
    fn seal(&self, plaintext: &[u8], nonce: &[u8; 12]) -> Vec<u8> {
        vault::seal(&self.key, &self.tag, nonce, plaintext)
    }

    /// Whether a `recipients` value names this person: their tag, sealed
    /// under their key (so that nothing links a recipient to a person
    /// once the key is destroyed).
    fn owns(&self, sealed_owner: &[u8]) -> bool {
        vault::open(&self.key, &self.tag, sealed_owner).is_some_and(|tag| tag == self.tag)
    }

    fn open<T: for<'de> Deserialize<'de>>(
        &self,
        tree: &'static str,
        sealed: &[u8],
    ) -> Result<T, StoreError> {
        let plain = vault::open(&self.key, &self.tag, sealed).ok_or(StoreError::Corrupt {
            tree,
            reason: "does not open with the person's key".into(),
        })?;
        parse(tree, &plain)
    }

    /// The time a sealed decision-log entry or feedback answer is filed
    /// under in the expiry index. Tombstones are not sealed (their value
    /// is the time itself): asking for one is refused.
    fn dated(&self, tree: keys::Expiring, sealed: &[u8]) -> Result<i64, StoreError> {
        match tree {
            keys::Expiring::Decision => {
                Ok(self.open::<DecisionEntry>(keys::DECISIONS, sealed)?.at_ms)
            }
            keys::Expiring::Feedback => {
                Ok(self.open::<FeedbackEntry>(keys::FEEDBACK, sealed)?.at_ms)
            }
            keys::Expiring::Tombstone => Err(StoreError::Corrupt {
                tree: keys::TOMBSTONES,
                reason: "a tombstone is not sealed".into(),
            }),
        }
    }
}

/// The people's whole records are read from here when a decision needs
/// them (`people` keeps only the hot part in memory).
impl crate::people::Records for Store {
    fn record(
        &self,
        person: &PersonId,
    ) -> Result<Option<PersonRecord>, crate::people::RecordsError> {
        self.person(person.as_str())
            .map_err(|e| crate::people::RecordsError(e.to_string()))
    }
}

impl Store {
    /// Open (or create) the database directory, readable by its owner only,
    /// with its key vault.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_cache(path, DEFAULT_CACHE_MB * 1024 * 1024)
    }

    /// [`Store::open`] with sled's page cache bounded to `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(path).map_err(|e| open_err(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| open_err(e.to_string()))?;
        }
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open().map_err(|e| match e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
                open_err("in use by another process (is the gateway running? stop it, or change people over MQTT)".into())
            }
            other => open_err(other.to_string()),
        })?;
        // The vault is opened only once sled holds its lock, so two
        // processes never write it at once.
        let vault = Vault::open(&path.join(keys::VAULT_FILE))?;
        let files = commit::FileSync::open(path).map_err(|e| open_err(e.to_string()))?;
        let store = Store {
            vault: Arc::new(Mutex::new(vault)),
            meta: db.open_tree(keys::META)?,
            people: db.open_tree(keys::PEOPLE)?,
            recipients: db.open_tree(keys::RECIPIENTS)?,
            ledgers: db.open_tree(keys::LEDGERS)?,
            outbox: db.open_tree(keys::OUTBOX)?,
            decisions: db.open_tree(keys::DECISIONS)?,
            visits: db.open_tree(keys::VISITS)?,
            feedback: db.open_tree(keys::FEEDBACK)?,
            tombstones: db.open_tree(keys::TOMBSTONES)?,
            chain_ledgers: db.open_tree(keys::CHAIN_LEDGERS)?,
            chain_folded: db.open_tree(keys::CHAIN_FOLDED)?,
            chain_outbox: db.open_tree(keys::CHAIN_OUTBOX)?,
            chain_people: db.open_tree(keys::CHAIN_PEOPLE)?,
            chain_tombstones: db.open_tree(keys::CHAIN_TOMBSTONES)?,
            expiry: db.open_tree(keys::EXPIRY)?,
            group_commit: Arc::default(),
            files: Arc::new(files),
            durable_below: Arc::default(),
            snapshot: Arc::default(),
            db,
        };
        store.migrate()?;
        *store.snapshot.lock().unwrap_or_else(|e| e.into_inner()) =
            snapshot::SnapshotState::from_meta(
                store.meta.get(keys::META_PEOPLE_SNAPSHOT)?.as_deref(),
            );
        store.flush()?;
        // Whatever was found on disk is durable.
        let mut last_outbox = 0;
        for tree in [&store.outbox, &store.chain_outbox] {
            if let Some((key, _)) = tree.last()? {
                last_outbox =
                    last_outbox.max(keys::outbox_seq(&key).map_or(0, |seq| seq.saturating_add(1)));
            }
        }
        store.durable_below.store(
            store.committed_next_seq()?.max(last_outbox),
            Ordering::SeqCst,
        );
        Ok(store)
    }

    fn vault(&self) -> MutexGuard<'_, Vault> {
        self.vault.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn person_tag(&self, id: &str) -> Tag {
        self.vault().tag(keys::TAG_PERSON, id)
    }

    /// Where a person's record sits in the people tree: the first 8 bytes
    /// of its key, big-endian, so that numbers sort as the keys do. People
    /// written in this order meet each leaf of the tree once, where the
    /// order of a file (random in the tree) pages leaves in and out again
    /// (an import: BENCHMARKS.md §2a).
    pub fn people_tree_order(&self, id: &str) -> u64 {
        let tag = self.person_tag(id);
        u64::from_be_bytes(tag[..8].try_into().expect("8 bytes"))
    }

    /// The salt of the person hashes in this gateway's logs (see
    /// `privacy::install_salt`).
    pub fn log_salt(&self) -> Tag {
        self.vault().tag(keys::TAG_LOG_SALT, "")
    }

    fn recipient_tag(&self, recipient: &str) -> Tag {
        self.vault().tag(keys::TAG_RECIPIENT, recipient)
    }

    /// The sealer for a person, creating their key on first use.
    fn sealer(&self, person: &str) -> Result<Sealer, StoreError> {
        let mut sealers = self.sealers(&[person])?;
        Ok(sealers.pop().expect("one sealer per person"))
    }

    /// The sealers of many people at once: their new keys cost one sync.
    fn sealers(&self, people: &[&str]) -> Result<Vec<Sealer>, StoreError> {
        let mut vault = self.vault();
        let tags: Vec<Tag> = people
            .iter()
            .map(|person| vault.tag(keys::TAG_PERSON, person))
            .collect();
        let keys = vault.keys_or_create(&tags)?;
        Ok(tags
            .into_iter()
            .zip(keys)
            .map(|(tag, key)| Sealer { tag, key })
            .collect())
    }

    /// The sealer for a tag, if the person's key still exists.
    fn sealer_for_tag(&self, tag: Tag) -> Result<Option<Sealer>, StoreError> {
        Ok(self.vault().key(&tag)?.map(|key| Sealer { tag, key }))
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let found = match self.meta.get(keys::META_LAYOUT_VERSION)? {
            Some(v) => {
                u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    tree: keys::META,
                    reason: "layout_version".into(),
                })?)
            }
            None => 0,
        };
        if found > keys::LAYOUT_VERSION {
            return Err(StoreError::TooNew {
                found,
                known: keys::LAYOUT_VERSION,
            });
        }
        if found == 1 {
            self.migrate_from_v1()?;
        }
        if found == 1 || found == 2 {
            self.migrate_from_v2()?;
        }
        if (1..6).contains(&found) {
            self.build_expiry_index()?;
        }
        // Version 0 is a new, empty database.
        if found < keys::LAYOUT_VERSION {
            self.meta.insert(
                keys::META_LAYOUT_VERSION,
                &keys::LAYOUT_VERSION.to_be_bytes(),
            )?;
            self.db.flush()?;
        }
        if found == 1 {
            // Only once the new version is on disk: the clear-text trees go.
            for name in keys::v1::ALL {
                self.db.drop_tree(name)?;
            }
        }
        if found == 1 || found == 2 {
            self.db.drop_tree(keys::v2::DECISION_BY_NUDGE)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Layout 2 → 3: seal the cap ledgers and the recipients' owners under
    /// each person's key (an erased person's are dropped). The nudge-id
    /// index is dropped by the caller once version 3 is on disk. Safe to
    /// re-run after a crash: a value that is already sealed is left alone.
    fn migrate_from_v2(&self) -> Result<(), StoreError> {
        for item in self.ledgers.iter() {
            let (key, value) = item?;
            let Ok(ledger) = serde_json::from_slice::<Ledger>(&value) else {
                continue;
            };
            match self.sealer_for_tag(tag_of(&key, keys::LEDGERS)?)? {
                Some(sealer) => {
                    self.ledgers
                        .insert(&key, sealer.seal(&json(&ledger), &vault::nonce()?))?;
                }
                None => {
                    self.ledgers.remove(&key)?;
                }
            }
        }
        for item in self.recipients.iter() {
            let (key, value) = item?;
            if value.len() != 16 {
                continue;
            }
            match self.sealer_for_tag(tag_of(&value, keys::RECIPIENTS)?)? {
                Some(sealer) => {
                    self.recipients
                        .insert(&key, sealer.seal(&sealer.tag, &vault::nonce()?))?;
                }
                None => {
                    self.recipients.remove(&key)?;
                }
            }
        }
        self.db.flush()?;
        Ok(())
    }

    /// Layout 1 → 2: fill the sealed trees from the clear ones. Safe to
    /// re-run after a crash: the new trees are emptied first, and the old
    /// ones are dropped only after the version says 2.
    fn migrate_from_v1(&self) -> Result<(), StoreError> {
        for tree in [
            &self.people,
            &self.recipients,
            &self.ledgers,
            &self.outbox,
            &self.decisions,
            &self.visits,
        ] {
            tree.clear()?;
        }
        let old = |name: &str| self.db.open_tree(name);
        for item in old(keys::v1::PEOPLE)?.iter() {
            let record: PersonRecord = parse(keys::v1::PEOPLE, &item?.1)?;
            self.upsert_people(std::slice::from_ref(&record))?;
        }
        for item in old(keys::v1::LEDGERS)?.iter() {
            let (person, ledger) = item?;
            self.ledgers
                .insert(self.person_tag(&String::from_utf8_lossy(&person)), ledger)?;
        }
        for item in old(keys::v1::VISITS)?.iter() {
            let (person, value) = item?;
            let (visit, last_seen_ms): (i64, i64) = parse(keys::v1::VISITS, &value)?;
            self.save_visit(
                &PersonId::from(String::from_utf8_lossy(&person).as_ref()),
                VisitSeed {
                    visit,
                    last_seen_ms,
                },
            )?;
        }
        for item in old(keys::v1::OUTBOX)?.iter() {
            let (seq, value) = item?;
            let entry: OutboxEntry = parse(keys::v1::OUTBOX, &value)?;
            let sealer = self.sealer(&entry.person)?;
            self.outbox.insert(
                seq,
                [
                    &sealer.tag[..],
                    &sealer.seal(&json(&entry), &vault::nonce()?),
                ]
                .concat(),
            )?;
        }
        for item in old(keys::v1::DECISIONS)?.iter() {
            let (key, value) = item?;
            let entry: DecisionEntry = parse(keys::v1::DECISIONS, &value)?;
            let seq = key
                .len()
                .checked_sub(8)
                .and_then(|i| keys::outbox_seq(&key[i..]))
                .unwrap_or(0);
            let sealer = self.sealer(&entry.person)?;
            let new_key = keys::decision(&sealer.tag, seq);
            self.decisions
                .insert(new_key, sealer.seal(&json(&entry), &vault::nonce()?))?;
        }
        self.db.flush()?;
        Ok(())
    }

    pub fn layout_version(&self) -> Result<u32, StoreError> {
        let v = self
            .meta
            .get(keys::META_LAYOUT_VERSION)?
            .ok_or(StoreError::Corrupt {
                tree: keys::META,
                reason: "no layout_version".into(),
            })?;
        Ok(u32::from_be_bytes(
            v.as_ref().try_into().unwrap_or_default(),
        ))
    }

    /// The next sequence number, as committed.
    fn committed_next_seq(&self) -> Result<u64, StoreError> {
        Ok(seq_value(self.meta.get(keys::META_NEXT_SEQ)?.as_deref()))
    }

    /// Make everything written so far survive a process crash and a power
    /// cut: sled's flush, then the fsyncs it leaves out. Concurrent callers
    /// share both (group commit). Outbox entries committed before the call
    /// become visible to [`Store::outbox_from`].
    pub fn flush(&self) -> Result<(), StoreError> {
        // Read before the flush that covers us starts: all sequence
        // numbers below it were committed by then.
        let committed = self.committed_next_seq()?;
        self.group_commit.wait_durable(|| {
            self.db.flush()?;
            self.files
                .sync()
                .map_err(|e| StoreError::Flush(format!("fsync: {e}")))
        })?;
        self.durable_below.fetch_max(committed, Ordering::SeqCst);
        Ok(())
    }

    pub async fn flush_async(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Insert or replace a person, keeping the recipient index exact.
    /// Durable when it returns.
    pub fn upsert_person(&self, record: &PersonRecord) -> Result<Option<PersonRecord>, StoreError> {
        Ok(self
            .upsert_people(std::slice::from_ref(record))?
            .pop()
            .flatten())
    }

    /// Insert or replace several people in one transaction: all or none.
    /// Returns each one's previous record. Durable when it returns.
    pub fn upsert_people(
        &self,
        records: &[PersonRecord],
    ) -> Result<Vec<Option<PersonRecord>>, StoreError> {
        let prepared = self.prepare_people(records)?;
        self.upsert_prepared_people(&prepared)
    }

    /// The first half of [`Store::upsert_people`], which writes nothing
    /// to sled: each person's key (new ones made and synced to the vault
    /// first, as a key must be on disk before anything sealed with it),
    /// the record and its recipient's owner sealed under it. An import
    /// prepares the next chunk on one thread while another writes the
    /// last one; the people must not change in between (the import holds
    /// the store, and names each person once).
    pub fn prepare_people(&self, records: &[PersonRecord]) -> Result<PreparedPeople, StoreError> {
        // Keys and nonces first: the transaction closure may run twice.
        let ids: Vec<&str> = records.iter().map(|r| r.person.as_str()).collect();
        let sealers = self.sealers(&ids)?;
        let mut people = Vec::with_capacity(records.len());
        for (record, sealer) in records.iter().zip(sealers) {
            let sealed = sealer.seal(&json(record), &vault::nonce()?);
            let owner = sealer.seal(&sealer.tag, &vault::nonce()?);
            people.push(PreparedPerson {
                recipient: record.recipient.clone(),
                recipient_tag: self.recipient_tag(&record.recipient),
                sealer,
                sealed,
                owner,
            });
        }
        Ok(PreparedPeople(people))
    }

    /// The second half of [`Store::upsert_people`]: one transaction over
    /// the people and their recipients, all or none, then a flush.
    pub fn upsert_prepared_people(
        &self,
        prepared: &PreparedPeople,
    ) -> Result<Vec<Option<PersonRecord>>, StoreError> {
        self.people_changing()?;
        let previous = unwrap_tx((&self.people, &self.recipients).transaction(
            |(people, recipients)| {
                let mut previous = Vec::with_capacity(prepared.0.len());
                for person in &prepared.0 {
                    let PreparedPerson {
                        recipient,
                        recipient_tag,
                        sealer,
                        sealed,
                        owner,
                    } = person;
                    if let Some(held) = recipients.get(recipient_tag)? {
                        // Sealed under the owner's key: it opens with ours
                        // only if the recipient is already ours.
                        if !sealer.owns(&held) {
                            return Err(ConflictableTransactionError::Abort(
                                StoreError::RecipientTaken {
                                    recipient: recipient.clone(),
                                },
                            ));
                        }
                    }
                    let old: Option<PersonRecord> =
                        match people.insert(&sealer.tag, sealed.as_slice())? {
                            Some(old) => Some(
                                sealer
                                    .open(keys::PEOPLE, &old)
                                    .map_err(ConflictableTransactionError::Abort)?,
                            ),
                            None => None,
                        };
                    if let Some(old) = &old {
                        if old.recipient != *recipient {
                            recipients.remove(&self.recipient_tag(&old.recipient))?;
                        }
                    }
                    recipients.insert(recipient_tag, owner.as_slice())?;
                    previous.push(old);
                }
                Ok(previous)
            },
        ))?;
        self.flush()?;
        Ok(previous)
    }

    fn person_by_tag(&self, tag: Tag) -> Result<Option<PersonRecord>, StoreError> {
        let Some(sealed) = self.people.get(tag)? else {
            return Ok(None);
        };
        // A record whose key was destroyed is an erased person's leftover.
        match self.sealer_for_tag(tag)? {
            Some(sealer) => sealer.open(keys::PEOPLE, &sealed).map(Some),
            None => Ok(None),
        }
    }

    pub fn person(&self, id: &str) -> Result<Option<PersonRecord>, StoreError> {
        self.person_by_tag(self.person_tag(id))
    }

    /// The person a recipient belongs to. The `recipients` index says only
    /// whether a recipient is taken (its owner is sealed), so this scans
    /// the people: for tools and tests, not the hot path (the daemon holds
    /// the recipient index in memory).
    /// Whether `recipient` is free, `person`'s own, or someone else's
    /// (the recipients tree holds the owner's tag sealed under the owner's
    /// key, so only "is it this person's" can be asked).
    pub fn recipient_is_other_persons(
        &self,
        recipient: &str,
        person: &str,
    ) -> Result<bool, StoreError> {
        let Some(held) = self.recipients.get(self.recipient_tag(recipient))? else {
            return Ok(false);
        };
        Ok(!self
            .sealer_for_tag(self.person_tag(person))?
            .is_some_and(|sealer| sealer.owns(&held)))
    }

    pub fn person_by_recipient(&self, recipient: &str) -> Result<Option<PersonRecord>, StoreError> {
        if self
            .recipients
            .get(self.recipient_tag(recipient))?
            .is_none()
        {
            return Ok(None);
        }
        for record in self.people() {
            let record = record?;
            if record.recipient == recipient {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Every person's record, opened from the value the scan read (not
    /// read again by tag: at a million people that second read was a
    /// third of the daemon's start).
    pub fn people(&self) -> impl Iterator<Item = Result<PersonRecord, StoreError>> + '_ {
        self.stored_people()
            .map(|stored| stored.map(|(_, _, record)| record))
    }

    /// [`Store::people`] with each person's vault slot and sealer, for
    /// whoever seals something of theirs on the way (the people snapshot).
    fn stored_people(
        &self,
    ) -> impl Iterator<Item = Result<(u32, Sealer, PersonRecord), StoreError>> + '_ {
        self.people.iter().filter_map(|item| {
            let (tag, sealed) = match item {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            let tag = match tag_of(&tag, keys::PEOPLE) {
                Ok(tag) => tag,
                Err(e) => return Some(Err(e)),
            };
            let (slot, sealer) = match self.vault().slot_and_key(&tag) {
                Ok(Some((slot, key))) => (slot, Sealer { tag, key }),
                // A record whose key was destroyed is an erased person's leftover.
                Ok(None) => return None,
                Err(e) => return Some(Err(e.into())),
            };
            Some(
                sealer
                    .open(keys::PEOPLE, &sealed)
                    .map(|record| (slot, sealer, record)),
            )
        })
    }

    /// About how many people are stored, at no cost: the vault's keys (one
    /// a person; sled's `len` would walk the whole tree, and keep what it paged in).
    pub fn people_hint(&self) -> usize {
        self.vault().len()
    }

    /// Heap held by the key vault's index of its file.
    pub fn vault_heap_bytes(&self) -> usize {
        self.vault().heap_bytes()
    }

    pub fn ledger(&self, person: &str) -> Result<Ledger, StoreError> {
        let tag = self.person_tag(person);
        match (self.ledgers.get(tag)?, self.sealer_for_tag(tag)?) {
            (Some(sealed), Some(sealer)) => sealer.open(keys::LEDGERS, &sealed),
            _ => Ok(Ledger::default()),
        }
    }

    /// Check caps and, if they allow, reserve the slot and put the nudge in
    /// the outbox: one transaction, flushed before returning. A held-back
    /// nudge is written to the decision log only; it is never queued.
    /// A batch of one job with one candidate (see [`Store::reserve_batch`]).
    pub fn reserve(&self, req: &ReserveRequest<'_>) -> Result<Reservation, StoreError> {
        let candidate = ReserveCandidate {
            nudge_id: req.nudge_id.clone(),
            topic: req.topic.clone(),
            payload: req.payload.clone(),
            kind: req.kind,
            rule: req.rule.to_string(),
            zone: req.zone.to_string(),
            visit: req.visit,
            now_ms: req.now_ms,
            expires_at_ms: req.expires_at_ms,
            held: None,
        };
        let job = ReserveJob {
            person: req.person,
            recipient: req.recipient,
            candidates: std::slice::from_ref(&candidate),
            limits: req.limits,
            chain: None,
        };
        self.reserve_batch(std::slice::from_ref(&job))?
            .pop()
            .and_then(|mut tried| tried.pop())
            .ok_or(StoreError::Corrupt {
                tree: keys::META,
                reason: "a reservation produced no outcome".into(),
            })
    }

    /// Decide a batch of jobs (each one person's candidates in priority
    /// order) in ONE sled transaction, then ONE group-commit flush: durable
    /// when it returns, all or nothing.
    ///
    /// Per job the candidates are tried in order: the first the caps allow
    /// is reserved (ledger slot + sealed outbox entry); a held one goes to
    /// the decision log only, and the next is tried only if the reason
    /// [lets it](SkipReason::lets_the_next_candidate_try). Candidates with
    /// `held` set were held before the caps (consent) and are only logged.
    /// Ledgers are read once per person and kept for the whole batch, so
    /// two jobs of the same person see each other's reservations and the
    /// caps hold exactly; the store-wide rate ledger and the sequence are
    /// read once and written once.
    ///
    /// Returns, per job, the outcome of every candidate tried, in order.
    /// On an error nothing of the batch was written.
    pub fn reserve_batch(
        &self,
        jobs: &[ReserveJob<'_>],
    ) -> Result<Vec<Vec<Reservation>>, StoreError> {
        let outcomes = self.reserve_batch_unflushed(jobs)?;
        // Acknowledge (and let the publisher see it) only once it is on disk.
        self.flush()?;
        Ok(outcomes)
    }

    /// [`Store::reserve_batch`] without the flush: committed, visible to
    /// later transactions (so the next batch's caps see it), but neither
    /// durable nor shown by [`Store::outbox_from`] until a [`Store::flush`]
    /// that starts after this returns. Nothing may be acknowledged or
    /// reported before that flush; it lets a caller run the next batch's
    /// transaction while this one's flush is on its way.
    pub fn reserve_batch_unflushed(
        &self,
        jobs: &[ReserveJob<'_>],
    ) -> Result<Vec<Vec<Reservation>>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        // Keys, sealed outbox entries and nonces first: the transaction
        // closure may run more than once, and holds sled's global
        // transaction lock while it runs.
        let mut sealers: Vec<Sealer> = Vec::new();
        let mut sealer_of: HashMap<&str, usize> = HashMap::new();
        let mut prepared = Vec::with_capacity(jobs.len());
        for job in jobs {
            let person = job.person.as_str();
            let sealer = match sealer_of.get(person) {
                Some(&i) => i,
                None => {
                    sealers.push(self.sealer(person)?);
                    sealer_of.insert(person, sealers.len() - 1);
                    sealers.len() - 1
                }
            };
            let mut candidates = Vec::with_capacity(job.candidates.len());
            for candidate in job.candidates {
                let sealed_outbox = match candidate.held {
                    Some(_) => Vec::new(),
                    None => {
                        let entry = OutboxEntry {
                            nudge_id: candidate.nudge_id.clone(),
                            person: person.to_string(),
                            recipient: job.recipient.to_string(),
                            topic: candidate.topic.clone(),
                            payload: candidate.payload.clone(),
                            created_ms: candidate.now_ms,
                            expires_at_ms: candidate.expires_at_ms,
                        };
                        let sealer = &sealers[sealer];
                        [
                            &sealer.tag[..],
                            &sealer.seal(&json(&entry), &vault::nonce()?),
                        ]
                        .concat()
                    }
                };
                // What the chain hears if this one is reserved.
                let chain_entry = match (&job.chain, &candidate.held) {
                    (Some(chain), None) => json(&ChainOutboxEntry {
                        person: chain.person.to_hex(),
                        kind: "decisions".into(),
                        topic: chain.topic.to_string(),
                        payload: decision_payload(
                            &chain.person,
                            &ChainEntry {
                                at_ms: candidate.now_ms,
                                nudge_id: candidate.nudge_id.clone(),
                                kind: candidate.kind,
                                rule: candidate.rule.clone(),
                            },
                        ),
                    }),
                    _ => Vec::new(),
                };
                candidates.push((sealed_outbox, vault::nonce()?, chain_entry));
            }
            prepared.push((sealer, candidates));
        }
        // One nonce per person for their ledger, written once per batch.
        let ledger_nonces = sealers
            .iter()
            .map(|_| vault::nonce())
            .collect::<Result<Vec<_>, _>>()?;
        let outcomes = unwrap_tx(
            (
                &self.ledgers,
                &self.outbox,
                &self.decisions,
                &self.meta,
                &self.chain_ledgers,
                &self.chain_outbox,
                &self.expiry,
            )
                .transaction(
                    |(ledgers, outbox, decisions, meta, chain_ledgers, chain_outbox, expiry)| {
                        let trees = BatchTrees {
                            ledgers,
                            outbox,
                            decisions,
                            chain_ledgers,
                            chain_outbox,
                            expiry,
                        };
                        let mut batch = BatchState {
                            ledgers: HashMap::new(),
                            chain: HashMap::new(),
                            rate: match meta.get(keys::META_STORE_RATE)? {
                                Some(v) => tx_parse(keys::META, &v)?,
                                None => StoreRateLedger::default(),
                            },
                            rate_changed: false,
                            seq: seq_value(meta.get(keys::META_NEXT_SEQ)?.as_deref()),
                        };
                        let first_seq = batch.seq;
                        let mut outcomes = Vec::with_capacity(jobs.len());
                        for (job, (sealer_index, prepared)) in jobs.iter().zip(&prepared) {
                            let sealer = &sealers[*sealer_index];
                            // The one decision step (decide::step::choose),
                            // on the ledgers as this transaction sees them.
                            let limits = &job.limits;
                            let choice = if job.candidates.iter().any(|c| c.held.is_none()) {
                                let others = match &job.chain {
                                    Some(chain) => Some(trees.chain_ledger(
                                        &mut batch.chain,
                                        &chain.person,
                                        *sealer_index,
                                    )?),
                                    None => None,
                                };
                                let view = match (&job.chain, others) {
                                    (Some(chain), Some(others)) => Some(ChainView {
                                        caps: chain.caps,
                                        others,
                                        home: chain.home.as_ref(),
                                    }),
                                    _ => None,
                                };
                                let (ledger, changed) =
                                    trees.ledger(&mut batch.ledgers, sealer, *sealer_index)?;
                                let choice = choose_in_chain(
                                    job.candidates,
                                    ledger,
                                    view.as_ref(),
                                    &mut batch.rate,
                                    limits,
                                );
                                *changed |= choice.ledger_changed;
                                choice
                            } else {
                                // Every candidate held before the caps: the
                                // ledger is not needed.
                                choose_in_chain(
                                    job.candidates,
                                    &mut Ledger::default(),
                                    None,
                                    &mut batch.rate,
                                    limits,
                                )
                            };
                            batch.rate_changed |= choice.rate_changed;
                            let mut tried = Vec::with_capacity(choice.verdicts.len());
                            for (
                                (candidate, (sealed_outbox, decision_nonce, chain_entry)),
                                verdict,
                            ) in job.candidates.iter().zip(prepared).zip(choice.verdicts)
                            {
                                let seq = batch.seq;
                                batch.seq += 1;
                                let verdict = match verdict {
                                    Verdict::Sent => {
                                        trees
                                            .outbox
                                            .insert(&keys::outbox(seq), sealed_outbox.as_slice())?;
                                        if !chain_entry.is_empty() {
                                            // The chain hears of it with the
                                            // nudge's own sequence number.
                                            trees.chain_outbox.insert(
                                                &keys::outbox(seq),
                                                chain_entry.as_slice(),
                                            )?;
                                        }
                                        Ok(())
                                    }
                                    Verdict::Held(reason) => Err(reason),
                                    Verdict::NotReady => Err(candidate.held.clone().unwrap_or(
                                        SkipReason::NoConsent {
                                            purpose: candidate.kind.purpose(),
                                        },
                                    )),
                                };
                                trees.log_decision(
                                    job,
                                    sealer,
                                    candidate,
                                    &verdict,
                                    seq,
                                    decision_nonce,
                                )?;
                                tried.push(match verdict {
                                    Ok(()) => Reservation::Reserved { seq },
                                    Err(reason) => Reservation::Held(reason),
                                });
                            }
                            outcomes.push(tried);
                        }
                        for (&i, (ledger, changed)) in &batch.ledgers {
                            if *changed {
                                let sealer = &sealers[i];
                                ledgers.insert(
                                    &sealer.tag[..],
                                    sealer.seal(&json(ledger), &ledger_nonces[i]),
                                )?;
                            }
                        }
                        if batch.rate_changed {
                            meta.insert(keys::META_STORE_RATE, json(&batch.rate))?;
                        }
                        if batch.seq != first_seq {
                            meta.insert(keys::META_NEXT_SEQ, &batch.seq.to_be_bytes())?;
                        }
                        Ok(outcomes)
                    },
                ),
        )?;
        Ok(outcomes)
    }

    pub fn decisions_for(&self, person: &str) -> Result<Vec<DecisionEntry>, StoreError> {
        let tag = self.person_tag(person);
        let Some(sealer) = self.sealer_for_tag(tag)? else {
            return Ok(Vec::new());
        };
        self.decisions
            .scan_prefix(tag)
            .map(|item| sealer.open(keys::DECISIONS, &item?.1))
            .collect()
    }

    /// The decision about a nudge, if it was the person's. Scans their own
    /// log (a few entries a day under the caps): no index links nudge ids
    /// to people, so nothing does after an erasure.
    pub fn decision_of(
        &self,
        person: &str,
        nudge_id: &str,
    ) -> Result<Option<DecisionEntry>, StoreError> {
        Ok(self
            .decisions_for(person)?
            .into_iter()
            .find(|d| d.nudge_id == nudge_id))
    }

    /// The decision about a nudge, whoever's it was: scans every readable
    /// decision (for `explain`, an operator's look-up, not the hot path).
    pub fn decision_by_nudge(&self, nudge_id: &str) -> Result<Option<DecisionEntry>, StoreError> {
        for item in self.decisions.iter() {
            let (key, value) = item?;
            let Some(sealer) = self.sealer_for_tag(tag_of(&key, keys::DECISIONS)?)? else {
                continue;
            };
            let entry: DecisionEntry = sealer.open(keys::DECISIONS, &value)?;
            if entry.nudge_id == nudge_id {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    fn open_outbox(&self, value: &[u8]) -> Result<Option<OutboxEntry>, StoreError> {
        let tag = tag_of(value, keys::OUTBOX)?;
        match self.sealer_for_tag(tag)? {
            Some(sealer) => sealer.open(keys::OUTBOX, &value[16..]).map(Some),
            None => Ok(None),
        }
    }

    /// Durable outbox entries with sequence >= `from`, in order: one whose
    /// reservation is committed but not yet flushed is not shown yet.
    /// Entries of erased people (their key is gone) are skipped and removed.
    pub fn outbox_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<(u64, OutboxEntry), StoreError>> + '_ {
        let below = self.durable_below.load(Ordering::SeqCst);
        self.outbox
            .range(keys::outbox(from)..keys::outbox(below.max(from)))
            .filter_map(move |item| {
                let result = (|| {
                    let (k, v) = item?;
                    let seq = keys::outbox_seq(&k).ok_or(StoreError::Corrupt {
                        tree: keys::OUTBOX,
                        reason: "key is not a u64".into(),
                    })?;
                    match self.open_outbox(&v)? {
                        Some(entry) => Ok(Some((seq, entry))),
                        None => {
                            self.outbox.remove(k)?;
                            Ok(None)
                        }
                    }
                })();
                result.transpose()
            })
    }

    /// The broker acknowledged it, or it expired. Not flushed: at worst a
    /// crash redelivers it, and the nudge id makes that harmless.
    pub fn outbox_remove(&self, seq: u64) -> Result<(), StoreError> {
        self.outbox.remove(keys::outbox(seq))?;
        Ok(())
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    pub fn save_visit(&self, person: &PersonId, seed: VisitSeed) -> Result<(), StoreError> {
        let sealer = self.sealer(person.as_str())?;
        let value = sealer.seal(
            &json(&(person.as_str(), seed.visit, seed.last_seen_ms)),
            &vault::nonce()?,
        );
        self.visits.insert(sealer.tag, value)?;
        Ok(())
    }

    pub fn end_visit(&self, person: &PersonId) -> Result<(), StoreError> {
        self.visits.remove(self.person_tag(person.as_str()))?;
        Ok(())
    }

    pub fn visits(&self) -> Result<Vec<(PersonId, VisitSeed)>, StoreError> {
        let mut out = Vec::new();
        for item in self.visits.iter() {
            let (tag, value) = item?;
            let Some(sealer) = self.sealer_for_tag(tag_of(&tag, keys::VISITS)?)? else {
                continue;
            };
            let (person, visit, last_seen_ms): (String, i64, i64) =
                sealer.open(keys::VISITS, &value)?;
            out.push((
                PersonId::from(person.as_str()),
                VisitSeed {
                    visit,
                    last_seen_ms,
                },
            ));
        }
        Ok(out)
    }

    /// Count the start of a visit; returns the person's visit number (1 = first).
    pub fn count_visit(&self, person: &PersonId) -> Result<u32, StoreError> {
        let sealer = self.sealer(person.as_str())?;
        let mut number = 0;
        let mut failed = None;
        self.ledgers.fetch_and_update(sealer.tag, |old| {
            let mut ledger: Ledger = match old.map(|v| sealer.open(keys::LEDGERS, v)) {
                Some(Ok(ledger)) => ledger,
                Some(Err(e)) => {
                    failed = Some(e);
                    return old.map(<[u8]>::to_vec);
                }
                None => Ledger::default(),
            };
            ledger.visits = ledger.visits.saturating_add(1);
            number = ledger.visits;
            // A fresh nonce on every try: the update may be retried, and a
            // nonce must never seal two different ledgers.
            match vault::nonce() {
                Ok(nonce) => Some(sealer.seal(&json(&ledger), &nonce)),
                Err(e) => {
                    failed = Some(e.into());
                    old.map(<[u8]>::to_vec)
                }
            }
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(number),
        }
    }

    /// Keep a feedback answer, sealed under the person's key: one per
    /// nudge, a later answer replacing the earlier (an app that sends the
    /// same answer a thousand times stores one).
    pub fn save_feedback(
        &self,
        person: &PersonId,
        entry: &FeedbackEntry,
    ) -> Result<(), StoreError> {
        let sealer = self.sealer(person.as_str())?;
        let key = keys::feedback(&sealer.tag, &entry.nudge_id);
        let sealed = sealer.seal(&json(entry), &vault::nonce()?);
        unwrap_tx(
            (&self.feedback, &self.expiry).transaction(|(feedback, expiry)| {
                // The answer it replaces leaves the index with it.
                if let Some(old) = feedback.insert(key.as_slice(), sealed.as_slice())? {
                    let old: FeedbackEntry = sealer
                        .open(keys::FEEDBACK, &old)
                        .map_err(ConflictableTransactionError::Abort)?;
                    expiry.remove(keys::expiry(old.at_ms, keys::Expiring::Feedback, &key))?;
                }
                expiry.insert(
                    keys::expiry(entry.at_ms, keys::Expiring::Feedback, &key),
                    &[],
                )?;
                Ok(())
            }),
        )?;
        self.flush()
    }

    pub fn feedback_for(&self, person: &str) -> Result<Vec<FeedbackEntry>, StoreError> {
        let tag = self.person_tag(person);
        let Some(sealer) = self.sealer_for_tag(tag)? else {
            return Ok(Vec::new());
        };
        self.feedback
            .scan_prefix(tag)
            .map(|item| sealer.open(keys::FEEDBACK, &item?.1))
            .collect()
    }

    /// When the person was last erased, if within the retention window.
    pub fn tombstone(&self, id: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .tombstones
            .get(self.person_tag(id))?
            .map(|v| i64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))))
    }

    /// Erase a person: remove them from every tree, leave a tombstone (the
    /// keyed tag and `erased_at_ms`, nothing else) that refuses their
    /// older records, flush, then destroy their key in the vault, so that
    /// the copies sled keeps in its segment files can never be read again
    /// (crypto-shredding). Returns how many entries went.
    pub fn forget_person(&self, id: &str, erased_at_ms: i64) -> Result<usize, StoreError> {
        self.people_changing()?;
        let tag = self.person_tag(id);
        let mut removed = 0;
        // The tombstone and its index key move together: a sweep running
        // beside this removes a tombstone only while its key is there.
        unwrap_tx(
            (&self.tombstones, &self.expiry).transaction(|(tombstones, expiry)| {
                let earlier = tombstones
                    .get(tag)?
                    .map(|v| i64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])));
                let at = earlier.map_or(erased_at_ms, |t| t.max(erased_at_ms));
                if let Some(earlier) = earlier {
                    expiry.remove(keys::expiry(earlier, keys::Expiring::Tombstone, &tag))?;
                }
                expiry.insert(keys::expiry(at, keys::Expiring::Tombstone, &tag), &[])?;
                tombstones.insert(&tag, &at.to_be_bytes())?;
                Ok(())
            }),
        )?;
        if let Some(record) = self.person_by_tag(tag)? {
            removed += usize::from(
                self.recipients
                    .remove(self.recipient_tag(&record.recipient))?
                    .is_some(),
            );
        }
        removed += usize::from(self.people.remove(tag)?.is_some());
        removed += usize::from(self.ledgers.remove(tag)?.is_some());
        removed += usize::from(self.visits.remove(tag)?.is_some());
        // Each entry's index key goes with it: opened for its time while
        // the person's key still exists.
        let sealer = self.sealer_for_tag(tag)?;
        let mut unindexed = false;
        for (tree, entries) in [
            (keys::Expiring::Decision, &self.decisions),
            (keys::Expiring::Feedback, &self.feedback),
        ] {
            for item in entries.scan_prefix(tag) {
                let (key, value) = item?;
                match sealer.as_ref().and_then(|s| s.dated(tree, &value).ok()) {
                    Some(at_ms) => {
                        self.expiry.remove(keys::expiry(at_ms, tree, &key))?;
                    }
                    None => unindexed = true,
                }
                entries.remove(key)?;
                removed += 1;
            }
        }
        if unindexed {
            // An entry that no longer opens (its key gone in an earlier
            // erasure that did not finish): its time is unknown, so the
            // whole index is searched for the person's tag (rare).
            self.purge_expiry_tag(tag)?;
        }
        removed += self.purge_outbox_tag(tag)?;
        self.flush()?;
        removed += usize::from(self.vault().destroy(&tag)?);
        Ok(removed)
    }

    /// Drop a person's pending nudges (consent withdrawn or erased).
    pub fn purge_outbox(&self, person: &str) -> Result<usize, StoreError> {
        self.purge_outbox_tag(self.person_tag(person))
    }

    fn purge_outbox_tag(&self, tag: Tag) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.outbox.iter() {
            let (key, value) = item?;
            if tag_of(&value, keys::OUTBOX)? == tag {
                self.outbox.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Every index key of the person's decisions and answers (not their
    /// tombstone's), found by a walk of the whole index.
    fn purge_expiry_tag(&self, tag: Tag) -> Result<(), StoreError> {
        for item in self.expiry.iter() {
            let (key, _) = item?;
            if let Some((tree, entry)) = keys::expiry_entry(&key) {
                if tree != keys::Expiring::Tombstone && entry.starts_with(&tag) {
                    self.expiry.remove(&key)?;
                }
            }
        }
        Ok(())
    }

    /// Retention: delete decision-log entries, feedback answers and
    /// tombstones older than `cutoff_ms`. Visits only those, through the
    /// expiry index (layout 6), in time order; an erased person's entries
    /// went with the erasure. Returns how many.
    pub fn sweep(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let removed = self.sweep_expired(cutoff_ms, None)?;
        self.flush()?;
        Ok(removed)
    }

    /// Delete decision-log entries older than `cutoff_ms`. Returns how many.
    pub fn sweep_decisions(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        self.sweep_expired(cutoff_ms, Some(keys::Expiring::Decision))
    }

    fn sweep_expired(
        &self,
        cutoff_ms: i64,
        only: Option<keys::Expiring>,
    ) -> Result<usize, StoreError> {
        // The index keys below the cut-off, in time order: what an hourly
        // sweep finds is an hour's entries, a catch-up (a gateway that was
        // off, a first sweep) may be a month's.
        let mut expired = Vec::new();
        for item in self.expiry.range(..keys::expiry_time(cutoff_ms)) {
            let (index_key, _) = item?;
            let Some((tree, _)) = keys::expiry_entry(&index_key) else {
                return Err(StoreError::Corrupt {
                    tree: keys::EXPIRY,
                    reason: "key names no tree".into(),
                });
            };
            if only.is_none_or(|only| only == tree) {
                expired.push(index_key);
            }
        }
        // The entries in their trees' key order, so that each leaf is met
        // once: in time order they are scattered over the trees (keys
        // start with the person's tag), and a month of them removed at
        // random took 7 s and held the pipeline's sled writes back by
        // seconds (BENCHMARKS.md §2a, "A month-old store"). The entry
        // first: a crash in between leaves an index key that points at
        // nothing, which the next sweep removes.
        let mut entries: Vec<(keys::Expiring, &[u8], &[u8])> = expired
            .iter()
            .filter_map(|k| keys::expiry_entry(k).map(|(tree, key)| (tree, key, &k[..])))
            .collect();
        entries.sort_unstable();
        let mut removed = 0;
        let mut pace = Pace::default();
        for &(tree, key, index_key) in &entries {
            match tree {
                keys::Expiring::Decision => {
                    removed += usize::from(self.decisions.remove(key)?.is_some());
                }
                // An answer or a tombstone may be replaced (a later answer,
                // a later erasure) while the sweep runs beside the
                // pipeline: it goes only if its index key still says the
                // time the sweep found, both in one transaction (as they
                // are written).
                keys::Expiring::Feedback | keys::Expiring::Tombstone => {
                    let entries = if tree == keys::Expiring::Feedback {
                        &self.feedback
                    } else {
                        &self.tombstones
                    };
                    removed +=
                        unwrap_tx((entries, &self.expiry).transaction(|(entries, expiry)| {
                            Ok(match expiry.remove(index_key)? {
                                Some(_) => usize::from(entries.remove(key)?.is_some()),
                                None => 0,
                            })
                        }))?;
                }
            }
            pace.step();
        }
        // The decisions' index keys, in the index's order.
        for index_key in &expired {
            if keys::expiry_entry(index_key)
                .is_some_and(|(tree, _)| tree == keys::Expiring::Decision)
            {
                self.expiry.remove(index_key)?;
                pace.step();
            }
        }
        Ok(removed)
    }

    /// Layout 5 → 6: the expiry index from one walk of the decision log,
    /// feedback and tombstones (what every sweep did before). Entries no
    /// key opens any more (an erased person's) are removed, as that sweep
    /// did. Safe to re-run: an index key is written once per entry.
    fn build_expiry_index(&self) -> Result<(), StoreError> {
        for (tree, entries, name) in [
            (keys::Expiring::Decision, &self.decisions, keys::DECISIONS),
            (keys::Expiring::Feedback, &self.feedback, keys::FEEDBACK),
        ] {
            for item in entries.iter() {
                let (key, value) = item?;
                let at_ms = match self.sealer_for_tag(tag_of(&key, name)?)? {
                    Some(sealer) => Some(sealer.dated(tree, &value)?),
                    None => None,
                };
                match at_ms {
                    Some(at_ms) => {
                        self.expiry.insert(keys::expiry(at_ms, tree, &key), &[])?;
                    }
                    None => {
                        entries.remove(&key)?;
                    }
                }
            }
        }
        for item in self.tombstones.iter() {
            let (key, value) = item?;
            let erased_at = i64::from_be_bytes(value.as_ref().try_into().unwrap_or([0; 8]));
            self.expiry.insert(
                keys::expiry(erased_at, keys::Expiring::Tombstone, &key),
                &[],
            )?;
        }
        self.db.flush()?;
        Ok(())
    }
}

/// A long sweep shares sled and the cores with the pipeline: after every
/// [`Pace::STEPS`] removals it pauses as long as they took, so the
/// pipeline's own writes keep half the time (as the rotating-id roll
/// does, `daemon/roll.rs`). An hourly sweep (a few hundred removals)
/// never pauses.
struct Pace {
    since: std::time::Instant,
    steps: usize,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            since: std::time::Instant::now(),
            steps: 0,
        }
    }
}

impl Pace {
    const STEPS: usize = 1024;

    fn step(&mut self) {
        self.steps += 1;
        if self.steps == Self::STEPS {
            std::thread::sleep(self.since.elapsed());
            *self = Pace::default();
        }
    }
}

/// Tests: open a store this process just closed. sled's background flusher
/// may hold the file lock for a moment after the handle is dropped; only an
/// "in use" error is retried, and only for a bounded time.
#[cfg(test)]
fn reopen_closed(path: &Path) -> Store {
    for _ in 0..100 {
        match Store::open(path) {
            Err(StoreError::Open { reason, .. }) if reason.contains("in use") => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other.expect("the store opens"),
        }
    }
    Store::open(path).expect("the store opens")
}

#[cfg(test)]
mod tests;
