//! The pure validators, one per section: raw values (and the files the
//! read step gathered, [`Inputs`]) in, typed values or *every* problem
//! with its config path out. No file system, no environment, no logging:
//! all of that happened in the read step (`read.rs`), so these are tested
//! with plain data (`sections_tests.rs`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveTime;
use chrono_tz::Tz;

use super::raw::{
    RawAdmin, RawBeacon, RawCaps, RawCatalog, RawChain, RawChainCaps, RawConfig, RawDecode,
    RawHomeAssistant, RawIncoming, RawMqtt, RawNudges, RawPresence, RawQuietHours, RawRetention,
    RawRule, RawSource, RawStorage, RawStore, RawZone,
};
use super::read::Inputs;
use super::{
    BeaconKind, ChainSecret, ChainSettings, FleetBeacon, HOMEASSISTANT_DEFAULT_PREFIX,
    HomeAssistantScope, HomeAssistantSettings, MAX_MQTT_PACKET_BYTES, MqttSettings, Problem,
    Secret, SourceSettings, TlsSettings, ZoneSettings, one_line,
};
use crate::decide::{
    Caps, Catalog, ChainCaps, ChainDay, NudgeKind, Offer, QuietHours, Rule, Trigger, TriggeredRule,
    check_wording, validate_template, validate_trigger,
};
use crate::decode::DecodeOptions;
use crate::identity::person::validate_topic_id;
use crate::presence::{PresenceConfig, ZoneId};
use crate::ratelimit::RateLimit;

/// What a validator returns: its section's value, or every problem found.
pub type Checked<T> = Result<T, Vec<Problem>>;

/// The problems found so far in one section.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, path: impl Into<String>, reason: impl Into<String>) {
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

    /// `value` if nothing was found, else every problem.
    fn finish<T>(self, value: T) -> Checked<T> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

fn parse_time(problems: &mut Problems, path: &str, text: &str) -> NaiveTime {
    NaiveTime::parse_from_str(text, "%H:%M").unwrap_or_else(|_| {
        problems.add(path, "must be a local time like \"21:30\"");
        NaiveTime::MIN
    })
}

/// `[store]`: its id and time zone.
pub fn store(raw: &RawStore) -> Checked<(String, Tz)> {
    let mut p = Problems::default();
    let store_id = raw.id.clone().unwrap_or_default();
    if raw.id.is_none() {
        p.add("store.id", "missing");
    } else {
        p.id("store.id", &store_id);
    }
    let timezone = raw.timezone.parse::<Tz>().unwrap_or_else(|_| {
        p.add(
            "store.timezone",
            format!("unknown IANA time zone {:?}", raw.timezone),
        );
        Tz::UTC
    });
    p.finish((store_id, timezone))
}

