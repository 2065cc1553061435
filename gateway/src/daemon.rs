//! `gateway run`: the sources, the pipeline, delivery and the admin
//! endpoint as tasks joined by bounded channels, stopped by one
//! cancellation token.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::{EventClock, wall_ms};
use crate::config::{Config, SourceSettings};
use crate::decide::{
    self, ThanksEvent, best_offer, build_nudge, candidates_for_event, check_consent, compose,
    thanks_candidates,
};
use crate::decode::{Frame, decode_into};
use crate::identity::{
    Applied, Buyer, CheckIn, ConsentChange, Feedback, PersonId, PersonRecord, Purchase,
};
use crate::io::admin::{self, Readiness};
use crate::io::fleet::Fleet;
use crate::io::mqtt::{self, IncomingMessage, OutgoingMessage};
use crate::io::record::CaptureRecorder;
use crate::io::scanners::{self, AdvertMerger};
use crate::io::sources::{self, Ingested};
use crate::people::People;
use crate::presence::{PresenceEngine, PresenceEvent, VisitSeed};
use crate::privacy::hashed;
use crate::ratelimit::{PerSecond, RecipientLimiter};
use crate::reservations::{self, DecisionJob, Reservations};
use crate::store::{FeedbackEntry, ReserveCandidate, Store, StoreError};
use crate::telemetry::{
    MAX_ECHO_CHARS, MAX_REASON_CHARS, MAX_TOPIC_ECHO_CHARS, Telemetry, events, truncated,
};
use crate::topics::{self, Incoming, classify};

const SIGHTING_QUEUE: usize = 4096;
const INCOMING_QUEUE: usize = 256;
const OUTGOING_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sources[{index}]: cannot bind {bind}: {reason}")]
    Bind {
        index: usize,
        bind: String,
        reason: String,
    },
    #[error("admin.listen: cannot bind {bind}: {reason}")]
    Admin { bind: String, reason: String },
    #[error("no source configured: add a [[sources]] entry")]
    NoSource,
    #[error("--record {path}: {reason}")]
    Record { path: String, reason: String },
}

/// What a run did, for the demo's closing summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub sightings: u64,
    pub people_recognised: usize,
    pub nudges_reserved: u64,
    pub nudges_held_by_caps: u64,
    pub nudges_held_other: u64,
}

/// Handles the caller may keep while the daemon runs.
#[derive(Clone)]
pub struct Handles {
    pub telemetry: Arc<Telemetry>,
    pub mqtt_connected: watch::Receiver<bool>,
    /// Local addresses the UDP sources are bound to, in config order.
    pub udp_addrs: Vec<std::net::SocketAddr>,
    pub admin_addr: Option<std::net::SocketAddr>,
}

/// What `gateway run` adds to the configuration.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The site file to watch for reloads.
    pub config_path: Option<std::path::PathBuf>,
    /// Write a capture of what the sources hear, strangers removed.
    pub record: Option<std::path::PathBuf>,
}

