//! Chain load: the decisions of many other stores of a chain, as their
//! bridges deliver them to one store's broker (chain-wide caps,
//! `<prefix>/chain/decisions/<store>`), at a fixed total rate, to see how
//! that store's gateway folds them while it serves its own shoppers.
//!
//! Payloads are the chain's decision entries exactly (docs/design.md,
//! chain-wide caps): `v`, `person`, `kind`, `rule`, `at_ms`, `nudge_id`.
//! With the chain's secret the `person` hashes are those of the load
//! generator's enrolled shoppers (`p-100000`, ... as `firmware-sim load
//! --people` writes them), so the entries land on people the gateway knows
//! and count against their chain caps; without it they are hashes under a
//! fixed key, people the gateway folds but never meets. Like the
//! sighting load this reads the wall clock (`at_ms` is the send time) and
//! talks to loopback brokers only.
//!
//! Pacing is the sighting load's: every millisecond tick, every entry whose
//! scheduled time (`start + i / rate`) has come is handed to the MQTT
//! client (QoS 1); a full client queue holds the sender back, which shows
//! as lag.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sha2::Sha256;

/// Person ids the enrolled shoppers of `firmware-sim load` have: `p-<n>`
/// from here on.
pub const FIRST_LOAD_PERSON: u32 = 100_000;
/// The chain's shortest accepted secret, in bytes (as the gateway).
pub const MIN_SECRET_BYTES: usize = 16;
/// The key for `person` hashes when no chain secret is given.
const UNKNOWN_PEOPLE_KEY: &[u8] = b"firmware-sim chain-load: people no gateway knows";
/// Rules and kinds the entries cycle through (any the chain knows; the
/// chain caps count sends, whatever their rule).
const RULES: [(&str, &str); 3] = [
    ("info", "laptop-dwell"),
    ("compare", "laptop-compare"),
    ("offer", "loyalty-offer"),
];
/// How long to wait for the last PUBACKs.
const ACK_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ChainLoadError {
    #[error(
        "--broker {0}: only loopback brokers are allowed (127.0.0.0/8 or ::1); load tests stay on this machine"
    )]
    NotLoopback(String),
    #[error("--rate must be at least 1")]
    ZeroRate,
    #[error("--stores must be between 1 and 100000, not {0}")]
    BadStores(u32),
    #[error("--people must be at least 1")]
    ZeroPeople,
    #[error("--duration must be between 1 ms and 24 h")]
    BadDuration,
    #[error("--prefix {0:?}: must be non-empty, without '+', '#' or a leading or trailing '/'")]
    BadPrefix(String),
    #[error(
        "--secret-file: the chain secret (its first line) must be at least {MIN_SECRET_BYTES} bytes"
    )]
    ShortSecret,
    #[error("mqtt to {broker}: {message}")]
    Mqtt { broker: String, message: String },
}

/// What to publish, and where.
#[derive(Debug, Clone)]
pub struct ChainLoadConfig {
    pub host: IpAddr,
    pub port: u16,
    /// The chain's `[mqtt] prefix`.
    pub prefix: String,
    /// Other stores posting: `chain-0000`, `chain-0001`, ...
    pub stores: u32,
    /// Entries per second, all stores together.
    pub rate: u32,
    pub duration: Duration,
    /// People the entries are about: `p-<first_person>` onwards.
    pub people: u32,
    pub first_person: u32,
    /// The chain secret (first line of the gateway's `chain.secret_file`),
    /// or none for people no gateway knows.
    pub secret: Option<Vec<u8>>,
    pub seed: u64,
}

/// What was published. `max_lag_ms` is the worst delay of an entry behind
/// its scheduled time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainLoadReport {
    pub broker: String,
    pub published: u64,
    pub acked: u64,
    pub stores: u32,
    pub people: u32,
    pub known_people: bool,
    pub duration_s: f64,
    pub target_rate: u32,
    pub achieved_rate: f64,
    pub max_lag_ms: f64,
    pub cancelled: bool,
}

