//! Home Assistant MQTT discovery (issue #22): a real gateway and a real
//! Mosquitto; a subscriber to `homeassistant/#` checks every discovery
//! message against the keys Home Assistant documents for an MQTT sensor
//! (home-assistant.io/integrations/sensor.mqtt and /integrations/mqtt,
//! "MQTT Discovery"), checks that no customer appears in any of them, and
//! that turning discovery off removes every entity (empty retained config).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use e2e::{Mosquitto, MosquittoOptions, Phone, PhoneOptions, Site, site};
use firmware_sim::{Scenario, Shopper};
use serde_json::Value;

const BEACONS: &str = r#"
[[beacons]]
id = "door-left"
kind = "ibeacon"
uuid = "e2c56db5-dffb-48d2-b060-d0f5a71096e0"
major = 1
minor = 2

[[beacons]]
id = "till"
kind = "eddystone_uid"
namespace = "00010203040506070809"
instance = "0a0b0c0d0e0f"
"#;

const HA_ON: &str = "\n[homeassistant]\nenabled = true\nstate_every_s = 1\n";

/// Keys Home Assistant documents for an MQTT sensor's discovery payload
/// (full names; the abbreviations are optional and not used here).
const SENSOR_KEYS: [&str; 12] = [
    "name",
    "unique_id",
    "state_topic",
    "value_template",
    "device",
    "availability",
    "device_class",
    "unit_of_measurement",
    "state_class",
    "options",
    "expire_after",
    "entity_category",
];
const DEVICE_KEYS: [&str; 6] = [
    "identifiers",
    "name",
    "manufacturer",
    "model",
    "sw_version",
    "via_device",
];

/// The units Home Assistant accepts for a sensor device class (of those a
/// gateway can send); `None`: the class takes no unit.
fn units_for(class: &str) -> Option<&'static [&'static str]> {
    match class {
        "voltage" => Some(&["V", "mV"]),
        "temperature" => Some(&["°C", "°F", "K"]),
        "timestamp" | "enum" => None,
        other => panic!("device_class {other:?} is not one this gateway should send"),
    }
}

fn check_discovery(topic: &str, payload: &Value, node: &str) -> Result<(), String> {
    let levels: Vec<&str> = topic.split('/').collect();
    let ["homeassistant", "sensor", n, object, "config"] = levels[..] else {
        return Err(format!(
            "{topic}: not <prefix>/sensor/<node>/<object>/config"
        ));
    };
    if n != node {
        return Err(format!("{topic}: node id {n:?}, expected {node:?}"));
    }
    let id_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !id_ok(object) {
        return Err(format!("{topic}: object id {object:?}"));
    }
    let obj = payload
        .as_object()
        .ok_or(format!("{topic}: not an object"))?;
    for key in obj.keys() {
        if !SENSOR_KEYS.contains(&key.as_str()) {
            return Err(format!("{topic}: undocumented key {key:?}"));
        }
    }
    for key in ["name", "unique_id", "state_topic"] {
        if obj
            .get(key)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(format!("{topic}: {key} missing or not a string"));
        }
    }
    let state_topic = obj["state_topic"].as_str().unwrap_or_default();
    if state_topic.contains(['+', '#']) {
        return Err(format!("{topic}: state_topic has a wildcard"));
    }
    let device = obj
        .get("device")
        .and_then(Value::as_object)
        .ok_or(format!("{topic}: device missing"))?;
    for key in device.keys() {
        if !DEVICE_KEYS.contains(&key.as_str()) {
            return Err(format!("{topic}: undocumented device key {key:?}"));
        }
    }
    let ids = device
        .get("identifiers")
        .and_then(Value::as_array)
        .ok_or(format!("{topic}: device.identifiers must be a list"))?;
    if ids.is_empty()
        || !ids
            .iter()
            .all(|i| i.as_str().is_some_and(|s| !s.is_empty()))
    {
        return Err(format!(
            "{topic}: device.identifiers must be non-empty strings"
        ));
    }
    if !device.get("name").is_some_and(Value::is_string) {
        return Err(format!("{topic}: device.name missing"));
    }
    if let Some(av) = obj.get("availability") {
        let list = av
            .as_array()
            .ok_or(format!("{topic}: availability must be a list"))?;
        for a in list {
            if !a.get("topic").is_some_and(Value::is_string) {
                return Err(format!("{topic}: availability entry without topic"));
            }
        }
    }
    let class = obj.get("device_class").and_then(Value::as_str);
    let unit = obj.get("unit_of_measurement").and_then(Value::as_str);
    if let Some(class) = class {
        match (units_for(class), unit) {
            (Some(units), Some(u)) if units.contains(&u) => {}
            (None, None) => {}
            (expected, got) => {
                return Err(format!(
                    "{topic}: device_class {class} with unit {got:?}, documented {expected:?}"
                ));
            }
        }
        if class == "enum" && !obj.get("options").is_some_and(Value::is_array) {
            return Err(format!("{topic}: enum sensor without options"));
        }
    }
    if let Some(sc) = obj.get("state_class")
        && !matches!(
            sc.as_str(),
            Some("measurement" | "total" | "total_increasing")
        )
    {
        return Err(format!("{topic}: state_class {sc}"));
    }
    Ok(())
}

