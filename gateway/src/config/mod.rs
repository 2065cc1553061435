//! Configuration: layered TOML (embedded defaults, then the site file, then
//! `GATEWAY__SECTION__KEY` environment variables), parsed into raw structs
//! that reject unknown fields, then validated into [`Config`]. Validation
//! reports every problem with its path at once. The rest of the program only
//! sees [`Config`]: nothing downstream re-parses strings.

mod raw;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveTime;
use chrono_tz::Tz;
use sha2::{Digest, Sha256};

use crate::decide::{
    Caps, Catalog, NudgeKind, Offer, QuietHours, Rule, Trigger, TriggeredRule, check_wording,
    validate_template, validate_trigger,
};
use crate::decode::DecodeOptions;
use crate::identity::person::validate_topic_id;
use crate::presence::{PresenceConfig, ZoneId};
use raw::RawConfig;

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
    pub sources: Vec<SourceSettings>,
    pub zones: Vec<ZoneSettings>,
    /// The store's own beacons, for fleet health.
    pub beacons: Vec<crate::io::fleet::FleetBeacon>,
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
    pub max_future_skew_ms: i64,
    pub decode: DecodeOptions,
    pub nudge_expiry: Duration,
    pub nudges_enabled: bool,
    pub retention: Duration,
    pub admin_listen: Option<SocketAddr>,
    /// Per-recipient token buckets on the app topics (`ratelimit.rs`).
    pub incoming_rate: crate::ratelimit::RateLimit,
    /// Short hash of the effective configuration, published with the status.
    pub hash: String,
}

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

/// TLS to the broker. The files are read (and checked) when the config is
/// validated, and again each time delivery starts.
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

impl Config {
    /// Topic prefix for this store: `<prefix>/<store>`.
    pub fn store_topic(&self) -> String {
        format!("{}/{}", self.mqtt.prefix, self.store_id)
    }

    pub fn nudge_topic(&self, recipient: &str) -> String {
        format!("{}/nudges/{recipient}", self.store_topic())
    }

    pub fn status_topic(&self) -> String {
        format!("{}/gateway/status", self.store_topic())
    }
}

/// One problem in a configuration, with the path of the offending value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
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

/// Merge defaults, an optional site file's text and environment variables.
pub fn from_layers(
    name: &str,
    site_toml: Option<&str>,
    env: HashMap<String, String>,
) -> Result<Config, ConfigError> {
    let merged = merge(name, site_toml, env)?;
    let raw: RawConfig = merged.try_deserialize().map_err(|e| ConfigError::Parse {
        file: name.to_string(),
        reason: one_line(&e.to_string()),
    })?;
    validate(raw).map_err(|problems| ConfigError::Invalid {
        file: name.to_string(),
        problems,
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

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            reason: reason.into(),
        });
    }

    /// Convert an integer into `T`, recording a problem when out of range.
    fn int<T: TryFrom<i64> + Default>(&mut self, path: &str, value: i64, min: i64) -> T {
        if value < min {
            self.add(path, format!("must be >= {min}"));
            return T::default();
        }
        T::try_from(value).unwrap_or_else(|_| {
            self.add(path, "out of range");
            T::default()
        })
    }

    fn id(&mut self, path: &str, value: &str) {
        if let Err(e) = validate_topic_id(path, value) {
            self.add(path, e.reason);
        }
    }
}

fn parse_time(problems: &mut Problems, path: &str, text: &str) -> NaiveTime {
    NaiveTime::parse_from_str(text, "%H:%M").unwrap_or_else(|_| {
        problems.add(path, "must be a local time like \"21:30\"");
        NaiveTime::MIN
    })
}