impl std::fmt::Display for ChainLoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "published {} chain decisions ({} acknowledged) to {} in {:.2} s: {:.0}/s (target {}/s), \
             max lag {:.2} ms; {} stores, {} people{}{}",
            self.published,
            self.acked,
            self.broker,
            self.duration_s,
            self.achieved_rate,
            self.target_rate,
            self.max_lag_ms,
            self.stores,
            self.people,
            if self.known_people {
                " (hashed with the chain secret)"
            } else {
                " (unknown to any gateway)"
            },
            if self.cancelled { " (interrupted)" } else { "" }
        )
    }
}

impl ChainLoadConfig {
    pub fn validate(&self) -> Result<(), ChainLoadError> {
        if !self.host.is_loopback() {
            return Err(ChainLoadError::NotLoopback(self.broker()));
        }
        if self.rate == 0 {
            return Err(ChainLoadError::ZeroRate);
        }
        if !(1..=100_000).contains(&self.stores) {
            return Err(ChainLoadError::BadStores(self.stores));
        }
        if self.people == 0 {
            return Err(ChainLoadError::ZeroPeople);
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(86_400) {
            return Err(ChainLoadError::BadDuration);
        }
        if self.prefix.is_empty()
            || self.prefix.contains(['+', '#'])
            || self.prefix.starts_with('/')
            || self.prefix.ends_with('/')
        {
            return Err(ChainLoadError::BadPrefix(self.prefix.clone()));
        }
        if self
            .secret
            .as_ref()
            .is_some_and(|s| s.len() < MIN_SECRET_BYTES)
        {
            return Err(ChainLoadError::ShortSecret);
        }
        Ok(())
    }

    fn broker(&self) -> String {
        match self.host {
            IpAddr::V6(ip) => format!("[{ip}]:{}", self.port),
            IpAddr::V4(ip) => format!("{ip}:{}", self.port),
        }
    }

    /// The id of the `index`-th other store.
    pub fn store_id(index: u32) -> String {
        format!("chain-{index:04}")
    }

    /// The topic store `index` posts its decisions on.
    pub fn topic(&self, index: u32) -> String {
        format!("{}/chain/decisions/{}", self.prefix, Self::store_id(index))
    }
}

/// The chain's first line of a secret file, as the gateway reads it: the
/// bytes of the first line, without its line end and surrounding blanks.
pub fn secret_from_file_text(text: &str) -> Vec<u8> {
    text.lines().next().unwrap_or("").trim().as_bytes().to_vec()
}

/// `hex(HMAC-SHA256(secret, "chain-person-v1" || person_id))[..32]`: the
/// person as every store of the chain names them. Written from the design
/// here (not taken from the gateway), and checked against its vector.
pub fn chain_person(secret: &[u8], person_id: &str) -> String {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts any key");
    mac.update(b"chain-person-v1");
    mac.update(person_id.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// A UUID v7 (RFC 9562) for `at_ms`: what a gateway stamps its nudges with.
pub fn nudge_id(at_ms: i64, rng: &mut impl Rng) -> String {
    let mut b: [u8; 16] = rng.r#gen();
    let ms = u64::try_from(at_ms).unwrap_or(0).to_be_bytes();
    b[..6].copy_from_slice(&ms[2..]);
    b[6] = 0x70 | (b[6] & 0x0f);
    b[8] = 0x80 | (b[8] & 0x3f);
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// One chain decision entry, fields in the order of the design.
#[derive(Debug, Serialize)]
pub struct DecisionEntry<'a> {
    pub v: u8,
    pub person: &'a str,
    pub kind: &'a str,
    pub rule: &'a str,
    pub at_ms: i64,
    pub nudge_id: &'a str,
}

/// The entries' generator: which store posts the `n`-th entry, about whom.
/// Pure apart from its own seeded randomness.
pub struct Entries {
    people: Vec<String>,
    stores: u32,
    rng: ChaCha8Rng,
}

impl Entries {
    pub fn new(config: &ChainLoadConfig) -> Entries {
        let key = config.secret.as_deref().unwrap_or(UNKNOWN_PEOPLE_KEY);
        let people = (0..config.people)
            .map(|i| chain_person(key, &format!("p-{}", config.first_person.saturating_add(i))))
            .collect();
        Entries {
            people,
            stores: config.stores,
            rng: ChaCha8Rng::seed_from_u64(config.seed ^ 0x0063_6861_696e),
        }
    }

    /// The `n`-th entry at `at_ms`: (store index, JSON payload). Stores
    /// take turns; people and rules are drawn at random.
    pub fn entry(&mut self, n: u64, at_ms: i64) -> (u32, String) {
        let store = (n % u64::from(self.stores)) as u32;
        let person = self.rng.gen_range(0..self.people.len());
        let (kind, rule) = RULES[self.rng.gen_range(0..RULES.len())];
        let id = nudge_id(at_ms, &mut self.rng);
        let entry = DecisionEntry {
            v: 1,
            person: &self.people[person],
            kind,
            rule,
            at_ms,
            nudge_id: &id,
        };
        // Serialising strings and integers cannot fail.
        (store, serde_json::to_string(&entry).unwrap_or_default())
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Publish until the duration is over or `stop` is set.
pub async fn run_chain_load(
    config: &ChainLoadConfig,
    stop: Arc<AtomicBool>,
) -> Result<ChainLoadReport, ChainLoadError> {
    use rumqttc::v5::mqttbytes::QoS;

    config.validate()?;
    let broker = config.broker();
    let mqtt_error = |message: String| ChainLoadError::Mqtt {
        broker: broker.clone(),
        message,
    };
    let client_id = format!("firmware-sim-chain-{}", std::process::id());
    let crate::output::AckedClient {
        client,
        acked,
        driver,
    } = crate::output::connect_acked(client_id, config.host.to_string(), config.port, 1024)
        .await
        .map_err(mqtt_error)?;

    let mut entries = Entries::new(config);
    let topics: Vec<String> = (0..config.stores).map(|i| config.topic(i)).collect();
    let rate = f64::from(config.rate);
    let total = (config.duration.as_secs_f64() * rate).round() as u64;
    let mut published = 0u64;
    let mut max_lag = Duration::ZERO;
    let mut cancelled = false;
    let started = Instant::now();
    let mut last_send = started;
    let tick = Duration::from_millis(1);
    'sending: while published < total {
        let elapsed = started.elapsed().as_secs_f64();
        let due = ((elapsed * rate).floor() as u64 + 1).min(total);
        let at_ms = now_unix_ms();
        while published < due {
            if stop.load(Ordering::Relaxed) {
                cancelled = true;
                break 'sending;
            }
            if driver.is_finished() {
                break 'sending;
            }
            let (store, payload) = entries.entry(published, at_ms);
            client
                .publish(
                    topics[store as usize].clone(),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .map_err(|err| mqtt_error(format!("publish: {err}")))?;
            let now = Instant::now();
            let scheduled = started + Duration::from_secs_f64(published as f64 / rate);
            max_lag = max_lag.max(now.saturating_duration_since(scheduled));
            last_send = now;
            published += 1;
        }
        if published >= total {
            break;
        }
        let next_due = started + Duration::from_secs_f64(published as f64 / rate);
        let wake = next_due.max(Instant::now() + tick);
        tokio::time::sleep_until(wake.into()).await;
    }
    let deadline = Instant::now() + ACK_GRACE;
    while acked.load(Ordering::SeqCst) < published && Instant::now() < deadline {
        if driver.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = client.try_disconnect();
    let ended = if driver.is_finished() {
        driver.await.unwrap_or_else(|e| Err(e.to_string()))
    } else {
        match tokio::time::timeout(Duration::from_secs(2), driver).await {
            Ok(result) => result.unwrap_or_else(|e| Err(e.to_string())),
            Err(_) => Ok(()),
        }
    };
    let acked = acked.load(Ordering::SeqCst);
    if let Err(message) = ended
        && acked < published
    {
        return Err(mqtt_error(format!(
            "{message} after {published} entries ({acked} acknowledged)"
        )));
    }
    let duration = last_send.duration_since(started);
    let achieved_rate = if published > 1 && !duration.is_zero() {
        (published - 1) as f64 / duration.as_secs_f64()
    } else {
        published as f64
    };
    Ok(ChainLoadReport {
        broker,
        published,
        acked,
        stores: config.stores,
        people: config.people,
        known_people: config.secret.is_some(),
        duration_s: duration.as_secs_f64(),
        target_rate: config.rate,
        achieved_rate,
        max_lag_ms: max_lag.as_secs_f64() * 1000.0,
        cancelled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> ChainLoadConfig {
        ChainLoadConfig {
            host: "127.0.0.1".parse().unwrap(),
            port: 1,
            prefix: "retail".into(),
            stores: 1000,
            rate: 100,
            duration: Duration::from_secs(1),
            people: 50,
            first_person: FIRST_LOAD_PERSON,
            secret: Some(b"0123456789abcdef0123456789abcdef".to_vec()),
            seed: 7,
        }
    }

    /// The chain's written vector (the gateway's privacy.rs holds the same).
    #[test]
    fn person_hash_matches_the_chain_vector() {
        assert_eq!(
            chain_person(b"0123456789abcdef0123456789abcdef", "p-1"),
            "d7d8958469d7ad49398d29056543538d"
        );
        assert_eq!(
            secret_from_file_text("0123456789abcdef0123456789abcdef\nsecond line\n"),
            b"0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn entries_have_exactly_the_chain_fields() {
        let mut entries = Entries::new(&config());
        let (store, payload) = entries.entry(1234, 1_795_334_400_123);
        assert_eq!(store, 234);
        let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = vec!["v", "person", "kind", "rule", "at_ms", "nudge_id"];
        expected.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(v["v"], 1);
        assert_eq!(v["at_ms"], 1_795_334_400_123i64);
        let person = v["person"].as_str().unwrap();
        assert_eq!(person.len(), 32);
        assert!(
            person
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(config().topic(234), "retail/chain/decisions/chain-0234");
    }

    #[test]
    fn known_people_are_the_load_generators_enrolled_shoppers() {
        let mut c = config();
        c.people = 1;
        let mut entries = Entries::new(&c);
        let (_, payload) = entries.entry(0, 0);
        let secret = c.secret.unwrap();
        assert!(payload.contains(&chain_person(&secret, "p-100000")));
    }

    #[test]
    fn bad_settings_are_refused_naming_the_flag() {
        let mut c = config();
        c.host = "192.0.2.1".parse().unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("--broker")
        );
        let mut c = config();
        c.stores = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("--stores")
        );
        let mut c = config();
        c.prefix = "retail/#".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("--prefix")
        );
        let mut c = config();
        c.secret = Some(b"short".to_vec());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("--secret-file")
        );
        assert!(config().validate().is_ok());
    }

    proptest! {
        #[test]
        fn nudge_ids_are_uuid_v7_carrying_their_time(at_ms in 0i64..(1i64 << 47), seed: u64) {
            let id = nudge_id(at_ms, &mut ChaCha8Rng::seed_from_u64(seed));
            let parts: Vec<&str> = id.split('-').collect();
            prop_assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![8, 4, 4, 4, 12]);
            prop_assert!(parts[2].starts_with('7'));
            prop_assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
            let ms = i64::from_str_radix(&format!("{}{}", parts[0], parts[1]), 16).unwrap();
            prop_assert_eq!(ms, at_ms);
        }
    }
}