/// Every string a person record carries (ids, recipient, identities).
fn customer_strings(people_jsonl: &str) -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::String(s) if s.len() >= 3 => {
                out.insert(s.clone());
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(o) => {
                for (k, x) in o {
                    if matches!(k.as_str(), "person" | "recipient" | "identities" | "value") {
                        walk(x, out);
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    for line in people_jsonl.lines() {
        let v: Value = serde_json::from_str(line).expect("simulator person record");
        walk(&v, &mut out);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_payloads_follow_home_assistant_and_name_no_customer() -> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let extra = format!("{}{BEACONS}{HA_ON}", site::laptop_site());
    let mut site = Site::new(broker.port(), &extra)?;
    let scenario = Scenario::new(7)
        .with_shopper(Shopper::new(1, 3).with_interests(&["laptops"]))
        .with_shopper(Shopper::new(2, 4).with_interests(&["headphones"]));
    let people = scenario.people_jsonl();
    let customers = customer_strings(&people);
    assert!(customers.len() >= 2, "{customers:?}");
    site.import_people(&people)?;
    let mut gateway = site.start()?;

    let ha = Phone::connect(PhoneOptions::new(broker.port(), "ha", "homeassistant/#")).await?;
    // 4 gateway sensors + 4 per beacon.
    let got = ha.wait_for(12, Duration::from_secs(20)).await?;
    let mut configs: BTreeMap<String, Value> = BTreeMap::new();
    for m in &got {
        configs.insert(m.topic.clone(), m.json()?);
    }
    assert_eq!(configs.len(), 12, "{:?}", configs.keys());
    // Retained: a Home Assistant that connects later finds them all.
    let late = Phone::connect(PhoneOptions::new(
        broker.port(),
        "ha-late",
        "homeassistant/#",
    ))
    .await?;
    let retained = late.wait_for(12, Duration::from_secs(10)).await?;
    assert!(
        retained.iter().all(|m| m.retain),
        "discovery must be retained"
    );
    assert_eq!(
        retained
            .iter()
            .map(|m| m.topic.clone())
            .collect::<BTreeSet<_>>(),
        configs.keys().cloned().collect::<BTreeSet<_>>()
    );
    let mut unique = BTreeSet::new();
    for (topic, payload) in &configs {
        if let Err(e) = check_discovery(topic, payload, site::STORE_ID) {
            panic!("{e}\n{payload:#}");
        }
        assert!(unique.insert(payload["unique_id"].as_str().unwrap().to_string()));
        let text = payload.to_string();
        for c in &customers {
            assert!(!text.contains(c.as_str()), "{topic} names a customer");
        }
    }
    let devices: BTreeSet<String> = configs
        .values()
        .map(|p| p["device"]["identifiers"][0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(devices.len(), 3, "the gateway and two beacons: {devices:?}");
    for key in ["battery", "temperature", "last_seen", "status"] {
        let topic = format!(
            "homeassistant/sensor/{}/beacon_till_{key}/config",
            site::STORE_ID
        );
        assert!(configs.contains_key(&topic), "{topic}");
    }

    // The gateway's own sensors: published on their timer, no customer.
    let state = Phone::connect(PhoneOptions::new(
        broker.port(),
        "ha-state",
        site.topic("ops/homeassistant"),
    ))
    .await?;
    let s = state.wait_for(1, Duration::from_secs(10)).await?[0].json()?;
    for key in ["nudges_sent", "nudges_held", "outbox"] {
        assert!(s[key].is_u64(), "{key}: {s}");
    }

    // Turned off by a reload: every entity removed (empty retained config).
    ha.take_received();
    std::fs::write(
        &site.config_path,
        std::fs::read_to_string(&site.config_path)?.replace("enabled = true", "enabled = false"),
    )?;
    gateway.signal(libc::SIGHUP)?;
    let cleared = ha.wait_for(12, Duration::from_secs(20)).await?;
    let cleared: BTreeSet<String> = cleared
        .iter()
        .filter(|m| m.payload.is_empty())
        .map(|m| m.topic.clone())
        .collect();
    assert_eq!(
        cleared,
        configs.keys().cloned().collect::<BTreeSet<_>>(),
        "every entity removed"
    );
    // What a new Home Assistant would find: nothing retained.
    let after = Phone::connect(PhoneOptions::new(
        broker.port(),
        "ha-after",
        "homeassistant/#",
    ))
    .await?;
    assert!(
        after
            .expect_exactly(0, Duration::from_secs(2))
            .await?
            .is_empty()
    );
    gateway.stop(Duration::from_secs(10))?;
    Ok(())
}

/// The entities a Home Assistant connecting now would have two seconds
/// later: the retained configs under `homeassistant/#`, then whatever
/// arrives live, an empty config removing its entity.
async fn entities_now(port: u16, name: &str) -> anyhow::Result<BTreeSet<String>> {
    let ha = Phone::connect(PhoneOptions::new(port, name, "homeassistant/#")).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut entities = BTreeSet::new();
    for m in ha.received() {
        if m.payload.is_empty() {
            entities.remove(&m.topic);
        } else {
            entities.insert(m.topic);
        }
    }
    ha.stop().await?;
    Ok(entities)
}

/// Changed while the gateway was down (issue #22): a beacon removed, then
/// discovery turned off. At its next start the gateway finds the retained
/// configs it published earlier and clears those no longer configured;
/// another integration's config under the same node id stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_left_while_the_gateway_was_down_are_cleared_at_start() -> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let extra = format!("{}{BEACONS}{HA_ON}", site::laptop_site());
    let mut site = Site::new(broker.port(), &extra)?;
    let original = std::fs::read_to_string(&site.config_path)?;
    let node = site::STORE_ID;
    let foreign = format!("homeassistant/sensor/{node}/door_sensor/config");
    let publisher = Phone::connect_to(broker.port(), "other-integration", "unused/#").await?;
    publisher
        .publish(
            &foreign,
            format!(r#"{{"name":"Door","unique_id":"{node}_door_sensor","state_topic":"x"}}"#),
            e2e::QoS::AtLeastOnce,
            true,
        )
        .await?;

    // 1. On, two beacons: 12 configs retained (and the foreign one).
    let mut gateway = site.start()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let first = loop {
        let found = entities_now(broker.port(), "ha-1").await?;
        if found.len() == 13 || std::time::Instant::now() > deadline {
            break found;
        }
    };
    assert_eq!(first.len(), 13, "{first:?}");
    assert!(first.contains(&foreign));
    gateway.stop(Duration::from_secs(10))?;

    // 2. While down, the beacon "till" is removed: its four configs go at
    // the next start, the rest stay.
    let till = "\n[[beacons]]\nid = \"till\"\nkind = \"eddystone_uid\"\nnamespace = \"00010203040506070809\"\ninstance = \"0a0b0c0d0e0f\"\n";
    assert!(original.contains(till));
    std::fs::write(&site.config_path, original.replace(till, "\n"))?;
    let gateway = site.start()?;
    e2e::wait_until(Duration::from_secs(20), || {
        site.metric("gateway_homeassistant_leftovers_cleared_total")
            .is_ok_and(|n| n >= 4)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", gateway.logs()))?;
    let second = entities_now(broker.port(), "ha-2").await?;
    let till_gone: BTreeSet<String> = first
        .iter()
        .filter(|t| !t.contains("/beacon_till_"))
        .cloned()
        .collect();
    assert_eq!(second, till_gone);
    let mut gateway = gateway;
    gateway.stop(Duration::from_secs(10))?;

    // 3. While down, discovery is turned off: every config of ours goes at
    // the next start; the other integration's stays.
    std::fs::write(
        &site.config_path,
        original
            .replace(till, "\n")
            .replace("enabled = true", "enabled = false"),
    )?;
    let mut gateway = site.start()?;
    e2e::wait_until(Duration::from_secs(20), || {
        site.metric("gateway_homeassistant_leftovers_cleared_total")
            .is_ok_and(|n| n >= 8)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", gateway.logs()))?;
    let third = entities_now(broker.port(), "ha-3").await?;
    assert_eq!(third, BTreeSet::from([foreign.clone()]));
    assert!(
        gateway
            .stderr()
            .contains("cleared a discovery config left by an earlier run")
    );
    gateway.stop(Duration::from_secs(10))?;
    publisher.stop().await?;
    Ok(())
}
