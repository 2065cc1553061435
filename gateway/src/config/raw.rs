//! The configuration as written: every struct rejects unknown fields.
//! Nothing outside `config` sees these types; see [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub store: RawStore,
    pub mqtt: RawMqtt,
    pub storage: RawStorage,
    #[serde(default)]
    pub sources: Vec<RawSource>,
    #[serde(default)]
    pub zones: Vec<RawZone>,
    #[serde(default)]
    pub beacons: Vec<RawBeacon>,
    #[serde(default)]
    pub catalog: Option<RawCatalog>,
    #[serde(default)]
    pub offers: Vec<crate::decide::Offer>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    pub caps: RawCaps,
    #[serde(default)]
    pub quiet_hours: Option<RawQuietHours>,
    pub presence: RawPresence,
    pub decode: RawDecode,
    pub nudges: RawNudges,
    pub retention: RawRetention,
    pub admin: RawAdmin,
    pub incoming: RawIncoming,
    /// Home Assistant MQTT discovery (`io/homeassistant.rs`); absent: off.
    #[serde(default)]
    pub homeassistant: Option<RawHomeAssistant>,
    /// Where the chain secret comes from (`[caps.chain]` needs it).
    #[serde(default)]
    pub chain: Option<RawChain>,
}

/// `[chain]`: the chain secret that keys the person hash on the chain's
/// topics. Never the secret itself: a file, or a systemd credential.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChain {
    /// File holding the secret (first line).
    pub secret_file: Option<String>,
    /// Name of a systemd credential holding it
    /// (`$CREDENTIALS_DIRECTORY/<name>`).
    pub secret_credential: Option<String>,
}

/// `[caps.chain]`: caps across every store of the chain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChainCaps {
    pub per_day: i64,
    pub per_week: i64,
    #[serde(default)]
    pub min_gap_s: i64,
    /// "chain" (default) or "home".
    pub day: Option<String>,
    pub timezone: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHomeAssistant {
    #[serde(default)]
    pub enabled: bool,
    /// Home Assistant's `discovery_prefix` ("homeassistant" unless changed).
    pub discovery_prefix: Option<String>,
    /// The `<node_id>` level of the discovery topics; the store id if unset.
    pub node_id: Option<String>,
    /// How often the gateway's own sensors are published.
    pub state_every_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub id: Option<String>,
    pub timezone: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    pub url: String,
    pub prefix: String,
    pub keep_alive_s: u64,
    pub max_publish_bytes: u64,
    pub client_id: Option<String>,
    /// PEM CA bundle that signed the broker's certificate (mqtts:// only);
    /// without it the system trust store is used.
    pub ca_file: Option<String>,
    /// PEM client certificate chain and key, for brokers that require them.
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
    pub username: Option<String>,
    /// File holding the password (first line).
    pub password_file: Option<String>,
    /// Name of a systemd credential (`LoadCredential=<name>:<file>`) holding
    /// the password: read from `$CREDENTIALS_DIRECTORY/<name>`.
    pub password_credential: Option<String>,
    /// Only meant to come from `GATEWAY__MQTT__PASSWORD`; masked in Debug
    /// (and so kept out of the config hash).
    pub password: Option<super::Secret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub path: String,
    /// sled's page cache, in MiB (`config/default.toml`: 4, as
    /// `store::DEFAULT_CACHE_MB` for stores opened without a config).
    pub cache_mb: u64,
    /// sled's page cache for `gateway people import`, in MiB
    /// (`config/default.toml`: 128).
    pub import_cache_mb: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum RawSource {
    Udp {
        bind: String,
    },
    Replay {
        path: String,
        /// 1.0 = real time; 0 = as fast as possible.
        #[serde(default)]
        speed: Option<f64>,
    },
    /// The local radio through BlueZ.
    Bluez {
        adapter: Option<String>,
        /// The scanner id its sightings carry (a zone lists it).
        scanner: String,
    },
    /// Remote scanner nodes publishing over MQTT.
    MqttScanners {
        /// Our own scanner-only gateways on `<p>/<s>/scanners/<node>`.
        #[serde(default = "yes")]
        own: bool,
        /// OpenMQTTGateway / Theengs topic filters, e.g. "home/+/BTtoMQTT/+".
        #[serde(default)]
        openmqttgateway: Vec<String>,
        /// ESPresense topic filters, e.g. "espresense/devices/+/+".
        #[serde(default)]
        espresense: Vec<String>,
        merge_window_ms: Option<i64>,
    },
}

fn yes() -> bool {
    true
}

/// One of the store's own beacons, watched for battery and absence.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBeacon {
    pub id: String,
    pub kind: String,
    pub uuid: Option<String>,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub namespace: Option<String>,
    pub instance: Option<String>,
    pub id1: Option<String>,
    pub id2: Option<i64>,
    pub id3: Option<i64>,
    pub low_battery_mv: Option<i64>,
    pub missing_after_s: Option<i64>,
    /// Where the beacon is (metres, the floor plan's axes), both or
    /// neither: with the scanners' positions, what each scanner should
    /// hear of it, so a scanner's gain is learned (`presence::gain`).
    pub x: Option<f64>,
    pub y: Option<f64>,
    /// Its received power at 1 m (dBm); default the reference phone's.
    pub tx_power_1m: Option<i64>,
    /// The id the store's ESPresense nodes report this beacon under when it
    /// was given an alias there.
    pub espresense_id: Option<String>,
}

