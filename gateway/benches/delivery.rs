//! Delivery through the real `Delivery` + `Store` to a local Mosquitto,
//! QoS 1: reserve (sled transaction, flushed) → outbox → publish → PUBACK →
//! outbox entry removed.
//!
//! 1. Throughput: 5,000 nudges already in the outbox when delivery starts;
//!    time until the last PUBACK has removed the last entry.
//! 2. Latency at 1,000 nudges/s for 5 s: from the start of each `reserve`
//!    to its PUBACK (observed through the `nudge acknowledged` event, which
//!    names the outbox sequence), p50 / p99 / max.
//!
//! Needs `mosquitto` (`/usr/sbin/mosquitto` or `$MOSQUITTO_BIN`); started
//! here on a free port without persistence. `cargo bench --bench delivery`.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway::config::Config;
use gateway::decide::{Limits, NudgeKind};
use gateway::identity::PersonRecord;
use gateway::io::mqtt::Delivery;
use gateway::store::{Reservation, ReserveRequest, Store};
use gateway::telemetry::Telemetry;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt as _;

const PEOPLE: usize = 1_000;
const THROUGHPUT_NUDGES: usize = 5_000;
const RATE_PER_S: u64 = 1_000;
const RATE_SECONDS: u64 = 5;

/// Acknowledged outbox sequences and when, from the tracing event.
#[derive(Clone, Default)]
struct Acks(Arc<Mutex<HashMap<u64, Instant>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Acks {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Seq(Option<u64>, bool);
        impl tracing::field::Visit for Seq {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "nudge_id" {
                    self.0 = value.parse().ok();
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.1 = format!("{value:?}").contains("acknowledged");
                }
            }
        }
        let mut seq = Seq(None, false);
        event.record(&mut seq);
        if let (Some(seq), true) = (seq.0, seq.1) {
            self.0.lock().unwrap().insert(seq, Instant::now());
        }
    }
}