/// `mqtt://host[:port]` (or `tcp://`, default port 1883) and
/// `mqtts://host[:port]` (or `ssl://`, TLS, default port 8883). Returns the
/// host, the port and whether TLS is on.
fn parse_mqtt_url(problems: &mut Problems, url: &str) -> (String, u16, bool) {
    let (rest, tls) = if let Some(rest) = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
    {
        (rest, false)
    } else if let Some(rest) = url
        .strip_prefix("mqtts://")
        .or_else(|| url.strip_prefix("ssl://"))
    {
        (rest, true)
    } else {
        problems.add(
            "mqtt.url",
            "must start with mqtt:// (plain TCP) or mqtts:// (TLS)",
        );
        return (String::new(), 0, false);
    };
    let rest = rest.trim_end_matches('/');
    // `user:password@host`: refused without echoing any of it (the text
    // before the '@' is a secret, and so may be anything after it that
    // looks like a port).
    let rest = match rest.rsplit_once('@') {
        Some((_, host)) => {
            problems.add(
                "mqtt.url",
                "must not hold credentials: use mqtt.username and mqtt.password_file (or password_credential)",
            );
            host
        }
        None => rest,
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            match port.parse::<u16>() {
                Ok(p) if p > 0 => (host, p),
                _ => {
                    problems.add("mqtt.url", "the port must be a number from 1 to 65535");
                    (host, 0)
                }
            }
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        problems.add("mqtt.url", "missing host");
    } else if host.contains(['/', '?', '#']) {
        problems.add(
            "mqtt.url",
            "host must be a name or an address (credentials go in mqtt.username / mqtt.password_file)",
        );
    }
    (host.to_string(), port, tls)
}

/// The `[mqtt]` TLS and credential settings, with their files read and
/// checked now so that a bad path or PEM is a config error, not a silent
/// reconnect loop.
fn validate_mqtt_security(
    p: &mut Problems,
    raw: &raw::RawMqtt,
    tls: bool,
    host: &str,
) -> (
    Option<TlsSettings>,
    Option<String>,
    Option<Secret>,
    Option<PathBuf>,
) {
    let path_of = |p: &mut Problems, field: &str, value: &Option<String>| -> Option<PathBuf> {
        match value.as_deref() {
            None => None,
            Some(v) if v.trim().is_empty() => {
                p.add(format!("mqtt.{field}"), "must not be empty (leave it out)");
                None
            }
            Some(v) => Some(PathBuf::from(v)),
        }
    };
    let settings = TlsSettings {
        ca_file: path_of(p, "ca_file", &raw.ca_file),
        client_cert_file: path_of(p, "client_cert_file", &raw.client_cert_file),
        client_key_file: path_of(p, "client_key_file", &raw.client_key_file),
    };
    let tls_settings = if tls {
        if settings.client_cert_file.is_some() != settings.client_key_file.is_some() {
            p.add(
                "mqtt.client_key_file",
                "client_cert_file and client_key_file go together",
            );
        } else if let Err(e) = crate::io::mqtt::tls_client_config(&settings) {
            p.add(format!("mqtt.{}", e.field), e.reason);
        }
        if !host.is_empty() && rustls::pki_types::ServerName::try_from(host.to_string()).is_err() {
            p.add(
                "mqtt.url",
                "host is not a DNS name or IP address usable for TLS",
            );
        }
        Some(settings)
    } else {
        for (field, set) in [
            ("ca_file", settings.ca_file.is_some()),
            ("client_cert_file", settings.client_cert_file.is_some()),
            ("client_key_file", settings.client_key_file.is_some()),
        ] {
            if set {
                p.add(format!("mqtt.{field}"), "needs TLS: use an mqtts:// url");
            }
        }
        None
    };

    let username = match raw.username.as_deref() {
        None => None,
        Some("") => {
            p.add("mqtt.username", "must not be empty (leave it out)");
            None
        }
        Some(u) => Some(u.to_string()),
    };
    let credential_file = raw.password_credential.as_deref().and_then(|name| {
        credential_path(name, std::env::var_os("CREDENTIALS_DIRECTORY"))
            .map_err(|reason| p.add("mqtt.password_credential", reason))
            .ok()
    });
    let file = match (&raw.password_file, credential_file) {
        (Some(_), Some(_)) => {
            p.add(
                "mqtt.password_file",
                "set either mqtt.password_file or mqtt.password_credential, not both",
            );
            None
        }
        (Some(file), None) => Some(PathBuf::from(file)),
        (None, credential) => credential,
    };
    let password = match (&file, &raw.password) {
        (Some(_), Some(_)) => {
            p.add(
                "mqtt.password_file",
                "set either a password file (mqtt.password_file, mqtt.password_credential) or GATEWAY__MQTT__PASSWORD, not both",
            );
            None
        }
        (Some(file), None) => match std::fs::read_to_string(file) {
            Ok(text) => {
                let first = text.lines().next().unwrap_or("").trim_end_matches('\r');
                if first.is_empty() {
                    p.add("mqtt.password_file", format!("{}: empty", file.display()));
                    None
                } else {
                    Some(Secret::new(first))
                }
            }
            Err(e) => {
                p.add("mqtt.password_file", format!("{}: {e}", file.display()));
                None
            }
        },
        (None, Some(secret)) => Some(secret.clone()),
        (None, None) => None,
    };
    if password.is_some() && username.is_none() {
        p.add("mqtt.username", "a password needs a username");
    }
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if password.is_some() && !tls && !loopback {
        tracing::warn!("mqtt: a password over plain mqtt:// travels in the clear; use mqtts://");
    }
    let password_file = file.filter(|_| password.is_some());
    (tls_settings, username, password, password_file)
}

