//! The people snapshot: what the daemon needs in memory about every person
//! (id, recipient, identities, consent), in one file beside the sled files,
//! read at start instead of scanning the `people` tree.
//!
//! Why a file of its own (BENCHMARKS.md §2a): sled 0.34 keeps in memory
//! what a full scan of a tree paged in, whatever its cache bound, and the
//! start scanned every record to build the hot part, so a gateway with
//! 100,000 people idled at 113 MB, 57 MB of it the scan's leftovers. A
//! sequential read of this file through a small buffer leaves nothing
//! behind, and opens compact entries instead of whole records.
//!
//! Privacy is as in sled: each entry is sealed under its person's key from
//! the vault and bound to their tag, so an erasure (which destroys the key)
//! makes their entry unreadable in every copy of the file the disk still
//! holds. Nothing else in the file is personal.
//!
//! Trust: the file is only a cache. It is used when the `people_snapshot`
//! marker in sled's `meta` names its id and its MAC (under a key derived
//! from the site secret) checks out; every change to the people removes the
//! marker first, durably, before it writes (`Store::people_changing`). A
//! missing, stale, damaged or foreign file costs one scan of sled at the
//! next start, which writes a new snapshot on the way.
//!
//! Layout (version 1): header `GWPEOPL1` ‖ id (16) ‖ count u64 LE ‖ flags
//! (1: entries in ascending vault slot order) ‖ 7 zero bytes; per person:
//! tag (16) ‖ vault slot u32 LE ‖ length u32 LE ‖ sealed [`HotEntry`]
//! bytes; trailer: HMAC-SHA256 of everything before it (32). In slot
//! order, a start reads the keys with one pass over the vault file instead
//! of one read per person; a snapshot written during a start's scan is in
//! tag order, and the next shutdown writes it again in slot order.
//!
//! An entry's plaintext: version 1 (u8) ‖ consent bits (u8, `Purpose::ALL`
//! order) ‖ person id ‖ recipient ‖ identity count (u16 LE) ‖ per identity:
//! kind (0 app, 1 e-mail, 2 card) ‖ the key (16) or the value; strings are
//! u16 LE length ‖ UTF-8. About 100 bytes a person sealed, against 300 as
//! JSON: the start reads a third as much.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::vault::{self, Tag};
use super::{Store, StoreError, keys};
use crate::identity::{Consent, Identity, PersonId, PersonRecord, Purpose, Stamps};
use crate::people::People;

const MAGIC: &[u8; 8] = b"GWPEOPL1";
const HEADER: usize = 40;
const MAC: usize = 32;
/// An entry longer than this is damage, not a person (a record is at most
/// a few KiB: identities and consent).
const MAX_ENTRY: u32 = 1 << 20;
/// The reader's and writer's buffers: the file streams through them.
const BUFFER: usize = 1 << 16;

type SnapshotMac = Hmac<Sha256>;

const ENTRY_VERSION: u8 = 1;

/// One person's hot part, as sealed in the snapshot (module docs).
fn encode_hot(record: &PersonRecord) -> Result<Vec<u8>, StoreError> {
    fn string(out: &mut Vec<u8>, value: &str) -> Result<(), StoreError> {
        let len =
            u16::try_from(value.len()).map_err(|_| corrupt("a value longer than 65,535 bytes"))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(value.as_bytes());
        Ok(())
    }
    let mut out = Vec::with_capacity(64);
    out.push(ENTRY_VERSION);
    let consent = Purpose::ALL
        .iter()
        .enumerate()
        .fold(0u8, |bits, (n, &purpose)| {
            bits | u8::from(record.consent.get(purpose)) << n
        });
    out.push(consent);
    string(&mut out, record.person.as_str())?;
    string(&mut out, &record.recipient)?;
    let count =
        u16::try_from(record.identities.len()).map_err(|_| corrupt("too many identities"))?;
    out.extend_from_slice(&count.to_le_bytes());
    for identity in &record.identities {
        match identity {
            Identity::App { key } => {
                out.push(0);
                out.extend_from_slice(key);
            }
            Identity::Email { value } => {
                out.push(1);
                string(&mut out, value)?;
            }
            Identity::Card { value } => {
                out.push(2);
                string(&mut out, value)?;
            }
        }
    }
    Ok(out)
}

