//! Guarded child processes: captured output, bounded waits, always reaped.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{Workdir, read_lossy, tail_lines};

/// How long `Drop` waits after SIGTERM before sending SIGKILL.
pub const DROP_GRACE: Duration = Duration::from_millis(500);

/// A child process that is stopped (SIGTERM, then SIGKILL after a short
/// grace) and reaped when the guard is dropped, also during a panic.
///
/// The child runs in its own process group (signals go to the whole group, so
/// `sh -c` wrappers are covered) and gets `PR_SET_PDEATHSIG = SIGKILL`, so it
/// dies if the test binary crashes. Note that Linux delivers the parent-death
/// signal when the *thread* that spawned the child exits: spawn from the test's
/// own thread or a long-lived runtime worker, not from a short-lived thread.
///
/// Stdin is `/dev/null` (or a file, see [`spawn_guarded_with_input`]); stdout and stderr go to `<name>.stdout` and
/// `<name>.stderr` in a log directory (appended, so restarts keep history).
/// When the guard is dropped during a panic it prints the tail of both.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    pid: u32,
    status: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    _logdir: Option<Workdir>,
}

fn program_name(cmd: &Command) -> String {
    Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "child".to_string())
}

/// Spawns `cmd` guarded, with its output captured in a fresh temp dir.
/// The name used for the log files is the program's file name.
pub fn spawn_guarded(cmd: Command) -> Result<ChildGuard> {
    let name = program_name(&cmd);
    let logdir = Workdir::new(&format!("logs-{name}"))?;
    let mut guard = spawn_guarded_in(cmd, logdir.path(), &name)?;
    guard._logdir = Some(logdir);
    Ok(guard)
}

/// Like [`spawn_guarded`], but the child reads `input` on stdin (then EOF),
/// e.g. for `gateway decode -`.
pub fn spawn_guarded_with_input(cmd: Command, input: impl AsRef<[u8]>) -> Result<ChildGuard> {
    let name = program_name(&cmd);
    let logdir = Workdir::new(&format!("logs-{name}"))?;
    let stdin_path = logdir.write(format!("{name}.stdin"), input)?;
    let stdin = std::fs::File::open(&stdin_path)
        .with_context(|| format!("open {}", stdin_path.display()))?;
    let mut guard = spawn_inner(cmd, logdir.path(), &name, Stdio::from(stdin))?;
    guard._logdir = Some(logdir);
    Ok(guard)
}

/// Spawns `cmd` guarded, appending its output to `<log_dir>/<name>.stdout`
/// and `<log_dir>/<name>.stderr`.
pub fn spawn_guarded_in(cmd: Command, log_dir: &Path, name: &str) -> Result<ChildGuard> {
    spawn_inner(cmd, log_dir, name, Stdio::null())
}

fn spawn_inner(mut cmd: Command, log_dir: &Path, name: &str, stdin: Stdio) -> Result<ChildGuard> {
    let stdout_path = log_dir.join(format!("{name}.stdout"));
    let stderr_path = log_dir.join(format!("{name}.stderr"));
    let open = |p: &Path| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("open log file {}", p.display()))
    };
    cmd.stdin(stdin)
        .stdout(open(&stdout_path)?)
        .stderr(open(&stderr_path)?);
    // SAFETY: getpid is async-signal-safe; the pre_exec closure only calls
    // async-signal-safe functions (setpgid, prctl, getppid, raise) and does
    // not allocate.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("spawn {name}: {:?}", cmd.get_program()))?;
    let pid = child.id();
    Ok(ChildGuard {
        name: name.to_string(),
        child,
        pid,
        status: None,
        stdout_path,
        stderr_path,
        _logdir: None,
    })
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Both outputs, labelled, for printing in a failing test.
    pub fn logs(&self) -> String {
        format!(
            "--- {name} (pid {pid}) stdout ---\n{}\n--- {name} (pid {pid}) stderr ---\n{}",
            self.stdout(),
            self.stderr(),
            name = self.name,
            pid = self.pid
        )
    }

    /// Exit status if the child has exited (reaps it), without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.status = Some(status);
        }
        self.status
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Sends `signal` to the child's process group, unless it was reaped.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.try_status().is_some() {
            return Ok(());
        }
        // The child is not reaped yet, so its pid (= its process group id)
        // cannot have been reused.
        let rc = unsafe { libc::kill(-(self.pid as libc::pid_t), signal) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err).with_context(|| format!("kill {} ({})", self.pid, self.name));
            }
        }
        Ok(())
    }

    pub fn sigterm(&mut self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    pub fn sigkill(&mut self) -> Result<()> {
        self.signal(libc::SIGKILL)
    }

    /// Waits (blocking, polling every 10 ms) for the child to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) still running after {timeout:?}",
                    self.name,
                    self.pid
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Async twin of [`ChildGuard::wait_exit`]: does not block the runtime.
    pub async fn exited(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) still running after {timeout:?}",
                    self.name,
                    self.pid
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL the group and reap.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_status() {
            return Ok(status);
        }
        self.sigterm()?;
        if let Ok(status) = self.wait_exit(grace) {
            return Ok(status);
        }
        self.sigkill()?;
        self.wait_exit(Duration::from_secs(5))
    }

    /// SIGKILL the group and reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.sigkill()?;
        self.wait_exit(Duration::from_secs(5))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.stop(DROP_GRACE);
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {name} (pid {pid}) stdout, last 50 lines ---\n{}\n--- {name} (pid {pid}) stderr, last 50 lines ---\n{}",
                tail_lines(&self.stdout(), 50),
                tail_lines(&self.stderr(), 50),
                name = self.name,
                pid = self.pid
            );
        }
    }
}
