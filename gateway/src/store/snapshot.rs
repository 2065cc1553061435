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
//! Layout (version 1): header `GWPEOPL1` ‖ id (16) ‖ count u64 LE ‖ 8 bytes
//! zero; per person: tag (16) ‖ length u32 LE ‖ sealed JSON [`HotEntry`];
//! trailer: HMAC-SHA256 of everything before it (32).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::vault::{self, Tag};
use super::{keys, parse, Store, StoreError};
use crate::identity::{Consent, Identity, PersonId, PersonRecord, Stamps};
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

/// One person's hot part, as sealed in the snapshot.
#[derive(Serialize)]
struct HotEntryRef<'a> {
    person: &'a PersonId,
    recipient: &'a str,
    identities: &'a [Identity],
    consent: &'a Consent,
}

/// The same, read back.
#[derive(Deserialize)]
struct HotEntry {
    person: PersonId,
    recipient: String,
    identities: Vec<Identity>,
    consent: Consent,
}

impl HotEntry {
    /// A record with the hot part only: what `People` indexes. The rest
    /// (time zone, interests, owned products, stamps) is read from sled
    /// when a decision needs it.
    fn into_record(self) -> PersonRecord {
        PersonRecord {
            person: self.person,
            recipient: self.recipient,
            timezone: None,
            identities: self.identities,
            consent: self.consent,
            interests: Vec::new(),
            owns: Vec::new(),
            stamps: Stamps::default(),
        }
    }
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
}

