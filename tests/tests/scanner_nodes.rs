//! The store's scanner boards as they ship (issue #22), through a real
//! gateway and a real Mosquitto: OpenMQTTGateway's documented decoded
//! iBeacon (its default, `pubadvdata` off) and ESPresense's `eddy:` and
//! `altBeacon:` ids make the store's configured beacons `ok` in the fleet
//! report, while another node's garbage is refused by field, counted per
//! node in the same report, and holds nothing up. Payload sources:
//! vectors/scanner-nodes/README.md.

use std::time::Duration;

use e2e::{Mosquitto, MosquittoOptions, Phone, PhoneOptions, QoS, Site};
use serde_json::Value;

const SITE_REST: &str = r#"
[[sources]]
kind = "mqtt_scanners"
openmqttgateway = ["home/+/BTtoMQTT/+"]
espresense = ["espresense/devices/+/+"]

[[beacons]]
id = "door"
kind = "ibeacon"
uuid = "1de4b189-115e-45f6-b44e-509352269977"
major = 0
minor = 0

[[beacons]]
id = "till"
kind = "eddystone_uid"
namespace = "00010203040506070809"
instance = "0a0b0c0d0e0f"

[[beacons]]
id = "shelf"
kind = "altbeacon"
id1 = "e2c56db5-dffb-48d2-b060-d0f5a71096e0"
id2 = 7
id3 = 42
"#;

/// OpenMQTTGateway docs/use/ble.md: a decoded iBeacon, `pubadvdata` off.
const OMG_DOC_IBEACON: &str = r#"{"id":"58:78:20:76:BC:24","mac_type":1,"rssi":-79,"brand":"GENERIC","model":"iBeacon","model_id":"IBEACON","mfid":"4c00","uuid":"1de4b189115e45f6b44e509352269977","major":0,"minor":0,"txpower":-66}"#;

