//! Sightings from remote scanner nodes over MQTT, the beacon fleet report,
//! and `--record` (issue "Every beacon format, every way adverts come in").

use std::time::Duration;

use e2e::{Mosquitto, MosquittoOptions, Phone, PhoneOptions, QoS, Site};
use firmware_sim::{Scenario, Shopper, Simulation, Stop, StoreSpec, Stranger, StrangerDevice};

const SITE_REST: &str = r#"
[[sources]]
kind = "mqtt_scanners"
own = true
openmqttgateway = ["home/+/BTtoMQTT/+"]
espresense = ["espresense/devices/+/+"]


[[beacons]]
id = "entrance-ibeacon"
kind = "ibeacon"
uuid = "426c7565-4368-6172-6d42-6561636f6e73"
major = 1
minor = 1
missing_after_s = 600

[[beacons]]
id = "lost-beacon"
kind = "ibeacon"
uuid = "426c7565-4368-6172-6d42-6561636f6e73"
major = 9
minor = 9
missing_after_s = 60
"#;

fn site() -> String {
    [
        e2e::site::THREE_ZONES,
        e2e::site::LAPTOP_COMPARE,
        SITE_REST,
        e2e::site::SIM_CLOCK,
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanner_nodes_over_mqtt_feed_the_pipeline_fleet_and_recording() -> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    // The site file already has a UDP source; append ours after it.
    let mut site = Site::new(broker.port(), &site())?;
    let path = vec![Stop::new("entrance", 5), Stop::new("laptops", 60)];
    let scenario = Scenario::new(11)
        .with_shopper(
            Shopper::new(1, 11)
                .with_interests(&["laptops"])
                .with_path(path.clone()),
        )
        .with_stranger(Stranger::new(StrangerDevice::AppleNearby, 0, path));
    site.import_people(&scenario.people_jsonl())?;
    let record = site.dir.join("heard.jsonl");
    let gateway = site.start_with(&["--record", record.to_str().unwrap()])?;
    let phone = Phone::connect(PhoneOptions::new(
        broker.port(),
        "phone",
        site.topic("nudges/r-1"),
    ))
    .await?;
    let ops = Phone::connect(PhoneOptions::new(
        broker.port(),
        "ops",
        site.topic("ops/beacons"),
    ))
    .await?;
    let node = Phone::connect(PhoneOptions::new(broker.port(), "scanner-node", "")).await?;

    // Our own scanner-only gateways publish sighting records per node.
    let start = e2e::site::now_ms();
    let mut sim = Simulation::new(StoreSpec::small_store(), scenario, start, 11)?;
    let records = sim.next_batch(start + 90_000);
    let beacon_addrs: Vec<String> = StoreSpec::small_store()
        .beacons
        .iter()
        .map(|b| b.addr.to_lowercase())
        .collect();
    let strangers: Vec<String> = records
        .iter()
        .filter(|r| !r.adv.contains("ffff01") && !beacon_addrs.contains(&r.addr))
        .map(|r| r.addr.clone())
        .collect();
    assert!(!strangers.is_empty());
    let speed = 20.0;
    let t0 = tokio::time::Instant::now();
    for r in &records {
        let due = Duration::from_secs_f64((r.at_ms - start).max(0) as f64 / 1000.0 / speed);
        tokio::time::sleep_until(t0 + due).await;
        node.publish(
            &site.topic(&format!("scanners/{}", r.scanner)),
            serde_json::to_vec(r)?,
            QoS::AtMostOnce,
            false,
        )
        .await?;
    }
    let nudges = phone
        .wait_for(1, Duration::from_secs(20))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    assert_eq!(nudges[0].json()?["kind"], "compare");

    // A node whose record names another scanner is refused by field.
    let wrong = serde_json::to_vec(&records[0])?;
    node.publish(
        &site.topic("scanners/not-that-node"),
        wrong,
        QoS::AtMostOnce,
        false,
    )
    .await?;
    // ESPresense and OpenMQTTGateway messages are understood too.
    let espresense = r#"{"id": "iBeacon:426c7565-4368-6172-6d42-6561636f6e73-1-1", "rssi": -61, "rssi@1m": -59, "distance": 1.2, "raw": 1.3, "speed": 0.0, "interval": 1000}"#;
    node.publish(
        "espresense/devices/iBeacon:426c7565-4368-6172-6d42-6561636f6e73-1-1/laptops",
        espresense.as_bytes().to_vec(),
        QoS::AtMostOnce,
        false,
    )
    .await?;
    let omg = r#"{"id": "AA:BB:CC:DD:EE:01", "rssi": -70, "manufacturerdata": "4c000215426c7565436861726d426561636f6e730001000ac5"}"#;
    node.publish(
        "home/node1/BTtoMQTT/AABBCCDDEE01",
        omg.as_bytes().to_vec(),
        QoS::AtMostOnce,
        false,
    )
    .await?;
    let metric = |series: &str| site.metric(series).unwrap_or(0);
    e2e::wait_until(Duration::from_secs(10), || {
        metric("gateway_sightings_total{source=\"mqtt_espresense\"}") >= 1
            && metric("gateway_sightings_total{source=\"mqtt_openmqttgateway\"}") >= 1
    })
    .await
    .map_err(|e| e.context(site.admin_get("/metrics").unwrap_or_default()))?;
    assert!(metric("gateway_sightings_total{source=\"mqtt_own\"}") > 100);
    assert_eq!(
        metric("gateway_sightings_rejected_total{source=\"mqtt_own\",field=\"scanner\"}"),
        1,
        "{}",
        site.admin_get("/metrics")?
    );

    // The fleet report: the heard beacon is ok, the one never heard is missing.
    let reports = ops
        .wait_for(1, Duration::from_secs(40))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    let report = reports.last().unwrap().json()?;
    // Retained: an operator who subscribes later gets the last report at once.
    let late = Phone::connect(PhoneOptions::new(
        broker.port(),
        "ops-late",
        site.topic("ops/beacons"),
    ))
    .await?;
    assert!(late.wait_for(1, Duration::from_secs(5)).await?[0].retain);
    let status = |id: &str| {
        report["beacons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .map(|b| b["status"].clone())
    };
    assert_eq!(
        status("entrance-ibeacon"),
        Some(serde_json::json!("ok")),
        "{report}"
    );
    assert_eq!(
        status("lost-beacon"),
        Some(serde_json::json!("missing")),
        "{report}"
    );

    // The recording holds the shopper and the store's beacons, never a stranger.
    drop(gateway);
    let heard = std::fs::read_to_string(&record)?;
    assert!(
        heard.lines().count() > 50,
        "{} lines",
        heard.lines().count()
    );
    assert!(
        heard.contains("ffff01"),
        "the shopper's app token is recorded"
    );
    for stranger in strangers {
        assert!(
            !heard.contains(&stranger),
            "a stranger's address was recorded"
        );
    }
    Ok(())
}
