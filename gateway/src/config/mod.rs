//! Configuration: layered TOML (embedded defaults, then the site file, then
//! `GATEWAY__SECTION__KEY` environment variables), parsed into raw structs
//! that reject unknown fields (`raw.rs`), then two steps:
//!
//! 1. *read* (`read.rs`): every external input the file names (TLS PEM
//!    files, the password file or systemd credential, the catalog) and
//!    `$CREDENTIALS_DIRECTORY`, gathered into plain data ([`Inputs`]);
//! 2. *validate* (`sections.rs`): pure validators, one per section, each
//!    returning its typed value or every problem with its config path
//!    (`rules[3].dwell_s: must be >= 1`); [`validate`] runs them all and
//!    reports every problem of every section at once.
//!
//! The rest of the program only sees [`Config`]: nothing downstream
//! re-parses strings. `config` uses only the pure core (decide, decode,
//! identity, presence, topics, ratelimit), never `io`, `daemon` or
//! `telemetry` (`tests/layering.rs`); loading TLS certificates into rustls
//! is `io::mqtt`'s job.

mod raw;
mod read;
mod sections;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use sha2::{Digest, Sha256};

use crate::decide::{Caps, Catalog, Offer, QuietHours, Rule, TriggeredRule};
use crate::decode::DecodeOptions;
use crate::presence::{PresenceConfig, ZoneId};
use crate::topics::TopicNames;
use raw::RawConfig;
pub use read::Inputs;
pub use sections::Checked;
#[cfg(test)]
use sections::credential_path;

/// The largest MQTT packet the gateway accepts (CONNECT's maximum packet
/// size, `io::mqtt`); `mqtt.max_publish_bytes` may not exceed it.
pub const MAX_MQTT_PACKET_BYTES: u32 = 64 * 1024;

/// The defaults shipped in `config/default.toml`, embedded so that the binary
/// needs no file besides the site's.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// Environment variable prefix: `GATEWAY__MQTT__URL` sets `mqtt.url`.
pub const ENV_PREFIX: &str = "GATEWAY";

#[derive(Clone, Debug)]
pub struct Config {
    pub store_id: String,
    pub timezone: Tz,
    pub mqtt: MqttSettings,
    pub storage_path: PathBuf,
    /// The bound on sled's page cache, in bytes (`[storage] cache_mb`).
    pub storage_cache_bytes: u64,
    /// The same for `people import` (`[storage] import_cache_mb`).
    pub storage_import_cache_bytes: u64,
    pub sources: Vec<SourceSettings>,
    pub zones: Vec<ZoneSettings>,
    /// The store's own beacons, for fleet health (`io::fleet`).
    pub beacons: Vec<FleetBeacon>,
    /// The dwell rules (what presence thresholds and dry runs look at).
    pub rules: Vec<Rule>,
    /// Every rule with what fires it (dwell, exit, purchase, n-th visit).
    pub triggered: Vec<TriggeredRule>,
    /// The product catalog behind `compare` items and templates.
    pub catalog: Option<Arc<Catalog>>,
    pub offers: Vec<Offer>,
    pub caps: Caps,
    pub quiet_hours: Option<QuietHours>,
    pub presence: PresenceConfig,
    /// What each scanner should hear of the store's beacons, when the
    /// site file gives their positions (`presence::gain`); `None`: no gain
    /// is learned.
    pub scanner_gain: Option<crate::presence::gain::GainSetup>,
    /// The radio map file `presence.radio_map` names, as written: the
    /// reload watcher watches it beside the site file.
    pub radio_map_path: Option<PathBuf>,
    /// The catalog's and the radio map's files: their contents are in
    /// [`Config::hash`], and the reload watcher watches them.
    pub content_files: Vec<PathBuf>,
    pub max_future_skew_ms: i64,
    pub decode: DecodeOptions,
    pub nudge_expiry: Duration,
    pub nudges_enabled: bool,
    pub retention: Duration,
    /// How often the retention sweep runs (event time).
    pub sweep_every: Duration,
    pub admin_listen: Option<SocketAddr>,
    /// Per-recipient token buckets on the app topics (`ratelimit.rs`).
    pub incoming_rate: crate::ratelimit::RateLimit,
    /// Home Assistant MQTT discovery; `None`: off.
    pub homeassistant: Option<HomeAssistantSettings>,
    /// Where this gateway's discovery configs live, on or off: a config an
    /// earlier run left there (discovery turned off or a beacon removed
    /// while the gateway was down) is found and cleared.
    pub homeassistant_scope: HomeAssistantScope,
    /// `[caps.chain]` and the chain secret; `None`: caps are the store's
    /// alone and nothing goes to or comes from the chain's topics.
    pub chain: Option<ChainSettings>,
    /// Short hash of the effective configuration, published with the status.
    pub hash: String,
    /// The MQTT topic names: prefix, store, scanner feeds (`topics`).
    pub topics: TopicNames,
}