/// `mqtt://host[:port]` (or `tcp://`, default port 1883) and
/// `mqtts://host[:port]` (or `ssl://`, TLS, default port 8883). Returns the
/// host, the port and whether TLS is on.
pub(super) fn parse_mqtt_url(problems: &mut Problems, url: &str) -> (String, u16, bool) {
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

/// `[mqtt]`: the broker URL, prefix, limits, client id, TLS files and
/// credentials. The files (TLS PEM, password) come from `inputs`; their
/// contents are checked here so that a bad path or PEM is a config error,
/// not a silent reconnect loop. Building the rustls configuration from them
/// is `io::mqtt`'s job.
pub fn mqtt(raw: &RawMqtt, store_id: &str, inputs: &Inputs) -> Checked<MqttSettings> {
    let mut p = Problems::default();
    let (host, port, tls) = parse_mqtt_url(&mut p, &raw.url);
    let (tls, username, password, password_file) = mqtt_security(&mut p, raw, inputs, tls, &host);
    let prefix = raw.prefix.clone();
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
    let keep_alive_s: u64 = p.int(
        "mqtt.keep_alive_s",
        i64::try_from(raw.keep_alive_s).unwrap_or(i64::MAX),
        5,
    );
    let max_publish_bytes: usize = p.int(
        "mqtt.max_publish_bytes",
        i64::try_from(raw.max_publish_bytes).unwrap_or(i64::MAX),
        1024,
    );
    if max_publish_bytes > MAX_MQTT_PACKET_BYTES as usize {
        p.add(
            "mqtt.max_publish_bytes",
            format!("must be <= {MAX_MQTT_PACKET_BYTES}"),
        );
    }
    // The user name by default: a broker that ties client ids to user names
    // (Mosquitto's `use_username_as_clientid`, as deploy/ ships it) uses it
    // anyway, and an id only the gateway's password opens cannot be taken
    // over by somebody who guessed it. `gateway-<store>` only for brokers
    // without accounts (development).
    let client_id = raw.client_id.clone().unwrap_or_else(|| {
        username
            .clone()
            .unwrap_or_else(|| format!("gateway-{store_id}"))
    });
    p.id("mqtt.client_id", &client_id);
    p.finish(MqttSettings {
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
    })
}

/// A PEM file's contents as the read step found them: the bytes, or a
/// problem at `mqtt.<field>` naming the file.
fn pem<'a>(p: &mut Problems, field: &str, path: &Path, inputs: &'a Inputs) -> Option<&'a [u8]> {
    match inputs.file(path) {
        Ok(bytes) => Some(bytes),
        Err(reason) => {
            p.add(
                format!("mqtt.{field}"),
                format!("{}: {reason}", path.display()),
            );
            None
        }
    }
}