/// The hot part back, as a record with only that part: what `People`
/// indexes. The rest (time zone, interests, owned products, stamps) is
/// read from sled when a decision needs it.
fn decode_hot(bytes: &[u8]) -> Result<PersonRecord, StoreError> {
    struct Input<'a>(&'a [u8]);
    impl<'a> Input<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
            if self.0.len() < n {
                return Err(corrupt("an entry ends early"));
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn u8(&mut self) -> Result<u8, StoreError> {
            Ok(self.take(1)?[0])
        }
        fn u16(&mut self) -> Result<u16, StoreError> {
            Ok(u16::from_le_bytes(
                self.take(2)?.try_into().expect("2 bytes"),
            ))
        }
        fn string(&mut self) -> Result<String, StoreError> {
            let len = usize::from(self.u16()?);
            String::from_utf8(self.take(len)?.to_vec()).map_err(|_| corrupt("a value is not UTF-8"))
        }
    }
    let mut input = Input(bytes);
    if input.u8()? != ENTRY_VERSION {
        return Err(corrupt("an entry of an unknown version"));
    }
    let bits = input.u8()?;
    let mut consent = Consent::default();
    for (n, &purpose) in Purpose::ALL.iter().enumerate() {
        consent.set(purpose, bits & (1 << n) != 0);
    }
    let person = PersonId::from(input.string()?.as_str());
    let recipient = input.string()?;
    let count = input.u16()?;
    let mut identities = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        identities.push(match input.u8()? {
            0 => Identity::App {
                key: input.take(16)?.try_into().expect("16 bytes"),
            },
            1 => Identity::Email {
                value: input.string()?,
            },
            2 => Identity::Card {
                value: input.string()?,
            },
            _ => return Err(corrupt("an identity of an unknown kind")),
        });
    }
    if !input.0.is_empty() {
        return Err(corrupt("bytes after an entry"));
    }
    Ok(PersonRecord {
        person,
        recipient,
        timezone: None,
        identities,
        consent,
        interests: Vec::new(),
        owns: Vec::new(),
        stamps: Stamps::default(),
    })
}

fn corrupt(reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        tree: keys::PEOPLE_SNAPSHOT_FILE,
        reason: reason.into(),
    }
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    corrupt(format!("{}: {e}", path.display()))
}

/// Writes a snapshot to a temporary file; [`SnapshotWriter::finish`] puts
/// it in place, synced, under its final name.
struct SnapshotWriter {
    temp: PathBuf,
    path: PathBuf,
    out: BufWriter<File>,
    mac: SnapshotMac,
    count: u64,
    id: [u8; 16],
    /// In slot order: entries are held until `finish`, which sorts them.
    held: Option<Vec<(u32, Tag, Vec<u8>)>>,
}

