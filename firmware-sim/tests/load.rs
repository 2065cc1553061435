//! The load generator against a real UDP socket, and its CLI.

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use firmware_sim::{LoadConfig, LoadError, SightingRecord, interval_of_unix_ms, rotating_id};

/// Receive datagrams until 500 ms of silence.
fn drain(socket: UdpSocket) -> Vec<SightingRecord> {
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::new();
    while let Ok(n) = socket.recv(&mut buf) {
        out.push(serde_json::from_slice(&buf[..n]).expect("one sighting record a datagram"));
    }
    out
}

#[test]
fn load_run_achieves_its_rate_and_the_report_matches_what_arrived() {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let target = socket.local_addr().expect("addr");
    let receiver = std::thread::spawn(move || drain(socket));
    let config = LoadConfig {
        target,
        rate: 3000,
        devices: 200,
        duration: Duration::from_millis(1500),
        strangers: 0.9,
        seed: 3,
        arrive_over: Duration::ZERO,
    };
    let report =
        firmware_sim::run_load(&config, Arc::new(AtomicBool::new(false))).expect("load run");
    let received = receiver.join().expect("receiver");

    assert_eq!(report.records_sent, 4500);
    assert_eq!(report.send_errors, 0);
    assert!(
        (report.achieved_rate - 3000.0).abs() <= 300.0,
        "within 10 %: {report}"
    );
    assert!((report.duration_s - 1.5).abs() < 0.15, "{report}");
    assert_eq!(received.len() as u64, report.records_sent, "{report}");
    assert_eq!(report.enrolled_devices, 20);

    // Count what came from enrolled shoppers by resolving their app tokens
    // with the keys from the people records.
    let ids: BTreeSet<String> = config
        .scenario()
        .shoppers
        .iter()
        .flat_map(|s| {
            let now = interval_of_unix_ms(received[0].at_ms);
            [now, now + 1].map(|i| hex::encode(rotating_id(&s.key, i)))
        })
        .collect();
    let from_enrolled = received
        .iter()
        .filter(|r| ids.iter().any(|id| r.adv.contains(id.as_str())))
        .count() as u64;
    assert_eq!(from_enrolled, report.from_enrolled, "{report}");
    assert_eq!(report.from_strangers, report.records_sent - from_enrolled);
    assert!(
        (400..=500).contains(&from_enrolled),
        "about 10 %: {from_enrolled}"
    );
    let addrs: BTreeSet<&str> = received.iter().map(|r| r.addr.as_str()).collect();
    assert_eq!(addrs.len(), 200, "every device sent");
}

#[test]
fn arriving_devices_are_heard_from_their_arrival_on() {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let target = socket.local_addr().expect("addr");
    let receiver = std::thread::spawn(move || drain(socket));
    let config = LoadConfig {
        target,
        rate: 2000,
        devices: 100,
        duration: Duration::from_secs(1),
        strangers: 0.0,
        seed: 5,
        arrive_over: Duration::from_millis(800),
    };
    let report =
        firmware_sim::run_load(&config, Arc::new(AtomicBool::new(false))).expect("load run");
    let received = receiver.join().expect("receiver");
    // Each device 20 times a second from its arrival, on average 0.4 s in:
    // 60 % of the rate's 2000.
    assert!((1050..=1350).contains(&report.records_sent), "{report}");
    assert_eq!(received.len() as u64, report.records_sent, "{report}");
    assert_eq!(report.from_enrolled, report.records_sent);
    let addrs: BTreeSet<&str> = received.iter().map(|r| r.addr.as_str()).collect();
    assert_eq!(addrs.len(), 100, "every device arrived");
    // In the first fifth of a second, about a quarter of them had.
    let t0 = received[0].at_ms;
    let early: BTreeSet<&str> = received
        .iter()
        .filter(|r| r.at_ms < t0 + 200)
        .map(|r| r.addr.as_str())
        .collect();
    assert!((10..=40).contains(&early.len()), "{}", early.len());
    let refused = LoadConfig {
        arrive_over: Duration::from_secs(2),
        ..config
    };
    assert!(matches!(refused.validate(), Err(LoadError::BadArrival)));
}

#[test]
fn non_loopback_targets_are_refused() {
    let config = LoadConfig {
        target: "192.0.2.1:7531".parse().expect("addr"),
        rate: 10,
        devices: 1,
        duration: Duration::from_secs(1),
        strangers: 0.0,
        seed: 1,
        arrive_over: Duration::ZERO,
    };
    let err =
        firmware_sim::run_load(&config, Arc::new(AtomicBool::new(false))).expect_err("refused");
    assert!(matches!(err, LoadError::NotLoopback(_)));
    assert!(err.to_string().contains("loopback"), "{err}");
}

#[test]
fn load_cli_prints_a_json_report_and_writes_people() {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let target = socket.local_addr().expect("addr");
    let receiver = std::thread::spawn(move || drain(socket));
    let dir = tempfile::tempdir().expect("tempdir");
    let people = dir.path().join("people.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_firmware-sim"))
        .args([
            "load",
            "--target",
            &target.to_string(),
            "--rate",
            "1000",
            "--devices",
            "50",
        ])
        .args([
            "--duration",
            "500ms",
            "--strangers",
            "0.8",
            "--json",
            "--people",
        ])
        .arg(&people)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let received = receiver.join().expect("receiver");
    assert_eq!(report["records_sent"], 500);
    assert_eq!(report["records_sent"].as_u64(), Some(received.len() as u64));
    assert_eq!(report["enrolled_devices"], 10);
    for key in ["achieved_rate", "max_lag_ms", "from_enrolled", "duration_s"] {
        assert!(report.get(key).is_some(), "{key}");
    }
    let text = std::fs::read_to_string(&people).expect("people file");
    assert_eq!(text.lines().count(), 10);

    let refused = Command::new(env!("CARGO_BIN_EXE_firmware-sim"))
        .args([
            "load",
            "--target",
            "10.1.2.3:7531",
            "--rate",
            "10",
            "--devices",
            "1",
        ])
        .args(["--duration", "1s"])
        .output()
        .expect("run");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("loopback") && stderr.lines().count() == 1,
        "{stderr}"
    );

    let unbounded = Command::new(env!("CARGO_BIN_EXE_firmware-sim"))
        .args([
            "load",
            "--target",
            "127.0.0.1:7531",
            "--rate",
            "10",
            "--devices",
            "1",
        ])
        .output()
        .expect("run");
    assert!(!unbounded.status.success(), "--duration is required");
}

#[test]
fn days_capture_through_the_cli_skips_nights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("cap.jsonl");
    let truth = dir.path().join("truth.jsonl");
    let checkins = dir.path().join("checkins.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_firmware-sim"))
        .args(["capture", "--days", "2", "--out"])
        .arg(&out)
        .arg("--truth")
        .arg(&truth)
        .arg("--checkins")
        .arg(&checkins)
        .output()
        .expect("run");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let hours = firmware_sim::hours::Hours::new(&Default::default()).expect("hours");
    let text = std::fs::read_to_string(&out).expect("capture");
    let mut days = BTreeSet::new();
    for line in text.lines() {
        let r: SightingRecord = serde_json::from_str(line).expect("record");
        assert!(hours.is_open(r.at_ms), "{line}");
        days.insert(hours.local_date(r.at_ms));
    }
    assert_eq!(days.len(), 2);
    assert!(
        std::fs::read_to_string(&checkins)
            .expect("checkins")
            .lines()
            .count()
            > 0
    );
}
