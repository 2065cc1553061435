//! Group commit. sled's `flush` costs the same for one transaction as for
//! a hundred, and so does the fsync that has to follow it. So a caller that
//! needs its transaction durable takes a ticket *after* committing, and
//! returns once a flush that started after that ticket has finished: either
//! it runs that flush itself (for everyone who took a ticket before it
//! started) or it waits for the one running now and then the next.
//! Measured on this machine kind: acknowledging right after commit loses
//! thousands of decisions per SIGKILL under load; waiting for a flush that
//! started after the commit lost none in 20 kills.
//!
//! A flush alone survives a killed process, not a power cut: on Linux
//! sled's `flush` ends in `sync_file_range`, which starts writeback of the
//! log's pages but neither waits for the drive's cache nor writes the
//! file's metadata, and sled never syncs the directory entries it creates.
//! [`FileSync`] does the rest, once per group, inside the same flush.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

#[derive(Default)]
struct State {
    /// The next ticket to hand out.
    next_ticket: u64,
    /// Every ticket below this is durable.
    durable_below: u64,
    flushing: bool,
}

#[derive(Default)]
pub struct GroupCommit {
    state: Mutex<State>,
    flushed: Condvar,
}

impl GroupCommit {
    /// Block until everything the caller committed before calling is
    /// durable. `flush` is run by at most one caller at a time.
    pub fn wait_durable<E>(&self, flush: impl Fn() -> Result<(), E>) -> Result<(), E> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        loop {
            if state.durable_below > ticket {
                return Ok(());
            }
            if state.flushing {
                state = self.flushed.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // Lead: this flush starts now, so it covers every ticket taken.
            state.flushing = true;
            let covers = state.next_ticket;
            drop(state);
            let result = flush();
            state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.flushing = false;
            if result.is_ok() {
                state.durable_below = state.durable_below.max(covers);
            }
            self.flushed.notify_all();
            result?;
        }
    }
}

/// The fsyncs a sled flush leaves out, for a database directory.
///
/// sled 0.34 keeps its log in `db` (written with `pwrite`, "flushed" with
/// `sync_file_range`; a background thread fsyncs it every 500 ms, too late
/// for an acknowledgement), its settings in `conf` and its snapshot in
/// `snap.*` (both written only while opening; `conf` never fsynced, the
/// snapshot fsynced but then renamed into place), and values too large for
/// a log segment (over 128 KiB; this gateway's values are far smaller) in
/// files of their own under `blobs/`, never fsynced. It fsyncs no
/// directory, and a directory entry is on disk only once its directory is.
pub struct FileSync {
    dir: PathBuf,
    /// A handle of our own on sled's log: fsync works on the file, not on
    /// the descriptor, so this makes sled's writes durable too.
    db: File,
    /// Blob files already synced, with their directory.
    blobs: Mutex<BTreeSet<OsString>>,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FileSync {
    /// Sync what opening the database wrote (`conf`, the log, a new
    /// snapshot, the directory entries of all of them and of the directory
    /// itself). Call once sled has opened `dir` and before anything in it
    /// is acknowledged.
    pub fn open(dir: &Path) -> io::Result<FileSync> {
        let db = File::open(dir.join("db"))?;
        db.sync_all()?;
        match File::open(dir.join("conf")) {
            Ok(conf) => conf.sync_all()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let sync = FileSync {
            dir: dir.to_path_buf(),
            db,
            blobs: Mutex::default(),
        };
        sync.sync_new_blobs(true)?;
        sync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(sync)
    }

    /// After a sled flush: make everything it wrote survive a power cut.
    pub fn sync(&self) -> io::Result<()> {
        self.db.sync_all()?;
        self.sync_new_blobs(false)
    }

    /// Blob files appear (and go) with the values that need them; a new one
    /// is fsynced once, then its directory.
    fn sync_new_blobs(&self, sync_dir_anyway: bool) -> io::Result<()> {
        let blobs_dir = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&blobs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        let mut present = BTreeSet::new();
        let mut changed = false;
        for entry in entries {
            let name = entry?.file_name();
            if !synced.contains(&name) {
                match File::open(blobs_dir.join(&name)) {
                    Ok(file) => file.sync_all()?,
                    // Removed by sled since the listing: nothing to keep.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                changed = true;
            }
            present.insert(name);
        }
        // A removed blob is a directory change too.
        changed |= synced.iter().any(|name| !present.contains(name));
        if changed || sync_dir_anyway {
            sync_dir(&blobs_dir)?;
        }
        *synced = present;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn many_callers_share_few_flushes_and_each_waits_for_one_that_started_after_it() {
        let commit = Arc::new(GroupCommit::default());
        let flushes = Arc::new(AtomicU64::new(0));
        // The "disk": what the last finished flush saw committed.
        let committed = Arc::new(AtomicU64::new(0));
        let durable = Arc::new(AtomicU64::new(0));
        std::thread::scope(|scope| {
            for _ in 0..16 {
                let (commit, flushes, committed, durable) = (
                    commit.clone(),
                    flushes.clone(),
                    committed.clone(),
                    durable.clone(),
                );
                scope.spawn(move || {
                    for _ in 0..50 {
                        let mine = committed.fetch_add(1, Ordering::SeqCst) + 1;
                        commit
                            .wait_durable(|| {
                                flushes.fetch_add(1, Ordering::SeqCst);
                                let seen = committed.load(Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_micros(200));
                                durable.fetch_max(seen, Ordering::SeqCst);
                                Ok::<(), ()>(())
                            })
                            .unwrap();
                        // Nobody returns before a flush that saw their commit.
                        assert!(durable.load(Ordering::SeqCst) >= mine);
                    }
                });
            }
        });
        let flushes = flushes.load(Ordering::SeqCst);
        assert!(flushes < 800, "16 × 50 commits shared {flushes} flushes");
    }

    #[test]
    fn a_failed_flush_is_reported_and_not_counted_as_durable() {
        let commit = GroupCommit::default();
        assert_eq!(commit.wait_durable(|| Err("disk full")), Err("disk full"));
        assert_eq!(commit.wait_durable(|| Ok::<(), &str>(())), Ok(()));
    }

    #[test]
    fn file_sync_covers_the_log_and_the_blob_files_sled_makes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let db = sled::Config::new().path(&path).open().unwrap();
        let files = FileSync::open(&path).unwrap();
        db.insert(b"small", &b"x"[..]).unwrap();
        // Far beyond a log segment's share: sled puts it in a file of its own.
        db.insert(b"large", vec![7u8; 1 << 20]).unwrap();
        db.flush().unwrap();
        files.sync().unwrap();
        let synced = files.blobs.lock().unwrap().clone();
        let on_disk: BTreeSet<OsString> = std::fs::read_dir(path.join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(!on_disk.is_empty(), "sled wrote the large value as a blob");
        assert_eq!(synced, on_disk);
        db.remove(b"large").unwrap();
        db.flush().unwrap();
        files.sync().unwrap();
    }
}