impl SnapshotWriter {
    /// `in_slot_order`: hold the entries and write them sorted by vault
    /// slot (the memory of every sealed entry until `finish`: for a writer
    /// whose process is about to end, or has memory to spare).
    fn create(dir: &Path, mac_key: &Tag, in_slot_order: bool) -> Result<Self, StoreError> {
        let path = dir.join(keys::PEOPLE_SNAPSHOT_FILE);
        let temp = dir.join(format!("{}.tmp", keys::PEOPLE_SNAPSHOT_FILE));
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&temp).map_err(|e| io_error(&temp, e))?;
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).map_err(|e| corrupt(format!("no randomness: {e}")))?;
        let mut writer = SnapshotWriter {
            out: BufWriter::with_capacity(BUFFER, file),
            mac: SnapshotMac::new_from_slice(mac_key).expect("HMAC takes any key length"),
            temp,
            path,
            count: 0,
            id,
            held: in_slot_order.then(Vec::new),
        };
        // The count is not known yet: the header is written again at the end.
        writer.write(&header(&id, 0, false))?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.out
            .write_all(bytes)
            .map_err(|e| io_error(&self.temp, e))
    }

    fn push(&mut self, tag: &Tag, slot: u32, sealed: Vec<u8>) -> Result<(), StoreError> {
        if sealed.len() > MAX_ENTRY as usize {
            return Err(corrupt("a person's entry is too long"));
        }
        match &mut self.held {
            Some(held) => held.push((slot, *tag, sealed)),
            None => self.put(tag, slot, &sealed)?,
        }
        self.count += 1;
        Ok(())
    }

    fn put(&mut self, tag: &Tag, slot: u32, sealed: &[u8]) -> Result<(), StoreError> {
        let len = (sealed.len() as u32).to_le_bytes();
        for part in [&tag[..], &slot.to_le_bytes(), &len, sealed] {
            self.write(part)?;
            self.mac.update(part);
        }
        Ok(())
    }

    /// Trailer, header with the count, fsync, rename, fsync of the
    /// directory: once this returns the file is on disk under its name.
    fn finish(mut self) -> Result<([u8; 16], u64), StoreError> {
        use std::io::{Seek, SeekFrom};
        let in_slot_order = self.held.is_some();
        if let Some(mut held) = self.held.take() {
            held.sort_unstable_by_key(|(slot, ..)| *slot);
            for (slot, tag, sealed) in held {
                self.put(&tag, slot, &sealed)?;
            }
        }
        let header = header(&self.id, self.count, in_slot_order);
        let mut mac = self.mac.clone();
        mac.update(&header);
        let trailer = mac.finalize().into_bytes();
        self.write(&trailer)?;
        let temp = self.temp.clone();
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| io_error(&temp, e.into_error()))?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&header))
            .and_then(|_| file.sync_all())
            .map_err(|e| io_error(&temp, e))?;
        std::fs::rename(&temp, &self.path).map_err(|e| io_error(&self.path, e))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error(dir, e))?;
        }
        Ok((self.id, self.count))
    }
}

/// Flags in the header's byte 32.
const IN_SLOT_ORDER: u8 = 1;

fn header(id: &[u8; 16], count: u64, in_slot_order: bool) -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(MAGIC);
    header[8..24].copy_from_slice(id);
    header[24..32].copy_from_slice(&count.to_le_bytes());
    header[32] = if in_slot_order { IN_SLOT_ORDER } else { 0 };
    header
}

/// Reads a snapshot's entries; the MAC covers the header, so it is checked
/// at the end (after the last entry), where a short or altered file shows.
struct SnapshotReader<'s> {
    store: &'s Store,
    path: PathBuf,
    input: BufReader<File>,
    mac: SnapshotMac,
    header: [u8; HEADER],
    left: u64,
    done: bool,
    /// Keys read in one pass over the vault file (entries in slot order).
    keys: super::vault::SlotCursor,
}

impl<'s> SnapshotReader<'s> {
    /// The snapshot at `dir`, if it is the one `marker` names.
    fn open(
        store: &'s Store,
        dir: &Path,
        marker: &[u8],
        mac_key: &Tag,
    ) -> Result<Option<Self>, StoreError> {
        let path = dir.join(keys::PEOPLE_SNAPSHOT_FILE);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path, e)),
        };
        let mut input = BufReader::with_capacity(BUFFER, file);
        let mut header = [0u8; HEADER];
        input
            .read_exact(&mut header)
            .map_err(|e| io_error(&path, e))?;
        if &header[..8] != MAGIC {
            return Err(corrupt("not a people snapshot (bad header)"));
        }
        if header[8..24] != *marker {
            return Ok(None);
        }
        let left = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"));
        let keys = store.vault().cursor()?;
        Ok(Some(SnapshotReader {
            keys,
            store,
            path,
            input,
            mac: SnapshotMac::new_from_slice(mac_key).expect("HMAC takes any key length"),
            header,
            left,
            done: false,
        }))
    }

    fn read(&mut self, bytes: &mut [u8]) -> Result<(), StoreError> {
        self.input
            .read_exact(bytes)
            .map_err(|e| io_error(&self.path, e))?;
        self.mac.update(bytes);
        Ok(())
    }

    fn next_entry(&mut self) -> Result<Option<PersonRecord>, StoreError> {
        loop {
            if self.left == 0 {
                self.check_end()?;
                return Ok(None);
            }
            self.left -= 1;
            let mut tag: Tag = [0; 16];
            self.read(&mut tag)?;
            let mut slot = [0u8; 4];
            self.read(&mut slot)?;
            let mut len = [0u8; 4];
            self.read(&mut len)?;
            let len = u32::from_le_bytes(len);
            if len > MAX_ENTRY {
                return Err(corrupt("an entry's length is out of range"));
            }
            let mut sealed = vec![0u8; len as usize];
            self.read(&mut sealed)?;
            // An erased person's key is gone (the erasure also removed the
            // marker, so this is a snapshot written meanwhile): skipped.
            let key = match self.keys.key(u32::from_le_bytes(slot), &tag)? {
                Some(key) => Some(key),
                None => self.store.vault().key(&tag)?,
            };
            let Some(key) = key else {
                continue;
            };
            let plain = vault::open(&key, &tag, &sealed)
                .ok_or_else(|| corrupt("an entry does not open with its person's key"))?;
            return decode_hot(&plain).map(Some);
        }
    }

    fn check_end(&mut self) -> Result<(), StoreError> {
        let mut trailer = [0u8; MAC];
        self.input
            .read_exact(&mut trailer)
            .map_err(|e| io_error(&self.path, e))?;
        let mut rest = [0u8; 1];
        if self
            .input
            .read(&mut rest)
            .map_err(|e| io_error(&self.path, e))?
            != 0
        {
            return Err(corrupt("bytes after the trailer"));
        }
        let mut mac = self.mac.clone();
        mac.update(&self.header);
        mac.verify_slice(&trailer)
            .map_err(|_| corrupt("the MAC does not match (damaged or not this store's)"))
    }
}

