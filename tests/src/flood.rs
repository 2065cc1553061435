//! Floods of hostile messages on every topic the gateway reads: distinct
//! junk keys and names (to see that nothing a sender chooses becomes a
//! metric series), and a fuzzer (random bytes, random JSON, mutations of
//! valid payloads). Publishing is paced by the gateway's own counters, so
//! the broker never drops a message for a slow subscriber and every
//! message sent is one the gateway handled.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{Phone, QoS, Site};

/// The scanner feeds a flood site reads, besides the app topics.
pub const SCANNER_SOURCES: &str = r#"
[[sources]]
kind = "mqtt_scanners"
own = true
openmqttgateway = ["home/+/BTtoMQTT/+"]
espresense = ["espresense/devices/+/+"]
"#;

/// The series of a `/metrics` text: name and labels, without the value.
pub fn series(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').map_or(l, |(s, _)| s).to_string())
        .collect()
}

/// Messages the gateway has taken off its subscriptions: app and CRM
/// messages (`incoming_total`) and scanner messages (`sightings_total` of
/// the MQTT feeds).
pub fn handled(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("gateway_incoming_total")
                || l.starts_with("gateway_sightings_total{source=\"mqtt_")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// Resident memory of a process (`VmRSS` of `/proc/<pid>/status`), KiB.
pub fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// How far the gateway may lag behind the publisher: well under the
/// broker's default queue per client (1000), so nothing is dropped.
const MAX_LAG: u64 = 400;
/// Messages published between two looks at the gateway's counters.
const CHUNK: u64 = 200;
/// The longest the gateway may take to catch up with one chunk.
const STALL: Duration = Duration::from_secs(60);

/// Publishes every message at QoS 1 (so the gateway's acks are part of
/// the test), never more than [`MAX_LAG`] ahead of what the gateway has
/// handled; returns once it has handled all of them.
pub async fn publish_paced(
    site: &Site,
    publisher: &Phone,
    messages: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> Result<u64> {
    let base = handled(&metrics_retrying(site).await?);
    let mut sent = 0u64;
    for (topic, payload) in messages {
        publisher
            .publish(&topic, payload, QoS::AtLeastOnce, false)
            .await?;
        sent += 1;
        if sent.is_multiple_of(CHUNK) {
            catch_up(site, base, sent.saturating_sub(MAX_LAG)).await?;
        }
    }
    catch_up(site, base, sent).await?;
    Ok(sent)
}

/// `/metrics`, asked again (for up to [`STALL`]) when a busy gateway does
/// not answer within the harness's 5 s.
async fn metrics_retrying(site: &Site) -> Result<String> {
    let deadline = Instant::now() + STALL;
    loop {
        match site.admin_get("/metrics") {
            Ok(text) => return Ok(text),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                METRICS_FAILURES.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Returns once the gateway reads every topic kind: "gateway running" is
/// logged before its subscriptions are in place, and a message published
/// before then is lost for it (and for [`publish_paced`]'s count).
pub async fn wait_subscribed(site: &Site, publisher: &Phone) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let base = handled(&site.admin_get("/metrics")?);
        for kind in TOPIC_KINDS {
            publisher
                .publish(&kind.topic(site, "probe"), "probe", QoS::AtLeastOnce, false)
                .await?;
        }
        let round = Instant::now() + Duration::from_secs(1);
        while Instant::now() < round {
            if handled(&site.admin_get("/metrics")?) >= base + TOPIC_KINDS.len() as u64 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    bail!("the gateway did not read every topic kind within 20 s")
}

/// Looks at `/metrics` that failed (no answer within the harness's 5 s),
/// and the slowest answer, in ms: a busy gateway may answer late, which
/// is worth knowing but is not a stall.
pub static METRICS_FAILURES: AtomicU64 = AtomicU64::new(0);
pub static METRICS_SLOWEST_MS: AtomicU64 = AtomicU64::new(0);

async fn catch_up(site: &Site, base: u64, target: u64) -> Result<()> {
    let deadline = Instant::now() + STALL;
    let mut now = 0;
    loop {
        let asked = Instant::now();
        match site.admin_get("/metrics") {
            Ok(text) => {
                now = handled(&text).saturating_sub(base);
                METRICS_SLOWEST_MS.fetch_max(asked.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                METRICS_FAILURES.fetch_add(1, Ordering::Relaxed);
            }
        }
        if now >= target {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the gateway handled {now} of {target} messages and stalled for {STALL:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The topic kinds the gateway reads, for a site (`p/s/…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicKind {
    CrmPerson,
    Consent,
    CheckIn,
    Feedback,
    Purchases,
    Scanner,
    OpenMqttGateway,
    Espresense,
}

pub const TOPIC_KINDS: [TopicKind; 8] = [
    TopicKind::CrmPerson,
    TopicKind::Consent,
    TopicKind::CheckIn,
    TopicKind::Feedback,
    TopicKind::Purchases,
    TopicKind::Scanner,
    TopicKind::OpenMqttGateway,
    TopicKind::Espresense,
];

impl TopicKind {
    /// The topic of this kind whose variable level is `name`.
    pub fn topic(self, site: &Site, name: &str) -> String {
        match self {
            TopicKind::CrmPerson => format!("{}/crm/people/{name}", crate::site::PREFIX),
            TopicKind::Consent => site.topic(&format!("consent/{name}")),
            TopicKind::CheckIn => site.topic(&format!("checkin/{name}")),
            TopicKind::Feedback => site.topic(&format!("feedback/{name}")),
            TopicKind::Purchases => site.topic("purchases"),
            TopicKind::Scanner => site.topic(&format!("scanners/{name}")),
            TopicKind::OpenMqttGateway => format!("home/{name}/BTtoMQTT/AABBCCDDEE01"),
            TopicKind::Espresense => format!("espresense/devices/{name}/{name}"),
        }
    }

    /// A payload this kind accepts (for the known people of [`people`]),
    /// the seed of the fuzzer's mutations.
    pub fn valid_payload(self, now_ms: i64) -> String {
        match self {
            TopicKind::CrmPerson => person_record(1),
            TopicKind::Consent => {
                r#"{"id": "c-1", "consent": {"product_info": true}, "interests": ["laptops"]}"#
                    .into()
            }
            TopicKind::CheckIn => format!(
                r#"{{"rotating_id": "00112233445566778899aabbccddeeff", "at_ms": {now_ms}, "beacons": [{{"uuid": "426c7565-4368-6172-6d42-6561636f6e73", "major": 1, "minor": 1, "rssi": -60}}]}}"#
            ),
            TopicKind::Feedback => {
                r#"{"nudge_id": "0190b3a2-0000-7000-8000-000000000001", "answer": "yes", "comment": "fine"}"#
                    .into()
            }
            TopicKind::Purchases => {
                r#"{"person": "p-1", "items": ["sku-1"], "at": "2026-11-23T10:20:00Z"}"#.into()
            }
            TopicKind::Scanner => format!(
                r#"{{"scanner": "node-1", "at_ms": {now_ms}, "addr": "aa:bb:cc:dd:ee:01", "rssi": -61, "adv": "0201061aff4c000215426c7565436861726d426561636f6e730001000ac5"}}"#
            ),
            TopicKind::OpenMqttGateway => r#"{"id": "AA:BB:CC:DD:EE:01", "rssi": -70, "manufacturerdata": "4c000215426c7565436861726d426561636f6e730001000ac5"}"#.into(),
            TopicKind::Espresense => r#"{"id": "iBeacon:426c7565-4368-6172-6d42-6561636f6e73-1-1", "rssi": -61, "rssi@1m": -59, "distance": 1.2, "raw": 1.3, "speed": 0.0, "interval": 1000}"#.into(),
        }
    }
}

/// A person record for `p-<n>`, recipient `r-<n>`.
pub fn person_record(n: u32) -> String {
    format!(
        r#"{{"person": "p-{n}", "recipient": "r-{n}", "identities": [{{"kind": "app", "key": "000102030405060708090a0b0c0d0e{n:02x}"}}], "consent": {{"proximity": true, "product_info": true, "feedback": true}}, "interests": ["laptops"]}}"#
    )
}

/// `people import` lines for `p-1` … `p-<n>`.
pub fn people(n: u32) -> String {
    (1..=n).map(|i| person_record(i) + "\n").collect()
}

/// `n` messages, round robin over every topic kind, each carrying a key
/// and a topic level never seen before: what a sender who wants to grow
/// the gateway's metrics would send.
pub fn distinct_junk(site: &Site, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let kind = TOPIC_KINDS[i % TOPIC_KINDS.len()];
            let name = format!("junk-{i:05}-{:08x}", mix(i as u64) as u32);
            // Alone in the object, so it is the key the parsers name.
            let payload = format!(r#"{{"{name}": 1}}"#);
            (kind.topic(site, &name), payload.into_bytes())
        })
        .collect()
}

/// SplitMix64: a seeded generator good enough for fuzzing, with no
/// dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The largest fuzz payload: a little over the gateway's 16 KiB limit (so
/// that refusal is exercised too), well under the packet size it announces.
const MAX_FUZZ_BYTES: usize = 17 * 1024;

/// Fuzz messages for every topic kind: a third random bytes, a third
/// random JSON, a third mutations of a valid payload; topic levels are a
/// known name, a random valid one, or junk.
pub struct Fuzzer<'a> {
    site: &'a Site,
    rng: Rng,
    now_ms: i64,
    left: u64,
}

impl<'a> Fuzzer<'a> {
    pub fn new(site: &'a Site, seed: u64, messages: u64) -> Fuzzer<'a> {
        Fuzzer {
            site,
            rng: Rng::new(seed),
            now_ms: crate::site::now_ms(),
            left: messages,
        }
    }

    fn name(&mut self, kind: TopicKind) -> String {
        match self.rng.below(4) {
            0 | 1 => {
                let n = 1 + self.rng.below(5);
                match kind {
                    TopicKind::CrmPerson => format!("p-{n}"),
                    TopicKind::Scanner | TopicKind::OpenMqttGateway => format!("node-{n}"),
                    TopicKind::Espresense => {
                        "iBeacon:426c7565-4368-6172-6d42-6561636f6e73-1-1".into()
                    }
                    _ => format!("r-{n}"),
                }
            }
            2 => format!("r-{}", self.rng.next_u64()),
            // Any UTF-8 a broker lets through in a topic level: not the
            // wildcards, `/`, or control characters (Mosquitto refuses
            // those and drops the publisher).
            _ => {
                let len = 1 + self.rng.below(80);
                (0..len)
                    .map(|_| {
                        let c = char::from_u32(0x20 + self.rng.below(0x2000) as u32).unwrap_or('x');
                        if matches!(c, '+' | '#' | '/') || c.is_control() {
                            '_'
                        } else {
                            c
                        }
                    })
                    .collect()
            }
        }
    }

    fn random_bytes(&mut self) -> Vec<u8> {
        let len = match self.rng.below(20) {
            0 => MAX_FUZZ_BYTES - self.rng.below(2048),
            1 => 0,
            _ => self.rng.below(300),
        };
        (0..len).map(|_| self.rng.next_u64() as u8).collect()
    }

    fn random_json(&mut self, depth: u32) -> serde_json::Value {
        use serde_json::Value;
        let keys = [
            "id",
            "consent",
            "forget",
            "at",
            "at_ms",
            "rotating_id",
            "beacons",
            "nudge_id",
            "answer",
            "comment",
            "person",
            "recipient",
            "items",
            "identities",
            "scanner",
            "addr",
            "rssi",
            "adv",
            "mac",
            "manufacturerdata",
            "servicedata",
            "uuid",
            "major",
            "minor",
            "interests",
            "owns",
            "timezone",
            "identity",
            "distance",
        ];
        match self.rng.below(if depth > 3 { 5 } else { 7 }) {
            0 => Value::Null,
            1 => Value::Bool(self.rng.chance(50)),
            2 => match self.rng.below(4) {
                0 => Value::from(self.rng.next_u64() as i64),
                1 => Value::from(self.rng.below(200) as i64 - 100),
                2 => serde_json::Number::from_f64(f64::from_bits(self.rng.next_u64()))
                    .map_or(Value::Null, Value::Number),
                _ => Value::from(u64::MAX),
            },
            3 | 4 => {
                let len = self.rng.below(40);
                Value::String(
                    (0..len)
                        .map(|_| char::from_u32(self.rng.below(0x800) as u32).unwrap_or('?'))
                        .collect(),
                )
            }
            5 => Value::Array(
                (0..self.rng.below(6))
                    .map(|_| self.random_json(depth + 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..self.rng.below(8))
                    .map(|_| {
                        let key = if self.rng.chance(70) {
                            keys[self.rng.below(keys.len())].to_string()
                        } else {
                            format!("k{}", self.rng.next_u64())
                        };
                        (key, self.random_json(depth + 1))
                    })
                    .collect(),
            ),
        }
    }

    /// A valid payload, then a few edits: a value replaced, a key dropped
    /// or added (structurally), or bytes flipped, cut or repeated.
    fn mutated(&mut self, kind: TopicKind) -> Vec<u8> {
        let valid = kind.valid_payload(self.now_ms);
        if self.rng.chance(50)
            && let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_str(&valid)
        {
            for _ in 0..1 + self.rng.below(3) {
                let keys: Vec<String> = obj.keys().cloned().collect();
                let key = keys[self.rng.below(keys.len())].clone();
                match self.rng.below(3) {
                    0 => {
                        obj.remove(&key);
                    }
                    1 => {
                        let v = self.random_json(2);
                        obj.insert(key, v);
                    }
                    _ => {
                        let v = self.random_json(2);
                        obj.insert(format!("{key}{}", self.rng.below(10)), v);
                    }
                }
                if obj.is_empty() {
                    break;
                }
            }
            return serde_json::to_vec(&obj).unwrap_or_default();
        }
        let mut bytes = valid.into_bytes();
        for _ in 0..1 + self.rng.below(4) {
            if bytes.is_empty() {
                break;
            }
            let at = self.rng.below(bytes.len());
            match self.rng.below(4) {
                0 => bytes[at] = self.rng.next_u64() as u8,
                1 => bytes.truncate(at),
                2 => {
                    bytes.remove(at);
                }
                _ => {
                    let piece: Vec<u8> = bytes[at..].iter().take(16).copied().collect();
                    for _ in 0..self.rng.below(50) {
                        if bytes.len() + piece.len() > MAX_FUZZ_BYTES {
                            break;
                        }
                        bytes.splice(at..at, piece.iter().copied());
                    }
                }
            }
        }
        bytes
    }
}

impl Iterator for Fuzzer<'_> {
    type Item = (String, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let kind = TOPIC_KINDS[self.rng.below(TOPIC_KINDS.len())];
        let name = self.name(kind);
        let mut payload = match self.rng.below(3) {
            0 => self.random_bytes(),
            1 => serde_json::to_vec(&self.random_json(0)).unwrap_or_default(),
            _ => self.mutated(kind),
        };
        payload.truncate(MAX_FUZZ_BYTES);
        Some((kind.topic(self.site, &name), payload))
    }
}

/// A fuzz site: the twin's zones, every scanner feed, and a per-recipient
/// rate high enough that the parsers, not the buckets, see the messages
/// (the buckets have their own test, `rate_limit.rs`).
pub const FUZZ_SITE_REST: &str = r#"
[incoming]
per_recipient_per_minute = 60000000
per_recipient_burst = 1000
"#;

/// What a fuzz run measured. RSS is the gateway's resident set
/// (`VmRSS`), read from outside; "before" is taken once it reads every
/// topic, before the first fuzz message.
#[derive(Debug, Clone)]
pub struct FuzzReport {
    pub messages: u64,
    pub seconds: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_max_kib: u64,
    pub metrics_bytes_before: usize,
    pub metrics_bytes_after: usize,
    pub series_before: usize,
    pub series_after: usize,
    pub handled: u64,
    pub rejected: u64,
    pub replies_dropped: u64,
    /// See [`METRICS_FAILURES`].
    pub metrics_failures: u64,
    pub metrics_slowest_ms: u64,
    /// The `/metrics` text at the end of the fuzz.
    pub metrics_after: String,
}

impl std::fmt::Display for FuzzReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} messages in {:.1} s: {:.0} messages/s; the gateway handled {} (rejected {}, replies dropped {})",
            self.messages,
            self.seconds,
            self.messages as f64 / self.seconds.max(1e-9),
            self.handled,
            self.rejected,
            self.replies_dropped
        )?;
        writeln!(
            f,
            "gateway VmRSS (resident, read from /proc): {} KiB before, {} KiB after, {} KiB at most",
            self.rss_before_kib, self.rss_after_kib, self.rss_max_kib
        )?;
        write!(
            f,
            "/metrics: {} bytes / {} series before, {} bytes / {} series after; \
             slowest answer {} ms, {} not answered within 5 s",
            self.metrics_bytes_before,
            self.series_before,
            self.metrics_bytes_after,
            self.series_after,
            self.metrics_slowest_ms,
            self.metrics_failures
        )
    }
}

fn counter_sum(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// Starts a broker and a gateway (five enrolled people), sends `messages`
/// fuzz messages over every topic kind, and checks that the gateway is
/// alive and still answers a valid consent change. Returns what it
/// measured; bounds are the caller's to assert.
pub async fn fuzz_run(messages: u64, seed: u64) -> Result<FuzzReport> {
    let broker = crate::Mosquitto::start(crate::MosquittoOptions::default().flood())?;
    let mut site = Site::new(
        broker.port(),
        &[crate::site::THREE_ZONES, SCANNER_SOURCES, FUZZ_SITE_REST].concat(),
    )?;
    site.import_people(&people(5))?;
    let mut gateway = site.start()?;
    let fuzzer = Phone::connect_to(broker.port(), "fuzzer", "").await?;
    wait_subscribed(&site, &fuzzer)
        .await
        .map_err(|e| e.context(tail(&gateway, &broker)))?;
    let pid = gateway.pid();
    let before = site.admin_get("/metrics")?;
    let rss_before_kib = vm_rss_kib(pid)?;
    let mut rss_max_kib = rss_before_kib;

    let started = Instant::now();
    let mut sent = 0;
    let mut batch = Vec::with_capacity(10_000);
    let mut all = Fuzzer::new(&site, seed, messages);
    loop {
        batch.clear();
        batch.extend(all.by_ref().take(10_000));
        if batch.is_empty() {
            break;
        }
        sent += publish_paced(&site, &fuzzer, batch.drain(..))
            .await
            .map_err(|e| e.context(format!("after {sent} messages")))
            .map_err(|e| e.context(tail(&gateway, &broker)))?;
        rss_max_kib = rss_max_kib.max(vm_rss_kib(pid)?);
        if sent.is_multiple_of(100_000) {
            eprintln!(
                "{sent} messages, {:.0} s, gateway VmRSS {} KiB",
                started.elapsed().as_secs_f64(),
                vm_rss_kib(pid)?
            );
        }
        if !gateway.is_running() {
            bail!(
                "the gateway died after {sent} messages:\n{}",
                tail(&gateway, &broker)
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = site.admin_get("/metrics")?;
    let rss_after_kib = vm_rss_kib(pid)?;

    // Still reading and answering: a new person from the CRM (one the fuzz
    // never named: it may have erased p-1 … p-5, and an erased person's
    // records are refused) and a consent change with its receipt. A
    // receipt is not kept for a retry (the app resends, same id) and may
    // be dropped while the error reports of the fuzz still fill the
    // gateway's MQTT queue: resent a few times.
    let app = Phone::connect(
        crate::PhoneOptions::new(broker.port(), "app-r-77", site.topic("receipts/r-77"))
            .filter(site.topic("gateway/errors")),
    )
    .await?;
    app.publish_acked(
        &TopicKind::CrmPerson.topic(&site, "p-77"),
        person_record(77),
        false,
        Default::default(),
    )
    .await?;
    let mut receipt = None;
    for _ in 0..6 {
        app.publish(
            &site.topic("consent/r-77"),
            r#"{"id": "after-fuzz", "consent": {"offers": true}}"#,
            QoS::AtLeastOnce,
            false,
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while receipt.is_none() && Instant::now() < deadline {
            receipt = app
                .received()
                .into_iter()
                .find(|r| r.topic.ends_with("receipts/r-77"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if receipt.is_some() {
            break;
        }
    }
    let Some(receipt) = receipt else {
        let errors: Vec<String> = app
            .received()
            .iter()
            .map(|r| r.payload_str())
            .filter(|p| p.contains("/r-77") || p.contains("p-77"))
            .collect();
        bail!(
            "no receipt for a valid consent change after the fuzz; its errors: {errors:#?}\n{}",
            tail(&gateway, &broker)
        );
    };
    let receipt = receipt.json()?;
    if receipt["id"] != "after-fuzz" || receipt["status"] != "saved" {
        bail!("unexpected receipt after the fuzz run: {receipt}");
    }
    if !gateway.is_running() {
        bail!("the gateway died:\n{}", tail(&gateway, &broker));
    }
    let panicked = gateway.stderr().contains("panicked");
    if panicked {
        bail!("the gateway logged a panic:\n{}", tail(&gateway, &broker));
    }
    Ok(FuzzReport {
        messages: sent,
        seconds,
        rss_before_kib,
        rss_after_kib,
        rss_max_kib,
        metrics_bytes_before: before.len(),
        metrics_bytes_after: after.len(),
        series_before: series(&before).len(),
        series_after: series(&after).len(),
        handled: handled(&after) - handled(&before),
        rejected: counter_sum(&after, "gateway_incoming_rejected_total")
            + counter_sum(&after, "gateway_sightings_rejected_total")
            - counter_sum(&before, "gateway_incoming_rejected_total")
            - counter_sum(&before, "gateway_sightings_rejected_total"),
        replies_dropped: counter_sum(&after, "gateway_replies_dropped_total")
            - counter_sum(&before, "gateway_replies_dropped_total"),
        metrics_failures: METRICS_FAILURES.load(Ordering::Relaxed),
        metrics_slowest_ms: METRICS_SLOWEST_MS.load(Ordering::Relaxed),
        metrics_after: after,
    })
}

/// The ends of the gateway's and the broker's logs: a fuzz run's are long.
fn tail(gateway: &crate::ChildGuard, broker: &crate::Mosquitto) -> String {
    format!(
        "{}\n--- broker log, last 20 lines ---\n{}",
        crate::util::tail_lines(&gateway.logs(), 80),
        crate::util::tail_lines(&broker.log(), 20)
    )
}