/// Open storage, bind every listener (so that bad addresses fail at once),
/// then run until `cancel`. `started` receives the handles once bound.
pub async fn run(
    config: Config,
    options: RunOptions,
    cancel: CancellationToken,
    started: Option<tokio::sync::oneshot::Sender<Handles>>,
) -> Result<RunSummary, DaemonError> {
    let config = Arc::new(config);
    if config.sources.is_empty() {
        return Err(DaemonError::NoSource);
    }
    let store = {
        let path = config.storage_path.clone();
        tokio::task::spawn_blocking(move || Store::open(&path))
            .await
            .expect("store open task does not panic")?
    };
    // Person hashes in the logs: salted per gateway (GATEWAY_LOG_SALT lets
    // a chain's operators share one, to follow a hash across stores).
    let salt = std::env::var("GATEWAY_LOG_SALT")
        .map(String::into_bytes)
        .unwrap_or_else(|_| store.log_salt().to_vec());
    if !crate::privacy::install_salt(&salt) {
        tracing::warn!("log hashes were made before the gateway's salt was installed");
    }
    let telemetry = Arc::new(Telemetry::new());

    let mut udp_sockets = Vec::new();
    for (index, source) in config.sources.iter().enumerate() {
        if let SourceSettings::Udp { bind } = source {
            let socket =
                tokio::net::UdpSocket::bind(bind)
                    .await
                    .map_err(|e| DaemonError::Bind {
                        index,
                        bind: bind.to_string(),
                        reason: e.to_string(),
                    })?;
            udp_sockets.push(socket);
        }
    }
    let admin_listener = match config.admin_listen {
        Some(addr) => Some(admin::bind(addr).await.map_err(|e| DaemonError::Admin {
            bind: addr.to_string(),
            reason: e.to_string(),
        })?),
        None => None,
    };

    let (sighting_tx, sighting_rx) = mpsc::channel::<Ingested>(SIGHTING_QUEUE);
    let (incoming_tx, incoming_rx) = mpsc::channel::<IncomingMessage>(INCOMING_QUEUE);
    let (outgoing_tx, outgoing_rx) = mpsc::channel::<OutgoingMessage>(OUTGOING_QUEUE);
    let (connected_tx, connected_rx) = watch::channel(false);
    let (refused_tx, refused_rx) = watch::channel(Vec::<&'static str>::new());
    let outbox_ready = Arc::new(Notify::new());
    let latency_stamps = crate::telemetry::LatencyStamps::default();
    let (reservations, decider) = reservations::stage(
        store.clone(),
        telemetry.clone(),
        outbox_ready.clone(),
        latency_stamps.clone(),
        reservations::QUEUE,
        reservations::MAX_BATCH,
    );
    // People and visits are loaded before anything listens, so that the
    // first sighting already resolves.
    let mut pipeline = {
        let (config, store, telemetry) = (config.clone(), store.clone(), telemetry.clone());
        tokio::task::spawn_blocking(move || {
            Pipeline::new(config, store, telemetry, reservations, outgoing_tx)
        })
        .await
        .expect("loading people does not panic")?
    };
    // Stops once the pipeline (the only sender) is gone and the queue is
    // reserved; see the end of this function.
    let decider = tokio::spawn(decider.run());
    if let Some(path) = &options.record {
        let recorder =
            crate::io::record::CaptureRecorder::create(path).map_err(|e| DaemonError::Record {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        pipeline.recorder = Some(recorder);
    }
    let sources_running = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();

    let handles = Handles {
        telemetry: telemetry.clone(),
        mqtt_connected: connected_rx.clone(),
        udp_addrs: udp_sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect(),
        admin_addr: admin_listener.as_ref().and_then(|l| l.local_addr().ok()),
    };

    for socket in udp_sockets {
        let (tx, telemetry, cancel, running) = (
            sighting_tx.clone(),
            telemetry.clone(),
            cancel.clone(),
            sources_running.clone(),
        );
        running.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            sources::run_udp(socket, tx, telemetry, cancel).await;
            running.fetch_sub(1, Ordering::Relaxed);
        });
    }
    for source in config.sources.iter() {
        if let SourceSettings::Replay { path, speed } = source {
            let (tx, telemetry, cancel, running) = (
                sighting_tx.clone(),
                telemetry.clone(),
                cancel.clone(),
                sources_running.clone(),
            );
            let (path, speed) = (path.clone(), *speed);
            running.fetch_add(1, Ordering::Relaxed);
            tasks.spawn(async move {
                match sources::run_replay(path.clone(), speed, tx, telemetry.clone(), cancel).await
                {
                    Ok(n) => {
                        tracing::info!(path = %path.display(), sightings = n, "replay finished")
                    }
                    Err(e) => events::source_failed(
                        &telemetry,
                        crate::telemetry::Source::Replay,
                        &format!("{}: {e}", path.display()),
                    ),
                }
                running.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
    for source in config.sources.iter() {
        match source {
            SourceSettings::Bluez { adapter, scanner } => {
                let settings = crate::io::ble::BluezSettings {
                    adapter: adapter.clone(),
                    scanner_id: scanner.clone(),
                };
                let (tx, telemetry, cancel, running) = (
                    sighting_tx.clone(),
                    telemetry.clone(),
                    cancel.clone(),
                    sources_running.clone(),
                );
                running.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(async move {
                    crate::io::ble::run_bluez(settings, tx, telemetry, cancel).await;
                    running.fetch_sub(1, Ordering::Relaxed);
                });
            }
            // Scanner nodes arrive through the MQTT subscriptions; the
            // source counts as running for as long as the daemon does.
            SourceSettings::MqttScanners { .. } => {
                sources_running.fetch_add(1, Ordering::Relaxed);
            }
            SourceSettings::Udp { .. } | SourceSettings::Replay { .. } => {}
        }
    }
    drop(sighting_tx);

    if let Some(listener) = admin_listener {
        let readiness = Readiness {
            mqtt_connected: connected_rx,
            sources_running: sources_running.clone(),
            storage_open: Arc::new(AtomicBool::new(true)),
            refused_subscriptions: refused_rx,
        };
        tasks.spawn(admin::serve(
            listener,
            telemetry.clone(),
            readiness,
            cancel.clone(),
        ));
    }

    let (config_tx, config_rx) = watch::channel(config.clone());
    let delivery_cancel = CancellationToken::new();
    let delivery = tokio::spawn(
        mqtt::Delivery {
            config: config.clone(),
            store: store.clone(),
            telemetry: telemetry.clone(),
            outbox_ready: outbox_ready.clone(),
            incoming: incoming_tx,
            outgoing: outgoing_rx,
            subscriptions: topics::all_subscriptions(&config),
            connected: connected_tx,
            refused_subscriptions: refused_tx,
            config_updates: config_rx.clone(),
            latency_stamps,
        }
        .run(delivery_cancel.clone()),
    );

    if let Some(started) = started {
        let _ = started.send(handles);
    }
    tracing::info!(store = %config.store_id, people = store.people_count(), outbox = store.outbox_len(), "gateway running");

    if let Some(path) = options.config_path.clone() {
        tasks.spawn(crate::reload::run(
            path,
            config_tx,
            telemetry.clone(),
            cancel.clone(),
        ));
    }
    pipeline
        .run(sighting_rx, incoming_rx, config_rx, cancel.clone())
        .await;

    // The pipeline has made its last decision; the decider reserves what
    // is still queued (durably) and stops once the pipeline is dropped.
    // Then delivery publishes what it can of them and says offline.
    cancel.cancel();
    let people_recognised = pipeline.recognised.len();
    drop(pipeline);
    if let Err(e) = decider.await {
        events::storage_error(&telemetry, "reserve", &e);
    }
    while tasks.join_next().await.is_some() {}
    outbox_ready.notify_one();
    delivery_cancel.cancel();
    let _ = delivery.await;
    if let Err(e) = store.flush_async().await {
        events::storage_error(&telemetry, "shutdown_flush", &e);
    }
    Ok(summarise(&telemetry, people_recognised))
}

fn summarise(t: &Telemetry, people_recognised: usize) -> RunSummary {
    let caps = [
        "per_visit",
        "per_day",
        "per_week",
        "min_gap",
        "per_kind_per_day",
        "rule_cooldown",
        "store_rate",
        "quiet_hours",
    ];
    let held_by_caps: u64 = caps
        .iter()
        .map(|r| t.counter("nudges_held_total", &[("reason", r)]))
        .sum();
    RunSummary {
        sightings: t.counter("sightings_total", &[]),
        people_recognised,
        nudges_reserved: t.counter("nudges_reserved_total", &[]),
        nudges_held_by_caps: held_by_caps,
        nudges_held_other: t.counter("nudges_held_total", &[]) - held_by_caps,
    }
}

/// The pure core driven by I/O: decode → resolve → presence → decide, plus
/// the people-changing messages (CRM, consent, check-ins).
pub struct Pipeline {
    config: Arc<Config>,
    store: Store,
    telemetry: Arc<Telemetry>,
    /// Decisions go to the reservation stage (`reservations.rs`).
    reservations: Reservations,
    outgoing: mpsc::Sender<OutgoingMessage>,
    people: People,
    presence: PresenceEngine,
    clock: EventClock,
    frames: Vec<Frame>,
    events: Vec<PresenceEvent>,
    /// Who was recognised this run, for the summary only; never persisted.
    recognised: HashSet<PersonId>,
    /// When each present person's visit was last written (event time), so
    /// a restart continues the visit (and its per-visit cap) without a
    /// write per advert.
    visit_saved_ms: HashMap<PersonId, i64>,
    last_sweep_ms: i64,
    /// The store's own beacons: battery, temperature, last seen.
    fleet: Fleet,
    last_fleet_report_ms: i64,
    /// The arrival of the sighting being handled, if any.
    current_arrival: Option<std::time::Instant>,
    /// Where scanner nodes publish, from the config in force.
    scanner_filters: topics::ScannerFilters,
    /// OpenMQTTGateway sends one advert in parts; they are joined here.
    merger: AdvertMerger,
    /// `--record`: what the sources hear, strangers removed.
    recorder: Option<CaptureRecorder>,
    /// Per-recipient buckets on the app topics (`ratelimit.rs`).
    rate_limit: RecipientLimiter,
    /// Error reports on gateway/errors, per second (`ratelimit::PerSecond`).
    error_reports: PerSecond,
}

/// Error reports published per second at most; the rest are counted
/// (`error_reports_suppressed_total`). Far above what real mistakes make.
const ERROR_REPORTS_PER_SECOND: u32 = 100;

/// How often the fleet report is published (event time).
const FLEET_REPORT_EVERY_MS: i64 = 30_000;

/// How stale the persisted "last seen" of a visit may get. Well under the
/// visit gap, so that a quick restart continues the visit.
const VISIT_SAVE_EVERY_MS: i64 = 10_000;
/// How often retention runs (event time).
const SWEEP_EVERY_MS: i64 = 3_600_000;
/// Largest incoming payload accepted on any topic.
pub const MAX_INCOMING_BYTES: usize = 16 * 1024;

/// A rejected incoming message: reported by kind and reason, never by content.
struct Rejection {
    field: String,
    reason: String,
}

impl From<crate::identity::RecordError> for Rejection {
    fn from(e: crate::identity::RecordError) -> Self {
        Rejection {
            field: e.field,
            reason: e.reason,
        }
    }
}

fn rejection(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection {
        field: field.to_string(),
        reason: reason.into(),
    }
}

impl Pipeline {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        telemetry: Arc<Telemetry>,
        reservations: Reservations,
        outgoing: mpsc::Sender<OutgoingMessage>,
    ) -> Result<Self, StoreError> {
        let records = store.people().collect::<Result<Vec<_>, _>>()?;
        let now = wall_ms();
        let people = People::load(records, now / 1000);
        let mut presence = PresenceEngine::new(config.presence.clone());
        for (person, seed) in store.visits()? {
            presence.seed_visit(person, seed);
        }
        let fleet = Fleet::new(config.beacons.clone());
        let scanner_filters = topics::scanner_filters(&config);
        let merger = AdvertMerger::new(scanner_merge_window(&config), 1024);
        let rate_limit = RecipientLimiter::new(config.incoming_rate);
        Ok(Pipeline {
            config,
            store,
            telemetry,
            reservations,
            outgoing,
            people,
            presence,
            clock: EventClock::starting_at(now),
            frames: Vec::new(),
            events: Vec::new(),
            recognised: HashSet::new(),
            visit_saved_ms: HashMap::new(),
            last_sweep_ms: now,
            fleet,
            last_fleet_report_ms: i64::MIN,
            current_arrival: None,
            scanner_filters,
            merger,
            recorder: None,
            rate_limit,
            error_reports: PerSecond::new(ERROR_REPORTS_PER_SECOND),
        })
    }

    async fn run(
        &mut self,
        mut sightings: mpsc::Receiver<Ingested>,
        mut incoming: mpsc::Receiver<IncomingMessage>,
        mut config: watch::Receiver<Arc<Config>>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sources_open = true;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                item = sightings.recv(), if sources_open => match item {
                    Some(item) => self.on_sighting(item).await,
                    // Every source has ended (a finished replay): keep
                    // ticking so visits close, until cancelled.
                    None => sources_open = false,
                },
                Some(message) = incoming.recv() => self.on_incoming(message).await,
                Ok(()) = config.changed() => {
                    let new = config.borrow_and_update().clone();
                    self.apply_config(new);
                }
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    /// A reloaded configuration: rules, caps, presence tuning and the rest
    /// apply from the next event; who is present and the outbox stay.
    fn apply_config(&mut self, config: Arc<Config>) {
        self.presence.set_config(config.presence.clone());
        self.scanner_filters = topics::scanner_filters(&config);
        self.rate_limit.set_limit(config.incoming_rate);
        self.config = config;
    }

    async fn on_tick(&mut self) {
        let now = self.clock.now_ms();
        self.people.roll_to(now / 1000);
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.presence.tick(now, &mut events);
        self.handle_events(&events).await;
        self.events = events;
        events::people_present(&self.telemetry, self.presence.present_count());
        for sighting in self.merger.flush_due(now) {
            self.on_sighting(Ingested {
                source: topics::ScannerFeed::OpenMqttGateway.into(),
                sighting,
                received: std::time::Instant::now(),
            })
            .await;
        }
        if !self.config.beacons.is_empty()
            && now.saturating_sub(self.last_fleet_report_ms) >= FLEET_REPORT_EVERY_MS
        {
            self.last_fleet_report_ms = now;
            let report = self.fleet.report(now).to_string().into_bytes();
            self.send(OutgoingMessage {
                topic: topics::beacons(&self.config),
                payload: report,
                correlation_data: None,
                retain: true,
            });
        }
        if now - self.last_sweep_ms >= SWEEP_EVERY_MS {
            self.last_sweep_ms = now;
            self.sweep(now).await;
        }
    }

    /// Retention: decision-log entries older than the window go.
    async fn sweep(&mut self, now_ms: i64) {
        let cutoff = now_ms - self.config.retention.as_millis() as i64;
        let store = self.store.clone();
        if let Some(recorder) = &mut self.recorder {
            match recorder.expire(cutoff) {
                Ok(dropped) => events::retention_swept(&self.telemetry, dropped),
                Err(e) => {
                    events::source_failed(&self.telemetry, crate::telemetry::Source::Record, &e)
                }
            }
        }
        match tokio::task::spawn_blocking(move || store.sweep(cutoff)).await {
            Ok(Ok(removed)) => {
                events::retention_swept(&self.telemetry, removed);
                tracing::info!(removed, "retention sweep");
            }
            Ok(Err(e)) => events::storage_error(&self.telemetry, "retention", &e),
            Err(e) => events::storage_error(&self.telemetry, "retention", &e),
        }
    }

    async fn on_sighting(&mut self, item: Ingested) {
        self.current_arrival = Some(item.received);
        self.handle_sighting(item).await;
        self.current_arrival = None;
    }

    async fn handle_sighting(&mut self, item: Ingested) {
        let sighting = item.sighting;
        if !self
            .clock
            .observe(sighting.at_ms, wall_ms(), self.config.max_future_skew_ms)
        {
            events::sighting_rejected(
                &self.telemetry,
                item.source,
                "sighting",
                "at_ms",
                "too far ahead of the gateway's clock",
            );
            return;
        }
        self.people.roll_to(self.clock.now_ms() / 1000);
        let mut frames = std::mem::take(&mut self.frames);
        if decode_into(&sighting.adv, &self.config.decode, &mut frames) == 0 {
            events::advert_undecodable(&self.telemetry, item.source);
        }
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        for frame in &frames {
            let Frame::AppToken {
                rotating_id,
                tx_power,
                ..
            } = frame
            else {
                continue;
            };
            // Resolve: an identifier nobody enrolled is a stranger, and is
            // forgotten right here: not stored, not logged.
            let Some(person) = self.recognise(rotating_id) else {
                continue;
            };
            self.presence.observe_with_power(
                &person,
                &sighting.scanner,
                sighting.rssi,
                Some(*tx_power),
                sighting.at_ms,
                &mut events,
            );
            self.touch_visit(&person, sighting.at_ms);
        }
        if !frames.is_empty() {
            self.fleet
                .observe(&frames, sighting.addr, sighting.rssi, sighting.at_ms);
        }
        if let Some(recorder) = &mut self.recorder {
            // Only the store's own beacons and people who opted in: a
            // stranger's advert never reaches the file.
            let allowed = self.fleet.knows(&frames) || !events.is_empty() || frames.iter().any(|f| matches!(f, Frame::AppToken { rotating_id, .. } if self.people.resolve(rotating_id).is_some_and(|p| self.people.consent(p).is_some_and(|c| c.proximity))));
            if let Err(e) = recorder.record(&sighting, allowed) {
                events::source_failed(&self.telemetry, crate::telemetry::Source::Record, &e);
            }
        }
        self.frames = frames;
        self.handle_events(&events).await;
        self.events = events;
    }

    /// The opted-in person behind a rotating identifier, or `None` for a
    /// stranger (someone unknown, or known without proximity consent).
    fn recognise(&mut self, rotating_id: &[u8; 16]) -> Option<PersonId> {
        let person = self.people.resolve(rotating_id).cloned();
        let Some(person) = person.filter(|p| self.people.consent(p).is_some_and(|c| c.proximity))
        else {
            events::stranger_dropped(&self.telemetry);
            return None;
        };
        if self.recognised.insert(person.clone()) {
            events::person_recognised(&self.telemetry, &hashed(person.as_str()));
        }
        Some(person)
    }

    /// Persist the visit's last-seen time at most every few seconds.
    fn touch_visit(&mut self, person: &PersonId, at_ms: i64) {
        let Some(visit) = self.presence.visit_of(person) else {
            return;
        };
        let last = self.visit_saved_ms.get(person).copied().unwrap_or(i64::MIN);
        if at_ms.saturating_sub(last) < VISIT_SAVE_EVERY_MS {
            return;
        }
        self.visit_saved_ms.insert(person.clone(), at_ms);
        if let Err(e) = self.store.save_visit(
            person,
            VisitSeed {
                visit,
                last_seen_ms: at_ms,
            },
        ) {
            events::storage_error(&self.telemetry, "visit", &e);
        }
    }

    async fn handle_events(&mut self, events: &[PresenceEvent]) {
        for event in events {
            let person = event.person().clone();
            let persisted = match event {
                PresenceEvent::Exited { .. } => {
                    self.visit_saved_ms.remove(&person);
                    self.store.end_visit(&person)
                }
                PresenceEvent::Entered { visit, at_ms, .. }
                | PresenceEvent::ZoneEntered { visit, at_ms, .. }
                | PresenceEvent::Dwell { visit, at_ms, .. }
                | PresenceEvent::ZoneLeft { visit, at_ms, .. } => self.store.save_visit(
                    &person,
                    VisitSeed {
                        visit: *visit,
                        last_seen_ms: *at_ms,
                    },
                ),
            };
            if let Err(e) = persisted {
                events::storage_error(&self.telemetry, "visit", &e);
            }
            tracing::debug!(person = %hashed(person.as_str()), event = event.name(), "presence");
            self.decide_event(event).await;
        }
    }

    /// A presence event → the candidates it triggers (dwell, exit, n-th
    /// visit) → decisions.
    async fn decide_event(&mut self, event: &PresenceEvent) {
        let Some(person) = self.people.get(event.person()) else {
            return;
        };
        let config = self.config.clone();
        let mut candidates = candidates_for_event(event, &person, &config.triggered);
        if let PresenceEvent::Entered { visit, at_ms, .. } = event {
            // Counted on every visit, so a rule added later counts right.
            let (store, id) = (self.store.clone(), person.person.clone());
            match tokio::task::spawn_blocking(move || store.count_visit(&id))
                .await
                .expect("visit count task does not panic")
            {
                Ok(number) => candidates.extend(thanks_candidates(
                    &ThanksEvent::Visit {
                        number,
                        visit: *visit,
                        at_ms: *at_ms,
                    },
                    &person,
                    &config.triggered,
                )),
                Err(e) => events::storage_error(&self.telemetry, "count_visit", &e),
            }
        }
        self.decide(&person, candidates, &config).await;
    }

    /// Consent and content here, in priority order; then the whole
    /// decision goes to the reservation stage, which checks the caps and
    /// reserves at most one nudge (`Store::reserve_batch`). The pipeline
    /// does not wait for the flush: only for room in the stage's queue.
    async fn decide(
        &mut self,
        person: &PersonRecord,
        mut candidates: Vec<decide::Candidate<'_>>,
        config: &Arc<Config>,
    ) {
        candidates.sort_by(|a, b| {
            b.rule
                .priority
                .cmp(&a.rule.priority)
                .then_with(|| a.rule.id.cmp(&b.rule.id))
        });
        let expiry_ms = config.nudge_expiry.as_millis() as i64;
        let mut prepared = Vec::with_capacity(candidates.len());
        for candidate in candidates {
            let rule = candidate.rule;
            let mut entry = ReserveCandidate {
                nudge_id: uuid::Uuid::now_v7().to_string(),
                topic: String::new(),
                payload: String::new(),
                kind: rule.kind,
                rule: rule.id.clone(),
                zone: candidate.zone.to_string(),
                visit: candidate.visit,
                now_ms: candidate.at_ms,
                expires_at_ms: 0,
                held: None,
            };
            if let Err(reason) = check_consent(person, rule.kind) {
                // Logged (and counted) by the stage if the decision gets
                // this far; the next candidate may still go.
                entry.held = Some(reason);
                prepared.push(entry);
                continue;
            }
            // The best offer any of the person's identities qualifies for:
            // never a better deal for a dormant one.
            let offer = (rule.kind == decide::NudgeKind::Offer)
                .then(|| best_offer(&config.offers, &person.identities, candidate.at_ms))
                .flatten();
            let content = match compose(
                &candidate,
                person,
                config.catalog.as_deref(),
                offer.as_ref(),
            ) {
                Ok(content) => content,
                Err(e) => {
                    // The rule is named in the log, not as a label: labels
                    // are fixed in the code (telemetry.rs).
                    events::nudge_not_composed(&self.telemetry, &rule.id, &e);
                    continue;
                }
            };
            let payload = build_nudge(
                &candidate,
                person,
                entry.nudge_id.clone(),
                expiry_ms,
                content,
            );
            entry.payload = serde_json::to_string(&payload).expect("nudge payload serialises");
            entry.topic = config.nudge_topic(&person.recipient);
            entry.expires_at_ms = wall_ms() + expiry_ms;
            prepared.push(entry);
        }
        if prepared.is_empty() {
            return;
        }
        let job = DecisionJob {
            person: person.person.clone(),
            person_hash: hashed(person.person.as_str()),
            recipient: person.recipient.clone(),
            candidates: prepared,
            config: config.clone(),
            arrival: self.current_arrival,
            submitted: std::time::Instant::now(),
            reply: None,
        };
        if let Err(e) = self.reservations.submit(job).await {
            events::storage_error(&self.telemetry, "reserve", &e);
        }
    }

    /// Wait until every decision sent to the reservation stage is durable:
    /// before a person's consent or data changes under it, so that nothing
    /// queued is reserved after a withdrawal or an erasure.
    async fn settle_decisions(&self) {
        if let Err(e) = self.reservations.settle().await {
            events::storage_error(&self.telemetry, "reserve", &e);
        }
    }

    // ---- people-changing messages -------------------------------------

    async fn on_incoming(&mut self, message: IncomingMessage) {
        if let Some(feed) = topics::scanner_feed(&self.scanner_filters, &message.topic) {
            self.on_scanner_message(feed, &message).await;
            if let Some(ack) = message.ack {
                ack.ack();
            }
            return;
        }
        let topic = message.topic.clone();
        let kind = classify(&self.config, &topic);
        let label = kind.kind();
        events::incoming(&self.telemetry, label);
        if let Incoming::Consent(recipient)
        | Incoming::CheckIn(recipient)
        | Incoming::Feedback(recipient) = kind
            && !self.rate_limit.allow(label, recipient)
        {
            // Unread and unreported (a report per message would be the
            // flood again, on gateway/errors), but acked: unacked, it
            // would hold one of the broker's in-flight slots for good.
            events::incoming_rate_limited(&self.telemetry, label);
            if let Some(ack) = message.ack {
                ack.ack();
            }
            return;
        }
        let result = if message.payload.len() > MAX_INCOMING_BYTES {
            Err(rejection(
                "payload",
                format!("larger than {MAX_INCOMING_BYTES} bytes"),
            ))
        } else {
            match kind {
                Incoming::Person(person) => self.on_person(person, &message.payload).await,
                Incoming::Consent(recipient) => self.on_consent(recipient, &message).await,
                Incoming::CheckIn(recipient) => self.on_checkin(recipient, &message.payload).await,
                Incoming::Feedback(recipient) => {
                    self.on_feedback(recipient, &message.payload).await
                }
                Incoming::Purchase => self.on_purchase(&message.payload).await,
                Incoming::Unknown => Err(rejection("topic", "not a topic the gateway reads")),
            }
        };
        if let Err(rejected) = result {
            self.reject(&topic, label, &rejected);
        }
        // Acknowledge to the broker only now: whatever it asked for is
        // flushed (or it was refused and nothing changed).
        if let Some(ack) = message.ack {
            ack.ack();
        }
    }

    /// A sighting from a remote scanner node: into the same pipeline as
    /// the local sources. Bad ones are counted by field, never reported
    /// with their content (they may carry a stranger's address).
    async fn on_scanner_message(&mut self, feed: topics::ScannerFeed, message: &IncomingMessage) {
        use topics::ScannerFeed;
        let source = crate::telemetry::Source::from(feed);
        events::sighting_received(&self.telemetry, source);
        let now = self.clock.now_ms();
        let parsed = match feed {
            ScannerFeed::Own => {
                scanners::parse_scanner_record(&message.topic, &message.payload).map(|s| vec![s])
            }
            ScannerFeed::Espresense => {
                scanners::parse_espresense(&message.topic, &message.payload, now).map(|s| vec![s])
            }
            ScannerFeed::OpenMqttGateway => {
                scanners::parse_openmqttgateway(&message.topic, &message.payload, now)
                    .map(|p| self.merger.push(p, now))
            }
        };
        match parsed {
            Ok(sightings) => {
                for sighting in sightings {
                    self.on_sighting(Ingested {
                        source,
                        sighting,
                        received: std::time::Instant::now(),
                    })
                    .await;
                }
            }
            Err(e) if e.ignored => {
                events::scanner_message_ignored(&self.telemetry, source, e.field)
            }
            Err(e) => {
                events::sighting_rejected(&self.telemetry, source, "mqtt", e.field, &e.reason)
            }
        }
    }

    fn reject(&mut self, topic: &str, kind: &'static str, rejected: &Rejection) {
        events::incoming_rejected(&self.telemetry, kind, &rejected.field, &rejected.reason);
        if !self.error_reports.allow_at(wall_ms() / 1000) {
            events::error_report_suppressed(&self.telemetry);
            return;
        }
        // The field may be a key the sender chose: named, but cut short.
        let report = serde_json::json!({
            "topic": truncated(topic, MAX_TOPIC_ECHO_CHARS),
            "field": truncated(&rejected.field, MAX_ECHO_CHARS),
            "reason": truncated(&rejected.reason, MAX_REASON_CHARS),
        });
        self.send(OutgoingMessage {
            topic: topics::errors(&self.config),
            payload: report.to_string().into_bytes(),
            correlation_data: None,
            retain: false,
        });
    }

    fn send(&self, message: OutgoingMessage) {
        if self.outgoing.try_send(message).is_err() {
            events::reply_dropped(&self.telemetry, &"the outgoing queue is full");
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .expect("storage task does not panic")
    }

    /// A person record from the CRM (retained); an empty payload erases.
    /// The record comes again after every fresh session and republish, in
    /// any order with the app's changes: it is folded in part by part, and
    /// only the parts it said later than what is held change (the newest
    /// word wins; an old record never switches a withdrawn purpose back
    /// on). A record not later than the person's erasure is refused.
    async fn on_person(&mut self, person: &str, payload: &[u8]) -> Result<(), Rejection> {
        let now = wall_ms();
        if payload.is_empty() {
            let person = PersonId::from(person);
            // The back office clearing a record the gateway does not hold
            // (one it erased already, or a person of another store): there
            // is nothing to erase, and no tombstone to write.
            if self.people.consent(&person).is_none() {
                return Ok(());
            }
            return self.erase(&person, now).await;
        }
        let text = std::str::from_utf8(payload).map_err(|_| rejection("payload", "not UTF-8"))?;
        let record = PersonRecord::from_json(text)?;
        if record.person.as_str() != person {
            return Err(rejection("person", "does not match the topic"));
        }
        let erased_at = self.store.tombstone(person).map_err(|e| {
            events::storage_error(&self.telemetry, "tombstone", &e);
            rejection("storage", "could not be checked; nothing changed")
        })?;
        let merged = PersonRecord::fold(self.people.get(&record.person), record, erased_at, now)
            .inspect_err(|_| {
                events::person_record_refused_after_erasure(&self.telemetry, &hashed(person));
            })?;
        self.upsert(merged).await
    }

    async fn upsert(&mut self, record: PersonRecord) -> Result<(), Rejection> {
        self.people
            .check(&record)
            .map_err(|e| rejection("recipient", e.to_string()))?;
        let unchanged = self.people.get(&record.person).as_ref() == Some(&record);
        if unchanged {
            // A retained record seen again after a reconnect: nothing to do.
            return Ok(());
        }
        let upserted = self
            .people
            .upsert(record)
            .map_err(|e| rejection("recipient", e.to_string()))?;
        if !upserted.withdrawn.is_empty() {
            self.settle_decisions().await;
        }
        let to_store = upserted.to_store.clone();
        let withdrawn: Vec<String> = upserted
            .withdrawn
            .iter()
            .map(|p| p.as_str().to_string())
            .collect();
        let stored = self
            .blocking(move |store| {
                store.upsert_people(&to_store)?;
                for person in &withdrawn {
                    store.purge_outbox(person)?;
                }
                store.flush()
            })
            .await;
        if let Err(e) = stored {
            events::storage_error(&self.telemetry, "upsert_person", &e);
            self.reload_people();
            return Err(rejection("storage", "could not be saved; nothing changed"));
        }
        for person in upserted.withdrawn {
            self.forget_presence(&person);
            events::consent_withdrawn(&self.telemetry, crate::identity::Purpose::Proximity);
        }
        Ok(())
    }

    /// After a storage failure, memory goes back to what is on disk.
    fn reload_people(&mut self) {
        match self.store.people().collect::<Result<Vec<_>, _>>() {
            Ok(records) => self.people = People::load(records, self.clock.now_ms() / 1000),
            Err(e) => events::storage_error(&self.telemetry, "reload_people", &e),
        }
    }

    fn forget_presence(&mut self, person: &PersonId) {
        self.presence.forget(person);
        self.visit_saved_ms.remove(person);
        self.recognised.remove(person);
    }

    /// Erase a person everywhere, leaving a tombstone dated `erased_at_ms`
    /// that refuses their older records (the CRM's retained one above all).
    async fn erase(&mut self, person: &PersonId, erased_at_ms: i64) -> Result<(), Rejection> {
        // A queued decision must not write the person back after this.
        self.settle_decisions().await;
        let id = person.as_str().to_string();
        match self
            .blocking(move |store| store.forget_person(&id, erased_at_ms))
            .await
        {
            Ok(_) => {
                self.people.remove(person);
                self.forget_presence(person);
                events::person_erased(&self.telemetry, &hashed(person.as_str()));
                Ok(())
            }
            Err(e) => {
                events::storage_error(&self.telemetry, "erase", &e);
                Err(rejection("storage", "erasure failed; retry"))
            }
        }
    }

    /// A consent or preference change from the app. The receipt goes out
    /// only once the change is on disk (and pending nudges are purged).
    async fn on_consent(
        &mut self,
        recipient: &str,
        message: &IncomingMessage,
    ) -> Result<(), Rejection> {
        let text =
            std::str::from_utf8(&message.payload).map_err(|_| rejection("payload", "not UTF-8"))?;
        let change = ConsentChange::from_json(text, recipient)?;
        let record = self
            .people
            .by_recipient(recipient)
            .ok_or_else(|| rejection("recipient", "unknown recipient"))?;
        let mut updated = record.clone();
        let now = wall_ms();
        let status = match change.apply(&mut updated, change.said_at_ms(now)) {
            Applied::Forget => {
                self.erase(&record.person, now).await?;
                // The back office keeps the person's retained record: tell
                // it, so that it clears it (the tombstone refuses it here
                // meanwhile).
                let notice = serde_json::json!({
                    "person": record.person.as_str(),
                    "erased_at": rfc3339_ms(now),
                });
                self.send(OutgoingMessage {
                    topic: topics::erasures(&self.config),
                    payload: notice.to_string().into_bytes(),
                    correlation_data: None,
                    retain: false,
                });
                "forgotten"
            }
            Applied::Updated { withdrawn } => {
                let person = record.person.as_str().to_string();
                self.upsert(updated).await?;
                if !withdrawn.is_empty() {
                    // Nothing pending may go out under a purpose just
                    // withdrawn, queued decisions included.
                    self.settle_decisions().await;
                    let purged = self
                        .blocking(move |store| {
                            store
                                .purge_outbox(&person)
                                .and_then(|n| store.flush().map(|()| n))
                        })
                        .await;
                    if let Err(e) = purged {
                        events::storage_error(&self.telemetry, "purge_outbox", &e);
                        return Err(rejection("storage", "could not purge pending nudges"));
                    }
                    for purpose in &withdrawn {
                        events::consent_withdrawn(&self.telemetry, *purpose);
                    }
                }
                "saved"
            }
        };
        let receipt = serde_json::json!({ "id": change.id, "status": status })
            .to_string()
            .into_bytes();
        self.send(OutgoingMessage {
            topic: topics::receipts(&self.config, recipient),
            payload: receipt.clone(),
            correlation_data: None,
            retain: false,
        });
        if let Some(response_topic) = &message.response_topic {
            if topics::response_topic_allowed(&self.config, recipient, response_topic) {
                self.send(OutgoingMessage {
                    topic: response_topic.clone(),
                    payload: receipt,
                    correlation_data: message.correlation_data.clone(),
                    retain: false,
                });
            } else {
                events::response_topic_refused(&self.telemetry);
            }
        }
        Ok(())
    }

    /// A purchase from the till: a thank-you for an opted-in buyer, nothing
    /// asked in return. A buyer the gateway does not know is not an error
    /// (most customers did not opt in) and leaves no trace.
    async fn on_purchase(&mut self, payload: &[u8]) -> Result<(), Rejection> {
        let text = std::str::from_utf8(payload).map_err(|_| rejection("payload", "not UTF-8"))?;
        let purchase = Purchase::from_json(text)?;
        let person = match &purchase.buyer {
            Buyer::Person(id) => self.people.get(id).map(|r| r.person),
            Buyer::Identity(identity) => self.people.person_of(identity).cloned(),
        };
        let Some(record) = person
            .and_then(|p| self.people.get(&p))
            .filter(|r| r.consent.proximity)
        else {
            events::purchase(&self.telemetry, false);
            return Ok(());
        };
        events::purchase(&self.telemetry, true);
        let config = self.config.clone();
        let visit = self.presence.visit_of(&record.person);
        let candidates = thanks_candidates(
            &ThanksEvent::Purchase {
                purchase: &purchase,
                visit,
            },
            &record,
            &config.triggered,
        );
        self.decide(&record, candidates, &config).await;
        Ok(())
    }

    /// An answer to a feedback nudge, kept for the store when the person
    /// consented to feedback and the nudge was theirs.
    async fn on_feedback(&mut self, recipient: &str, payload: &[u8]) -> Result<(), Rejection> {
        let text = std::str::from_utf8(payload).map_err(|_| rejection("payload", "not UTF-8"))?;
        let feedback = Feedback::from_json(text)?;
        let record = self
            .people
            .by_recipient(recipient)
            .ok_or_else(|| rejection("recipient", "unknown recipient"))?;
        if !record.consent.allows(crate::identity::Purpose::Feedback) {
            return Err(rejection("consent", "no consent for feedback"));
        }
        let (person, nudge_id) = (record.person.to_string(), feedback.nudge_id.clone());
        let decision = self
            .blocking(move |store| store.decision_of(&person, &nudge_id))
            .await;
        match decision {
            Ok(Some(d)) if d.outcome == crate::store::DecisionOutcome::Sent => {}
            Ok(_) => return Err(rejection("nudge_id", "not a nudge sent to this recipient")),
            Err(e) => {
                events::storage_error(&self.telemetry, "feedback", &e);
                return Err(rejection("storage", "could not be saved"));
            }
        }
        let entry = FeedbackEntry {
            nudge_id: feedback.nudge_id,
            answer: feedback.answer,
            comment: feedback.comment,
            at_ms: self.clock.now_ms(),
        };
        let (store, person) = (self.store.clone(), record.person.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || store.save_feedback(&person, &entry))
            .await
            .expect("save does not panic")
        {
            events::storage_error(&self.telemetry, "feedback", &e);
            return Err(rejection("storage", "could not be saved"));
        }
        events::feedback_answered(&self.telemetry);
        Ok(())
    }

    /// An iOS check-in: the app heard the store's beacons and says which
    /// identifier it holds now. It must be that recipient's own.
    async fn on_checkin(&mut self, recipient: &str, payload: &[u8]) -> Result<(), Rejection> {
        let text = std::str::from_utf8(payload).map_err(|_| rejection("payload", "not UTF-8"))?;
        let checkin = CheckIn::from_json(text)?;
        let expected = self.people.by_recipient(recipient).map(|r| r.person);
        self.people.roll_to(self.clock.now_ms() / 1000);
        let resolved = self.people.resolve(&checkin.rotating_id).cloned();
        let person = match (expected, resolved) {
            (Some(expected), Some(resolved)) if expected == resolved => expected,
            _ => {
                events::checkin_rejected(&self.telemetry);
                return Err(rejection(
                    "rotating_id",
                    "does not belong to this recipient",
                ));
            }
        };
        // A phone's word never moves the decision clock: its time is only
        // checked against the wall clock, and a reading dated ahead of the
        // clock counts as now.
        if checkin.at_ms > wall_ms().saturating_add(self.config.max_future_skew_ms) {
            return Err(rejection("at_ms", "too far ahead of the gateway's clock"));
        }
        let at_ms = checkin.at_ms.min(self.clock.now_ms());
        if self.recognise(&checkin.rotating_id).is_none() {
            return Ok(());
        }
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        for beacon in &checkin.beacons {
            let scanner = beacon_scanner_id(&beacon.uuid, beacon.major, beacon.minor);
            self.presence
                .observe(&person, &scanner, beacon.rssi as i16, at_ms, &mut events);
        }
        self.touch_visit(&person, at_ms);
        self.handle_events(&events).await;
        self.events = events;
        events::checkin_accepted(&self.telemetry);
        Ok(())
    }
}

fn rfc3339_ms(at_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn scanner_merge_window(config: &Config) -> i64 {
    config
        .sources
        .iter()
        .find_map(|s| match s {
            SourceSettings::MqttScanners {
                merge_window_ms, ..
            } => Some(*merge_window_ms),
            _ => None,
        })
        .unwrap_or(scanners::MERGE_WINDOW_MS)
}

/// The scanner id an iOS check-in's beacon counts as: list it in a zone's
/// `scanners` to place check-ins in that zone.
pub fn beacon_scanner_id(uuid: &[u8; 16], major: u16, minor: u16) -> String {
    format!(
        "beacon:{}:{major}:{minor}",
        crate::decode::uuid_string(uuid)
    )
}
