//! Small helpers: free ports, bounded waiting, temp working directories.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read
/// the port, close). Another process may still grab it before you bind it;
/// callers that start servers should retry on a bind failure.
pub fn free_tcp_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0 (tcp)")?;
    Ok(listener.local_addr()?.port())
}

/// A UDP port on 127.0.0.1 that was free a moment ago (see [`free_tcp_port`]).
pub fn free_udp_port() -> Result<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("bind 127.0.0.1:0 (udp)")?;
    Ok(socket.local_addr()?.port())
}

/// Polls `condition` every 20 ms until it returns true, for at most `timeout`.
/// Errors when the time is up (add `.context(..)` to say what was awaited).
pub async fn wait_until<F>(timeout: Duration, mut condition: F) -> Result<()>
where
    F: FnMut() -> bool,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Blocking twin of [`wait_until`] for synchronous tests and `Drop` code.
pub fn wait_until_blocking<F>(timeout: Duration, mut condition: F) -> Result<()>
where
    F: FnMut() -> bool,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temporary working directory, deleted on drop (kept when the environment
/// variable `E2E_KEEP_TMP` is set, and its path printed, for debugging).
#[derive(Debug)]
pub struct Workdir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Workdir {
    /// Creates a fresh directory under the system temp dir, named `e2e-<prefix>-XXXX`.
    pub fn new(prefix: &str) -> Result<Workdir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("e2e-{prefix}-"))
            .tempdir()
            .context("create temp dir")?;
        let path = dir.path().to_path_buf();
        Ok(Workdir {
            dir: Some(dir),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Writes `contents` to `rel` (creating parent dirs) and returns the full path.
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
        let path = self.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        std::fs::write(&path, contents).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// Reads `rel` as UTF-8 (lossy).
    pub fn read_to_string(&self, rel: impl AsRef<Path>) -> Result<String> {
        let path = self.join(rel);
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::env::var_os("E2E_KEEP_TMP").is_some()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("e2e: kept temp dir {}", kept.display());
        }
    }
}

/// Reads a file as lossy UTF-8, or returns a note saying why it could not.
pub(crate) fn read_lossy(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// The last `n` lines of `text`.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}