impl SnapshotWriter {
    fn create(dir: &Path, mac_key: &Tag) -> Result<Self, StoreError> {
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
        };
        // The count is not known yet: the header is written again at the end.
        writer.write(&header(&id, 0))?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.out
            .write_all(bytes)
            .map_err(|e| io_error(&self.temp, e))
    }

    fn push(&mut self, tag: &Tag, sealed: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(sealed.len())
            .ok()
            .filter(|&len| len <= MAX_ENTRY)
            .ok_or_else(|| corrupt("a person's entry is too long"))?;
        self.write(tag)?;
        self.write(&len.to_le_bytes())?;
        self.write(sealed)?;
        self.mac.update(tag);
        self.mac.update(&len.to_le_bytes());
        self.mac.update(sealed);
        self.count += 1;
        Ok(())
    }

    /// Trailer, header with the count, fsync, rename, fsync of the
    /// directory: once this returns the file is on disk under its name.
    fn finish(mut self) -> Result<([u8; 16], u64), StoreError> {
        use std::io::{Seek, SeekFrom};
        let header = header(&self.id, self.count);
        let mut mac = self.mac.clone();
        mac.update(&header);
        let trailer = mac.finalize().into_bytes();
        self.write(&trailer)?;
        let temp = self.temp.clone();
        let mut file = self.out.into_inner().map_err(|e| io_error(&temp, e.into_error()))?;
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

fn header(id: &[u8; 16], count: u64) -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(MAGIC);
    header[8..24].copy_from_slice(id);
    header[24..32].copy_from_slice(&count.to_le_bytes());
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
        Ok(Some(SnapshotReader {
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
            let Some(key) = self.store.vault().key(&tag)? else {
                continue;
            };
            let plain = vault::open(&key, &tag, &sealed)
                .ok_or_else(|| corrupt("an entry does not open with its person's key"))?;
            let entry: HotEntry = parse(keys::PEOPLE_SNAPSHOT_FILE, &plain)?;
            return Ok(Some(entry.into_record()));
        }
    }

    fn check_end(&mut self) -> Result<(), StoreError> {
        let mut trailer = [0u8; MAC];
        self.input
            .read_exact(&mut trailer)
            .map_err(|e| io_error(&self.path, e))?;
        let mut rest = [0u8; 1];
        if self.input.read(&mut rest).map_err(|e| io_error(&self.path, e))? != 0 {
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

    /// Whether the snapshot file is current (its marker is in `meta`).
    pub fn people_snapshot_current(&self) -> bool {
        self.people_snapshot_id().is_some()
    }

    /// The current snapshot's id: it changes with every snapshot written,
    /// so it also names "the people as they were then".
    pub(super) fn people_snapshot_id(&self) -> Option<[u8; 16]> {
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner()).marker
    }

    /// To be called before anything changes the people (an upsert, an
    /// erasure, a migration): the snapshot stops being current, durably,
    /// before the change can be on disk.
    pub(super) fn people_changing(&self) -> Result<(), StoreError> {
        let mut state = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        state.changes += 1;
        if state.marker.take().is_some() {
            self.meta.remove(keys::META_PEOPLE_SNAPSHOT)?;
            self.db.flush()?;
            self.files
                .sync()
                .map_err(|e| StoreError::Flush(format!("fsync: {e}")))?;
        }
        Ok(())
    }

    /// The people, indexed for the daemon: from the snapshot when it is
    /// current; otherwise (or when it turns out damaged: logged) by a scan
    /// of sled that writes a new snapshot on the way, for the next start.
    pub fn load_people(&self, now_s: i64) -> Result<(People, PeopleSource), StoreError> {
        let records: std::sync::Arc<dyn crate::people::Records> = std::sync::Arc::new(self.clone());
        let marker = self.snapshot.lock().unwrap_or_else(|e| e.into_inner()).marker;
        if let Some(marker) = marker {
            let opened =
                SnapshotReader::open(self, &self.snapshot_dir(), &marker, &self.snapshot_mac_key());
            match opened.and_then(|reader| match reader {
                Some(reader) => People::load(reader, self.people_hint(), records.clone(), now_s)
                    .map(Some),
                None => Ok(None),
            }) {
                Ok(Some(people)) => return Ok((people, PeopleSource::Snapshot)),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "people snapshot not used; scanning the store"),
            }
        }
        let people = self.scan_people_writing_snapshot(|stored| {
            People::load(stored, self.people_hint(), records.clone(), now_s)
        })?;
        Ok((people, PeopleSource::Scan))
    }

    /// Write a current snapshot from sled (after an import, or at shutdown
    /// when the people changed). Returns how many people it holds.
    pub fn write_people_snapshot(&self) -> Result<u64, StoreError> {
        let mut count = 0u64;
        self.scan_people_writing_snapshot(|stored| {
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
        consume: impl FnOnce(&mut dyn Iterator<Item = Result<PersonRecord, StoreError>>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let changes_before = self.snapshot.lock().unwrap_or_else(|e| e.into_inner()).changes;
        let mut writer = match SnapshotWriter::create(&self.snapshot_dir(), &self.snapshot_mac_key()) {
            Ok(writer) => Some(writer),
            Err(e) => {
                tracing::warn!(error = %e, "people snapshot cannot be written");
                None
            }
        };
        let mut failed = false;
        let mut stored = self.people.iter().filter_map(|item| {
            let (tag, sealed) = match item {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            let tag = match super::tag_of(&tag, keys::PEOPLE) {
                Ok(tag) => tag,
                Err(e) => return Some(Err(e)),
            };
            let sealer = match self.sealer_for_tag(tag) {
                Ok(Some(sealer)) => sealer,
                // An erased person's leftover.
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            };
            let record: PersonRecord = match sealer.open(keys::PEOPLE, &sealed) {
                Ok(record) => record,
                Err(e) => return Some(Err(e)),
            };
            if let Some(out) = writer.as_mut().filter(|_| !failed) {
                let entry = HotEntryRef {
                    person: &record.person,
                    recipient: &record.recipient,
                    identities: &record.identities,
                    consent: &record.consent,
                };
                let written = vault::nonce()
                    .map_err(StoreError::from)
                    .and_then(|nonce| out.push(&tag, &sealer.seal(&super::json(&entry), &nonce)));
                if let Err(e) = written {
                    tracing::warn!(error = %e, "people snapshot cannot be written");
                    failed = true;
                }
            }
            Some(Ok(record))
        });
        let consumed = consume(&mut stored)?;
        drop(stored);
        if let Some(writer) = writer.filter(|_| !failed) {
            let temp = writer.temp.clone();
            match writer.finish() {
                Ok((id, count)) => self.mark_snapshot(id, count, changes_before)?,
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
    fn mark_snapshot(&self, id: [u8; 16], count: u64, changes_before: u64) -> Result<(), StoreError> {
        let mut state = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        if state.changes != changes_before {
            return Ok(());
        }
        self.meta.insert(keys::META_PEOPLE_SNAPSHOT, &id[..])?;
        self.db.flush()?;
        self.files
            .sync()
            .map_err(|e| StoreError::Flush(format!("fsync: {e}")))?;
        state.marker = Some(id);
        tracing::info!(people = count, "people snapshot written");
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
}

impl SnapshotState {
    pub fn from_meta(stored: Option<&[u8]>) -> Self {
        SnapshotState {
            marker: stored.and_then(|v| v.try_into().ok()),
            changes: 0,
        }
    }
}

#[cfg(test)]
mod tests;
