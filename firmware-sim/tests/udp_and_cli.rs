//! The UDP sender and the binary, against real sockets and processes.

use std::process::Command;
use std::time::Duration;

use firmware_sim::{DEFAULT_START_UNIX_MS, Scenario, SightingRecord, Simulation, StoreSpec};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

fn demo_records(seconds: u64) -> Vec<SightingRecord> {
    let mut sim = Simulation::new(
        StoreSpec::small_store(),
        Scenario::small_demo(7),
        DEFAULT_START_UNIX_MS,
        7,
    )
    .expect("valid");
    sim.run_for(Duration::from_secs(seconds))
}

#[tokio::test]
async fn udp_sends_one_record_per_datagram() {
    let receiver = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let target = receiver.local_addr().expect("addr");
    let records: Vec<SightingRecord> = demo_records(10).into_iter().take(50).collect();
    let report = firmware_sim::send_udp(
        records.clone(),
        target,
        f64::INFINITY,
        CancellationToken::new(),
    )
    .await
    .expect("send");
    assert_eq!(report.records_sent, 50);
    assert!(!report.cancelled);
    let mut buf = vec![0u8; 2048];
    for expected in &records {
        let n = tokio::time::timeout(Duration::from_secs(5), receiver.recv(&mut buf))
            .await
            .expect("datagram in time")
            .expect("recv");
        let got: SightingRecord = serde_json::from_slice(&buf[..n]).expect("one JSON record");
        assert_eq!(&got, expected);
    }
}

#[tokio::test]
async fn udp_pacing_follows_speed_and_stops_on_cancel() {
    let receiver = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let target = receiver.local_addr().expect("addr");
    // 20 s of simulated time at 100x is about 200 ms of real time.
    let records = demo_records(20);
    let span_ms = records.last().expect("some").at_ms - records[0].at_ms;
    let report = firmware_sim::send_udp(records.clone(), target, 100.0, CancellationToken::new())
        .await
        .expect("send");
    let expected = Duration::from_millis(u64::try_from(span_ms / 100).expect("positive"));
    assert!(report.duration >= expected, "{report:?}");
    assert!(
        report.duration < expected + Duration::from_secs(2),
        "{report:?}"
    );

    // Real time would take 20 s; cancel after 100 ms.
    let cancel = CancellationToken::new();
    let stopper = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stopper.cancel();
    });
    let report = firmware_sim::send_udp(records.clone(), target, 1.0, cancel)
        .await
        .expect("send");
    assert!(report.cancelled);
    assert!((report.records_sent as usize) < records.len());
    assert!(report.duration < Duration::from_secs(5));

    let bad = firmware_sim::send_udp(records, target, -1.0, CancellationToken::new()).await;
    assert!(bad.is_err());
}

fn sim_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_firmware-sim"))
}

#[test]
fn cli_writes_people_capture_and_truth() {
    let dir = tempfile::tempdir().expect("temp dir");
    let people = dir.path().join("people.jsonl");
    let capture = dir.path().join("capture.jsonl");
    let truth = dir.path().join("truth.jsonl");
    let status = sim_bin()
        .args(["people", "--seed", "7", "--out"])
        .arg(&people)
        .status()
        .expect("run");
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(&people).expect("people"),
        Scenario::small_demo(7).people_jsonl()
    );
    let store = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/sim/small-store.toml"
    );
    let status = sim_bin()
        .args([
            "capture",
            "--seed",
            "7",
            "--duration",
            "1m",
            "--store",
            store,
            "--out",
        ])
        .arg(&capture)
        .arg("--truth")
        .arg(&truth)
        .status()
        .expect("run");
    assert!(status.success());
    let lines = std::fs::read_to_string(&capture).expect("capture");
    let mut expected = Vec::new();
    firmware_sim::write_jsonl(&mut expected, demo_records(60)).expect("memory");
    assert_eq!(lines.as_bytes(), expected.as_slice());
    assert!(
        std::fs::read_to_string(&truth)
            .expect("truth")
            .lines()
            .count()
            > 5
    );
}

#[test]
fn cli_errors_are_one_line_without_panics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad_store = dir.path().join("bad.toml");
    std::fs::write(&bad_store, "[store]\nid = \"x\"\nfavourite = 1\n").expect("write");
    let out = dir.path().join("c.jsonl");
    let cases: Vec<Vec<std::ffi::OsString>> = vec![
        vec![
            "capture".into(),
            "--out".into(),
            out.clone().into(),
            "--store".into(),
            bad_store.into(),
        ],
        vec![
            "capture".into(),
            "--out".into(),
            out.clone().into(),
            "--store".into(),
            "/no/such.toml".into(),
        ],
        vec![
            "capture".into(),
            "--out".into(),
            out.clone().into(),
            "--start".into(),
            "yesterday".into(),
        ],
        vec![
            "capture".into(),
            "--out".into(),
            "/no/such/dir/c.jsonl".into(),
            "--duration".into(),
            "1s".into(),
        ],
    ];
    for args in cases {
        let output = sim_bin().args(&args).output().expect("run");
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("firmware-sim: error: "), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let output = sim_bin()
        .args(["capture", "--out", "x", "--duration", "ten minutes"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
}