/// The gateway on `extra`, a phone watching its beacon reports (`ops`)
/// and one publishing as the scanner nodes.
async fn start(
    broker: &Mosquitto,
    extra: &str,
) -> anyhow::Result<(Site, e2e::ChildGuard, Phone, Phone)> {
    let mut site = Site::new(broker.port(), extra)?;
    let gateway = site.start()?;
    let ops = Phone::connect(PhoneOptions::new(
        broker.port(),
        "ops",
        site.topic("ops/beacons"),
    ))
    .await?;
    let node = Phone::connect(PhoneOptions::new(broker.port(), "nodes", "")).await?;
    Ok((site, gateway, ops, node))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_scanner_boards_are_understood_and_garbage_is_counted_per_node()
-> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let extra = [
        e2e::site::THREE_ZONES,
        e2e::site::LAPTOP_COMPARE,
        SITE_REST,
        e2e::site::SIM_CLOCK,
    ]
    .concat();
    let (site, gateway, ops, node) = start(&broker, &extra).await?;
    let publish = |topic: String, payload: String| {
        let node = &node;
        async move {
            node.publish(&topic, payload.into_bytes(), QoS::AtLeastOnce, false)
                .await
        }
    };

    // Garbage first, from a configured node and from one nobody configured.
    let partial = OMG_DOC_IBEACON.replace(r#","minor":0"#, "");
    publish("home/headphones/BTtoMQTT/58782076BC24".into(), partial).await?;
    publish(
        "espresense/devices/iBeacon:zz-1-2/garage".into(),
        "not json".into(),
    )
    .await?;
    publish(
        "espresense/devices/watch:darrell/headphones".into(),
        r#"{"id":"watch:darrell","rssi":-80}"#.into(),
    )
    .await?;
    // Then the store's boards on their default settings.
    publish(
        "home/laptops/BTtoMQTT/58782076BC24".into(),
        OMG_DOC_IBEACON.into(),
    )
    .await?;
    let eddy = "eddy:0001020304040506070809-0a0b0c0d0e0f";
    publish(
        format!("espresense/devices/{eddy}/entrance"),
        format!(r#"{{"id":"{eddy}","rssi@1m":-61,"rssi":-70.2,"rxAdj":20}}"#),
    )
    .await?;
    let alt = "altBeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0-7-42";
    publish(
        format!("espresense/devices/{alt}/entrance"),
        format!(r#"{{"id":"{alt}","rssi@1m":-60,"rssi":-66,"rxAdj":20}}"#),
    )
    .await?;

    let metric = |series: &str| site.metric(series).unwrap_or(0);
    e2e::wait_until(Duration::from_secs(10), || {
        metric("gateway_sightings_total{source=\"mqtt_espresense\"}") >= 4
            && metric("gateway_sightings_total{source=\"mqtt_openmqttgateway\"}") >= 2
    })
    .await
    .map_err(|e| e.context(site.admin_get("/metrics").unwrap_or_default()))?;
    assert_eq!(
        metric("gateway_sightings_rejected_total{source=\"mqtt_openmqttgateway\",field=\"minor\"}"),
        1
    );
    assert_eq!(
        metric("gateway_sightings_rejected_total{source=\"mqtt_espresense\",field=\"payload\"}"),
        1
    );
    assert_eq!(
        metric("gateway_scanner_messages_ignored_total{source=\"mqtt_espresense\",field=\"id\"}"),
        1
    );

    // The fleet report (every 30 s of event time, retained): every beacon
    // heard, and the per-node counts.
    let report = {
        let mut found = None;
        e2e::wait_until(Duration::from_secs(45), || {
            found = ops
                .received()
                .iter()
                .filter_map(|m| m.json().ok())
                .find(|r: &Value| {
                    r["beacons"]
                        .as_array()
                        .is_some_and(|b| b.iter().all(|b| b["status"] == "ok"))
                });
            found.is_some()
        })
        .await
        .map_err(|e| e.context(gateway.logs()))?;
        found.unwrap()
    };
    let nodes = &report["scanner_nodes"];
    assert_eq!(nodes["laptops"]["accepted"], 1, "{report:#}");
    assert_eq!(nodes["entrance"]["accepted"], 2, "{report:#}");
    assert_eq!(nodes["entrance"]["rx_adj"], 20, "{report:#}");
    assert_eq!(nodes["headphones"]["rejected"]["minor"], 1, "{report:#}");
    assert_eq!(nodes["headphones"]["ignored"]["id"], 1, "{report:#}");
    // Not configured: counted, under one fixed name, never its own.
    assert_eq!(nodes["(other)"]["rejected"]["payload"], 1, "{report:#}");
    assert!(nodes.get("garage").is_none(), "{report:#}");
    Ok(())
}

/// ESPresense-companion's capture (vectors/scanner-nodes/), replayed as it
/// was recorded: ten rooms' nodes hearing one device under the alias
/// `watch:darrell`. With that alias given to a store beacon in the site
/// file, every message is a sighting of the beacon from its room's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_espresense_capture_under_an_alias_is_heard_by_every_room() -> anyhow::Result<()> {
    let capture = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../vectors/scanner-nodes/espresense-companion-stationary.jsonp"
    ))?;
    let messages: Vec<(String, String)> = capture
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)?;
            let topic = v["topic"].as_str().unwrap_or_default().to_string();
            anyhow::Ok((topic, v["payload"].to_string()))
        })
        .collect::<Result<_, _>>()?;
    let mut per_room = std::collections::BTreeMap::<String, u64>::new();
    for (topic, _) in &messages {
        let room = topic.rsplit('/').next().unwrap_or_default();
        *per_room.entry(room.to_string()).or_default() += 1;
    }
    assert!(per_room.len() >= 5, "{per_room:?}");
    let zones: String = per_room
        .keys()
        .map(|room| format!("[[zones]]\nid = \"{room}\"\nscanners = [\"{room}\"]\n\n"))
        .collect();
    let beacon = r#"
[[sources]]
kind = "mqtt_scanners"
espresense = ["espresense/devices/+/+"]

[[beacons]]
id = "watch-darrell"
kind = "ibeacon"
uuid = "e5ca1ade-f007-ba11-0000-000000000000"
major = 1
minor = 2
espresense_id = "watch:darrell"
"#;

    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let extra = [zones.as_str(), beacon, e2e::site::SIM_CLOCK].concat();
    let (site, gateway, ops, node) = start(&broker, &extra).await?;
    for (topic, payload) in &messages {
        node.publish(topic, payload.clone().into_bytes(), QoS::AtLeastOnce, false)
            .await?;
    }

    let metric = |series: &str| site.metric(series).unwrap_or(0);
    let total = messages.len() as u64;
    e2e::wait_until(Duration::from_secs(10), || {
        metric("gateway_sightings_total{source=\"mqtt_espresense\"}") >= total
    })
    .await
    .map_err(|e| e.context(site.admin_get("/metrics").unwrap_or_default()))?;
    assert_eq!(
        metric("gateway_scanner_messages_ignored_total{source=\"mqtt_espresense\",field=\"id\"}"),
        0
    );

    let mut report = None;
    e2e::wait_until(Duration::from_secs(45), || {
        report = ops
            .received()
            .iter()
            .filter_map(|m| m.json().ok())
            .find(|r: &Value| r["beacons"][0]["status"] == "ok");
        report.is_some()
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;
    let report = report.unwrap_or_default();
    for (room, count) in &per_room {
        assert_eq!(
            report["scanner_nodes"][room]["accepted"], *count,
            "{room}: {report:#}"
        );
    }
    Ok(())
}
