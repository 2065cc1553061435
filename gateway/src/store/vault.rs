//! The key vault: one AES-256 key per person, kept outside sled in a file
//! of fixed-size slots that is overwritten in place (and synced) when a
//! person is erased. sled never deletes old bytes from its segment files
//! (a removed value's bytes were still found in them after heavy rewrites:
//! docs/notes/sled-durability-and-erasure.md),
//! so everything personal in sled is sealed under the person's key:
//! destroying the key makes every copy sled still holds unreadable. This is
//! crypto-shredding.
//!
//! The vault also holds the site secret used to turn ids into the opaque
//! tags sled uses as keys, so that no id appears in sled in the clear.
//!
//! Every change is fsynced before it returns, not in the store's group
//! commit: a new key must be on disk before anything sealed with it can be
//! (sled's writeback may put sealed values on disk at any moment, and a
//! value whose key is lost reads as damaged), and an erasure is
//! acknowledged only once the zeroed slot is on disk. Keys are made once
//! per person and erasures are rare, so these syncs are few.
//!
//! File layout: a 64-byte header (`GWVAULT1`, the 32-byte site secret,
//! padding), then 64-byte slots: `used` (1), tag (16), key (32), padding.
//!
//! The keys stay in the file (BENCHMARKS.md §2a): memory holds, per person,
//! the first 8 bytes of their tag and one slot number in a hash table
//! (about 18 bytes, against 64 for tag and key), and a key is read from
//! its slot when a value is sealed or opened (the page cache serves it).
//! Tags are HMAC output, so their first 8 bytes are as good as a hash; two
//! tags sharing them are told apart by the full tag in the slot.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hashbrown::HashTable;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAGIC: &[u8; 8] = b"GWVAULT1";
const SLOT: usize = 64;
const HEADER: usize = 64;
const NONCE: usize = 12;

/// An opaque, stable stand-in for a personal id in sled keys.
pub type Tag = [u8; 16];

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("key vault {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("key vault {path}: not a vault file or damaged ({reason})")]
    Corrupt { path: String, reason: String },
    #[error("no randomness available: {0}")]
    Random(String),
}

pub struct Vault {
    path: PathBuf,
    file: File,
    site_secret: [u8; 32],
    /// Used slots, by the first 8 bytes of their tag (`prefixes`).
    index: HashTable<u32>,
    /// Per slot of the file: the first 8 bytes of its tag (0 when free).
    prefixes: Vec<u64>,
    free: Vec<u32>,
}

/// The first 8 bytes of a tag: its hash in the index.
fn prefix(tag: &Tag) -> u64 {
    u64::from_le_bytes(tag[..8].try_into().expect("8 bytes"))
}

fn random<const N: usize>() -> Result<[u8; N], VaultError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(|e| VaultError::Random(e.to_string()))?;
    Ok(bytes)
}

impl Vault {
    /// Open the vault file, creating it (mode 0600) with a new site secret.
    pub fn open(path: &Path) -> Result<Vault, VaultError> {
        let io = |e: std::io::Error| VaultError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut header = Vec::with_capacity(HEADER);
        (&mut file)
            .take(HEADER as u64)
            .read_to_end(&mut header)
            .map_err(io)?;
        if header.is_empty() {
            let secret: [u8; 32] = random()?;
            let mut header = [0u8; HEADER];
            header[..8].copy_from_slice(MAGIC);
            header[8..40].copy_from_slice(&secret);
            file.write_all(&header).map_err(io)?;
            file.sync_all().map_err(io)?;
            // The new file's name is on disk only once its directory is:
            // without it a power cut would lose the site secret, and every
            // tag in sled with it.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
            return Ok(Vault {
                path: path.to_path_buf(),
                file,
                site_secret: secret,
                index: HashTable::new(),
                prefixes: Vec::new(),
                free: Vec::new(),
            });
        }
        let corrupt = |reason: &str| VaultError::Corrupt {
            path: path.display().to_string(),
            reason: reason.into(),
        };
        if header.len() < HEADER || &header[..8] != MAGIC {
            return Err(corrupt("bad header"));
        }
        if (len - HEADER as u64) % SLOT as u64 != 0 {
            return Err(corrupt("truncated slot"));
        }
        let slots = (len - HEADER as u64) / SLOT as u64;
        let slots = u32::try_from(slots).map_err(|_| corrupt("more slots than it can hold"))?;
        let mut site_secret = [0u8; 32];
        site_secret.copy_from_slice(&header[8..40]);
        let mut vault = Vault {
            path: path.to_path_buf(),
            file,
            site_secret,
            index: HashTable::with_capacity(slots as usize),
            prefixes: Vec::with_capacity(slots as usize),
            free: Vec::new(),
        };
        // Streamed: the file is 64 bytes a person, its keys are not kept.
        let file = vault.file.try_clone().map_err(io)?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut slot = [0u8; SLOT];
        for index in 0..slots {
            reader.read_exact(&mut slot).map_err(io)?;
            if slot[0] == 1 {
                let tag: Tag = slot[1..17].try_into().expect("16 bytes");
                vault.file_slot(index, prefix(&tag));
            } else {
                vault.prefixes.push(0);
                vault.free.push(index);
            }
        }
        slot.fill(0);
        Ok(vault)
    }