/// `$CREDENTIALS_DIRECTORY/<name>`: where systemd puts a `LoadCredential=`
/// file, readable by the service's (dynamic) user only.
fn credential_path(name: &str, directory: Option<std::ffi::OsString>) -> Result<PathBuf, String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err("must be a credential name (a file name, no '/')".into());
    }
    match directory {
        Some(dir) if !dir.is_empty() => Ok(Path::new(&dir).join(name)),
        _ => Err(format!(
            "$CREDENTIALS_DIRECTORY is not set: run under systemd with LoadCredential={name}:<file> (deploy/systemd/gateway.service), or use mqtt.password_file"
        )),
    }
}

fn hex_bytes<const N: usize>(p: &mut Problems, path: String, text: Option<&String>) -> [u8; N] {
    let Some(text) = text else {
        p.add(path, "missing");
        return [0; N];
    };
    match hex::decode(text.replace('-', ""))
        .ok()
        .and_then(|b| <[u8; N]>::try_from(b).ok())
    {
        Some(bytes) => bytes,
        None => {
            p.add(path, format!("must be {N} bytes of hex"));
            [0; N]
        }
    }
}

fn beacon(p: &mut Problems, i: usize, b: &raw::RawBeacon) -> Option<crate::io::fleet::FleetBeacon> {
    use crate::io::fleet::{BeaconKind, FleetBeacon};
    let path = |f: &str| format!("beacons[{i}].{f}");
    p.id(&path("id"), &b.id);
    let number = |p: &mut Problems, field: &str, v: Option<i64>| -> u16 {
        match v {
            Some(v) => p.int(&path(field), v, 0),
            None => {
                p.add(path(field), "missing");
                0
            }
        }
    };
    let kind = match b.kind.as_str() {
        "ibeacon" => BeaconKind::IBeacon {
            uuid: hex_bytes(p, path("uuid"), b.uuid.as_ref()),
            major: number(p, "major", b.major),
            minor: number(p, "minor", b.minor),
        },
        "eddystone_uid" => BeaconKind::EddystoneUid {
            namespace: hex_bytes(p, path("namespace"), b.namespace.as_ref()),
            instance: hex_bytes(p, path("instance"), b.instance.as_ref()),
        },
        "altbeacon" => BeaconKind::AltBeacon {
            id1: hex_bytes(p, path("id1"), b.id1.as_ref()),
            id2: number(p, "id2", b.id2),
            id3: number(p, "id3", b.id3),
        },
        other => {
            p.add(
                path("kind"),
                format!("must be ibeacon, eddystone_uid or altbeacon, not {other:?}"),
            );
            return None;
        }
    };
    Some(FleetBeacon {
        id: b.id.clone(),
        kind,
        low_battery_mv: b
            .low_battery_mv
            .map(|v| p.int(&path("low_battery_mv"), v, 0)),
        missing_after_s: p.int(
            &path("missing_after_s"),
            b.missing_after_s.unwrap_or(600),
            1,
        ),
    })
}