/// The sections of a PEM file with their labels, or why it is not PEM.
fn pem_items(bytes: &[u8]) -> Result<Vec<rustls_pemfile::Item>, String> {
    rustls_pemfile::read_all(&mut &bytes[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e:?}"))
}

/// The TLS files' contents: a CA file with at least one certificate, a
/// client certificate chain and a private key. Whether rustls accepts
/// them (and the key fits the certificate) is checked when `io::mqtt`
/// builds its client configuration (`check-config` and `run` do that too).
fn check_tls_files(p: &mut Problems, settings: &TlsSettings, inputs: &Inputs) {
    use rustls_pemfile::Item;
    let certificates = |items: &[Item]| {
        items
            .iter()
            .filter(|i| matches!(i, Item::X509Certificate(_)))
            .count()
    };
    if let Some(path) = &settings.ca_file {
        if let Some(bytes) = pem(p, "ca_file", path, inputs) {
            match pem_items(bytes) {
                Err(reason) => p.add("mqtt.ca_file", format!("{}: {reason}", path.display())),
                Ok(items) if certificates(&items) == 0 => p.add(
                    "mqtt.ca_file",
                    format!("{}: no usable CA certificate", path.display()),
                ),
                Ok(_) => {}
            }
        }
    }
    if let Some(path) = &settings.client_cert_file {
        if let Some(bytes) = pem(p, "client_cert_file", path, inputs) {
            match pem_items(bytes) {
                Err(reason) => p.add(
                    "mqtt.client_cert_file",
                    format!("{}: {reason}", path.display()),
                ),
                Ok(items) if certificates(&items) == 0 => p.add(
                    "mqtt.client_cert_file",
                    format!("{}: no certificate", path.display()),
                ),
                Ok(_) => {}
            }
        }
    }
    if let Some(path) = &settings.client_key_file {
        if let Some(bytes) = pem(p, "client_key_file", path, inputs) {
            let key = pem_items(bytes).ok().is_some_and(|items| {
                items
                    .iter()
                    .any(|i| matches!(i, Item::Pkcs1Key(_) | Item::Pkcs8Key(_) | Item::Sec1Key(_)))
            });
            if !key {
                p.add(
                    "mqtt.client_key_file",
                    format!("{}: no private key", path.display()),
                );
            }
        }
    }
}

/// The `[mqtt]` TLS and credential settings.
fn mqtt_security(
    p: &mut Problems,
    raw: &RawMqtt,
    inputs: &Inputs,
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
        } else {
            check_tls_files(p, &settings, inputs);
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
    let file = match password_file(raw, inputs.credentials_directory()) {
        Ok(file) => file,
        Err((field, reason)) => {
            p.add(field, reason);
            None
        }
    };
    let password = match (&file, &raw.password) {
        (Some(_), Some(_)) => {
            p.add(
                "mqtt.password_file",
                "set either a password file (mqtt.password_file, mqtt.password_credential) or GATEWAY__MQTT__PASSWORD, not both",
            );
            None
        }
        (Some(file), None) => match inputs.file(file) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(bytes);
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
    let password_file = file.filter(|_| password.is_some());
    (tls_settings, username, password, password_file)
}

/// The file the MQTT password is read from: `mqtt.password_file`, or the
/// systemd credential `mqtt.password_credential` in `credentials_directory`.
/// The read step reads it; the validator reports the same errors by field.
pub(super) fn password_file(
    raw: &RawMqtt,
    credentials_directory: Option<&std::ffi::OsStr>,
) -> Result<Option<PathBuf>, (&'static str, String)> {
    let credential_file = match raw.password_credential.as_deref() {
        None => None,
        Some(name) => Some(
            credential_path(name, credentials_directory.map(ToOwned::to_owned))
                .map_err(|reason| ("mqtt.password_credential", reason))?,
        ),
    };
    match (&raw.password_file, credential_file) {
        (Some(_), Some(_)) => Err((
            "mqtt.password_file",
            "set either mqtt.password_file or mqtt.password_credential, not both".into(),
        )),
        (Some(file), None) => Ok(Some(PathBuf::from(file))),
        (None, credential) => Ok(credential),
    }
}

/// `$CREDENTIALS_DIRECTORY/<name>`: where systemd puts a `LoadCredential=`
/// file, readable by the service's (dynamic) user only.
pub(super) fn credential_path(
    name: &str,
    directory: Option<std::ffi::OsString>,
) -> Result<PathBuf, String> {
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

/// `[storage]`: the database's directory and the bounds on sled's page
/// cache, in bytes: the daemon's and the import's.
pub fn storage(raw: &RawStorage) -> Checked<(PathBuf, u64, u64)> {
    let mut p = Problems::default();
    if raw.path.trim().is_empty() {
        p.add("storage.path", "must not be empty");
    }
    if !(1..=4096).contains(&raw.cache_mb) {
        p.add("storage.cache_mb", "must be between 1 and 4096 (MiB)");
    }
    if !(1..=4096).contains(&raw.import_cache_mb) {
        p.add(
            "storage.import_cache_mb",
            "must be between 1 and 4096 (MiB)",
        );
    }
    let cache_bytes = raw.cache_mb.clamp(1, 4096) * 1024 * 1024;
    let import_bytes = raw.import_cache_mb.clamp(1, 4096) * 1024 * 1024;
    p.finish((PathBuf::from(&raw.path), cache_bytes, import_bytes))
}

/// `[[sources]]`.
pub fn sources(raw: &[RawSource]) -> Checked<Vec<SourceSettings>> {
    let mut p = Problems::default();
    let mut sources = Vec::new();
    for (i, source) in raw.iter().enumerate() {
        match source {
            RawSource::Udp { bind } => match bind.parse::<SocketAddr>() {
                Ok(bind) => sources.push(SourceSettings::Udp { bind }),
                Err(_) => p.add(
                    format!("sources[{i}].bind"),
                    format!("not an address:port: {bind:?}"),
                ),
            },
            RawSource::Replay { path, speed } => {
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
            RawSource::Bluez { adapter, scanner } => {
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
            RawSource::MqttScanners {
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
    p.finish(sources)
}

/// `[[zones]]`, with the scanner → zone map and calibration offsets
/// presence needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Zones {
    pub zones: Vec<ZoneSettings>,
    pub scanner_zone: HashMap<String, ZoneId>,
    pub scanner_offset_db: HashMap<String, f32>,
    /// Scanner id → position (metres), where the site file gives one.
    pub scanner_position: HashMap<String, (f32, f32)>,
}

pub fn zones(raw: &[RawZone]) -> Checked<Zones> {
    let mut p = Problems::default();
    let mut zones = Vec::new();
    let mut zone_ids = HashSet::new();
    let mut scanner_zone: HashMap<String, ZoneId> = HashMap::new();
    let mut scanner_offset_db = HashMap::new();
    let mut scanner_position = HashMap::new();
    for (i, zone) in raw.iter().enumerate() {
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
        for (scanner, at) in &zone.positions {
            let path = format!("zones[{i}].positions.{scanner}");
            if !zone.scanners.contains(scanner) {
                p.add(path, "not a scanner of this zone");
            } else if let Some(point) = point(&mut p, &path, at.x, at.y) {
                scanner_position.insert(scanner.clone(), point);
            }
        }
        zones.push(ZoneSettings {
            id,
            scanners: zone.scanners.clone(),
        });
    }
    p.finish(Zones {
        zones,
        scanner_zone,
        scanner_offset_db,
        scanner_position,
    })
}

/// Coordinates of the floor plan: finite, within 10 km of the origin.
fn point(p: &mut Problems, path: &str, x: f64, y: f64) -> Option<(f32, f32)> {
    if x.is_finite() && y.is_finite() && x.abs() <= 10_000.0 && y.abs() <= 10_000.0 {
        Some((x as f32, y as f32))
    } else {
        p.add(path, "x and y must be numbers within 10000 m");
        None
    }
}

/// `[[beacons]]` positions and powers: per beacon (in file order) where
/// it is, if the file says. `reference_dbm`: the power of a beacon that
/// does not say its own.
pub fn beacon_places(
    raw: &[RawBeacon],
    reference_dbm: f32,
) -> Checked<Vec<Option<crate::presence::gain::BeaconPlace>>> {
    let mut p = Problems::default();
    let places = raw
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let path = |f: &str| format!("beacons[{i}].{f}");
            let tx_power_1m = match b.tx_power_1m {
                None => reference_dbm,
                Some(v) if (-127..=20).contains(&v) => v as f32,
                Some(_) => {
                    p.add(path("tx_power_1m"), "must be between -127 and 20 dBm");
                    reference_dbm
                }
            };
            match (b.x, b.y) {
                (None, None) => None,
                (Some(x), Some(y)) => point(&mut p, &path("x"), x, y).map(|(x_m, y_m)| {
                    crate::presence::gain::BeaconPlace {
                        x_m,
                        y_m,
                        tx_power_1m,
                    }
                }),
                (Some(_), None) => {
                    p.add(path("y"), "missing (x and y go together)");
                    None
                }
                (None, Some(_)) => {
                    p.add(path("x"), "missing (x and y go together)");
                    None
                }
            }
        })
        .collect();
    p.finish(places)
}

/// `[[beacons]]`: the store's own beacons, for fleet health.
pub fn beacons(raw: &[RawBeacon]) -> Checked<Vec<FleetBeacon>> {
    let mut p = Problems::default();
    let beacons: Vec<FleetBeacon> = raw
        .iter()
        .enumerate()
        .filter_map(|(i, b)| beacon(&mut p, i, b))
        .collect();
    let mut aliases = HashSet::new();
    for (i, b) in raw.iter().enumerate() {
        if let Some(alias) = &b.espresense_id {
            if !aliases.insert(alias.as_str()) {
                p.add(
                    format!("beacons[{i}].espresense_id"),
                    format!("{alias:?} is already another beacon's"),
                );
            }
        }
    }
    p.finish(beacons)
}

/// An ESPresense alias: what its nodes put in the topic
/// (`espresense/devices/<id>/<room>`), so one topic level of printable
/// ASCII; the beacon's own `iBeacon:` / `altBeacon:` / `eddy:` id needs no
/// alias, and naming one as an alias would hide a typo in it.
fn espresense_alias(p: &mut Problems, path: &str, alias: &str) {
    if alias.is_empty() || alias.len() > 64 {
        p.add(path, "must be 1 to 64 characters");
    } else if !alias
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | '+' | '#'))
    {
        p.add(
            path,
            "must be printable ASCII without spaces, '/', '+' or '#' (one MQTT topic level)",
        );
    } else if ["iBeacon:", "altBeacon:", "eddy:"]
        .iter()
        .any(|native| alias.starts_with(native))
    {
        p.add(
            path,
            "is an id ESPresense derives from the advert itself; leave espresense_id out for it",
        );
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

fn beacon(p: &mut Problems, i: usize, b: &RawBeacon) -> Option<FleetBeacon> {
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
        espresense_id: b.espresense_id.clone().inspect(|alias| {
            espresense_alias(p, &path("espresense_id"), alias);
        }),
    })
}

/// `[[rules]]`: the dwell rules (what presence thresholds look at) and
/// every rule with its trigger. `zone_ids` are the zones the file declares.
pub fn rules(
    raw: &[RawRule],
    zone_ids: &HashSet<&str>,
) -> Checked<(Vec<Rule>, Vec<TriggeredRule>)> {
    let mut p = Problems::default();
    let mut rules = Vec::new();
    let mut triggered = Vec::new();
    let mut rule_ids = HashSet::new();
    for (i, rule) in raw.iter().enumerate() {
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
            if !zone_ids.contains(zone.as_str()) {
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

    p.finish((rules, triggered))
}

/// `[catalog]`: its file's text (from the read step) parsed and checked.
pub fn catalog(raw: Option<&RawCatalog>, inputs: &Inputs) -> Checked<Option<Arc<Catalog>>> {
    let mut p = Problems::default();
    let catalog = raw.and_then(|c| {
        let path = Path::new(&c.path);
        let file = path.display().to_string();
        match inputs.file(path) {
            Err(reason) => {
                p.add("catalog.path", format!("{file}: {reason}"));
                None
            }
            Ok(bytes) => match std::str::from_utf8(bytes) {
                Err(_) => {
                    p.add("catalog.path", format!("{file}: not UTF-8 text"));
                    None
                }
                Ok(text) => match Catalog::from_toml_str(&file, text) {
                    Ok(catalog) => Some(Arc::new(catalog)),
                    Err(e) => {
                        p.add("catalog.path", one_line(&e.to_string()));
                        None
                    }
                },
            },
        }
    });
    p.finish(catalog)
}

/// `[[offers]]`.
pub fn offers(raw: &[Offer]) -> Checked<()> {
    let mut p = Problems::default();
    let mut offer_ids = HashSet::new();
    for (i, offer) in raw.iter().enumerate() {
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
    p.finish(())
}

/// `[caps]`.
pub fn caps(c: &RawCaps) -> Checked<Caps> {
    let mut p = Problems::default();
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
    p.finish(caps)
}

/// The shortest chain secret accepted, in bytes (32 hex characters are
/// 32 bytes; the line is the key as it is, see `chain_person`).
pub const MIN_CHAIN_SECRET_BYTES: usize = 16;

/// `[caps.chain]` with the secret `[chain]` names: `None` without
/// `[caps.chain]` (no chain traffic at all, whatever `[chain]` says).
/// The secret's file was read by the read step; its first line is the
/// key. A store whose id is `chain` would share the chain's topics
/// (`<p>/chain/...`), so it cannot join one.
pub fn chain(
    caps: Option<&RawChainCaps>,
    raw: Option<&RawChain>,
    store_id: &str,
    inputs: &Inputs,
) -> Checked<Option<ChainSettings>> {
    let Some(c) = caps else {
        return Ok(None);
    };
    let mut p = Problems::default();
    let day = match c.day.as_deref() {
        None | Some("chain") => ChainDay::Chain,
        Some("home") => ChainDay::Home,
        Some(_) => {
            p.add("caps.chain.day", "must be \"chain\" or \"home\"");
            ChainDay::Chain
        }
    };
    let timezone = c.timezone.parse::<Tz>().unwrap_or_else(|_| {
        p.add(
            "caps.chain.timezone",
            format!("unknown IANA time zone {:?}", c.timezone),
        );
        Tz::UTC
    });
    let caps = ChainCaps {
        per_day: p.int("caps.chain.per_day", c.per_day, 0),
        per_week: p.int("caps.chain.per_week", c.per_week, 0),
        min_gap_s: p.int("caps.chain.min_gap_s", c.min_gap_s, 0),
        day,
        timezone,
    };
    if store_id == "chain" {
        p.add(
            "store.id",
            "must not be \"chain\" in a chain ([caps.chain]): its topics would be the chain's",
        );
    }
    let secret = match chain_secret_path(raw, inputs.credentials_directory()) {
        Ok(Some(path)) => match inputs.file(&path) {
            Ok(bytes) => {
                let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
                let first = first.strip_suffix(b"\r").unwrap_or(first);
                if first.len() < MIN_CHAIN_SECRET_BYTES {
                    p.add(
                        "chain.secret_file",
                        format!(
                            "{}: the first line must hold at least {MIN_CHAIN_SECRET_BYTES} bytes (e.g. 64 hex characters from `openssl rand -hex 32`)",
                            path.display()
                        ),
                    );
                    None
                } else {
                    Some(ChainSecret::new(first.to_vec()))
                }
            }
            Err(e) => {
                p.add("chain.secret_file", format!("{}: {e}", path.display()));
                None
            }
        },
        Ok(None) => {
            p.add(
                "chain.secret_file",
                "[caps.chain] needs the chain secret: set chain.secret_file or chain.secret_credential",
            );
            None
        }
        Err((field, reason)) => {
            p.add(field, reason);
            None
        }
    };
    match (p.0.is_empty(), secret) {
        (true, Some(secret)) => Ok(Some(ChainSettings { caps, secret })),
        _ => Err(p.0),
    }
}

/// The file the chain secret is read from, if `[caps.chain]` is set: for
/// the read step.
pub(super) fn chain_secret_file(
    raw: &RawConfig,
    credentials_directory: Option<&std::ffi::OsStr>,
) -> Result<Option<PathBuf>, (&'static str, String)> {
    if raw.caps.chain.is_none() {
        return Ok(None);
    }
    chain_secret_path(raw.chain.as_ref(), credentials_directory)
}

/// `chain.secret_file`, or the systemd credential `chain.secret_credential`.
fn chain_secret_path(
    raw: Option<&RawChain>,
    credentials_directory: Option<&std::ffi::OsStr>,
) -> Result<Option<PathBuf>, (&'static str, String)> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let credential = match raw.secret_credential.as_deref() {
        None => None,
        Some(name) => Some(
            credential_path(name, credentials_directory.map(ToOwned::to_owned))
                .map_err(|reason| ("chain.secret_credential", reason))?,
        ),
    };
    match (raw.secret_file.as_deref(), credential) {
        (Some(_), Some(_)) => Err((
            "chain.secret_file",
            "set either chain.secret_file or chain.secret_credential, not both".into(),
        )),
        (Some(file), None) if file.trim().is_empty() => {
            Err(("chain.secret_file", "must not be empty".into()))
        }
        (Some(file), None) => Ok(Some(PathBuf::from(file))),
        (None, credential) => Ok(credential),
    }
}

/// `[quiet_hours]`.
pub fn quiet_hours(raw: Option<&RawQuietHours>) -> Checked<Option<QuietHours>> {
    let mut p = Problems::default();
    let quiet_hours = raw.map(|q| QuietHours {
        start: parse_time(&mut p, "quiet_hours.start", &q.start),
        end: parse_time(&mut p, "quiet_hours.end", &q.end),
    });
    p.finish(quiet_hours)
}

/// `[presence]`: the engine's settings (its scanner map, offsets and dwell
/// thresholds are filled in from the zones and rules) and the clock's
/// `max_future_skew_ms`.
pub fn presence(r: &RawPresence) -> Checked<(PresenceConfig, i64, f32)> {
    let mut p = Problems::default();
    let antenna_height_m = match r.antenna_height_m {
        None => DEFAULT_ANTENNA_HEIGHT_M,
        Some(h) if (0.0..=30.0).contains(&h) => h as f32,
        Some(_) => {
            p.add(
                "presence.antenna_height_m",
                "must be between 0 and 30 metres",
            );
            DEFAULT_ANTENNA_HEIGHT_M
        }
    };
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
    let presence = PresenceConfig {
        scanner_zone: HashMap::new(),
        scanner_offset_db: HashMap::new(),
        dwell_thresholds_s: BTreeSet::new(),
        min_rssi: p.int::<i16>("presence.min_rssi", r.min_rssi, -127),
        switch_margin_db: r.switch_margin_db as f32,
        switch_hold_ms: p.int("presence.switch_hold_ms", r.switch_hold_ms, 0),
        window_ms: p.int("presence.window_ms", r.window_ms, 1),
        zone_timeout_ms: p.int("presence.zone_timeout_ms", r.zone_timeout_ms, 1),
        visit_gap_ms: p.int("presence.visit_gap_ms", r.visit_gap_ms, 1),
        path_loss_exponent: r.path_loss_exponent as f32,
        hall_distance_m,
        // Checked against the zones in `radio_map`, once they are known.
        radio_map: None,
        map_tuning: map_tuning(&mut p, r.map.as_ref()),
    };
    let max_future_skew_ms = p.int("presence.max_future_skew_ms", r.max_future_skew_ms, 0);
    p.finish((presence, max_future_skew_ms, antenna_height_m))
}

/// `[presence.map]`: every knob optional, each in its range
/// (`presence::MAP_TUNING_RANGES`).
fn map_tuning(
    p: &mut Problems,
    raw: Option<&super::raw::RawMapTuning>,
) -> crate::presence::MapTuningOverrides {
    let Some(r) = raw else {
        return Default::default();
    };
    // Out of f32's range is out of every knob's range: infinity is refused below.
    let f = |v: Option<f64>| v.map(|v| v as f32);
    let tuning = crate::presence::MapTuningOverrides {
        zone_stay_s: f(r.zone_stay_s),
        hall_stay_s: f(r.hall_stay_s),
        evidence_weight: f(r.evidence_weight),
        enter_p: f(r.enter_p),
        switch_p: f(r.switch_p),
        hold_ms: r.hold_ms,
        bias_rate: f(r.bias_rate),
        bias_max_db: f(r.bias_max_db),
    };
    for (knob, reason) in tuning.problems() {
        p.add(format!("presence.map.{knob}"), reason);
    }
    tuning
}

/// Scanners on a 2.5 m ceiling, beacons and phones at 1.2 m.
const DEFAULT_ANTENNA_HEIGHT_M: f32 = 1.3;

/// `[decode]`.
pub fn decode(raw: &RawDecode) -> Checked<DecodeOptions> {
    let mut p = Problems::default();
    let app_company_id: u16 = p.int("decode.app_company_id", raw.app_company_id, 0);
    p.finish(DecodeOptions { app_company_id })
}

/// `[nudges]`: expiry and the kill switch.
pub fn nudges(raw: &RawNudges) -> Checked<(Duration, bool)> {
    let mut p = Problems::default();
    let expiry_s: u64 = p.int("nudges.expiry_s", raw.expiry_s, 1);
    p.finish((Duration::from_secs(expiry_s), raw.enabled))
}

/// `[retention]`: the window, and how often the sweep runs (event time).
pub fn retention(raw: &RawRetention) -> Checked<(Duration, Duration)> {
    let mut p = Problems::default();
    let days: u64 = p.int("retention.days", raw.days, 1);
    let sweep_every_s = match u64::try_from(raw.sweep_every_s) {
        Ok(s @ 60..=86_400) => s,
        _ => {
            p.add("retention.sweep_every_s", "must be between 60 and 86400");
            3600
        }
    };
    p.finish((
        Duration::from_secs(days.saturating_mul(86_400)),
        Duration::from_secs(sweep_every_s),
    ))
}

/// `[incoming]`: the per-recipient token buckets.
pub fn incoming(raw: &RawIncoming) -> Checked<RateLimit> {
    let mut p = Problems::default();
    let rate = RateLimit {
        per_minute: p.int(
            "incoming.per_recipient_per_minute",
            raw.per_recipient_per_minute,
            1,
        ),
        burst: p.int("incoming.per_recipient_burst", raw.per_recipient_burst, 1),
        max_recipients: p.int("incoming.max_recipients", raw.max_recipients, 1),
    };
    p.finish(rate)
}

/// `[admin]`.
pub fn admin(raw: &RawAdmin) -> Checked<Option<SocketAddr>> {
    let mut p = Problems::default();
    let admin_listen = match raw.listen.as_deref() {
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
    p.finish(admin_listen)
}

/// `[homeassistant]`, checked on its own: the settings (`None` when absent
/// or disabled) and, either way, where its discovery topics are. A
/// disabled section's prefix and node id are checked too: they say where
/// an earlier run's configs are to be cleared.
pub(super) fn homeassistant(
    raw: Option<&RawHomeAssistant>,
    store_id: &str,
) -> Checked<(Option<HomeAssistantSettings>, HomeAssistantScope)> {
    let mut p = Problems::default();
    let discovery_prefix = raw
        .and_then(|r| r.discovery_prefix.clone())
        .unwrap_or_else(|| HOMEASSISTANT_DEFAULT_PREFIX.to_string());
    if discovery_prefix.is_empty()
        || discovery_prefix.len() > 64
        || discovery_prefix.starts_with('/')
        || discovery_prefix.ends_with('/')
        || discovery_prefix.contains(['+', '#', '\0'])
        || discovery_prefix.split('/').any(str::is_empty)
    {
        p.add(
            "homeassistant.discovery_prefix",
            "must be 1 to 64 characters of MQTT topic levels, without wildcards or empty levels",
        );
    }
    // Home Assistant allows [a-zA-Z0-9_-] in node and object ids.
    let node_id = raw
        .and_then(|r| r.node_id.clone())
        .unwrap_or_else(|| store_id.to_string());
    if node_id.is_empty()
        || node_id.len() > 64
        || !node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        p.add(
            "homeassistant.node_id",
            "must be 1 to 64 of the characters a-z A-Z 0-9 _ - (Home Assistant's node id)",
        );
    }
    let every = raw.and_then(|r| r.state_every_s).unwrap_or(30);
    if !(1..=3600).contains(&every) {
        p.add("homeassistant.state_every_s", "must be in 1..=3600");
    }
    let scope = HomeAssistantScope {
        discovery_prefix: discovery_prefix.clone(),
        node_id: node_id.clone(),
    };
    let settings = raw.filter(|r| r.enabled).map(|_| HomeAssistantSettings {
        discovery_prefix,
        node_id,
        state_every: Duration::from_secs(every),
    });
    p.finish((settings, scope))
}

/// `[presence] radio_map`: the map the read step found, checked against
/// the site's scanners and zones (a map learned in another store, or before
/// a scanner was added, is refused; a reload that fails here keeps the last
/// good configuration, map included). An empty path is no map.
pub fn radio_map(
    path: Option<&str>,
    scanner_zone: &HashMap<String, ZoneId>,
    inputs: &Inputs,
) -> Checked<Option<Arc<crate::presence::radiomap::RadioModel>>> {
    let Some(path) = path.filter(|s| !s.trim().is_empty()) else {
        return Ok(None);
    };
    let mut p = Problems::default();
    let model = match inputs.file(Path::new(path)) {
        Err(reason) => {
            p.add("presence.radio_map", format!("{path}: {reason}"));
            None
        }
        Ok(bytes) => match std::str::from_utf8(bytes) {
            Err(_) => {
                p.add("presence.radio_map", format!("{path}: not UTF-8 text"));
                None
            }
            Ok(text) => match crate::presence::radiomap::for_site(text, scanner_zone) {
                Ok(model) => Some(model),
                Err(e) => {
                    p.add("presence.radio_map", format!("{path}: {e}"));
                    None
                }
            },
        },
    };
    p.finish(model)
}