    /// Files `slot` (the next one of the file, or a free one) under a tag.
    fn file_slot(&mut self, slot: u32, prefix: u64) {
        if slot as usize == self.prefixes.len() {
            self.prefixes.push(prefix);
        } else {
            self.prefixes[slot as usize] = prefix;
        }
        let prefixes = &self.prefixes;
        self.index
            .insert_unique(prefix, slot, |&i| prefixes[i as usize]);
    }

    /// The slot holding `tag`, and its key.
    fn find(&self, tag: &Tag) -> Result<Option<(u32, [u8; 32])>, VaultError> {
        let prefix = prefix(tag);
        for &slot in self.index.iter_hash(prefix) {
            if self.prefixes[slot as usize] != prefix {
                continue;
            }
            let mut bytes = [0u8; SLOT];
            let at = (HEADER + slot as usize * SLOT) as u64;
            self.file
                .read_exact_at(&mut bytes, at)
                .map_err(|e| self.io_error(e))?;
            if bytes[0] == 1 && bytes[1..17] == tag[..] {
                let key: [u8; 32] = bytes[17..49].try_into().expect("32 bytes");
                bytes.fill(0);
                return Ok(Some((slot, key)));
            }
        }
        Ok(None)
    }

    /// How many keys the vault holds.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Heap held by the index, from capacities (one control byte and one
    /// slot number per bucket, 8 bytes of tag per slot of the file).
    pub fn heap_bytes(&self) -> usize {
        let buckets = (self.index.capacity() * 8 / 7).next_power_of_two();
        buckets * (1 + size_of::<u32>())
            + self.prefixes.capacity() * size_of::<u64>()
            + self.free.capacity() * size_of::<u32>()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sled key standing for an id of `kind` ("person", "recipient").
    pub fn tag(&self, kind: &str, id: &str) -> Tag {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.site_secret)
            .expect("HMAC takes any key length");
        mac.update(kind.as_bytes());
        mac.update(&[0]);
        mac.update(id.as_bytes());
        mac.finalize().into_bytes()[..16]
            .try_into()
            .expect("16 bytes")
    }

    /// The person's key, read from its slot; `None` if they have none
    /// (never had, or erased).
    pub fn key(&self, tag: &Tag) -> Result<Option<[u8; 32]>, VaultError> {
        Ok(self.find(tag)?.map(|(_, key)| key))
    }

    /// The slot holding the person's key, and the key.
    pub fn slot_and_key(&self, tag: &Tag) -> Result<Option<(u32, [u8; 32])>, VaultError> {
        self.find(tag)
    }

    /// Reads keys by slot in one forward pass over the file, for a reader
    /// that asks for them in ascending slot order (the people snapshot):
    /// no read call per person.
    pub fn cursor(&self) -> Result<SlotCursor, VaultError> {
        let file = File::open(&self.path).map_err(|e| self.io_error(e))?;
        let mut input = BufReader::with_capacity(1 << 16, file);
        input
            .seek_relative(HEADER as i64)
            .map_err(|e| self.io_error(e))?;
        Ok(SlotCursor {
            input,
            next: 0,
            slots: self.prefixes.len() as u32,
            path: self.path.clone(),
        })
    }

