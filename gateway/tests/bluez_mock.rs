//! The BlueZ source against python-dbusmock's bluez5 template on a private
//! D-Bus, no radio needed (docs/notes/bluez-without-a-radio.md).
//!
//! `run_bluez` connects to the bus named by `DBUS_SYSTEM_BUS_ADDRESS`. Setting
//! that in this process would be `unsafe` (Rust 2024) and leak into other
//! tests, so this binary has no libtest harness and runs itself again as the
//! probe child, with the variable set in the child's environment only. The
//! probe prints each sighting as a JSON line and the telemetry that matters
//! (`scan` lines) whenever it changes; the test reads them.
//!
//! Prerequisites come from `scripts/setup` (dbus-daemon and the
//! `.venv-dbusmock` venv); without them the test fails and says so.
//! Every child is killed when the test ends, also on failure (guards with
//! Drop; PR_SET_PDEATHSIG if this process dies).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use gateway::decode::{DecodeOptions, Frame, decode};
use gateway::io::ble::{BluezSettings, GAUGE_SCANNING, run_bluez};
use gateway::sighting::Sighting;
use gateway::telemetry::Telemetry;

const PROBE_ENV: &str = "GATEWAY_BLUEZ_PROBE";
const DEVICE: &str = "AA:BB:CC:DD:EE:01";
const IBEACON_UUID: &str = "e2c56db5dffb48d2b060d0f5a71096e0";
const STEP: Duration = Duration::from_secs(20);

fn main() {
    if std::env::var_os(PROBE_ENV).is_some() {
        probe();
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        println!("bluez_mock: test");
        return;
    }
    // A name filter that does not match skips the test, like libtest.
    if let Some(filter) = args.iter().skip(1).find(|a| !a.starts_with('-')) {
        if !"bluez_mock".contains(filter.as_str()) {
            println!(
                "\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out\n"
            );
            return;
        }
    }
    println!("\nrunning 1 test");
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(run);
    let secs = started.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => {
            println!("test bluez_mock ... ok ({secs:.1} s)");
            println!(
                "\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in {secs:.2}s\n"
            );
        }
        Err(_) => {
            println!("test bluez_mock ... FAILED ({secs:.1} s)");
            println!(
                "\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in {secs:.2}s\n"
            );
            std::process::exit(101);
        }
    }
}

/// The child: run the BlueZ source and report on stdout.
fn probe() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("info")
        .try_init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let telemetry = Arc::new(Telemetry::new());
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let cancel = tokio_util::sync::CancellationToken::new();
        let settings = BluezSettings {
            adapter: Some("hci0".into()),
            scanner_id: "probe".into(),
        };
        tokio::spawn(run_bluez(settings, tx, telemetry.clone(), cancel.clone()));
        let mut last = (-1, u64::MAX);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        // The parent kills us; stop on our own too if it forgets.
        let deadline = tokio::time::sleep(Duration::from_secs(300));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                got = rx.recv() => match got {
                    Some(i) => println!("{}", i.sighting.to_json()),
                    None => break,
                },
                _ = tick.tick() => {
                    let now = (
                        telemetry.gauge(GAUGE_SCANNING),
                        telemetry.counter("source_failures_total", &[("source", "bluez")]),
                    );
                    if now != last {
                        println!(r#"{{"scan": {}, "failures": {}}}"#, now.0, now.1);
                        last = now;
                    }
                }
            }
        }
        cancel.cancel();
    });
}

/// A child process killed and reaped on drop.
struct Guard {
    name: &'static str,
    child: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.name;
    }
}

fn spawn(name: &'static str, cmd: &mut Command) -> Guard {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Guard { name, child }
}

