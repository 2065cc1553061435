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
use crate::decide::{self, SkipReason, build_payload, check_consent, matching_rules};
use crate::decode::{Frame, decode_into};
use crate::identity::{PersonId, PersonRecord, RotatingIdTable};
use crate::io::admin::{self, Readiness};
use crate::io::mqtt::{self, IncomingMessage};
use crate::io::sources::{self, Ingested};
use crate::presence::{PresenceEngine, PresenceEvent, VisitSeed};
use crate::privacy::hashed;
use crate::store::{
    DecisionEntry, DecisionOutcome, Reservation, ReserveRequest, Store, StoreError,
};
use crate::telemetry::{Telemetry, events};

const SIGHTING_QUEUE: usize = 4096;
const INCOMING_QUEUE: usize = 256;

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

/// Open storage, bind every listener (so that bad addresses fail at once),
/// then run until `cancel`. `started` receives the handles once bound.
pub async fn run(
    config: Config,
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
    let (connected_tx, connected_rx) = watch::channel(false);
    let outbox_ready = Arc::new(Notify::new());
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
                        "replay",
                        &format!("{}: {e}", path.display()),
                    ),
                }
                running.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
    drop(sighting_tx);

    if let Some(listener) = admin_listener {
        let readiness = Readiness {
            mqtt_connected: connected_rx,
            sources_running: sources_running.clone(),
            storage_open: Arc::new(AtomicBool::new(true)),
        };
        tasks.spawn(admin::serve(
            listener,
            telemetry.clone(),
            readiness,
            cancel.clone(),
        ));
    }

    let delivery_cancel = CancellationToken::new();
    let delivery = tokio::spawn(
        mqtt::Delivery {
            config: config.clone(),
            store: store.clone(),
            telemetry: telemetry.clone(),
            outbox_ready: outbox_ready.clone(),
            incoming: incoming_tx,
            subscriptions: Vec::new(),
            connected: connected_tx,
        }
        .run(delivery_cancel.clone()),
    );

    if let Some(started) = started {
        let _ = started.send(handles);
    }
    tracing::info!(store = %config.store_id, people = store.people_count(), outbox = store.outbox_len(), "gateway running");

    let mut pipeline = Pipeline::new(
        config.clone(),
        store.clone(),
        telemetry.clone(),
        outbox_ready.clone(),
    )?;
    pipeline.run(sighting_rx, incoming_rx, cancel.clone()).await;

    // The pipeline has finished its decisions; let delivery publish what
    // it can of them, then say offline.
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    outbox_ready.notify_one();
    delivery_cancel.cancel();
    let _ = delivery.await;
    if let Err(e) = store.flush_async().await {
        events::storage_error(&telemetry, "shutdown_flush", &e);
    }
    Ok(pipeline.summary())
}

/// The pure core driven by I/O: decode → resolve → presence → decide.
pub struct Pipeline {
    config: Arc<Config>,
    store: Store,
    telemetry: Arc<Telemetry>,
    outbox_ready: Arc<Notify>,
    table: RotatingIdTable,
    people: HashMap<PersonId, PersonRecord>,
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
}

/// How stale the persisted "last seen" of a visit may get. Well under the
/// visit gap, so that a quick restart continues the visit.
const VISIT_SAVE_EVERY_MS: i64 = 10_000;