    /// The person's key, made (and synced to disk) on first use.
    pub fn key_or_create(&mut self, tag: &Tag) -> Result<[u8; 32], VaultError> {
        let mut keys = self.keys_or_create(std::slice::from_ref(tag))?;
        Ok(keys.pop().expect("one key per tag"))
    }

    /// The keys of `tags`, in order, making the missing ones: every new
    /// slot is written first and the file synced once, so enrolling many
    /// people (an import) costs one sync, not one per person.
    pub fn keys_or_create(&mut self, tags: &[Tag]) -> Result<Vec<[u8; 32]>, VaultError> {
        let mut keys = Vec::with_capacity(tags.len());
        let mut written = false;
        for tag in tags {
            if let Some(key) = self.key(tag)? {
                keys.push(key);
                continue;
            }
            let key: [u8; 32] = random()?;
            let index = match self.free.last() {
                Some(&free) => free,
                None => u32::try_from(self.prefixes.len()).map_err(|_| VaultError::Io {
                    path: self.path.display().to_string(),
                    reason: "no slot left".into(),
                })?,
            };
            let mut slot = [0u8; SLOT];
            slot[0] = 1;
            slot[1..17].copy_from_slice(tag);
            slot[17..49].copy_from_slice(&key);
            self.write_slot(index, &slot)?;
            if self.free.last() == Some(&index) {
                self.free.pop();
            }
            self.file_slot(index, prefix(tag));
            keys.push(key);
            written = true;
        }
        if written {
            self.sync()?;
        }
        Ok(keys)
    }

    /// Overwrite the person's slot with zeros and sync: every value sealed
    /// under that key is unreadable from now on, wherever it lies.
    pub fn destroy(&mut self, tag: &Tag) -> Result<bool, VaultError> {
        let Some((index, _)) = self.find(tag)? else {
            return Ok(false);
        };
        self.write_slot(index, &[0u8; SLOT])?;
        self.sync()?;
        if let Ok(found) = self.index.find_entry(prefix(tag), |&i| i == index) {
            found.remove();
        }
        self.prefixes[index as usize] = 0;
        self.free.push(index);
        Ok(true)
    }

    fn io_error(&self, e: std::io::Error) -> VaultError {
        VaultError::Io {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        }
    }

    /// Write one slot in place; not durable until [`Vault::sync`].
    fn write_slot(&mut self, index: u32, slot: &[u8; SLOT]) -> Result<(), VaultError> {
        let at = (HEADER + index as usize * SLOT) as u64;
        self.file
            .write_all_at(slot, at)
            .map_err(|e| self.io_error(e))
    }

    /// Make every slot written so far durable.
    fn sync(&mut self) -> Result<(), VaultError> {
        self.file.sync_data().map_err(|e| self.io_error(e))
    }
}

/// A forward-only reader of the vault file's slots ([`Vault::cursor`]).
pub struct SlotCursor {
    input: BufReader<File>,
    /// The slot the file position is at.
    next: u32,
    slots: u32,
    path: PathBuf,
}

impl SlotCursor {
    /// The key in `slot` if that slot holds `tag`. `None` when it does not
    /// (erased, or the person's key moved), when the slot is behind the
    /// cursor (asked out of order) or past the file's end: the caller then
    /// asks [`Vault::key`].
    pub fn key(&mut self, slot: u32, tag: &Tag) -> Result<Option<[u8; 32]>, VaultError> {
        if slot < self.next || slot >= self.slots {
            return Ok(None);
        }
        let io = |e: std::io::Error| VaultError::Io {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        };
        let skip = u64::from(slot - self.next) * SLOT as u64;
        self.input.seek_relative(skip as i64).map_err(io)?;
        let mut bytes = [0u8; SLOT];
        self.input.read_exact(&mut bytes).map_err(io)?;
        self.next = slot + 1;
        let key = (bytes[0] == 1 && bytes[1..17] == tag[..])
            .then(|| bytes[17..49].try_into().expect("32 bytes"));
        bytes.fill(0);
        Ok(key)
    }
}

