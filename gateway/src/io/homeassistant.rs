//! Home Assistant MQTT discovery (opt-in: `[homeassistant]` in the site
//! file; docs/design.md §6).
//!
//! Each of the store's beacons becomes a Home Assistant device with four
//! sensors (battery, temperature, last seen, status), read from the
//! retained fleet report `<p>/<s>/ops/beacons` the gateway already
//! publishes; the gateway itself is a device with its status (the retained
//! status topic, which is also every entity's availability), nudges sent,
//! nudges held and the outbox length, from `<p>/<s>/ops/homeassistant`,
//! published here on a timer. Discovery messages follow Home Assistant's
//! MQTT discovery documentation: topic
//! `<discovery_prefix>/sensor/<node_id>/<object_id>/config`, retained;
//! payload with `name`, `unique_id`, `state_topic`, `value_template`,
//! `device` (`identifiers`, `name`, ...), `availability`, and the
//! `device_class` / `unit_of_measurement` / `state_class` that fit.
//!
//! No customer ever appears here: the only inputs are the configuration
//! (store beacons, store id) and aggregate counters.
//!
//! The config messages are published on start and on every reload; an
//! entity that is no longer configured (a beacon removed, discovery turned
//! off, another prefix or node id) gets an empty retained message, which is
//! how Home Assistant is told to remove it.
//!
//! What changed while the gateway was down is found on the broker: the
//! gateway subscribes (on its one connection, on or off) to its own
//! discovery topics, `<discovery_prefix>/sensor/<node_id>/+/config`, and is
//! sent the retained configs there on every connect. A config of its own
//! making (object id `gateway_...` or `beacon_...`, `unique_id`
//! `<node_id>_<object id>`) that the configuration no longer has is
//! cleared. A separate short-lived connection would be simpler, but with
//! `use_username_as_clientid` (the shipped broker configuration) it would
//! take over the gateway's own session. Configs under a prefix or node id
//! that was changed while the gateway was down are not looked for.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, HomeAssistantScope, HomeAssistantSettings};
use crate::io::mqtt::{OutgoingMessage, RetainedCopy};
use crate::telemetry::{Telemetry, events};

/// Where the gateway's own sensors are published.
pub fn state_topic(config: &Config) -> String {
    format!("{}/ops/homeassistant", config.store_topic())
}

/// An object id Home Assistant accepts (`[a-zA-Z0-9_-]`): other characters
/// become `_`, and then a short hash of the original keeps two names that
/// differ only there apart.
fn object_id(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == text {
        clean
    } else {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(text.as_bytes());
        format!("{clean}_{}", hex::encode(&digest[..3]))
    }
}

/// The filter that finds this gateway's discovery configs on the broker.
pub fn watch_filter(scope: &HomeAssistantScope) -> String {
    format!(
        "{}/sensor/{}/+/config",
        scope.discovery_prefix, scope.node_id
    )
}

/// Whether a retained config found under [`watch_filter`] is one this
/// gateway makes: topic `<prefix>/sensor/<node_id>/<object>/config` with an
/// object id this module writes, and a JSON payload whose `unique_id` is
/// `<node_id>_<object>`. Anything else there (another integration's, a
/// hand-made one) is left alone.
pub fn is_ours(scope: &HomeAssistantScope, topic: &str, payload: &[u8]) -> bool {
    let Some(rest) = topic
        .strip_prefix(scope.discovery_prefix.as_str())
        .and_then(|r| r.strip_prefix("/sensor/"))
        .and_then(|r| r.strip_prefix(scope.node_id.as_str()))
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_suffix("/config"))
    else {
        return false;
    };
    if rest.contains('/') || !(rest.starts_with("gateway_") || rest.starts_with("beacon_")) {
        return false;
    }
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(payload)
    else {
        return false;
    };
    obj.get("unique_id").and_then(serde_json::Value::as_str)
        == Some(format!("{}_{rest}", scope.node_id).as_str())
}