impl Iterator for SnapshotReader<'_> {
    type Item = Result<PersonRecord, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_entry();
        if !matches!(next, Ok(Some(_))) {
            self.done = true;
        }
        next.transpose()
    }
}

/// Where the people in memory came from at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeopleSource {
    /// The snapshot file.
    Snapshot,
    /// A scan of sled (no current snapshot); a new one was written.
    Scan,
}

impl Store {
    fn snapshot_mac_key(&self) -> Tag {
        self.vault().tag(keys::TAG_SNAPSHOT_MAC, "")
    }

    fn snapshot_dir(&self) -> PathBuf {
        self.vault()
            .path()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    fn snapshot_state(&self) -> std::sync::MutexGuard<'_, SnapshotState> {
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the snapshot file is current (its marker is in `meta`).
    pub fn people_snapshot_current(&self) -> bool {
        self.people_snapshot_id().is_some()
    }

    /// Whether a snapshot should be written before the process ends: none
    /// is current, or the current one is not in vault slot order (written
    /// during a start's scan), which makes the next start slower.
    pub fn people_snapshot_needs_writing(&self) -> bool {
        let state = self.snapshot_state();
        state.marker.is_none() || !state.in_slot_order
    }

    /// The current snapshot's id: it changes with every snapshot written,
    /// so it also names "the people as they were then".
    pub(super) fn people_snapshot_id(&self) -> Option<[u8; 16]> {
        self.snapshot_state().marker
    }

    /// To be called before anything changes the people (an upsert, an
    /// erasure, a migration): the snapshot stops being current, durably,
    /// before the change can be on disk.
    pub(super) fn people_changing(&self) -> Result<(), StoreError> {
        let mut state = self.snapshot_state();
        state.changes += 1;
        if state.marker.take().is_some() {
            self.meta.remove(keys::META_PEOPLE_SNAPSHOT)?;
            self.flush()?;
        }
        Ok(())
    }

    /// The people, indexed for the daemon: from the snapshot when it is
    /// current; otherwise (or when it turns out damaged: logged) by a scan
    /// of sled that writes a new snapshot on the way, for the next start.
    pub fn load_people(&self, now_s: i64) -> Result<(People, PeopleSource), StoreError> {
        let records: std::sync::Arc<dyn crate::people::Records> = std::sync::Arc::new(self.clone());
        if let Some(marker) = self.people_snapshot_id() {
            let opened = SnapshotReader::open(
                self,
                &self.snapshot_dir(),
                &marker,
                &self.snapshot_mac_key(),
            );
            match opened.and_then(|reader| match reader {
                Some(reader) => {
                    let in_slot_order = reader.header[32] & IN_SLOT_ORDER != 0;
                    People::load(reader, self.people_hint(), records.clone(), now_s)
                        .map(|people| Some((people, in_slot_order)))
                }
                None => Ok(None),
            }) {
                Ok(Some((people, in_slot_order))) => {
                    self.snapshot_state().in_slot_order = in_slot_order;
                    return Ok((people, PeopleSource::Snapshot));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "people snapshot not used; scanning the store")
                }
            }
        }
        // Entries in tag order: holding them to sort would keep every
        // sealed entry in the daemon's memory while it loads.
        let people = self.scan_people_writing_snapshot(false, |stored| {
            People::load(stored, self.people_hint(), records.clone(), now_s)
        })?;
        Ok((people, PeopleSource::Scan))
    }