/// `[homeassistant]`: Home Assistant MQTT discovery of the store's beacons
/// and the gateway itself (`io/homeassistant.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomeAssistantSettings {
    pub discovery_prefix: String,
    pub node_id: String,
    pub state_every: Duration,
}

/// `<discovery_prefix>/sensor/<node_id>/...`: the discovery topics this
/// gateway publishes, from `[homeassistant]` or its defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomeAssistantScope {
    pub discovery_prefix: String,
    pub node_id: String,
}

/// Chain-wide caps (`[caps.chain]`) and the secret keying the chain
/// person hash (`[chain]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSettings {
    pub caps: crate::decide::ChainCaps,
    /// Restart-only: a reload keeps the running one.
    pub secret: ChainSecret,
}

impl ChainSettings {
    /// The person's hash on the chain's topics.
    pub fn person(&self, person_id: &str) -> crate::privacy::ChainPerson {
        crate::privacy::chain_person(self.secret.expose(), person_id)
    }
}

/// The chain secret's bytes: `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ChainSecret(Vec<u8>);

impl ChainSecret {
    pub fn new(bytes: Vec<u8>) -> ChainSecret {
        ChainSecret(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for ChainSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Home Assistant's default discovery prefix.
pub const HOMEASSISTANT_DEFAULT_PREFIX: &str = "homeassistant";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub prefix: String,
    pub keep_alive: Duration,
    /// Largest payload published (the broker's `message_size_limit`).
    pub max_publish_bytes: usize,
    pub client_id: String,
    /// `Some` for an `mqtts://` URL: TLS with server certificate verification.
    pub tls: Option<TlsSettings>,
    pub username: Option<String>,
    /// From `mqtt.password_file` or `GATEWAY__MQTT__PASSWORD`; never from
    /// the command line. Debug prints `***`.
    pub password: Option<Secret>,
    /// The file the password was read from, to warn when others can read it.
    pub password_file: Option<PathBuf>,
}

/// TLS to the broker: plain data, the files' paths. Their contents are read
/// and checked (PEM with a certificate, a key) when the config is loaded;
/// `io::mqtt::tls_client_config` loads them into rustls each time delivery
/// starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM CA certificates to trust; `None`: the system trust store.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and private key (both or neither).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// A secret value (the MQTT password): `Debug` prints `***`, so it stays
/// out of logs, `config show` and the config hash.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it (CONNECT).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Never echo the value: the loader's error would print it.
                f.write_str("a string (a password that looks like a number or boolean is converted by the environment loader: put it in mqtt.password_file)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom(
                    "mqtt.password: not a string; use mqtt.password_file",
                ))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom(
                    "mqtt.password: not a string; use mqtt.password_file",
                ))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(
                    "mqtt.password: not a string; use mqtt.password_file",
                ))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(
                    "mqtt.password: not a string; use mqtt.password_file",
                ))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum SourceSettings {
    Udp {
        bind: SocketAddr,
    },
    Replay {
        path: PathBuf,
        speed: f64,
    },
    Bluez {
        adapter: Option<String>,
        scanner: String,
    },
    MqttScanners {
        own: bool,
        openmqttgateway: Vec<String>,
        espresense: Vec<String>,
        merge_window_ms: i64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ZoneSettings {
    pub id: ZoneId,
    pub scanners: Vec<String>,
}

/// How a store beacon identifies itself (`io::fleet` matches frames to it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BeaconKind {
    IBeacon {
        uuid: [u8; 16],
        major: u16,
        minor: u16,
    },
    EddystoneUid {
        namespace: [u8; 10],
        instance: [u8; 6],
    },
    AltBeacon {
        id1: [u8; 16],
        id2: u16,
        id3: u16,
    },
}

/// One of the store's beacons, from config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetBeacon {
    /// The store's name for it ("door-left").
    pub id: String,
    pub kind: BeaconKind,
    /// Below this battery voltage (from Eddystone-TLM) the status is
    /// `low_battery`; `None` never reports it.
    pub low_battery_mv: Option<u16>,
    /// Not heard for this long: `missing`.
    pub missing_after_s: u64,
    /// The alias ESPresense nodes report this beacon under (their device
    /// settings or the companion can rename any id); `None` when they use
    /// the beacon's own `iBeacon:` / `altBeacon:` / `eddy:` id.
    pub espresense_id: Option<String>,
}

