//! Power cuts without root: the gateway runs with `tests/powercut/shim.c`
//! preloaded, which keeps a disk image of its state directory holding only
//! what was fsynced (the model is described at the top of the shim). A cut
//! is a SIGKILL followed by [`PowerCut::cut`]: the state directory is
//! replaced by what the image says a disk would have kept.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result, bail};

use crate::Workdir;

/// The shim's source, in the repository.
pub fn shim_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("powercut/shim.c")
}

/// A state directory under the shim, and its disk image.
pub struct PowerCut {
    work: Workdir,
    shim: PathBuf,
    dir: PathBuf,
}

/// The shim's name for a file: inode number and birth time.
fn key(meta: &fs::Metadata) -> String {
    let (sec, nsec) = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
    format!("{}-{sec}.{nsec:09}", meta.ino())
}

impl PowerCut {
    /// Build the shim with the machine's C compiler, for state directory
    /// `dir` (created if missing).
    pub fn new(dir: &Path) -> Result<PowerCut> {
        let work = Workdir::new("powercut")?;
        let shim = work.join("shim.so");
        let out = Command::new("gcc")
            .args(["-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o"])
            .arg(&shim)
            .arg(shim_source())
            .args(["-ldl", "-lpthread"])
            .output()
            .context("running gcc for the power-cut shim")?;
        if !out.status.success() {
            bail!(
                "building the power-cut shim failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        fs::create_dir_all(dir)?;
        let cut = PowerCut {
            work,
            shim,
            dir: dir.canonicalize()?,
        };
        cut.image_from_dir()?;
        Ok(cut)
    }

    fn image(&self) -> PathBuf {
        self.work.join("image")
    }

    /// The environment a process needs to run under the shim.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("LD_PRELOAD", self.shim.clone().into_os_string()),
            ("POWERCUT_DIR", self.dir.clone().into_os_string()),
            ("POWERCUT_SHADOW", self.image().into_os_string()),
        ]
    }

    /// Take the directory as it is now as fully on disk (at the start, and
    /// after a cut, when it is exactly what the disk kept).
    pub fn image_from_dir(&self) -> Result<()> {
        let image = self.image();
        if image.exists() {
            fs::remove_dir_all(&image)?;
        }
        fs::create_dir_all(image.join("data"))?;
        fs::create_dir_all(image.join("dirs"))?;
        let root = fs::metadata(&self.dir)?;
        fs::write(image.join("root"), key(&root))?;
        self.image_tree(&self.dir, &root)
    }

    fn image_tree(&self, dir: &Path, meta: &fs::Metadata) -> Result<()> {
        let mut listing = String::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = fs::symlink_metadata(entry.path())?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|n| anyhow::anyhow!("power-cut image: name {n:?} is not UTF-8"))?;
            let kind = if meta.is_dir() {
                self.image_tree(&entry.path(), &meta)?;
                'd'
            } else if meta.is_file() {
                fs::copy(entry.path(), self.image().join("data").join(key(&meta)))?;
                'f'
            } else {
                continue;
            };
            listing.push_str(&format!(
                "{kind} {:o} {} {name}\n",
                meta.permissions().mode() & 0o7777,
                key(&meta)
            ));
        }
        fs::write(self.image().join("dirs").join(key(meta)), listing)?;
        Ok(())
    }

    /// The power cut, once the process is dead: replace the directory by
    /// what its image holds, then start a new image from it.
    pub fn cut(&self) -> Result<()> {
        let image = self.image();
        let root = fs::read_to_string(image.join("root"))?;
        fs::remove_dir_all(&self.dir)?;
        self.materialise(&root, &self.dir, 0o700)?;
        self.image_from_dir()
    }

    fn materialise(&self, key: &str, dir: &Path, mode: u32) -> Result<()> {
        fs::create_dir(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
        let listing = match fs::read_to_string(self.image().join("dirs").join(key)) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e.into()),
        };
        for line in listing.lines() {
            let mut parts = line.splitn(4, ' ');
            let (Some(kind), Some(mode), Some(key), Some(name)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                bail!("power-cut image: bad listing line {line:?}");
            };
            let mode = u32::from_str_radix(mode, 8)?;
            let path = dir.join(name);
            if kind == "d" {
                self.materialise(key, &path, mode)?;
            } else {
                let data = self.image().join("data").join(key);
                match fs::copy(&data, &path) {
                    Ok(_) => {}
                    // Named on disk, never synced: an empty file.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        fs::write(&path, b"")?;
                    }
                    Err(e) => return Err(e.into()),
                }
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
