//! ESPresense payloads, and check-ins and ESPresense reports published to a
//! real Mosquitto (started by the test on a free loopback port; skipped
//! with a message when `/usr/sbin/mosquitto` is not installed).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use firmware_sim::{DEFAULT_START_UNIX_MS, Scenario, Simulation, StoreSpec, output, to_espresense};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const START: i64 = DEFAULT_START_UNIX_MS;
const MOSQUITTO: &str = "/usr/sbin/mosquitto";

#[test]
fn espresense_reports_have_the_espresense_shape_for_ibeacons_only() {
    let mut sim =
        Simulation::new(StoreSpec::small_store(), Scenario::small_demo(7), START, 7).expect("v");
    let records = sim.run_for(Duration::from_secs(120));
    let messages = to_espresense(&records);
    assert!(!messages.is_empty());
    let scanners: BTreeSet<&str> = records.iter().map(|r| r.scanner.as_str()).collect();
    let mut ids = BTreeSet::new();
    for m in &messages {
        let json = serde_json::to_value(&m.payload).expect("json");
        let keys: BTreeSet<&str> = json
            .as_object()
            .expect("obj")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "id", "rssi", "rssi@1m", "distance", "raw", "speed", "mac", "interval"
            ])
        );
        let id = json["id"].as_str().expect("id");
        assert!(id.starts_with("iBeacon:"), "{id}");
        let room = m.topic.rsplit('/').next().expect("room");
        assert_eq!(m.topic, format!("espresense/devices/{id}/{room}"));
        assert!(scanners.contains(room));
        assert_eq!(json["mac"].as_str().expect("mac").len(), 12);
        assert!(json["distance"].as_f64().expect("f") > 0.0);
        assert!(json["interval"].as_i64().expect("i") > 0);
        ids.insert(id.to_owned());
    }
    // The three store iBeacons and the stranger's parcel iBeacon.
    assert!(
        ids.contains("iBeacon:426c7565-4368-6172-6d42-6561636f6e73-1-2"),
        "{ids:?}"
    );
    assert!(ids.len() >= 3, "{ids:?}");
    // Far fewer reports than sightings: the skip filter works.
    let ibeacon_records = records
        .iter()
        .filter(|r| r.adv.contains("4c000215"))
        .count();
    assert!(
        messages.len() * 2 < ibeacon_records,
        "{} of {ibeacon_records}",
        messages.len()
    );
    // At most one report per room and device per 5 s unless it moved 0.5 m.
    let mine: Vec<_> = messages
        .iter()
        .filter(|m| m.topic.ends_with("/laptops") && m.payload.id.ends_with("-1-2"))
        .collect();
    for w in mine.windows(2) {
        let moved = (w[1].payload.distance - w[0].payload.distance).abs();
        assert!(w[1].at_ms - w[0].at_ms >= 5000 || moved > 0.4, "{w:?}");
    }
}

struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_mosquitto() -> Option<Broker> {
    if !Path::new(MOSQUITTO).exists() {
        eprintln!("skipping: {MOSQUITTO} is not installed");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n"),
    )
    .expect("write conf");
    let child = Command::new(MOSQUITTO)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mosquitto");
    let broker = Broker {
        child,
        port,
        _dir: dir,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(broker);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("mosquitto did not start on port {port}");
}

/// Subscribe to `filter`, then collect `(topic, payload)` until `n` arrive.
async fn collect(
    port: u16,
    filter: &str,
    ready: tokio::sync::oneshot::Sender<()>,
    n: usize,
) -> Vec<(String, Value)> {
    let mut options = MqttOptions::new("sim-test-sub", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut ready = Some(ready);
    let mut out = Vec::new();
    while out.len() < n {
        match eventloop.poll().await.expect("poll") {
            Event::Incoming(Packet::SubAck(_)) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let topic = String::from_utf8(p.topic.to_vec()).expect("utf8");
                out.push((topic, serde_json::from_slice(&p.payload).expect("json")));
            }
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn checkins_and_espresense_reach_a_real_mosquitto() {
    let Some(broker) = start_mosquitto() else {
        return;
    };
    let mut sim =
        Simulation::new(StoreSpec::small_store(), Scenario::small_demo(7), START, 7).expect("v");
    let (records, checkins) = sim.next_batch_with_checkins(START + 300_000);
    assert!(!checkins.is_empty());

    let (tx, rx) = tokio::sync::oneshot::channel();
    let n = checkins.len();
    let sub = tokio::spawn(collect(broker.port, "retail/store-042/checkin/#", tx, n));
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("suback")
        .expect("ready");
    let report = output::publish_checkins(
        checkins.clone(),
        "127.0.0.1",
        broker.port,
        "retail",
        "store-042",
        0.0,
        CancellationToken::new(),
    )
    .await
    .expect("publish");
    assert_eq!((report.published, report.acked), (n as u64, n as u64));
    let got = tokio::time::timeout(Duration::from_secs(10), sub)
        .await
        .expect("in time")
        .expect("task");
    for ((topic, payload), sent) in got.iter().zip(&checkins) {
        assert_eq!(
            topic,
            &format!("retail/store-042/checkin/{}", sent.recipient)
        );
        assert_eq!(payload, &serde_json::to_value(&sent.payload).expect("json"));
    }

    let reports: Vec<_> = to_espresense(&records).into_iter().take(20).collect();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sub = tokio::spawn(collect(
        broker.port,
        "espresense/devices/#",
        tx,
        reports.len(),
    ));
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("suback")
        .expect("ready");
    let report = output::publish_espresense(
        reports.clone(),
        "127.0.0.1",
        broker.port,
        0.0,
        CancellationToken::new(),
    )
    .await
    .expect("publish");
    assert_eq!(report.acked, 20);
    let got = tokio::time::timeout(Duration::from_secs(10), sub)
        .await
        .expect("in time")
        .expect("task");
    assert_eq!(got.len(), 20);
    assert_eq!(got[0].0, reports[0].topic);
    assert_eq!(got[0].1["rssi@1m"], -59);
}

#[tokio::test]
async fn unreachable_broker_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let err = output::publish_checkins(
        Vec::new(),
        "127.0.0.1",
        port,
        "retail",
        "store-042",
        0.0,
        CancellationToken::new(),
    )
    .await
    .expect_err("nobody listens");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}
