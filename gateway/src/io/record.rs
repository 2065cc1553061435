//! `--record`: sighting records appended to a JSON Lines capture
//! (docs/design.md §7), in the format `replay` reads.
//!
//! Nothing about strangers (docs/design.md §4.3): the caller says, per sighting,
//! whether it may be written — only adverts of the store's own beacons or
//! of resolved app tokens. Everything else is not written at all, so no
//! stranger's address ever reaches the file. Buffering is bounded: the
//! buffer is flushed every [`FLUSH_EVERY_LINES`] records and on drop.
//!
//! What it does write is where opted-in people were, so the file is kept
//! like the rest of the gateway's personal data: readable by its owner
//! only (0600, also when it existed with wider rights), and records older
//! than the retention window are dropped from it at every retention sweep
//! ([`CaptureRecorder::expire`]).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::sighting::Sighting;

/// Records held in memory at most before they are written out.
pub const FLUSH_EVERY_LINES: usize = 64;

pub struct CaptureRecorder {
    out: BufWriter<File>,
    path: PathBuf,
    unflushed: usize,
    written: u64,
    skipped: u64,
}

impl CaptureRecorder {
    /// Open `path` for appending (created if missing), owner-only.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(CaptureRecorder {
            out: BufWriter::with_capacity(64 * 1024, open_owner_only(path)?),
            path: path.to_path_buf(),
            unflushed: 0,
            written: 0,
            skipped: 0,
        })
    }

    /// Retention: rewrite the file without the records stamped before
    /// `cutoff_ms` (lines that are not records go too). Returns how many
    /// lines were dropped. The rewrite goes to a temporary file that
    /// replaces the capture only once complete, so a crash leaves one or
    /// the other, never half.
    pub fn expire(&mut self, cutoff_ms: i64) -> std::io::Result<usize> {
        self.flush()?;
        let text = std::fs::read_to_string(&self.path)?;
        let mut kept = String::with_capacity(text.len());
        let mut dropped = 0;
        for line in text.lines() {
            match Sighting::from_json(line) {
                Ok(s) if s.at_ms >= cutoff_ms => {
                    kept.push_str(line);
                    kept.push('\n');
                }
                _ => dropped += 1,
            }
        }
        if dropped == 0 {
            return Ok(0);
        }
        let temp = self.path.with_extension("expiring");
        {
            let mut out = open_owner_only(&temp)?;
            out.set_len(0)?;
            out.write_all(kept.as_bytes())?;
            out.sync_all()?;
        }
        std::fs::rename(&temp, &self.path)?;
        self.out = BufWriter::with_capacity(64 * 1024, open_owner_only(&self.path)?);
        Ok(dropped)
    }

    /// Write `sighting` if `allowed` (the store's beacon or a resolved app
    /// token); otherwise write nothing. Returns whether it was written.
    pub fn record(&mut self, sighting: &Sighting, allowed: bool) -> std::io::Result<bool> {
        if !allowed {
            self.skipped += 1;
            return Ok(false);
        }
        self.out.write_all(sighting.to_json().as_bytes())?;
        self.out.write_all(b"\n")?;
        self.written += 1;
        self.unflushed += 1;
        if self.unflushed >= FLUSH_EVERY_LINES {
            self.flush()?;
        }
        Ok(true)
    }

    /// [`CaptureRecorder::record`] with a predicate.
    pub fn record_if(
        &mut self,
        sighting: &Sighting,
        allowed: impl FnOnce(&Sighting) -> bool,
    ) -> std::io::Result<bool> {
        let allowed = allowed(sighting);
        self.record(sighting, allowed)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.unflushed = 0;
        self.out.flush()
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Sightings not written because they were not allowed.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

fn open_owner_only(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    // `mode` applies only to a file it creates.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

impl Drop for CaptureRecorder {
    fn drop(&mut self) {
        if let Err(e) = self.out.flush() {
            tracing::error!(error = %e, "capture file: final flush failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{DecodeOptions, decode};
    use crate::io::fleet::{BeaconKind, Fleet, FleetBeacon};
    use crate::io::scanners::ibeacon_advert;
    use crate::sighting::BdAddr;

    fn sighting(addr: u8, minor: u16, at_ms: i64) -> Sighting {
        Sighting {
            scanner: "entrance".into(),
            addr: BdAddr([0xC0, 1, 2, 3, 4, addr]),
            rssi: -60,
            adv: ibeacon_advert([7; 16], 1, minor, -59),
            at_ms,
        }
    }

    #[test]
    fn writes_only_allowed_sightings_and_flushes_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture.jsonl");
        let fleet = Fleet::new(vec![FleetBeacon {
            id: "door".into(),
            kind: BeaconKind::IBeacon {
                uuid: [7; 16],
                major: 1,
                minor: 1,
            },
            low_battery_mv: None,
            missing_after_s: 60,
            espresense_id: None,
        }]);
        let store_beacon =
            |s: &Sighting| decode(&s.adv, &DecodeOptions::default()).is_ok_and(|f| fleet.knows(&f));
        let mut rec = CaptureRecorder::create(&path).unwrap();
        assert!(rec.record_if(&sighting(1, 1, 1000), store_beacon).unwrap());
        // A stranger: a beacon that is not the store's.
        assert!(
            !rec.record_if(&sighting(0xEE, 9, 2000), store_beacon)
                .unwrap()
        );
        // A resolved app token, as the caller decided.
        assert!(rec.record(&sighting(2, 5, 3000), true).unwrap());
        assert_eq!((rec.written(), rec.skipped()), (2, 1));
        drop(rec);

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Sighting> = text
            .lines()
            .map(|l| Sighting::from_json(l).unwrap())
            .collect();
        assert_eq!(lines, vec![sighting(1, 1, 1000), sighting(2, 5, 3000)]);
        assert!(!text.contains("c0:01:02:03:04:ee"), "no stranger's address");

        // Appends, and flushes in bounded batches while open.
        let mut rec = CaptureRecorder::create(&path).unwrap();
        for i in 0..FLUSH_EVERY_LINES {
            rec.record(&sighting(3, 1, 4000 + i as i64), true).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2 + FLUSH_EVERY_LINES);
    }

    #[test]
    fn the_file_is_owner_only_and_retention_drops_old_records() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture.jsonl");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut rec = CaptureRecorder::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "an existing file is narrowed too");
        for at in [1_000, 2_000, 3_000] {
            rec.record(&sighting(1, 1, at), true).unwrap();
        }
        assert_eq!(rec.expire(2_000).unwrap(), 1);
        rec.record(&sighting(1, 1, 4_000), true).unwrap();
        drop(rec);
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<i64> = text
            .lines()
            .map(|l| Sighting::from_json(l).unwrap().at_ms)
            .collect();
        assert_eq!(kept, vec![2_000, 3_000, 4_000]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