/// The broker process and its config dir (removed after the broker stops).
struct Broker(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_mosquitto() -> Option<(Broker, u16)> {
    let bin = std::env::var_os("MOSQUITTO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"));
    if !bin.is_file() {
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let dir = tempfile::tempdir().ok()?;
    let conf = dir.path().join("mosquitto.conf");
    let mut f = std::fs::File::create(&conf).ok()?;
    writeln!(
        f,
        "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\nmax_inflight_messages 0\nmax_queued_messages 100000\nset_tcp_nodelay true"
    )
    .ok()?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let broker = Broker(child, dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((broker, port))
}

fn config(port: u16, storage: &std::path::Path) -> Config {
    let site = format!(
        "[store]\nid = \"bench\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nprefix = \"retail\"\n\
         [storage]\npath = \"{}\"\n\
         [caps]\nper_visit = 100000\nper_day = 100000\nper_week = 100000\nmin_gap_s = 0\nrule_cooldown_s = 0\n",
        storage.display()
    );
    gateway::config::from_layers("bench", Some(&site), HashMap::new()).expect("bench config")
}

struct Bench {
    config: Arc<Config>,
    store: Store,
    people: Vec<PersonRecord>,
    next: usize,
}

impl Bench {
    fn reserve(&mut self) -> u64 {
        let person = &self.people[self.next % self.people.len()];
        self.next += 1;
        let id = uuid::Uuid::now_v7().to_string();
        let now = gateway::clock::wall_ms();
        let payload = serde_json::json!({"id": id, "kind": "info", "title": "Benchmark", "body": "A nudge of realistic size for the delivery benchmark, about three hundred bytes with the why and stop texts that a real one carries.", "zone": "laptops"}).to_string();
        let topic = self.config.nudge_topic(&person.recipient);
        match self
            .store
            .reserve(&ReserveRequest {
                person: &person.person,
                recipient: &person.recipient,
                topic,
                nudge_id: id,
                payload,
                kind: NudgeKind::Info,
                rule: "bench",
                zone: "laptops",
                visit: 1,
                now_ms: now,
                expires_at_ms: now + 900_000,
                limits: Limits {
                    caps: &self.config.caps,
                    quiet: None,
                    tz: &self.config.timezone,
                    enabled: true,
                },
            })
            .expect("reserve")
        {
            Reservation::Reserved { seq } => seq,
            Reservation::Held(reason) => panic!("held: {reason:?}"),
        }
    }
}

/// Start delivery on its own runtime thread; returns the stop token and the
/// outbox poke.
fn start_delivery(
    rt: &tokio::runtime::Runtime,
    config: Arc<Config>,
    store: Store,
) -> (CancellationToken, Arc<Notify>, tokio::task::JoinHandle<()>) {
    let (incoming_tx, mut incoming_rx) = mpsc::channel(16);
    let (_outgoing_tx, outgoing_rx) = mpsc::channel(16);
    let (connected, _) = watch::channel(false);
    let ready = Arc::new(Notify::new());
    let cancel = CancellationToken::new();
    let (_config_tx, config_updates) = watch::channel(config.clone());
    let delivery = Delivery {
        latency_stamps: Default::default(),
        config_updates,
        config,
        store,
        telemetry: Arc::new(Telemetry::new()),
        outbox_ready: ready.clone(),
        incoming: incoming_tx,
        outgoing: outgoing_rx,
        subscriptions: Vec::new(),
        connected,
        refused_subscriptions: watch::channel(Vec::new()).0,
        retained_watch: None,
    };
    rt.spawn(async move { while incoming_rx.recv().await.is_some() {} });
    let handle = rt.spawn(delivery.run(cancel.clone()));
    (cancel, ready, handle)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent: skip.
    if !std::env::args().any(|a| a == "--bench") {
        println!("delivery bench: run with `cargo bench --bench delivery`");
        return;
    }
    let acks = Acks::default();
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("gateway::telemetry::events", tracing::Level::DEBUG);
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(tracing_subscriber::Layer::with_filter(acks.clone(), filter)),
    )
    .expect("subscriber");
    let Some((_broker, port)) = start_mosquitto() else {
        println!("delivery bench: mosquitto not found, skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = Arc::new(config(port, &dir.path().join("db")));
    let store = Store::open(&config.storage_path).unwrap();
    let people: Vec<PersonRecord> = (0..PEOPLE)
        .map(|i| {
            PersonRecord::from_json(&format!(
                r#"{{"person": "p-{i}", "recipient": "r-{i}", "consent": {{"proximity": true, "product_info": true}}}}"#
            ))
            .unwrap()
        })
        .collect();
    store.upsert_people(&people).unwrap();
    let mut bench = Bench {
        config: config.clone(),
        store: store.clone(),
        people,
        next: 0,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // 1. Throughput from a full outbox.
    let filled = Instant::now();
    for _ in 0..THROUGHPUT_NUDGES {
        bench.reserve();
    }
    let fill = filled.elapsed();
    let started = Instant::now();
    let (cancel, _ready, handle) = start_delivery(&rt, config.clone(), store.clone());
    while store.outbox_len() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "outbox did not drain"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let drain = started.elapsed();
    println!(
        "delivery/throughput: {THROUGHPUT_NUDGES} nudges from a full outbox to PUBACK in {drain:.2?} = {:.0} nudges/s (including connect); reserve alone: {:.0} reservations/s ({:.2?} each)",
        THROUGHPUT_NUDGES as f64 / drain.as_secs_f64(),
        THROUGHPUT_NUDGES as f64 / fill.as_secs_f64(),
        fill / THROUGHPUT_NUDGES as u32
    );

    // 2. Latency at a steady rate, delivery running.
    let ready = {
        cancel.cancel();
        rt.block_on(handle).unwrap();
        acks.0.lock().unwrap().clear();
        let (cancel, ready, handle) = start_delivery(&rt, config.clone(), store.clone());
        std::thread::sleep(Duration::from_secs(1));
        (cancel, ready, handle)
    };
    let total = (RATE_PER_S * RATE_SECONDS) as usize;
    let interval = Duration::from_nanos(1_000_000_000 / RATE_PER_S);
    let mut reserved_at = HashMap::with_capacity(total);
    let begin = Instant::now();
    let mut late = 0usize;
    for i in 0..total {
        let due = begin + interval * i as u32;
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        } else if now - due > Duration::from_millis(10) {
            late += 1;
        }
        let at = Instant::now();
        let seq = bench.reserve();
        reserved_at.insert(seq, at);
        ready.1.notify_one();
    }
    let offered = begin.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acks.0.lock().unwrap().len() < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let acked = acks.0.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = reserved_at
        .iter()
        .filter_map(|(seq, at)| acked.get(seq).map(|a| a.saturating_duration_since(*at)))
        .collect();
    latencies.sort();
    println!(
        "delivery/latency: {} nudges offered at {RATE_PER_S}/s took {offered:.2?} ({:.0}/s achieved, {late} reservations >10 ms late); acked {}; reserve→PUBACK p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        total,
        total as f64 / offered.as_secs_f64(),
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    ready.0.cancel();
    rt.block_on(ready.2).unwrap();
}