    /// Write a current snapshot from sled (after an import, or at shutdown
    /// when the people changed). Returns how many people it holds.
    pub fn write_people_snapshot(&self) -> Result<u64, StoreError> {
        let mut count = 0u64;
        self.scan_people_writing_snapshot(true, |stored| {
            for record in stored {
                record?;
                count += 1;
            }
            Ok::<_, StoreError>(())
        })?;
        Ok(count)
    }

    /// Scan sled's people, giving `consume` their records while each one's
    /// hot entry goes to a new snapshot; when the scan ends without error
    /// and nothing changed the people meanwhile, the snapshot becomes
    /// current. A snapshot that cannot be written is logged, not fatal:
    /// the people are still loaded.
    fn scan_people_writing_snapshot<T>(
        &self,
        in_slot_order: bool,
        consume: impl FnOnce(
            &mut dyn Iterator<Item = Result<PersonRecord, StoreError>>,
        ) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let changes_before = self.snapshot_state().changes;
        let created = SnapshotWriter::create(
            &self.snapshot_dir(),
            &self.snapshot_mac_key(),
            in_slot_order,
        );
        let mut writer = match created {
            Ok(writer) => Some(writer),
            Err(e) => {
                tracing::warn!(error = %e, "people snapshot cannot be written");
                None
            }
        };
        let mut stored = self.stored_people().map(|stored| {
            let (slot, sealer, record) = stored?;
            if let Some(out) = writer.as_mut() {
                let written = encode_hot(&record).and_then(|entry| {
                    let nonce = vault::nonce()?;
                    out.push(&sealer.tag, slot, sealer.seal(&entry, &nonce))
                });
                if let Err(e) = written {
                    tracing::warn!(error = %e, "people snapshot cannot be written");
                    // The temporary file stays, unnamed by anything; the
                    // next snapshot written truncates it.
                    writer = None;
                }
            }
            Ok(record)
        });
        let consumed = consume(&mut stored)?;
        drop(stored);
        if let Some(writer) = writer {
            let temp = writer.temp.clone();
            match writer.finish() {
                Ok((id, count)) => self.mark_snapshot(id, count, changes_before, in_slot_order)?,
                Err(e) => {
                    let _ = std::fs::remove_file(temp);
                    tracing::warn!(error = %e, "people snapshot cannot be written");
                }
            }
        }
        Ok(consumed)
    }

    /// Make a written snapshot current, unless the people changed while it
    /// was written (then it stays unused and the next start scans).
    fn mark_snapshot(
        &self,
        id: [u8; 16],
        count: u64,
        changes_before: u64,
        in_slot_order: bool,
    ) -> Result<(), StoreError> {
        let mut state = self.snapshot_state();
        if state.changes != changes_before {
            return Ok(());
        }
        self.meta.insert(keys::META_PEOPLE_SNAPSHOT, &id[..])?;
        self.flush()?;
        state.marker = Some(id);
        state.in_slot_order = in_slot_order;
        tracing::info!(people = count, in_slot_order, "people snapshot written");
        Ok(())
    }
}

/// The snapshot's state in a store handle (shared by its clones).
#[derive(Debug, Default)]
pub(super) struct SnapshotState {
    /// The id of the current snapshot, as `meta` says.
    pub marker: Option<[u8; 16]>,
    /// How many people changes this process began: a snapshot written
    /// while one began is not made current.
    pub changes: u64,
    /// Whether the current snapshot's entries are in vault slot order.
    pub in_slot_order: bool,
}

impl SnapshotState {
    pub fn from_meta(stored: Option<&[u8]>) -> Self {
        SnapshotState {
            marker: stored.and_then(|v| v.try_into().ok()),
            changes: 0,
            // Until a start reads the file and says otherwise.
            in_slot_order: true,
        }
    }
}

#[cfg(test)]
mod tests;