/// Lines of a child's stdout, read on a thread.
fn lines(out: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn prerequisites() -> (PathBuf, PathBuf) {
    let root = repo_root();
    let python = root.join(".venv-dbusmock/bin/python");
    let drive = root.join("scripts/bluez-mock/drive.py");
    let daemon_ok = Command::new("dbus-daemon")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let venv_ok = Command::new(&python)
        .args(["-c", "import dbus, dbusmock"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        daemon_ok && venv_ok,
        "the BlueZ mock test needs dbus-daemon ({}) and the python-dbusmock venv at {} ({}): run scripts/setup",
        if daemon_ok { "found" } else { "missing" },
        python.display(),
        if venv_ok { "found" } else { "missing" },
    );
    assert!(drive.exists(), "{} missing", drive.display());
    (python, drive)
}

struct Mock {
    python: PathBuf,
    drive: PathBuf,
    bus: String,
}

impl Mock {
    /// Run one drive.py command, bounded in time.
    fn drive(&self, args: &[&str]) {
        let mut guard = spawn(
            "drive.py",
            Command::new(&self.python)
                .arg(&self.drive)
                .args(args)
                .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let deadline = Instant::now() + STEP;
        loop {
            match guard.child.try_wait() {
                Ok(Some(status)) => {
                    let mut err = String::new();
                    if let Some(mut e) = guard.child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    assert!(status.success(), "drive.py {args:?} failed: {err}");
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => panic!("drive.py {args:?} did not finish within {STEP:?}"),
            }
        }
    }
}

struct Probe {
    rx: Receiver<String>,
    _guard: Guard,
    stderr_path: PathBuf,
}

enum Line {
    Sighting(Sighting),
    Scan { scanning: i64, failures: u64 },
}

impl Probe {
    fn next(&self, deadline: Instant, what: &str) -> Line {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(line) => {
                if let Ok(s) = Sighting::from_json(&line) {
                    return Line::Sighting(s);
                }
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("probe printed {line:?}: {e}"));
                Line::Scan {
                    scanning: v["scan"].as_i64().unwrap_or(-1),
                    failures: v["failures"].as_u64().unwrap_or(0),
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("timed out waiting for {what}; probe log:\n{}", self.log())
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!(
                    "probe exited waiting for {what}; probe log:\n{}",
                    self.log()
                )
            }
        }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn wait_scan(&self, want: i64, min_failures: u64, what: &str) -> u64 {
        let deadline = Instant::now() + STEP;
        loop {
            if let Line::Scan { scanning, failures } = self.next(deadline, what) {
                if scanning == want && failures >= min_failures {
                    return failures;
                }
            }
        }
    }

    /// The next sighting from the device that `accept` likes.
    fn wait_sighting(&self, what: &str, accept: impl Fn(&Sighting, &[Frame]) -> bool) -> Sighting {
        let deadline = Instant::now() + STEP;
        loop {
            if let Line::Sighting(s) = self.next(deadline, what) {
                let frames = decode(&s.adv, &DecodeOptions::default()).unwrap_or_default();
                if s.addr.to_string() == DEVICE.to_ascii_lowercase() && accept(&s, &frames) {
                    return s;
                }
            }
        }
    }
}

fn ibeacon_hex(major: u16, minor: u16, power: i8) -> String {
    format!(
        "0215{IBEACON_UUID}{major:04x}{minor:04x}{:02x}",
        power as u8
    )
}

fn run() {
    let (python, drive) = prerequisites();
    let tmp = tempfile::tempdir().expect("tempdir");

    // A private bus; its address is the first line it prints.
    let mut bus_guard = spawn(
        "dbus-daemon",
        Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let bus_lines = lines(bus_guard.child.stdout.take().expect("stdout"));
    let bus = bus_lines
        .recv_timeout(Duration::from_secs(10))
        .expect("dbus-daemon printed no address within 10 s");
    let start_mock = || {
        spawn(
            "dbusmock",
            Command::new(&python)
                .args(["-m", "dbusmock", "--template", "bluez5", "--system"])
                .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    let mock = Mock {
        python: python.clone(),
        drive,
        bus: bus.clone(),
    };
    let mut mock_guard = start_mock();
    mock.drive(&["wait-bluez", "10"]);
    mock.drive(&["add-adapter", "hci0"]);
    mock.drive(&["add-device", "hci0", DEVICE]);

    let stderr_path = tmp.path().join("probe.log");
    let mut probe_guard = spawn(
        "probe",
        Command::new(std::env::current_exe().expect("current exe"))
            .env(PROBE_ENV, "1")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("log file")),
    );
    let probe = Probe {
        rx: lines(probe_guard.child.stdout.take().expect("stdout")),
        _guard: probe_guard,
        stderr_path,
    };
    probe.wait_scan(1, 0, "scanning to start");

    // iBeacon in manufacturer data.
    mock.drive(&[
        "advert",
        "hci0",
        DEVICE,
        "-61",
        "mfr",
        "0x004c",
        &ibeacon_hex(7, 42, -59),
    ]);
    let s = probe.wait_sighting("the iBeacon sighting", |_, f| {
        f.iter().any(|f| matches!(f, Frame::IBeacon { .. }))
    });
    assert_eq!(s.rssi, -61);
    assert_eq!(s.scanner, "probe");
    let frames = decode(&s.adv, &DecodeOptions::default()).unwrap();
    assert_eq!(
        frames,
        vec![Frame::IBeacon {
            uuid: hex::decode(IBEACON_UUID).unwrap().try_into().unwrap(),
            major: 7,
            minor: 42,
            measured_power: -59,
        }]
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((now_ms - s.at_ms).abs() < 60_000, "at_ms is wall clock");

    // Eddystone TLM, then UID, in 16-bit service data 0xFEAA.
    let feaa = "0000feaa-0000-1000-8000-00805f9b34fb";
    mock.drive(&[
        "advert",
        "hci0",
        DEVICE,
        "-70",
        "svc",
        feaa,
        "20000bb81580000004d20000c350",
    ]);
    let s = probe.wait_sighting("the Eddystone TLM sighting", |_, f| {
        f.iter().any(|f| matches!(f, Frame::EddystoneTlm { .. }))
    });
    assert_eq!(s.rssi, -70);
    let frames = decode(&s.adv, &DecodeOptions::default()).unwrap();
    assert!(
        matches!(
            frames[..],
            [Frame::EddystoneTlm {
                battery_mv: 3000,
                ..
            }]
        ),
        "{frames:?}"
    );
    mock.drive(&[
        "advert",
        "hci0",
        DEVICE,
        "-71",
        "svc",
        feaa,
        "00e8000102030405060708090a0b0c0d0e0f",
    ]);
    probe.wait_sighting("the Eddystone UID sighting", |s, f| {
        s.rssi == -71 && f.iter().any(|f| matches!(f, Frame::EddystoneUid { .. }))
    });

    // RSSI alone: a sighting with the new RSSI and the adverts known.
    mock.drive(&["rssi", "hci0", DEVICE, "-42"]);
    let s = probe.wait_sighting("the RSSI update", |s, _| s.rssi == -42);
    assert!(!s.adv.is_empty());

    // The adapter goes away: noticed, counted; scanning resumes when it is back.
    mock.drive(&["remove-adapter", "hci0"]);
    let failures = probe.wait_scan(0, 1, "the removal to be noticed");
    mock.drive(&["add-adapter", "hci0"]);
    mock.drive(&["add-device", "hci0", DEVICE]);
    probe.wait_scan(1, failures, "scanning to resume after AddAdapter");
    mock.drive(&[
        "advert",
        "hci0",
        DEVICE,
        "-55",
        "mfr",
        "0x004c",
        &ibeacon_hex(7, 43, -59),
    ]);
    probe.wait_sighting("a sighting after the adapter came back", |s, f| {
        s.rssi == -55
            && f.iter()
                .any(|f| matches!(f, Frame::IBeacon { minor: 43, .. }))
    });

    // BlueZ restarts (the mock process dies and comes back): the same.
    drop(mock_guard);
    let failures = probe.wait_scan(0, failures + 1, "BlueZ going away to be noticed");
    mock_guard = start_mock();
    mock.drive(&["wait-bluez", "10"]);
    mock.drive(&["add-adapter", "hci0"]);
    mock.drive(&["add-device", "hci0", DEVICE]);
    probe.wait_scan(1, failures, "scanning to resume after BlueZ restarted");
    mock.drive(&[
        "advert",
        "hci0",
        DEVICE,
        "-50",
        "mfr",
        "0x004c",
        &ibeacon_hex(7, 44, -59),
    ]);
    probe.wait_sighting("a sighting after BlueZ restarted", |s, f| {
        s.rssi == -50
            && f.iter()
                .any(|f| matches!(f, Frame::IBeacon { minor: 44, .. }))
    });
    drop(mock_guard);
}