/// A point of the floor plan, metres.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoint {
    pub x: f64,
    pub y: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawZone {
    pub id: String,
    pub scanners: Vec<String>,
    #[serde(default)]
    pub calibration_db: BTreeMap<String, f32>,
    /// Scanner id → where it hangs (for the gain learned from the beacons).
    #[serde(default)]
    pub positions: BTreeMap<String, RawPoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: String,
    /// Required for dwell rules; optional for exit rules; none for others.
    pub zone: Option<String>,
    pub dwell_s: Option<i64>,
    /// What fires the rule: "dwell" (default), "exit" or "purchase".
    pub on: Option<String>,
    /// Fire when the person's n-th visit starts (thanks).
    pub on_visit: Option<i64>,
    pub interest: Option<String>,
    pub kind: String,
    pub title: String,
    pub body: String,
    #[serde(default)]
    pub priority: i32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCaps {
    pub per_visit: i64,
    pub per_day: i64,
    pub per_week: i64,
    pub min_gap_s: i64,
    pub rule_cooldown_s: i64,
    pub per_kind_per_day: Option<i64>,
    pub store_per_minute: Option<i64>,
    /// `[caps.chain]`; absent: caps are the store's alone, no chain traffic.
    #[serde(default)]
    pub chain: Option<RawChainCaps>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuietHours {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPresence {
    pub min_rssi: i64,
    pub switch_margin_db: f64,
    pub switch_hold_ms: i64,
    pub window_ms: i64,
    pub zone_timeout_ms: i64,
    pub visit_gap_ms: i64,
    pub max_future_skew_ms: i64,
    pub path_loss_exponent: f64,
    pub hall_distance_m: f64,
    /// A radio map written by `gateway calibrate`; none: place from levels.
    #[serde(default)]
    pub radio_map: Option<String>,
    /// How far above the store's beacons (and phones) the scanners'
    /// antennas hang, metres; only for the gain learned from the beacons.
    #[serde(default)]
    pub antenna_height_m: Option<f64>,
    /// `[presence.map]`: the radio map filter's knobs, each optional
    /// (`presence::MapTuning`); they win over the map's own `tuning`.
    #[serde(default)]
    pub map: Option<RawMapTuning>,
}

/// `[presence.map]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMapTuning {
    pub zone_stay_s: Option<f64>,
    pub hall_stay_s: Option<f64>,
    pub evidence_weight: Option<f64>,
    pub enter_p: Option<f64>,
    pub switch_p: Option<f64>,
    pub hold_ms: Option<i64>,
    pub bias_rate: Option<f64>,
    pub bias_max_db: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDecode {
    pub app_company_id: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNudges {
    pub expiry_s: i64,
    pub enabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub days: i64,
    pub sweep_every_s: i64,
}

/// Per-recipient limits on the app topics (consent, checkin, feedback).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIncoming {
    pub per_recipient_per_minute: i64,
    pub per_recipient_burst: i64,
    pub max_recipients: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalog {
    /// The product catalog (TOML) that `compare` and `info` nudges draw on.
    pub path: String,
}