impl Pipeline {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        telemetry: Arc<Telemetry>,
        outbox_ready: Arc<Notify>,
    ) -> Result<Self, StoreError> {
        let mut table = RotatingIdTable::new();
        let mut people = HashMap::new();
        for record in store.people() {
            let record = record?;
            for key in record.app_keys() {
                table.insert_key(record.person.clone(), *key);
            }
            people.insert(record.person.clone(), record);
        }
        let mut presence = PresenceEngine::new(config.presence.clone());
        for (person, seed) in store.visits()? {
            presence.seed_visit(person, seed);
        }
        let now = wall_ms();
        table.roll_to(now / 1000);
        Ok(Pipeline {
            config,
            store,
            telemetry,
            outbox_ready,
            table,
            people,
            presence,
            clock: EventClock::starting_at(now),
            frames: Vec::new(),
            events: Vec::new(),
            recognised: HashSet::new(),
            visit_saved_ms: HashMap::new(),
        })
    }

    pub fn summary(&self) -> RunSummary {
        let t = &self.telemetry;
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
            people_recognised: self.recognised.len(),
            nudges_reserved: t.counter("nudges_reserved_total", &[]),
            nudges_held_by_caps: held_by_caps,
            nudges_held_other: t.counter("nudges_held_total", &[]) - held_by_caps,
        }
    }

    async fn run(
        &mut self,
        mut sightings: mpsc::Receiver<Ingested>,
        mut incoming: mpsc::Receiver<IncomingMessage>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                item = sightings.recv() => match item {
                    Some(item) => self.on_sighting(item).await,
                    // Every source has ended (a finished replay): keep
                    // ticking so visits close, until cancelled.
                    None => {
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tick.tick() => self.on_tick().await,
                        }
                    }
                },
                Some(message) = incoming.recv() => self.on_incoming(message),
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    fn on_incoming(&mut self, message: IncomingMessage) {
        tracing::debug!(topic = %message.topic, bytes = message.payload.len(), "incoming message ignored: no handler yet");
    }

    async fn on_tick(&mut self) {
        let now = self.clock.now_ms();
        self.table.roll_to(now / 1000);
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.presence.tick(now, &mut events);
        self.handle_events(&events).await;
        self.events = events;
        self.telemetry
            .set_gauge("people_present", self.presence.present_count() as i64);
    }

    async fn on_sighting(&mut self, item: Ingested) {
        let sighting = item.sighting;
        if !self
            .clock
            .observe(sighting.at_ms, self.config.max_future_skew_ms)
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
        self.table.roll_to(self.clock.now_ms() / 1000);
        let mut frames = std::mem::take(&mut self.frames);
        if decode_into(&sighting.adv, &self.config.decode, &mut frames) == 0 {
            events::advert_undecodable(&self.telemetry, item.source);
        }
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        for frame in &frames {
            let Frame::AppToken { rotating_id, .. } = frame else {
                continue;
            };
            // Resolve: an identifier nobody enrolled is a stranger, and is
            // forgotten right here: not stored, not logged.
            let Some(person) = self.table.lookup(rotating_id).cloned() else {
                events::stranger_dropped(&self.telemetry);
                continue;
            };
            let Some(record) = self.people.get(&person) else {
                continue;
            };
            if !record.consent.proximity {
                // Without proximity consent a person is a stranger too.
                events::stranger_dropped(&self.telemetry);
                continue;
            }
            if self.recognised.insert(person.clone()) {
                events::person_recognised(&self.telemetry, &hashed(person.as_str()));
            }
            self.presence.observe(
                &person,
                &sighting.scanner,
                sighting.rssi,
                sighting.at_ms,
                &mut events,
            );
            self.touch_visit(&person, sighting.at_ms);
        }
        self.frames = frames;
        self.handle_events(&events).await;
        self.events = events;
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
            if let PresenceEvent::Dwell { .. } = event {
                self.decide(event).await;
            }
        }
    }

    async fn decide(&mut self, event: &PresenceEvent) {
        let Some(person) = self.people.get(event.person()).cloned() else {
            return;
        };
        let person_hash = hashed(person.person.as_str());
        let candidates = matching_rules(event, &person, &self.config.rules);
        for candidate in candidates {
            let rule = candidate.rule;
            let nudge_id = uuid::Uuid::now_v7().to_string();
            if let Err(reason) = check_consent(&person, rule.kind) {
                self.log_held(&person, &candidate, &nudge_id, reason, &person_hash);
                continue;
            }
            let expiry_ms = self.config.nudge_expiry.as_millis() as i64;
            let payload = build_payload(&candidate, &person, nudge_id.clone(), expiry_ms);
            let payload = serde_json::to_string(&payload).expect("nudge payload serialises");
            let (store, config) = (self.store.clone(), self.config.clone());
            let (person_id, recipient, rule_id, zone) = (
                person.person.clone(),
                person.recipient.clone(),
                rule.id.clone(),
                candidate.zone.to_string(),
            );
            let (kind, visit, now_ms, id) = (
                rule.kind,
                candidate.visit,
                candidate.at_ms,
                nudge_id.clone(),
            );
            // sled transactions block: keep them off the async workers.
            let outcome = tokio::task::spawn_blocking(move || {
                store.reserve(&ReserveRequest {
                    person: &person_id,
                    recipient: &recipient,
                    topic: config.nudge_topic(&recipient),
                    nudge_id: id,
                    payload,
                    kind,
                    rule: &rule_id,
                    zone: &zone,
                    visit,
                    now_ms,
                    expires_at_ms: wall_ms() + expiry_ms,
                    caps: &config.caps,
                    quiet: config.quiet_hours.as_ref(),
                    tz: &config.timezone,
                    enabled: config.nudges_enabled,
                })
            })
            .await
            .expect("reserve task does not panic");
            match outcome {
                Ok(Reservation::Reserved { .. }) => {
                    events::nudge_reserved(
                        &self.telemetry,
                        &person_hash,
                        &rule.id,
                        rule.kind.as_str(),
                        &nudge_id,
                    );
                    self.outbox_ready.notify_one();
                    return;
                }
                Ok(Reservation::Held(reason)) => {
                    events::nudge_held(&self.telemetry, &person_hash, &rule.id, reason.label());
                    // Only rule- or kind-specific limits let a lower rule try.
                    if !matches!(
                        reason,
                        SkipReason::RuleCooldown { .. } | SkipReason::PerKindPerDay { .. }
                    ) {
                        return;
                    }
                }
                Err(e) => {
                    events::storage_error(&self.telemetry, "reserve", &e);
                    return;
                }
            }
        }
    }

    fn log_held(
        &self,
        person: &PersonRecord,
        candidate: &decide::Candidate<'_>,
        nudge_id: &str,
        reason: SkipReason,
        person_hash: &str,
    ) {
        events::nudge_held(
            &self.telemetry,
            person_hash,
            &candidate.rule.id,
            reason.label(),
        );
        let entry = DecisionEntry {
            at_ms: candidate.at_ms,
            person: person.person.as_str().to_string(),
            nudge_id: nudge_id.to_string(),
            rule: candidate.rule.id.clone(),
            kind: candidate.rule.kind,
            zone: candidate.zone.to_string(),
            visit: candidate.visit,
            outcome: DecisionOutcome::Held,
            reason: Some(reason),
        };
        if let Err(e) = self.store.log_decision(&entry) {
            events::storage_error(&self.telemetry, "decision_log", &e);
        }
    }
}
