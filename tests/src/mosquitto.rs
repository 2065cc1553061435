//! A private Mosquitto broker per test: free port on 127.0.0.1, generated
//! config, persistence and log in its own temp dir.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::{ChildGuard, spawn_guarded_in};
use crate::util::{Workdir, free_tcp_port, read_lossy, tail_lines, wait_until_blocking};

/// What to start. `Default`: anonymous access allowed, a free port, no extras.
#[derive(Debug, Clone)]
pub struct MosquittoOptions {
    /// `allow_anonymous` for the listener (default true).
    pub allow_anonymous: bool,
    /// Extra config lines appended verbatim, e.g. `password_file {dir}/passwd`,
    /// `acl_file {dir}/acl`. `{dir}` is replaced by the broker's temp dir.
    pub extra_config: Vec<String>,
    /// Files written into the broker's temp dir before start (name, contents),
    /// e.g. an ACL file for `acl_file {dir}/acl`.
    pub files: Vec<(String, Vec<u8>)>,
    /// Fixed port; `None` picks a free one (and retries on a bind race).
    pub port: Option<u16>,
    /// How long to wait for the listener to accept connections.
    pub ready_timeout: Duration,
    /// Users (name, password) written with `mosquitto_passwd` into
    /// `{dir}/passwd`, which is then configured as `password_file`.
    pub users: Vec<(String, String)>,
    /// For floods of messages: no persistence and no per-message log
    /// lines, which at every message would make the broker the bottleneck.
    pub flood: bool,
}

impl Default for MosquittoOptions {
    fn default() -> Self {
        MosquittoOptions {
            allow_anonymous: true,
            extra_config: Vec::new(),
            files: Vec::new(),
            port: None,
            ready_timeout: Duration::from_secs(10),
            users: Vec::new(),
            flood: false,
        }
    }
}

impl MosquittoOptions {
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.allow_anonymous = allow;
        self
    }

    /// Appends one config line (`{dir}` is replaced by the broker's temp dir).
    pub fn extra(mut self, line: impl Into<String>) -> Self {
        self.extra_config.push(line.into());
        self
    }

    /// Writes a file into the broker's temp dir before start.
    pub fn file(mut self, name: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.into(), contents.into()));
        self
    }

    /// See [`MosquittoOptions::flood`].
    pub fn flood(mut self) -> Self {
        self.flood = true;
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Adds a user to the generated password file (see [`MosquittoOptions::users`]).
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.users.push((name.into(), password.into()));
        self
    }

    /// Writes `acl_text` to `{dir}/acl` and configures it as `acl_file`.
    pub fn acl(self, acl_text: impl Into<String>) -> Self {
        self.file("acl", acl_text.into())
            .extra("acl_file {dir}/acl")
    }
}

/// A running (or deliberately stopped/killed) Mosquitto. Dropping it stops the
/// broker and deletes its temp dir; during a panic it prints the log tail.
#[derive(Debug)]
pub struct Mosquitto {
    opts: MosquittoOptions,
    port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<ChildGuard>,
    // Last field: dropped after the child is stopped.
    dir: Workdir,
}

/// The Mosquitto binary: `$MOSQUITTO_BIN`, `/usr/sbin/mosquitto`, or `mosquitto` on PATH.
pub fn mosquitto_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MOSQUITTO_BIN") {
        return Ok(PathBuf::from(p));
    }
    let debian = Path::new("/usr/sbin/mosquitto");
    if debian.is_file() {
        return Ok(debian.to_path_buf());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("mosquitto");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "mosquitto not found (looked at $MOSQUITTO_BIN, /usr/sbin/mosquitto, PATH): run scripts/setup"
    )
}