/// `[presence] radio_map`: read, checked against the site's scanners and
/// zones, made ready for the engine. An empty string is no map. A reload
/// that fails here keeps the last good configuration, map included.
fn presence_radio_map(
    p: &mut Problems,
    path: Option<&str>,
    scanner_zone: &HashMap<String, ZoneId>,
) -> Option<Arc<crate::presence::radiomap::RadioModel>> {
    let path = path.filter(|s| !s.is_empty())?;
    match crate::presence::radiomap::load_for_site(Path::new(path), scanner_zone) {
        Ok(model) => Some(model),
        Err(e) => {
            p.add("presence.radio_map", format!("{path}: {e}"));
            None
        }
    }
}

fn validate(raw: RawConfig) -> Result<Config, Vec<Problem>> {
    let mut p = Problems(Vec::new());
    let hash = {
        let digest = Sha256::digest(format!("{raw:?}").as_bytes());
        hex::encode(&digest[..6])
    };

    let store_id = raw.store.id.clone().unwrap_or_default();
    if raw.store.id.is_none() {
        p.add("store.id", "missing");
    } else {
        p.id("store.id", &store_id);
    }
    let timezone = raw.store.timezone.parse::<Tz>().unwrap_or_else(|_| {
        p.add(
            "store.timezone",
            format!("unknown IANA time zone {:?}", raw.store.timezone),
        );
        Tz::UTC
    });

    let (host, port, tls) = parse_mqtt_url(&mut p, &raw.mqtt.url);
    let (tls, username, password, password_file) =
        validate_mqtt_security(&mut p, &raw.mqtt, tls, &host);
    let prefix = raw.mqtt.prefix.clone();
    if prefix.is_empty()
        || prefix.starts_with('/')
        || prefix.ends_with('/')
        || prefix.contains(['+', '#'])
    {
        p.add(
            "mqtt.prefix",
            "must be non-empty, without leading or trailing '/', '+' or '#'",
        );
    }
    // rumqttc refuses keep-alives under 5 s.
    let keep_alive_s: u64 = p.int("mqtt.keep_alive_s", raw.mqtt.keep_alive_s as i64, 5);
    let max_publish_bytes: usize = p.int(
        "mqtt.max_publish_bytes",
        i64::try_from(raw.mqtt.max_publish_bytes).unwrap_or(i64::MAX),
        1024,
    );
    if max_publish_bytes > crate::io::mqtt::MAX_INCOMING_PACKET_BYTES as usize {
        p.add(
            "mqtt.max_publish_bytes",
            format!("must be <= {}", crate::io::mqtt::MAX_INCOMING_PACKET_BYTES),
        );
    }
    // The user name by default: a broker that ties client ids to user names
    // (Mosquitto's `use_username_as_clientid`, as deploy/ ships it) uses it
    // anyway, and an id only the gateway's password opens cannot be taken
    // over by somebody who guessed it. `gateway-<store>` only for brokers
    // without accounts (development).
    let client_id = raw.mqtt.client_id.clone().unwrap_or_else(|| {
        username
            .clone()
            .unwrap_or_else(|| format!("gateway-{store_id}"))
    });
    p.id("mqtt.client_id", &client_id);

    if raw.storage.path.trim().is_empty() {
        p.add("storage.path", "must not be empty");
    }

    let mut sources = Vec::new();
    for (i, source) in raw.sources.iter().enumerate() {
        match source {
            raw::RawSource::Udp { bind } => match bind.parse::<SocketAddr>() {
                Ok(bind) => sources.push(SourceSettings::Udp { bind }),
                Err(_) => p.add(
                    format!("sources[{i}].bind"),
                    format!("not an address:port: {bind:?}"),
                ),
            },
            raw::RawSource::Replay { path, speed } => {
                let speed = speed.unwrap_or(1.0);
                if !(speed.is_finite() && speed >= 0.0) {
                    p.add(
                        format!("sources[{i}].speed"),
                        "must be a finite number >= 0 (0 = as fast as possible)",
                    );
                }
                if path.trim().is_empty() {
                    p.add(format!("sources[{i}].path"), "must not be empty");
                }
                sources.push(SourceSettings::Replay {
                    path: PathBuf::from(path),
                    speed,
                });
            }
            raw::RawSource::Bluez { adapter, scanner } => {
                if scanner.is_empty() || scanner.len() > 64 {
                    p.add(
                        format!("sources[{i}].scanner"),
                        "must be 1 to 64 characters",
                    );
                }
                if adapter.as_ref().is_some_and(|a| a.is_empty()) {
                    p.add(
                        format!("sources[{i}].adapter"),
                        "must not be empty (leave it out for the first adapter)",
                    );
                }
                sources.push(SourceSettings::Bluez {
                    adapter: adapter.clone(),
                    scanner: scanner.clone(),
                });
            }
            raw::RawSource::MqttScanners {
                own,
                openmqttgateway,
                espresense,
                merge_window_ms,
            } => {
                for (field, filters) in [
                    ("openmqttgateway", openmqttgateway),
                    ("espresense", espresense),
                ] {
                    for (j, filter) in filters.iter().enumerate() {
                        if let Err(reason) = crate::topics::validate_filter(filter) {
                            p.add(format!("sources[{i}].{field}[{j}]"), reason);
                        }
                    }
                }
                let merge_window_ms = p.int(
                    &format!("sources[{i}].merge_window_ms"),
                    merge_window_ms.unwrap_or(300),
                    0,
                );
                sources.push(SourceSettings::MqttScanners {
                    own: *own,
                    openmqttgateway: openmqttgateway.clone(),
                    espresense: espresense.clone(),
                    merge_window_ms,
                });
            }
        }
    }

    let mut zones = Vec::new();
    let mut zone_ids = HashSet::new();
    let mut scanner_zone: HashMap<String, ZoneId> = HashMap::new();
    let mut scanner_offset_db = HashMap::new();
    for (i, zone) in raw.zones.iter().enumerate() {
        p.id(&format!("zones[{i}].id"), &zone.id);
        if !zone_ids.insert(zone.id.clone()) {
            p.add(
                format!("zones[{i}].id"),
                format!("duplicate zone {:?}", zone.id),
            );
        }
        if zone.scanners.is_empty() {
            p.add(
                format!("zones[{i}].scanners"),
                "must name at least one scanner",
            );
        }
        let id: ZoneId = Arc::from(zone.id.as_str());
        for (j, scanner) in zone.scanners.iter().enumerate() {
            if scanner.is_empty() || scanner.len() > 64 {
                p.add(
                    format!("zones[{i}].scanners[{j}]"),
                    "must be 1 to 64 characters",
                );
            }
            if let Some(other) = scanner_zone.insert(scanner.clone(), id.clone()) {
                p.add(
                    format!("zones[{i}].scanners[{j}]"),
                    format!("scanner {scanner:?} is already in zone {other:?}"),
                );
            }
        }
        for (scanner, offset) in &zone.calibration_db {
            if !zone.scanners.contains(scanner) {
                p.add(
                    format!("zones[{i}].calibration_db.{scanner}"),
                    "not a scanner of this zone",
                );
            }
            scanner_offset_db.insert(scanner.clone(), *offset);
        }
        zones.push(ZoneSettings {
            id,
            scanners: zone.scanners.clone(),
        });
    }

    let beacons = raw
        .beacons
        .iter()
        .enumerate()
        .filter_map(|(i, b)| beacon(&mut p, i, b))
        .collect();

    let mut rules = Vec::new();
    let mut triggered = Vec::new();
    let mut rule_ids = HashSet::new();
    for (i, rule) in raw.rules.iter().enumerate() {
        let path = |f: &str| format!("rules[{i}].{f}");
        p.id(&path("id"), &rule.id);
        if !rule_ids.insert(rule.id.clone()) {
            p.add(path("id"), format!("duplicate rule {:?}", rule.id));
        }
        let kind = NudgeKind::parse(&rule.kind).unwrap_or_else(|| {
            p.add(
                path("kind"),
                "must be one of info, compare, thanks, feedback, offer",
            );
            NudgeKind::Info
        });
        let known_zone = |p: &mut Problems, zone: &String| -> ZoneId {
            if !zone_ids.contains(zone) {
                p.add(path("zone"), format!("unknown zone {zone:?}"));
            }
            Arc::from(zone.as_str())
        };
        let trigger = match (rule.on.as_deref(), rule.on_visit) {
            (None | Some("dwell"), None) => {
                let zone = match &rule.zone {
                    Some(zone) => known_zone(&mut p, zone),
                    None => {
                        p.add(path("zone"), "missing (a dwell rule needs its zone)");
                        Arc::from("")
                    }
                };
                let dwell_s = match rule.dwell_s {
                    Some(d) => p.int(&path("dwell_s"), d, 1),
                    None => {
                        p.add(
                            path("dwell_s"),
                            "missing (a dwell rule needs its dwell time)",
                        );
                        0
                    }
                };
                Trigger::Dwell { zone, dwell_s }
            }
            (Some("exit"), None) => Trigger::Exit {
                zone: rule.zone.as_ref().map(|z| known_zone(&mut p, z)),
            },
            (Some("purchase"), None) => Trigger::Purchase,
            (None, Some(n)) => Trigger::NthVisit(p.int(&path("on_visit"), n, 1)),
            (Some(_), Some(_)) => {
                p.add(path("on_visit"), "give either `on` or `on_visit`, not both");
                Trigger::Purchase
            }
            (Some(other), None) => {
                p.add(
                    path("on"),
                    format!("must be \"dwell\", \"exit\" or \"purchase\", not {other:?}"),
                );
                Trigger::Purchase
            }
        };
        if !matches!(trigger, Trigger::Dwell { .. }) && rule.dwell_s.is_some() {
            p.add(path("dwell_s"), "only dwell rules have a dwell time");
        }
        if let Err(reason) = validate_trigger(kind, &trigger) {
            p.add(
                path(if rule.on_visit.is_some() {
                    "on_visit"
                } else {
                    "on"
                }),
                reason,
            );
        }
        for (field, text, max) in [("title", &rule.title, 120), ("body", &rule.body, 1000)] {
            if text.trim().is_empty() || text.len() > max {
                p.add(path(field), format!("must be 1 to {max} characters"));
            }
            if let Err(reason) = validate_template(text) {
                p.add(path(field), reason);
            }
            if let Err(reason) = check_wording(kind, text) {
                p.add(path(field), reason);
            }
        }
        if rule.interest.as_ref().is_some_and(|i| i.is_empty()) {
            p.add(
                path("interest"),
                "must not be empty (leave it out to match everyone)",
            );
        }
        let (zone, dwell_s) = match &trigger {
            Trigger::Dwell { zone, dwell_s } => (zone.clone(), *dwell_s),
            Trigger::Exit { zone: Some(zone) } => (zone.clone(), 0),
            _ => (Arc::from(crate::decide::STORE_ZONE), 0),
        };
        let built = Rule {
            id: rule.id.clone(),
            zone,
            dwell_s,
            interest: rule.interest.clone(),
            kind,
            title: rule.title.clone(),
            body: rule.body.clone(),
            priority: rule.priority,
        };
        if matches!(trigger, Trigger::Dwell { .. }) {
            rules.push(built.clone());
        }
        triggered.push(TriggeredRule::new(built, trigger));
    }

    let catalog = raw
        .catalog
        .as_ref()
        .and_then(|c| match Catalog::load(Path::new(&c.path)) {
            Ok(catalog) => Some(Arc::new(catalog)),
            Err(e) => {
                p.add("catalog.path", one_line(&e.to_string()));
                None
            }
        });
    let mut offer_ids = HashSet::new();
    for (i, offer) in raw.offers.iter().enumerate() {
        p.id(&format!("offers[{i}].id"), &offer.id);
        if !offer_ids.insert(offer.id.clone()) {
            p.add(
                format!("offers[{i}].id"),
                format!("duplicate offer {:?}", offer.id),
            );
        }
        if let Err(reason) = check_wording(NudgeKind::Offer, &offer.title) {
            p.add(format!("offers[{i}].title"), reason);
        }
    }

    let c = &raw.caps;
    let caps = Caps {
        per_visit: p.int("caps.per_visit", c.per_visit, 0),
        per_day: p.int("caps.per_day", c.per_day, 0),
        per_week: p.int("caps.per_week", c.per_week, 0),
        min_gap_s: p.int("caps.min_gap_s", c.min_gap_s, 0),
        rule_cooldown_s: p.int("caps.rule_cooldown_s", c.rule_cooldown_s, 0),
        per_kind_per_day: c
            .per_kind_per_day
            .map(|v| p.int("caps.per_kind_per_day", v, 0)),
        store_per_minute: c
            .store_per_minute
            .map(|v| p.int("caps.store_per_minute", v, 0)),
    };
    let quiet_hours = raw.quiet_hours.as_ref().map(|q| QuietHours {
        start: parse_time(&mut p, "quiet_hours.start", &q.start),
        end: parse_time(&mut p, "quiet_hours.end", &q.end),
    });

    let r = &raw.presence;
    if !(r.switch_margin_db.is_finite() && r.switch_margin_db >= 0.0) {
        p.add("presence.switch_margin_db", "must be a number >= 0");
    }
    if !(1.0..=6.0).contains(&r.path_loss_exponent) {
        p.add(
            "presence.path_loss_exponent",
            "must be between 1 and 6 (2 in free space, 2 to 3 indoors)",
        );
    }
    let hall_distance_m = match r.hall_distance_m {
        0.0 => None,
        d if (0.5..=100.0).contains(&d) => Some(d as f32),
        _ => {
            p.add(
                "presence.hall_distance_m",
                "must be between 0.5 and 100 metres, or 0 for no hall",
            );
            None
        }
    };
    let scanner_zone_for_map = scanner_zone.clone();
    let presence = PresenceConfig {
        scanner_zone,
        scanner_offset_db,
        dwell_thresholds_s: rules.iter().map(|r| r.dwell_s).collect::<BTreeSet<_>>(),
        min_rssi: p.int::<i16>("presence.min_rssi", r.min_rssi, -127),
        switch_margin_db: r.switch_margin_db as f32,
        switch_hold_ms: p.int("presence.switch_hold_ms", r.switch_hold_ms, 0),
        window_ms: p.int("presence.window_ms", r.window_ms, 1),
        zone_timeout_ms: p.int("presence.zone_timeout_ms", r.zone_timeout_ms, 1),
        visit_gap_ms: p.int("presence.visit_gap_ms", r.visit_gap_ms, 1),
        path_loss_exponent: r.path_loss_exponent as f32,
        hall_distance_m,
        radio_map: presence_radio_map(&mut p, r.radio_map.as_deref(), &scanner_zone_for_map),
    };
    let max_future_skew_ms = p.int("presence.max_future_skew_ms", r.max_future_skew_ms, 0);
    let app_company_id: u16 = p.int("decode.app_company_id", raw.decode.app_company_id, 0);
    let expiry_s: u64 = p.int("nudges.expiry_s", raw.nudges.expiry_s, 1);
    let retention_days: u64 = p.int("retention.days", raw.retention.days, 1);
    let incoming_rate = crate::ratelimit::RateLimit {
        per_minute: p.int(
            "incoming.per_recipient_per_minute",
            raw.incoming.per_recipient_per_minute,
            1,
        ),
        burst: p.int(
            "incoming.per_recipient_burst",
            raw.incoming.per_recipient_burst,
            1,
        ),
        max_recipients: p.int("incoming.max_recipients", raw.incoming.max_recipients, 1),
    };
    let admin_listen = match raw.admin.listen.as_deref() {
        None | Some("") => None,
        Some(text) => match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                p.add(
                    "admin.listen",
                    format!("not an address:port: {text:?} (empty string disables)"),
                );
                None
            }
        },
    };

    if !p.0.is_empty() {
        return Err(p.0);
    }
    Ok(Config {
        store_id,
        timezone,
        mqtt: MqttSettings {
            host,
            port,
            prefix,
            keep_alive: Duration::from_secs(keep_alive_s),
            max_publish_bytes,
            client_id,
            tls,
            username,
            password,
            password_file,
        },
        storage_path: PathBuf::from(&raw.storage.path),
        sources,
        zones,
        beacons,
        rules,
        triggered,
        catalog,
        offers: raw.offers,
        caps,
        quiet_hours,
        presence,
        max_future_skew_ms,
        decode: DecodeOptions { app_company_id },
        nudge_expiry: Duration::from_secs(expiry_s),
        nudges_enabled: raw.nudges.enabled,
        retention: Duration::from_secs(retention_days * 86_400),
        admin_listen,
        incoming_rate,
        hash,
    })
}

#[cfg(test)]
pub(crate) mod tests;
