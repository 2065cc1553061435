//! The read step: everything a configuration needs from outside the site
//! file's text (the files it names, `$CREDENTIALS_DIRECTORY`) gathered
//! into plain data before anything is validated. The validators
//! (`sections.rs`) only look things up in [`Inputs`]; a file that could not
//! be read is reported there, under the config path that named it.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};

use super::raw::RawConfig;

/// The external inputs of one configuration: each named file's bytes (or
/// why it could not be read) and the systemd credentials directory.
/// `Debug` shows paths and sizes only: a password file is among them.
#[derive(Clone, Default)]
pub struct Inputs {
    files: BTreeMap<PathBuf, Result<Vec<u8>, String>>,
    credentials_directory: Option<OsString>,
}

impl Inputs {
    /// A file's contents, as if read (for tests and callers that already
    /// hold them).
    pub fn with_file(mut self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Inputs {
        self.files.insert(path.into(), Ok(contents.into()));
        self
    }

    /// A file that could not be read, and why.
    pub fn with_unreadable(
        mut self,
        path: impl Into<PathBuf>,
        reason: impl Into<String>,
    ) -> Inputs {
        self.files.insert(path.into(), Err(reason.into()));
        self
    }

    pub fn with_credentials_directory(mut self, dir: impl Into<OsString>) -> Inputs {
        self.credentials_directory = Some(dir.into());
        self
    }

    /// The bytes of a file the configuration names, or why there are none.
    pub fn file(&self, path: &Path) -> Result<&[u8], String> {
        match self.files.get(path) {
            Some(Ok(bytes)) => Ok(bytes),
            Some(Err(reason)) => Err(reason.clone()),
            None => Err("not read".into()),
        }
    }

    pub fn credentials_directory(&self) -> Option<&OsStr> {
        self.credentials_directory.as_deref()
    }
}

impl fmt::Debug for Inputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut files = f.debug_map();
        for (path, contents) in &self.files {
            match contents {
                Ok(bytes) => files.entry(path, &format_args!("{} bytes", bytes.len())),
                Err(reason) => files.entry(path, reason),
            };
        }
        files.finish()
    }
}

/// Every file `raw` names: the TLS PEM files, the password file (or the
/// systemd credential holding the password), the chain secret's file or
/// credential (only with `[caps.chain]`), the catalog and the radio
/// map. Pure; empty
/// paths are left out (the validators report them).
pub fn files_named(raw: &RawConfig, credentials_directory: Option<&OsStr>) -> Vec<PathBuf> {
    let mqtt = &raw.mqtt;
    let mut files: Vec<PathBuf> = [&mqtt.ca_file, &mqtt.client_cert_file, &mqtt.client_key_file]
        .into_iter()
        .flatten()
        .filter(|p| !p.trim().is_empty())
        .map(PathBuf::from)
        .collect();
    if let Ok(Some(password)) = super::sections::password_file(mqtt, credentials_directory) {
        files.push(password);
    }
    if let Ok(Some(secret)) = super::sections::chain_secret_file(raw, credentials_directory) {
        files.push(secret);
    }
    files.extend(raw.catalog.as_ref().map(|c| PathBuf::from(&c.path)));
    files.extend(
        raw.presence
            .radio_map
            .as_deref()
            .filter(|p| !p.trim().is_empty())
            .map(PathBuf::from),
    );
    files
}

/// The read step for the real process: `$CREDENTIALS_DIRECTORY` from the
/// environment and every file `raw` names from the file system.
pub fn read(raw: &RawConfig) -> Inputs {
    let mut inputs = Inputs {
        files: BTreeMap::new(),
        credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY"),
    };
    for path in files_named(raw, inputs.credentials_directory()) {
        let contents = std::fs::read(&path).map_err(|e| e.to_string());
        inputs.files.insert(path, contents);
    }
    inputs
}