impl Config {
    /// Topic prefix for this store: `<prefix>/<store>`.
    pub fn store_topic(&self) -> String {
        self.topics.store().to_string()
    }

    pub fn nudge_topic(&self, recipient: &str) -> String {
        self.topics.nudge(recipient)
    }

    pub fn status_topic(&self) -> String {
        self.topics.status()
    }
}

impl MqttSettings {
    /// A password sent over plain TCP to a broker not on this machine.
    pub fn password_in_clear(&self) -> bool {
        let loopback = self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        self.password.is_some() && self.tls.is_none() && !loopback
    }
}

/// One problem in a configuration, with the path of the offending value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct Problem {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: {reason}")]
    Parse { file: String, reason: String },
    #[error("{file}: {} problem(s):\n  {}", problems.len(), problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

/// The layers as found: the site file's name for messages and its text
/// (if any), and the process environment's variables with our prefix.
struct Layers {
    name: String,
    site_text: Option<String>,
    env: HashMap<String, String>,
}

fn read_layers(site: Option<&Path>) -> Result<Layers, ConfigError> {
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .collect();
    let site_text = match site {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                file: path.display().to_string(),
                reason: e.to_string(),
            })?,
        ),
        None => None,
    };
    let name = site.map_or_else(|| "<defaults>".to_string(), |p| p.display().to_string());
    Ok(Layers {
        name,
        site_text,
        env,
    })
}

/// Load from the site file (if any) plus the real process environment.
pub fn load(site: Option<&Path>) -> Result<Config, ConfigError> {
    let Layers {
        name,
        site_text,
        env,
    } = read_layers(site)?;
    from_layers(&name, site_text.as_deref(), env)
}

/// Merge defaults, an optional site file's text and environment variables;
/// read the files the result names; validate.
pub fn from_layers(
    name: &str,
    site_toml: Option<&str>,
    env: HashMap<String, String>,
) -> Result<Config, ConfigError> {
    let raw = parse(name, site_toml, env)?;
    let inputs = read::read(&raw);
    validate(raw, &inputs).map_err(|problems| ConfigError::Invalid {
        file: name.to_string(),
        problems,
    })
}

/// The layers merged and typed (unknown fields refused), nothing read yet.
fn parse(
    name: &str,
    site_toml: Option<&str>,
    env: HashMap<String, String>,
) -> Result<RawConfig, ConfigError> {
    let merged = merge(name, site_toml, env)?;
    merged.try_deserialize().map_err(|e| ConfigError::Parse {
        file: name.to_string(),
        reason: one_line(&e.to_string()),
    })
}