impl Mosquitto {
    /// Starts a broker and waits (bounded by `opts.ready_timeout`) until it
    /// accepts TCP connections.
    pub fn start(opts: MosquittoOptions) -> Result<Mosquitto> {
        let dir = Workdir::new("mosquitto")?;
        for (name, contents) in &opts.files {
            dir.write(name, contents)?;
        }
        let mut opts = opts;
        if !opts.users.is_empty() {
            let passwd = dir.join("passwd");
            for (i, (user, password)) in opts.users.iter().enumerate() {
                let mut cmd = Command::new("mosquitto_passwd");
                if i == 0 {
                    cmd.arg("-c");
                }
                let out = cmd
                    .arg("-b")
                    .arg(&passwd)
                    .arg(user)
                    .arg(password)
                    .output()
                    .context("run mosquitto_passwd (run scripts/setup)")?;
                if !out.status.success() {
                    bail!(
                        "mosquitto_passwd for {user} failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            opts.extra_config
                .insert(0, "password_file {dir}/passwd".to_string());
        }
        let config_path = dir.join("mosquitto.conf");
        let log_path = dir.join("mosquitto.log");
        let attempts = if opts.port.is_some() { 1 } else { 5 };
        let mut broker = Mosquitto {
            port: opts.port.unwrap_or(0),
            opts,
            config_path,
            log_path,
            child: None,
            dir,
        };
        let mut last_err = None;
        for _ in 0..attempts {
            if broker.opts.port.is_none() {
                broker.port = free_tcp_port()?;
            }
            std::fs::write(&broker.config_path, broker.config_text())
                .with_context(|| format!("write {}", broker.config_path.display()))?;
            match broker.launch() {
                Ok(()) => return Ok(broker),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// Starts a broker with the default options.
    pub fn start_default() -> Result<Mosquitto> {
        Mosquitto::start(MosquittoOptions::default())
    }

    fn config_text(&self) -> String {
        let dir = self.dir.path().display().to_string();
        let mut c = String::new();
        let _ = writeln!(c, "# generated by the e2e harness");
        let _ = writeln!(c, "listener {} 127.0.0.1", self.port);
        let _ = writeln!(c, "allow_anonymous {}", self.opts.allow_anonymous);
        // Mosquitto runs as root here; stay root so the persistence dir is
        // writable and PR_SET_PDEATHSIG is not cleared by a uid change.
        let _ = writeln!(c, "user root");
        // As deploy/mosquitto/mosquitto.conf: no Nagle on client sockets.
        let _ = writeln!(c, "set_tcp_nodelay true");
        if self.opts.flood {
            let _ = writeln!(c, "persistence false");
            // The flood publisher keeps at most ~600 messages ahead of what
            // the gateway counted as handled, but Mosquitto counts what the
            // gateway has not acked yet: when its acks lagged (see
            // ERROR_REPORTS_PER_SECOND in daemon/pipeline.rs) the broker dropped
            // messages "over the queue limit" at 1000 and at 20000. No
            // limit: the pacing is the bound, and a lag shows as memory.
            let _ = writeln!(c, "max_queued_messages 0");
        } else {
            let _ = writeln!(c, "persistence true");
            let _ = writeln!(c, "persistence_location {dir}/");
            let _ = writeln!(c, "persistence_file mosquitto.db");
            // Save after every change, so even SIGKILL keeps sessions and queues.
            let _ = writeln!(c, "autosave_interval 1");
            let _ = writeln!(c, "autosave_on_changes true");
        }
        let _ = writeln!(c, "log_dest file {}", self.log_path.display());
        if self.opts.flood {
            for kind in ["error", "warning", "notice", "information"] {
                let _ = writeln!(c, "log_type {kind}");
            }
        } else {
            let _ = writeln!(c, "log_type all");
        }
        let _ = writeln!(c, "connection_messages true");
        let _ = writeln!(c, "log_timestamp true");
        let _ = writeln!(c, "log_timestamp_format %Y-%m-%dT%H:%M:%S");
        let _ = writeln!(c, "set_tcp_nodelay true");
        for line in &self.opts.extra_config {
            let _ = writeln!(c, "{}", line.replace("{dir}", &dir));
        }
        c
    }

    fn launch(&mut self) -> Result<()> {
        let bin = mosquitto_bin()?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-c").arg(&self.config_path);
        let mut child = spawn_guarded_in(cmd, self.dir.path(), "mosquitto")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            if let Some(status) = child.try_status() {
                bail!(
                    "mosquitto on port {} exited during start ({status}):\n{}\n--- log ---\n{}",
                    self.port,
                    child.logs(),
                    tail_lines(&read_lossy(&self.log_path), 30)
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                // Our own process must still be the one listening.
                std::thread::sleep(Duration::from_millis(20));
                if child.is_running() {
                    self.child = Some(child);
                    return Ok(());
                }
                continue;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                bail!(
                    "mosquitto on port {} not accepting connections within {:?}:\n{}\n--- log ---\n{}",
                    self.port,
                    self.opts.ready_timeout,
                    child.logs(),
                    tail_lines(&read_lossy(&self.log_path), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// `mqtt://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's temp dir (config, persistence, log, extra files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The broker log so far (all starts appended).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// How many times the broker wrote its persistence file so far (counted
    /// from the log). With the generated config it saves after every change.
    pub fn save_count(&self) -> usize {
        self.log().matches("Saving in-memory database").count()
    }

    /// Waits (blocking) until [`Mosquitto::save_count`] exceeds `previous`.
    /// Use before [`Mosquitto::kill`] when a test needs the latest state on disk.
    pub fn wait_saved_after(&self, previous: usize, timeout: Duration) -> Result<()> {
        wait_until_blocking(timeout, || self.save_count() > previous)
            .with_context(|| format!("mosquitto did not save its database (saves: {previous})"))
    }

    /// SIGKILL, no chance to save: a broker crash.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
        }
        Ok(())
    }

    /// SIGTERM (Mosquitto saves its database), SIGKILL after 5 s.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.stop(Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// Stops the broker if it runs, then starts it again on the same port with
    /// the same config and persistence dir.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                // The old socket may linger a moment; retry within the bound.
                Err(e)
                    if Instant::now() < deadline
                        && self.log().contains("Address already in use") =>
                {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e.context("restart mosquitto")),
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.stop(Duration::from_millis(500));
        }
        if std::thread::panicking() {
            eprintln!(
                "--- mosquitto on port {} log, last 40 lines ---\n{}",
                self.port,
                tail_lines(&self.log(), 40)
            );
        }
    }
}