/// A fresh random nonce, made outside sled transactions so that a retried
/// transaction closure seals to the same bytes.
pub fn nonce() -> Result<[u8; NONCE], VaultError> {
    random()
}

/// `nonce ‖ AES-256-GCM(key, plaintext, aad = tag)`.
pub fn seal(key: &[u8; 32], tag: &Tag, nonce: &[u8; NONCE], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: plaintext,
                aad: tag,
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(NONCE + sealed.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Open what [`seal`] made; `None` if the key is wrong or the bytes damaged.
pub fn open(key: &[u8; 32], tag: &Tag, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE);
    Aes256Gcm::new(key.into())
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: body,
                aad: tag,
            },
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_reopening_and_destroyed_slots_are_zero_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.vault");
        let (tag, key) = {
            let mut vault = Vault::open(&path).unwrap();
            let tag = vault.tag("person", "p-1");
            (tag, vault.key_or_create(&tag).unwrap())
        };
        let mut vault = Vault::open(&path).unwrap();
        assert_eq!(vault.tag("person", "p-1"), tag, "the site secret persists");
        assert_eq!(vault.key(&tag).unwrap(), Some(key));
        let sealed = seal(&key, &tag, &nonce().unwrap(), b"ana@example.com");
        assert_eq!(
            open(&key, &tag, &sealed).as_deref(),
            Some(&b"ana@example.com"[..])
        );
        assert!(
            open(&key, &vault.tag("person", "p-2"), &sealed).is_none(),
            "bound to its tag"
        );
        assert!(vault.destroy(&tag).unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(32).any(|w| w == key),
            "the key's bytes are gone from the file"
        );
        assert!(Vault::open(&path).unwrap().key(&tag).unwrap().is_none());
        let other = vault.tag("person", "p-2");
        vault.key_or_create(&other).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap().len(),
            HEADER + SLOT,
            "the freed slot is reused"
        );
    }

    #[test]
    fn many_keys_at_once_keep_the_old_ones_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.vault");
        let mut vault = Vault::open(&path).unwrap();
        let tags: Vec<Tag> = (0..100)
            .map(|i| vault.tag("person", &format!("p-{i}")))
            .collect();
        let held = vault.key_or_create(&tags[7]).unwrap();
        let keys = vault.keys_or_create(&tags).unwrap();
        assert_eq!(keys.len(), tags.len());
        assert_eq!(keys[7], held, "an existing key is returned, not replaced");
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), tags.len(), "one key per person");
        drop(vault);
        let reopened = Vault::open(&path).unwrap();
        for (tag, key) in tags.iter().zip(&keys) {
            assert_eq!(reopened.key(tag).unwrap(), Some(*key), "in the order asked");
        }
        assert_eq!(std::fs::read(&path).unwrap().len(), HEADER + 100 * SLOT);
    }

    #[test]
    fn tags_sharing_their_first_bytes_keep_their_own_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.vault");
        let mut vault = Vault::open(&path).unwrap();
        // The index files tags by their first 8 bytes: these three share them.
        let tags: Vec<Tag> = (1..=3u8)
            .map(|i| {
                let mut tag = [7u8; 16];
                tag[15] = i;
                tag
            })
            .collect();
        let keys = vault.keys_or_create(&tags).unwrap();
        assert!(vault.destroy(&tags[1]).unwrap());
        let mut other = tags[0];
        other[14] = 0;
        for vault in [vault, Vault::open(&path).unwrap()] {
            assert_eq!(vault.key(&tags[0]).unwrap(), Some(keys[0]));
            assert_eq!(vault.key(&tags[1]).unwrap(), None, "destroyed");
            assert_eq!(vault.key(&tags[2]).unwrap(), Some(keys[2]));
            assert_eq!(vault.key(&other).unwrap(), None, "never made");
        }
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.vault");
        std::fs::write(
            &path,
            b"not a vault at all, not at all, not at all, not at all, not at all",
        )
        .unwrap();
        assert!(matches!(
            Vault::open(&path),
            Err(VaultError::Corrupt { .. })
        ));
    }
}