/// The discovery config messages of a configuration: topic → payload.
pub fn discovery_messages(
    config: &Config,
    ha: &HomeAssistantSettings,
) -> BTreeMap<String, serde_json::Value> {
    let node = &ha.node_id;
    let topic = |object: &str| format!("{}/sensor/{node}/{object}/config", ha.discovery_prefix);
    let availability = serde_json::json!([{
        "topic": config.status_topic(),
        "value_template": "{{ value_json.status }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }]);
    let gateway_ids = format!("{node}_gateway");
    let gateway_device = serde_json::json!({
        "identifiers": [gateway_ids],
        "name": format!("Store gateway {}", config.store_id),
        "manufacturer": "store proximity gateway",
        "model": "gateway",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let mut out = BTreeMap::new();

    let state = state_topic(config);
    let gateway_sensors: [(&str, &str, serde_json::Value); 4] = [
        (
            "status",
            "Status",
            serde_json::json!({
                "state_topic": config.status_topic(),
                "value_template": "{{ value_json.status }}",
                "device_class": "enum",
                "options": ["online", "offline"],
            }),
        ),
        (
            "nudges_sent",
            "Nudges sent",
            serde_json::json!({
                "state_topic": state,
                "value_template": "{{ value_json.nudges_sent }}",
                "state_class": "total_increasing",
                "unit_of_measurement": "nudges",
            }),
        ),
        (
            "nudges_held",
            "Nudges held",
            serde_json::json!({
                "state_topic": state,
                "value_template": "{{ value_json.nudges_held }}",
                "state_class": "total_increasing",
                "unit_of_measurement": "nudges",
            }),
        ),
        (
            "outbox",
            "Outbox length",
            serde_json::json!({
                "state_topic": state,
                "value_template": "{{ value_json.outbox }}",
                "state_class": "measurement",
                "unit_of_measurement": "nudges",
            }),
        ),
    ];
    for (key, name, mut payload) in gateway_sensors {
        let object = format!("gateway_{key}");
        payload["name"] = name.into();
        payload["unique_id"] = format!("{node}_{object}").into();
        payload["device"] = gateway_device.clone();
        if key != "status" {
            payload["availability"] = availability.clone();
        }
        out.insert(topic(&object), payload);
    }

    let fleet = crate::topics::beacons(&config.topics);
    for beacon in &config.beacons {
        let oid = object_id(&beacon.id);
        // The report lists the beacons by id; the id as a JSON string is
        // also a valid template string literal.
        let id_literal = serde_json::Value::from(beacon.id.as_str()).to_string();
        let pick = |field: &str| {
            format!(
                "{{{{ (value_json.beacons | selectattr('id', 'eq', {id_literal}) | map(attribute='{field}') | list + [none]) | first }}}}"
            )
        };
        let device = serde_json::json!({
            "identifiers": [format!("{node}_beacon_{oid}")],
            "name": format!("Beacon {}", beacon.id),
            "manufacturer": "store beacon",
            "model": beacon_model(&beacon.kind),
            "via_device": gateway_ids,
        });
        let sensors: [(&str, &str, &str, serde_json::Value); 4] = [
            (
                "battery",
                "Battery",
                "battery_mv",
                serde_json::json!({
                    "device_class": "voltage",
                    "unit_of_measurement": "mV",
                    "state_class": "measurement",
                }),
            ),
            (
                "temperature",
                "Temperature",
                "temperature_c",
                serde_json::json!({
                    "device_class": "temperature",
                    "unit_of_measurement": "°C",
                    "state_class": "measurement",
                }),
            ),
            (
                "last_seen",
                "Last seen",
                "last_seen",
                serde_json::json!({ "device_class": "timestamp" }),
            ),
            (
                "status",
                "Status",
                "status",
                serde_json::json!({
                    "device_class": "enum",
                    "options": ["ok", "low_battery", "missing"],
                }),
            ),
        ];
        for (key, name, field, mut payload) in sensors {
            let object = format!("beacon_{oid}_{key}");
            payload["name"] = name.into();
            payload["unique_id"] = format!("{node}_{object}").into();
            payload["state_topic"] = fleet.clone().into();
            payload["value_template"] = pick(field).into();
            payload["device"] = device.clone();
            payload["availability"] = availability.clone();
            out.insert(topic(&object), payload);
        }
    }
    out
}

fn beacon_model(kind: &crate::io::fleet::BeaconKind) -> &'static str {
    use crate::io::fleet::BeaconKind;
    match kind {
        BeaconKind::IBeacon { .. } => "iBeacon",
        BeaconKind::EddystoneUid { .. } => "Eddystone-UID",
        BeaconKind::AltBeacon { .. } => "AltBeacon",
    }
}

/// The gateway's own sensors, from its counters.
pub fn gateway_state(t: &Telemetry) -> serde_json::Value {
    serde_json::json!({
        "nudges_sent": t.counter("nudges_published_total", &[]),
        "nudges_held": t.counter("nudges_held_total", &[]),
        "outbox": t.gauge("outbox_depth").max(0),
    })
}

fn retained(topic: String, payload: Vec<u8>) -> OutgoingMessage {
    OutgoingMessage {
        topic,
        payload,
        correlation_data: None,
        retain: true,
    }
}

/// What to publish to go from the entities `before` to those of `config`:
/// every current config (again: Home Assistant takes a repeat as an
/// update), then an empty retained message for each entity gone.
pub fn changes(
    before: &BTreeMap<String, serde_json::Value>,
    now: &BTreeMap<String, serde_json::Value>,
) -> Vec<OutgoingMessage> {
    let mut out: Vec<OutgoingMessage> = now
        .iter()
        .map(|(t, p)| retained(t.clone(), p.to_string().into_bytes()))
        .collect();
    out.extend(
        before
            .keys()
            .filter(|t| !now.contains_key(*t))
            .map(|t| retained(t.clone(), Vec::new())),
    );
    out
}

/// Publish discovery on start and on every reload, the gateway's sensors
/// every `state_every`, remove what was published when discovery is
/// turned off, and clear the configs of `scope` that an earlier run left
/// and the configuration no longer has (`found`: the broker's retained
/// copies). Runs until `cancel`.
pub async fn run(
    mut config_rx: watch::Receiver<Arc<Config>>,
    telemetry: Arc<Telemetry>,
    outgoing: mpsc::Sender<OutgoingMessage>,
    scope: HomeAssistantScope,
    mut found: mpsc::Receiver<RetainedCopy>,
    cancel: CancellationToken,
) {
    let mut published: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut config = config_rx.borrow_and_update().clone();
    // False once the reloader is gone (no config file): the configuration
    // in force stays, published until cancelled.
    let mut reloads = true;
    loop {
        let now = match &config.homeassistant {
            Some(ha) => discovery_messages(&config, ha),
            None => BTreeMap::new(),
        };
        if now != published {
            let messages = changes(&published, &now);
            let removed = messages.iter().filter(|m| m.payload.is_empty()).count();
            for message in messages {
                if outgoing.send(message).await.is_err() {
                    return;
                }
            }
            events::homeassistant_discovery(&telemetry, now.len(), removed);
            published = now;
        }
        let every = config
            .homeassistant
            .as_ref()
            .map(|ha| ha.state_every)
            .unwrap_or(std::time::Duration::from_secs(3600));
        let mut ticker = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                Some(copy) = found.recv() => {
                    // Ours and no longer configured: left by an earlier
                    // run (or by this one before a reload, already
                    // cleared: clearing again is harmless).
                    if !published.contains_key(&copy.topic)
                        && is_ours(&scope, &copy.topic, &copy.payload)
                    {
                        let clear = retained(copy.topic.clone(), Vec::new());
                        if outgoing.send(clear).await.is_err() {
                            return;
                        }
                        events::homeassistant_leftover_cleared(&telemetry, &copy.topic);
                    }
                }
                changed = config_rx.changed(), if reloads => {
                    if changed.is_err() {
                        reloads = false;
                        continue;
                    }
                    config = config_rx.borrow_and_update().clone();
                    break;
                }
                _ = ticker.tick() => {
                    if config.homeassistant.is_some() {
                        let state = gateway_state(&telemetry).to_string().into_bytes();
                        if outgoing.send(retained(state_topic(&config), state)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!("{}\n{extra}", crate::config::tests::MINIMAL_SITE);
        crate::config::from_layers("site.toml", Some(&text), Default::default()).unwrap()
    }

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

[homeassistant]
enabled = true
"#;

    #[test]
    fn every_beacon_and_the_gateway_get_their_sensors() {
        let c = config(BEACONS);
        let ha = c.homeassistant.clone().unwrap();
        assert_eq!(ha.discovery_prefix, "homeassistant");
        let m = discovery_messages(&c, &ha);
        assert_eq!(m.len(), 4 + 2 * 4);
        let battery = &m[&format!(
            "homeassistant/sensor/{}/beacon_door-left_battery/config",
            c.store_id
        )];
        assert_eq!(battery["device_class"], "voltage");
        assert_eq!(battery["unit_of_measurement"], "mV");
        assert_eq!(battery["state_topic"], crate::topics::beacons(&c.topics));
        assert!(
            battery["value_template"]
                .as_str()
                .unwrap()
                .contains(r#"'eq', "door-left")"#)
        );
        assert_eq!(
            battery["device"]["identifiers"][0],
            format!("{}_beacon_door-left", c.store_id)
        );
    }

    #[test]
    fn a_removed_beacon_or_disabling_clears_its_entities() {
        let c = config(BEACONS);
        let ha = c.homeassistant.clone().unwrap();
        let before = discovery_messages(&c, &ha);
        let fewer = config(&BEACONS.replace("id = \"till\"", "id = \"till2\""));
        let after = discovery_messages(&fewer, &ha);
        let msgs = changes(&before, &after);
        let cleared: Vec<&str> = msgs
            .iter()
            .filter(|m| m.payload.is_empty())
            .map(|m| m.topic.as_str())
            .collect();
        assert_eq!(cleared.len(), 4, "{cleared:?}");
        assert!(cleared.iter().all(|t| t.contains("beacon_till_")));
        assert!(msgs.iter().all(|m| m.retain));
        let off = changes(&before, &BTreeMap::new());
        assert_eq!(off.len(), before.len());
        assert!(off.iter().all(|m| m.payload.is_empty()));
    }

    #[test]
    fn bad_settings_are_refused_by_path_and_off_means_none() {
        let text = format!(
            "{}\n[homeassistant]\nenabled = true\ndiscovery_prefix = \"ha/#\"\nnode_id = \"store 42\"\nstate_every_s = 0\n",
            crate::config::tests::MINIMAL_SITE
        );
        let e = crate::config::from_layers("site.toml", Some(&text), Default::default())
            .unwrap_err()
            .to_string();
        for path in [
            "homeassistant.discovery_prefix",
            "homeassistant.node_id",
            "homeassistant.state_every_s",
        ] {
            assert!(e.contains(path), "{path}: {e}");
        }
        let unknown = format!(
            "{}\n[homeassistant]\nenabled = true\nprefix = \"x\"\n",
            crate::config::tests::MINIMAL_SITE
        );
        assert!(
            crate::config::from_layers("site.toml", Some(&unknown), Default::default())
                .unwrap_err()
                .to_string()
                .contains("prefix")
        );
        assert!(
            config("[homeassistant]\nenabled = false\n")
                .homeassistant
                .is_none()
        );
        assert!(config("").homeassistant.is_none());
        let custom = config(
            "[homeassistant]\nenabled = true\ndiscovery_prefix = \"ha\"\nnode_id = \"shop_1\"\n",
        );
        let ha = custom.homeassistant.unwrap();
        assert_eq!(
            (ha.discovery_prefix.as_str(), ha.node_id.as_str()),
            ("ha", "shop_1")
        );
    }

    #[test]
    fn the_scope_is_known_on_or_off_and_only_our_own_configs_are_ours() {
        let on = config(BEACONS);
        let off = config(&BEACONS.replace("enabled = true", "enabled = false"));
        let absent = config("");
        assert!(off.homeassistant.is_none());
        assert_eq!(on.homeassistant_scope, off.homeassistant_scope);
        assert_eq!(absent.homeassistant_scope, on.homeassistant_scope);
        let scope = &on.homeassistant_scope;
        assert_eq!(
            watch_filter(scope),
            format!("homeassistant/sensor/{}/+/config", on.store_id)
        );
        // Every config this module writes is recognised as its own.
        let ha = on.homeassistant.clone().unwrap();
        for (topic, payload) in discovery_messages(&on, &ha) {
            assert!(
                is_ours(scope, &topic, payload.to_string().as_bytes()),
                "{topic}"
            );
        }
        let node = &scope.node_id;
        let t = |object: &str| format!("homeassistant/sensor/{node}/{object}/config");
        let uid = |object: &str| format!(r#"{{"unique_id":"{node}_{object}"}}"#);
        assert!(is_ours(
            scope,
            &t("beacon_gone_battery"),
            uid("beacon_gone_battery").as_bytes()
        ));
        // Another integration's entity under the same node, a unique id
        // that does not match, a payload that is not ours: left alone.
        assert!(!is_ours(
            scope,
            &t("door_sensor"),
            uid("door_sensor").as_bytes()
        ));
        assert!(!is_ours(
            scope,
            &t("beacon_x_battery"),
            uid("beacon_y_battery").as_bytes()
        ));
        assert!(!is_ours(scope, &t("beacon_x_battery"), b"not json"));
        assert!(!is_ours(
            scope,
            "homeassistant/sensor/other-node/beacon_x_battery/config",
            br#"{"unique_id":"other-node_beacon_x_battery"}"#
        ));
        // A disabled section's prefix and node id are still checked.
        let bad = format!(
            "{}\n[homeassistant]\nenabled = false\nnode_id = \"store 42\"\n",
            crate::config::tests::MINIMAL_SITE
        );
        assert!(
            crate::config::from_layers("site.toml", Some(&bad), Default::default())
                .unwrap_err()
                .to_string()
                .contains("homeassistant.node_id")
        );
    }

    #[test]
    fn object_ids_are_what_home_assistant_accepts() {
        assert_eq!(object_id("door-left_2"), "door-left_2");
        let odd = object_id("door.left");
        assert!(odd.starts_with("door_left_"));
        assert_ne!(odd, object_id("door left"));
        assert!(
            odd.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        );
    }
}