/// The layers merged, before typing.
fn merge(
    name: &str,
    site_toml: Option<&str>,
    env: HashMap<String, String>,
) -> Result<config::Config, ConfigError> {
    let parse_error = |e: &dyn std::fmt::Display| ConfigError::Parse {
        file: name.to_string(),
        reason: one_line(&e.to_string()),
    };
    let mut builder = config::Config::builder().add_source(config::File::from_str(
        DEFAULT_TOML,
        config::FileFormat::Toml,
    ));
    if let Some(text) = site_toml {
        // Parse on its own first so that a syntax error names the site file's line.
        text.parse::<toml::Table>().map_err(|e| parse_error(&e))?;
        builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
    }
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(env.into_iter().collect())),
    );
    builder.build().map_err(|e| parse_error(&e))
}

/// Keys whose values never leave the process in the clear.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || key == "token"
}

/// `scheme://user:pass@host` → `scheme://***@host`: a URL may carry a
/// password even though validation refuses one there.
fn mask_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    match rest.rsplit_once('@') {
        Some((_, host)) if scheme.is_empty() => format!("***@{host}"),
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_string(),
    }
}

fn mask(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                if is_secret(key) {
                    *v = toml::Value::String("***".into());
                } else if let (true, toml::Value::String(url)) = (key == "url", &mut *v) {
                    *url = mask_userinfo(url);
                } else {
                    mask(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

/// `gateway config show`: the effective configuration (defaults, site
/// file and environment merged) as TOML, secrets masked. Refuses an
/// invalid configuration the way `check-config` does.
pub fn effective_toml(site: Option<&Path>) -> Result<String, ConfigError> {
    let Layers {
        name,
        site_text,
        env,
    } = read_layers(site)?;
    from_layers(&name, site_text.as_deref(), env.clone())?;
    let merged = merge(&name, site_text.as_deref(), env)?;
    let mut value: toml::Value = merged.try_deserialize().map_err(|e| ConfigError::Parse {
        file: name.clone(),
        reason: one_line(&e.to_string()),
    })?;
    mask(&mut value);
    toml::to_string_pretty(&value).map_err(|e| ConfigError::Parse {
        file: name,
        reason: e.to_string(),
    })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Keeps the value of a section's validator, or its problems.
struct Collect(Vec<Problem>);

impl Collect {
    fn take<T>(&mut self, checked: Checked<T>) -> Option<T> {
        checked.map_err(|problems| self.0.extend(problems)).ok()
    }
}

/// Validate a parsed configuration against its read inputs: pure. Every
/// section is checked (one section's problems never hide another's) and
/// every problem is returned, in file order.
fn validate(raw: RawConfig, inputs: &Inputs) -> Result<Config, Vec<Problem>> {
    let radio_map_path = raw
        .presence
        .radio_map
        .as_deref()
        .filter(|p| !p.trim().is_empty())
        .map(PathBuf::from);
    // The files whose contents are part of the configuration, not only
    // their paths: a catalog or a map written again in place (`gateway
    // calibrate` after a new walk) is a new config. Secrets are left out:
    // the hash is published with the status.
    let content_files: Vec<PathBuf> = raw
        .catalog
        .as_ref()
        .map(|c| PathBuf::from(&c.path))
        .into_iter()
        .chain(radio_map_path.clone())
        .collect();
    let hash = {
        let mut digest = Sha256::new();
        digest.update(format!("{raw:?}").as_bytes());
        for bytes in content_files.iter().filter_map(|p| inputs.file(p).ok()) {
            digest.update(bytes);
        }
        hex::encode(&digest.finalize()[..6])
    };
    let mut c = Collect(Vec::new());
    let store = c.take(sections::store(&raw.store));
    let store_id = raw.store.id.as_deref().unwrap_or_default();
    let mqtt = c.take(sections::mqtt(&raw.mqtt, store_id, inputs));
    let storage = c.take(sections::storage(&raw.storage));
    let sources = c.take(sections::sources(&raw.sources));
    let zones = c.take(sections::zones(&raw.zones));
    let radio_map = match &zones {
        Some(zones) => c.take(sections::radio_map(
            raw.presence.radio_map.as_deref(),
            &zones.scanner_zone,
            inputs,
        )),
        None => Some(None),
    };
    let beacons = c.take(sections::beacons(&raw.beacons));
    let beacon_places = c.take(sections::beacon_places(
        &raw.beacons,
        crate::presence::PresenceTuning::default().reference_tx_power_dbm,
    ));
    let zone_ids: HashSet<&str> = raw.zones.iter().map(|z| z.id.as_str()).collect();
    let rules = c.take(sections::rules(&raw.rules, &zone_ids));
    let catalog = c.take(sections::catalog(raw.catalog.as_ref(), inputs));
    let offers = c.take(sections::offers(&raw.offers));
    let caps = c.take(sections::caps(&raw.caps));
    let quiet_hours = c.take(sections::quiet_hours(raw.quiet_hours.as_ref()));
    let presence = c.take(sections::presence(&raw.presence));
    let decode = c.take(sections::decode(&raw.decode));
    let nudges = c.take(sections::nudges(&raw.nudges));
    let retention = c.take(sections::retention(&raw.retention));
    let incoming_rate = c.take(sections::incoming(&raw.incoming));
    let admin_listen = c.take(sections::admin(&raw.admin));
    let homeassistant = c.take(sections::homeassistant(
        raw.homeassistant.as_ref(),
        store_id,
    ));
    let chain = c.take(sections::chain(
        raw.caps.chain.as_ref(),
        raw.chain.as_ref(),
        store_id,
        inputs,
    ));
    let (
        Some((store_id, timezone)),
        Some(mqtt),
        Some((storage_path, storage_cache_bytes, storage_import_cache_bytes)),
        Some(sources),
        Some(zones),
        Some(beacons),
        Some((rules, triggered)),
        Some(catalog),
        Some(()),
        Some(caps),
        Some(quiet_hours),
        Some((mut presence, max_future_skew_ms, antenna_height_m)),
        Some(decode),
        Some((nudge_expiry, nudges_enabled)),
        Some((retention, sweep_every)),
        Some(incoming_rate),
        Some(admin_listen),
        Some((homeassistant, homeassistant_scope)),
        Some(radio_map),
        Some(beacon_places),
        Some(chain),
    ) = (
        store,
        mqtt,
        storage,
        sources,
        zones,
        beacons,
        rules,
        catalog,
        offers,
        caps,
        quiet_hours,
        presence,
        decode,
        nudges,
        retention,
        incoming_rate,
        admin_listen,
        homeassistant,
        radio_map,
        beacon_places,
        chain,
    )
    else {
        return Err(c.0);
    };
    let scanner_gain = crate::presence::gain::GainSetup::new(
        &zones.scanner_position,
        &zones.scanner_offset_db,
        &beacon_places,
        presence.path_loss_exponent,
        antenna_height_m,
        presence.min_rssi,
    );
    presence.scanner_zone = zones.scanner_zone;
    presence.scanner_offset_db = zones.scanner_offset_db;
    presence.radio_map = radio_map;
    presence.dwell_thresholds_s = rules.iter().map(|r| r.dwell_s).collect();
    let topics = sources.iter().fold(
        TopicNames::new(&mqtt.prefix, &store_id).with_chain(chain.is_some()),
        |topics, source| match source {
            SourceSettings::MqttScanners {
                own,
                openmqttgateway,
                espresense,
                ..
            } => topics.with_scanner_source(*own, openmqttgateway, espresense),
            _ => topics,
        },
    );
    Ok(Config {
        store_id,
        timezone,
        mqtt,
        storage_path,
        storage_cache_bytes,
        storage_import_cache_bytes,
        sources,
        zones: zones.zones,
        beacons,
        rules,
        triggered,
        catalog,
        offers: raw.offers,
        caps,
        quiet_hours,
        presence,
        scanner_gain,
        radio_map_path,
        content_files,
        max_future_skew_ms,
        decode,
        nudge_expiry,
        nudges_enabled,
        retention,
        sweep_every,
        admin_listen,
        incoming_rate,
        homeassistant,
        homeassistant_scope,
        chain,
        hash,
        topics,
    })
}

#[cfg(test)]
mod sections_tests;
#[cfg(test)]
pub(crate) mod tests;
