//! The sighting path: decode → resolve → presence → the decision step
//! (`decide::prepare`, then the reservation stage's `decide::choose`),
//! plus ticks (dwell, visit ends, fleet reports, retention) and config
//! reloads. Incoming MQTT messages are handled in `incoming/`.

use super::*;
use crate::daemon::roll::Pace;
use crate::telemetry::{Cache, MemoryPart};

/// The pure core driven by I/O: decode → resolve → presence → decide, plus
/// the people-changing messages (CRM, consent, check-ins).
pub struct Pipeline {
    pub(super) config: Arc<Config>,
    pub(super) store: Store,
    pub(super) telemetry: Arc<Telemetry>,
    /// Decisions go to the reservation stage (`reservations.rs`).
    pub(super) reservations: Reservations,
    pub(super) outgoing: mpsc::Sender<OutgoingMessage>,
    pub(super) people: People,
    pub(super) presence: PresenceEngine,
    pub(super) clock: EventClock,
    pub(super) frames: Vec<Frame>,
    pub(super) events: Vec<PresenceEvent>,
    /// Who was recognised in their current visit, so that the "person
    /// recognised" event goes out once per visit; pruned every tick to the
    /// people presence still follows, so it never outgrows who is in the
    /// store (a run of months would otherwise hold every visitor). Never
    /// persisted.
    pub(super) recognised: HashSet<PersonId>,
    /// When each present person's visit was last written (event time), so
    /// a restart continues the visit (and its per-visit cap) without a
    /// write per advert.
    pub(super) visit_saved_ms: HashMap<PersonId, i64>,
    pub(super) last_sweep_ms: i64,
    /// The retention sweep under way, if any: it runs beside the pipeline,
    /// which does not wait for it (a sweep over a month-old store stopped
    /// the pipeline for its whole length: BENCHMARKS.md §2a).
    sweeping: Option<tokio::task::JoinHandle<()>>,
    /// When freed heap was last handed back (`crate::heap`), wall time.
    last_heap_release: std::time::Instant,
    /// Paces and times the rotating-ID table's roll (`roll.rs`).
    roll: super::roll::RollPacer,
    /// The store's own beacons: battery, temperature, last seen.
    pub(super) fleet: Fleet,
    pub(super) last_fleet_report_ms: i64,
    /// Every scanner's gain learned from those beacons, when the site file
    /// gives their positions (`presence::gain`).
    pub(super) gain: Option<GainTracker>,
    pub(super) last_gain_ms: i64,
    /// The arrival of the sighting being handled, if any.
    pub(super) current_arrival: Option<std::time::Instant>,
    /// Where scanner nodes publish, from the config in force.
    pub(super) scanner_filters: topics::ScannerFilters,
    /// OpenMQTTGateway sends one advert in parts; they are joined here.
    pub(super) merger: AdvertMerger,
    /// Scanner messages per configured node and field, for the fleet report.
    pub(super) scanner_nodes: scanners::NodeTally,
    /// `--record`: what the sources hear, strangers removed.
    pub(super) recorder: Option<CaptureRecorder>,
    /// Per-recipient buckets on the app topics (`ratelimit.rs`).
    pub(super) rate_limit: RecipientLimiter,
    /// Error reports on gateway/errors, per second (`ratelimit::PerSecond`).
    pub(super) error_reports: PerSecond,
    /// In a chain: other stores' decisions go to the chain folder
    /// (`incoming/chain.rs`); `None` outside a chain.
    pub(super) chain_folds: Option<mpsc::Sender<incoming::FoldRequest>>,
}

/// Error reports published per second at most; the rest are counted
/// (`error_reports_suppressed_total`). Far above what real mistakes make.
const ERROR_REPORTS_PER_SECOND: u32 = 100;

/// How often scanner gains are worked out, exported and applied (event
/// time): a gain drifts over hours, a median of minutes needs no more.
const GAIN_EVERY_MS: i64 = 10_000;
/// How often freed heap goes back to the kernel (wall time): without it
/// the daemon's resident memory stays at the high-water mark of the last
/// crowd (BENCHMARKS.md §2a).
const HEAP_RELEASE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the fleet report is published (event time).
const FLEET_REPORT_EVERY_MS: i64 = 30_000;

/// How stale the persisted "last seen" of a visit may get. Well under the
/// visit gap, so that a quick restart continues the visit.
const VISIT_SAVE_EVERY_MS: i64 = 10_000;
/// Keys of the rotating-ID table rolled per step while a roll by one
/// interval is under way (about a millisecond's work): a million keys
/// roll over some 250 steps instead of stopping the pipeline for the
/// whole roll (back to back while its queues are empty, paced while work
/// waits: `roll.rs`), and both windows of a roll under way hold the
/// current interval (`identity::table`).
const ROLL_KEYS_PER_STEP: usize = 4096;

/// The store's word for where the people came from, as a metric label
/// (telemetry does not know the store).
impl From<crate::store::PeopleSource> for crate::telemetry::PeopleLoad {
    fn from(source: crate::store::PeopleSource) -> Self {
        match source {
            crate::store::PeopleSource::Snapshot => Self::Snapshot,
            crate::store::PeopleSource::Scan => Self::Scan,
        }
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
        let now = wall_ms();
        // Streamed: only the hot part of each record stays in memory.
        let started = std::time::Instant::now();
        let (people, source) = store.load_people(now / 1000)?;
        events::people_loaded(
            &telemetry,
            source.into(),
            people.len(),
            started.elapsed().as_millis() as u64,
        );
        let mut presence = PresenceEngine::new(config.presence.clone());
        for (person, seed) in store.visits()? {
            presence.seed_visit(person, seed);
        }
        let fleet = Fleet::new(config.beacons.clone());
        let scanner_filters = topics::scanner_filters(&config.topics);
        let merger = AdvertMerger::new(scanner_merge_window(&config), 1024);
        let scanner_nodes = scanners::NodeTally::new(zone_scanners(&config));
        let rate_limit = RecipientLimiter::new(config.incoming_rate);
        events::cache_limit(&telemetry, Cache::Sled, config.storage_cache_bytes);
        let mut pipeline = Pipeline {
            config,
            store,
            telemetry,
            reservations,
            outgoing,
            people,
            presence,
            // Not `now`: loading the people took seconds at a million,
            // and a clock started behind the wall clock stays behind until
            // a sighting brings it forward (a quiet store rolled its
            // rotating ids, and closed visits, that much late).
            clock: EventClock::starting_at(wall_ms()),
            frames: Vec::new(),
            events: Vec::new(),
            recognised: HashSet::new(),
            visit_saved_ms: HashMap::new(),
            last_sweep_ms: now,
            sweeping: None,
            last_heap_release: std::time::Instant::now(),
            roll: Default::default(),
            fleet,
            last_fleet_report_ms: i64::MIN,
            gain: None,
            last_gain_ms: i64::MIN,
            current_arrival: None,
            scanner_filters,
            merger,
            scanner_nodes,
            recorder: None,
            rate_limit,
            error_reports: PerSecond::new(ERROR_REPORTS_PER_SECOND),
            chain_folds: None,
        };
        pipeline.gain = pipeline.new_gain_tracker(None);
        Ok(pipeline)
    }

    /// A gain tracker for the config in force (`None`: the site file gives
    /// no positions to learn from). The series of scanners the old one
    /// (`old`) knew and the new one does not are removed, and their
    /// corrections undone.
    fn new_gain_tracker(&mut self, old: Option<&GainTracker>) -> Option<GainTracker> {
        let setup = self.config.scanner_gain.clone();
        if let Some(old) = old {
            for scanner in &old.setup().scanners {
                if setup.as_ref().is_none_or(|s| !s.scanners.contains(scanner)) {
                    events::scanner_gain_forget(&self.telemetry, scanner);
                }
                self.presence.set_scanner_gain(scanner, None);
            }
        }
        let mut tracker = GainTracker::new(setup?);
        if let Some(reference) = gain_reference(&self.config) {
            tracker.set_reference(&reference);
        }
        Some(tracker)
    }

    /// Work out every scanner's gain: export it, report changes of status,
    /// and hand the drift to presence.
    pub(super) fn update_gains(&mut self, now_ms: i64) {
        let Some(tracker) = &mut self.gain else {
            return;
        };
        for change in tracker.evaluate(now_ms) {
            let status = match change.to {
                GainStatus::Drifted => GainAlert::Drifted,
                GainStatus::Deaf => GainAlert::Deaf,
                GainStatus::Ok => GainAlert::Ok,
                // Evidence too old to say: nothing to alert about.
                GainStatus::Unknown => continue,
            };
            events::scanner_gain_alert(&self.telemetry, &change.scanner, status, change.gain_db);
        }
        // With a radio map that does not say what gains it was learned
        // with, a correction would be against an unknown level: none.
        let apply = gain_reference(&self.config).is_some();
        for (scanner, gain_db, status) in tracker.gains() {
            events::scanner_gain(
                &self.telemetry,
                scanner,
                gain_db,
                status == GainStatus::Deaf,
            );
            let drift = if apply {
                tracker.correction(scanner)
            } else {
                None
            };
            self.presence.set_scanner_gain(scanner, drift);
        }
    }

    pub(super) async fn run(
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
                // A roll under way and nothing queued: the next step now,
                // in time nobody waits for (`daemon/roll.rs`). Then back to
                // the scheduler: a source task woken on this worker (tokio
                // does not let another worker steal it from here) gets to
                // queue its sighting before the next step, instead of after
                // the whole roll.
                () = std::future::ready(()),
                    if self.people.rolling() && sightings.is_empty() && incoming.is_empty() =>
                {
                    self.roll_people(Pace::Idle);
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    /// A reloaded configuration: rules, caps, presence tuning and the rest
    /// apply from the next event; who is present and the outbox stay.
    pub(super) fn apply_config(&mut self, config: Arc<Config>) {
        if config.beacons != self.config.beacons {
            // Other beacons: a fleet of the new list (what was heard of
            // the old one no longer applies), reported at the next tick so
            // that the retained report does not keep naming removed ones.
            self.fleet = Fleet::new(config.beacons.clone());
            self.last_fleet_report_ms = i64::MIN;
        }
        // Every reload reads the map again (a new Arc): compare what the
        // gains are corrected towards, so an unrelated change does not
        // throw away minutes of learned medians.
        let gain_changed = config.scanner_gain != self.config.scanner_gain
            || config.beacons != self.config.beacons
            || gain_reference(&config) != gain_reference(&self.config);
        self.presence.set_config(config.presence.clone());
        self.scanner_filters = topics::scanner_filters(&config.topics);
        self.scanner_nodes.set_known(zone_scanners(&config));
        self.rate_limit.set_limit(config.incoming_rate);
        self.config = config;
        if gain_changed {
            // Other positions, beacons or reference: what was learned was
            // against other expectations; learn again.
            let old = self.gain.take();
            self.gain = self.new_gain_tracker(old.as_ref());
            self.last_gain_ms = i64::MIN;
        }
    }

    /// Moves the rotating-ID table towards now, one step of a roll at
    /// most (paced when work waits: `daemon/roll.rs`); a roll that ends is
    /// logged and counted.
    pub(super) fn roll_people(&mut self, pace: Pace) {
        let now_s = self.clock.now_ms() / 1000;
        let people = &mut self.people;
        if let Some(roll) = self
            .roll
            .advance(pace, || people.roll_toward(now_s, ROLL_KEYS_PER_STEP))
        {
            events::rotating_roll(&self.telemetry, roll.took, roll.steps, roll.longest_step);
        }
    }

    pub(super) async fn on_tick(&mut self) {
        let now = self.clock.now_ms();
        self.roll_people(Pace::WorkWaiting);
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.presence.tick(now, &mut events);
        self.handle_events(&events).await;
        self.events = events;
        let presence = &self.presence;
        self.recognised
            .retain(|person| presence.visit_of(person).is_some());
        events::people_present(&self.telemetry, self.presence.present_count());
        self.report_memory();
        if self.last_heap_release.elapsed() >= HEAP_RELEASE_EVERY {
            self.last_heap_release = std::time::Instant::now();
            crate::heap::release_freed_heap();
        }
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
            let mut report = self.fleet.report(now);
            report["scanner_nodes"] = self.scanner_nodes.report();
            let report = report.to_string().into_bytes();
            self.send(OutgoingMessage {
                topic: topics::beacons(&self.config.topics),
                payload: report,
                correlation_data: None,
                retain: true,
            });
        }
        if self.gain.is_some() && now.saturating_sub(self.last_gain_ms) >= GAIN_EVERY_MS {
            self.last_gain_ms = now;
            self.update_gains(now);
        }
        if now - self.last_sweep_ms >= self.config.sweep_every.as_millis() as i64 {
            self.last_sweep_ms = now;
            self.sweep(now).await;
        }
    }

    /// The heap held for the people enrolled, by part (every tick: each
    /// part is read from capacities, at no cost).
    pub(super) fn report_memory(&self) {
        let people = self.people.heap_bytes();
        events::memory(&self.telemetry, MemoryPart::People, people.people);
        events::memory(
            &self.telemetry,
            MemoryPart::RotatingIds,
            people.rotating_ids,
        );
        let vault = self.store.vault_heap_bytes();
        events::memory(&self.telemetry, MemoryPart::VaultIndex, vault);
    }

    /// Retention: decision-log entries older than the window go. The
    /// store's sweep runs on a blocking thread and the pipeline goes on
    /// meanwhile; it is logged and counted when it ends. A sweep still
    /// under way when the next is due makes that one skip.
    pub(super) async fn sweep(&mut self, now_ms: i64) {
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
        if let Some(previous) = self.sweeping.take() {
            if !previous.is_finished() {
                tracing::info!("retention sweep still under way; this one skipped");
                self.sweeping = Some(previous);
                return;
            }
            if let Err(e) = previous.await {
                events::storage_error(&self.telemetry, "retention", &e);
            }
        }
        let chain = self.config.chain.is_some();
        let telemetry = self.telemetry.clone();
        self.sweeping = Some(tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let swept = store.sweep(cutoff).and_then(|removed| {
                // The chain's ledgers keep their eight days, its tombstones
                // the retention window.
                Ok(if chain {
                    removed + store.chain_sweep(now_ms, cutoff)?
                } else {
                    removed
                })
            });
            match swept {
                Ok(removed) => {
                    let took = started.elapsed();
                    events::retention_sweep(&telemetry, took, removed);
                    tracing::info!(
                        removed,
                        took_ms = took.as_secs_f64() * 1000.0,
                        "retention sweep"
                    );
                }
                Err(e) => events::storage_error(&telemetry, "retention", &e),
            }
        }));
    }

    pub(super) async fn on_sighting(&mut self, item: Ingested) {
        self.current_arrival = Some(item.received);
        self.handle_sighting(item).await;
        self.current_arrival = None;
    }

    pub(super) async fn handle_sighting(&mut self, item: Ingested) {
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
        self.roll_people(Pace::WorkWaiting);
        let mut frames = std::mem::take(&mut self.frames);
        if decode_into(&sighting.adv, &self.config.decode, &mut frames) == 0 {
            events::advert_undecodable(&self.telemetry, item.source);
        }
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        for (rotating_id, tx_power) in frames.iter().filter_map(Frame::app_token) {
            // Resolve: an identifier nobody enrolled is a stranger, and is
            // forgotten right here: not stored, not logged.
            let Some(person) = self.recognise(rotating_id) else {
                continue;
            };
            self.presence.observe_with_power(
                &person,
                &sighting.scanner,
                sighting.rssi,
                Some(tx_power),
                sighting.at_ms,
                &mut events,
            );
            self.touch_visit(&person, sighting.at_ms);
        }
        if !frames.is_empty() {
            self.fleet
                .observe(&frames, sighting.addr, sighting.rssi, sighting.at_ms);
            if let (Some(gain), Some(beacon)) = (&mut self.gain, self.fleet.identify(&frames)) {
                gain.observe(beacon, &sighting.scanner, sighting.rssi, sighting.at_ms);
            }
        }
        if let Some(recorder) = &mut self.recorder {
            // Only the store's own beacons and people who opted in: a
            // stranger's advert never reaches the file.
            let allowed = self.fleet.knows(&frames) || !events.is_empty() || frames.iter().any(|f| matches!(f, Frame::AppToken { rotating_id, .. } if self.people.recognise(rotating_id).is_some()));
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
    pub(super) fn recognise(&mut self, rotating_id: &[u8; 16]) -> Option<PersonId> {
        let Some(person) = self.people.recognise(rotating_id).cloned() else {
            events::stranger_dropped(&self.telemetry);
            return None;
        };
        if self.recognised.insert(person.clone()) {
            events::person_recognised(&self.telemetry, &hashed(person.as_str()));
        }
        Some(person)
    }

    /// Persist the visit's last-seen time at most every few seconds.
    pub(super) fn touch_visit(&mut self, person: &PersonId, at_ms: i64) {
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

    pub(super) async fn handle_events(&mut self, events: &[PresenceEvent]) {
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
    pub(super) async fn decide_event(&mut self, event: &PresenceEvent) {
        let person = match self.people.get(event.person()) {
            Ok(Some(person)) => person,
            Ok(None) => return,
            Err(e) => {
                events::storage_error(&self.telemetry, "person_record", &e);
                return;
            }
        };
        let visit_number = match event {
            PresenceEvent::Entered { .. } => {
                // Counted on every visit, so a rule added later counts right.
                let (store, id) = (self.store.clone(), person.person.clone());
                match tokio::task::spawn_blocking(move || store.count_visit(&id))
                    .await
                    .expect("visit count task does not panic")
                {
                    Ok(number) => Some(number),
                    Err(e) => {
                        events::storage_error(&self.telemetry, "count_visit", &e);
                        None
                    }
                }
            }
            _ => None,
        };
        self.decide(
            &person,
            &Happening::Presence {
                event,
                visit_number,
            },
        )
        .await;
    }

    /// Consent and content here (`decide::prepare`, in priority order);
    /// then the whole decision goes to the reservation stage, which
    /// chooses under the caps (`decide::choose`) and reserves at most one
    /// nudge (`Store::reserve_batch`). The pipeline does not wait for the
    /// flush: only for room in the stage's queue.
    pub(super) async fn decide(&mut self, person: &PersonRecord, happening: &Happening<'_>) {
        let config = self.config.clone();
        let sources = ContentSources {
            catalog: config.catalog.as_deref(),
            offers: &config.offers,
        };
        let expiry_ms = config.nudge_expiry.as_millis() as i64;
        let mut prepared = Vec::new();
        for Prepared { candidate, content } in
            decide::prepare(happening, person, &config.triggered, &sources)
        {
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
            match content {
                Ok(content) => {
                    let payload = build_nudge(
                        &candidate,
                        person,
                        entry.nudge_id.clone(),
                        expiry_ms,
                        content,
                    );
                    entry.payload =
                        serde_json::to_string(&payload).expect("nudge payload serialises");
                    entry.topic = config.nudge_topic(&person.recipient);
                    entry.expires_at_ms = wall_ms() + expiry_ms;
                }
                Err(NotReady::Consent(reason)) => {
                    // Logged (and counted) by the stage if the decision
                    // gets this far; the next candidate may still go.
                    entry.held = Some(reason);
                }
                Err(NotReady::NotComposed(e)) => {
                    // The rule is named in the log, not as a label: labels
                    // are fixed in the code (telemetry.rs).
                    events::nudge_not_composed(&self.telemetry, &rule.id, &e);
                    continue;
                }
            }
            prepared.push(entry);
        }
        if prepared.is_empty() {
            return;
        }
        let chain = config
            .chain
            .as_ref()
            .map(|chain| reservations::ChainPersonJob {
                person: chain.person(person.person.as_str()),
                home: person
                    .timezone
                    .as_deref()
                    .and_then(|tz| tz.parse::<chrono_tz::Tz>().ok()),
                topic: config.topics.chain_topic(topics::ChainKind::Decision),
            });
        let job = DecisionJob {
            person: person.person.clone(),
            person_hash: hashed(person.person.as_str()),
            recipient: person.recipient.clone(),
            chain,
            candidates: prepared,
            config,
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
    pub(super) async fn settle_decisions(&self) {
        if let Err(e) = self.reservations.settle().await {
            events::storage_error(&self.telemetry, "reserve", &e);
        }
    }

    pub(super) fn send(&self, message: OutgoingMessage) {
        if self.outgoing.try_send(message).is_err() {
            events::reply_dropped(&self.telemetry, &"the outgoing queue is full");
        }
    }

    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .expect("storage task does not panic")
    }
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

/// The gains the scanners are corrected towards: 0 without a radio map;
/// with one, the gains its walk was made with (`beacon_gain_db`), or
/// `None` when the map does not say (then nothing is corrected).
fn gain_reference(config: &Config) -> Option<HashMap<String, f32>> {
    match &config.presence.radio_map {
        None => Some(HashMap::new()),
        Some(model) => {
            let gains = &model.map().beacon_gain_db;
            (!gains.is_empty()).then(|| gains.iter().map(|(s, g)| (s.clone(), *g)).collect())
        }
    }
}

/// The scanner nodes the configuration names (zones' `scanners`).
fn zone_scanners(config: &Config) -> Vec<String> {
    config
        .zones
        .iter()
        .flat_map(|z| z.scanners.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(storage: &std::path::Path, beacons: &str) -> Arc<Config> {
        let site = format!(
            "{}\n{beacons}",
            crate::config::tests::MINIMAL_SITE
                .replace("/var/lib/gateway", &storage.display().to_string())
        );
        Arc::new(crate::config::from_layers("site.toml", Some(&site), Default::default()).unwrap())
    }

    /// A pipeline over `config` on a store opened at `storage`, with the
    /// decider and the outgoing receiver kept alive (dropped, they would
    /// close the channels the pipeline sends into).
    struct Rig {
        pipeline: Pipeline,
        _decider: reservations::Decider,
        _out: mpsc::Receiver<OutgoingMessage>,
    }

    impl Rig {
        fn new(config: Arc<Config>, storage: &std::path::Path, outgoing: usize) -> Rig {
            let store = Store::open(storage).unwrap();
            let telemetry = Arc::new(Telemetry::new());
            let (reservations, decider) = reservations::stage(
                store.clone(),
                telemetry.clone(),
                Arc::new(Notify::new()),
                crate::telemetry::LatencyStamps::default(),
                1,
                1,
            );
            let (tx, out) = mpsc::channel(outgoing);
            let pipeline = Pipeline::new(config, store, telemetry, reservations, tx).unwrap();
            Rig {
                pipeline,
                _decider: decider,
                _out: out,
            }
        }
    }

    fn beacon(id: &str, minor: u16) -> String {
        format!(
            "[[beacons]]\nid = \"{id}\"\nkind = \"ibeacon\"\nuuid = \"426c7565436861726d426561636f6e73\"\nmajor = 1\nminor = {minor}\n"
        )
    }

    fn reported(pipeline: &Pipeline) -> Vec<String> {
        pipeline.fleet.report(0)["beacons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect()
    }

    #[tokio::test]
    async fn a_reload_that_changes_the_beacons_rebuilds_the_fleet() {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("db");
        let first = config(&storage, &beacon("door", 1));
        let rig = Rig::new(first, &storage, 1);
        let mut pipeline = rig.pipeline;
        assert_eq!(reported(&pipeline), ["door"]);

        // Same beacons: the fleet (and what it heard) stays.
        pipeline.last_fleet_report_ms = 5;
        pipeline.apply_config(config(&storage, &beacon("door", 1)));
        assert_eq!(pipeline.last_fleet_report_ms, 5);

        let changed = config(
            &storage,
            &format!("{}\n{}", beacon("door", 2), beacon("till", 3)),
        );
        pipeline.apply_config(changed.clone());
        assert_eq!(reported(&pipeline), ["door", "till"]);
        assert_eq!(pipeline.fleet.beacons(), changed.beacons.as_slice());
        assert_eq!(
            pipeline.last_fleet_report_ms,
            i64::MIN,
            "reported at the next tick"
        );
    }

    /// Person `p-<i>`, opted in, with one app key: `i + 1`.
    fn opted_in(i: usize) -> crate::identity::PersonRecord {
        crate::identity::PersonRecord::from_json(&format!(
            r#"{{"person": "p-{i}", "recipient": "r-{i}", "identities": [{{"kind": "app", "key": "{:032x}"}}], "consent": {{"proximity": true}}}}"#,
            i + 1
        ))
        .unwrap()
    }

    /// A quiet store (nobody heard) rolls its rotating identifiers in the
    /// pipeline's idle time, step after step, not one step a tick: with
    /// tokio's clock paused, time moves only once the pipeline has nothing
    /// left to do, so the roll must be over before the first millisecond
    /// has passed. One step a tick, a roll at a million keys took two
    /// minutes.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_pipeline_rolls_in_its_idle_time_not_a_step_a_tick() {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("db");
        let config = config(&storage, "");
        let mut rig = Rig::new(config.clone(), &storage, 1);
        let pipeline = &mut rig.pipeline;
        let keys = 2 * ROLL_KEYS_PER_STEP + 10;
        for i in 0..keys {
            pipeline.people.upsert(opted_in(i)).unwrap();
        }
        // Centred on the interval before the last boundary; the clock just
        // past it (and not past the next retention sweep).
        let boundary_s = wall_ms() / 1000 / 600 * 600;
        pipeline.people.roll_to(boundary_s - 1);
        pipeline.clock = EventClock::starting_at(boundary_s * 1000 + 100);

        let (_sightings_tx, sightings) = mpsc::channel(1);
        let (_incoming_tx, incoming) = mpsc::channel(1);
        let (_config_tx, config_rx) = watch::channel(config);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        // Another task on this (single-threaded) runtime, such as a source
        // with a sighting to queue: it must get its turn while the roll is
        // under way, not only once the whole roll is done.
        let telemetry = pipeline.telemetry.clone();
        let rolls_counted = move || {
            telemetry
                .render()
                .lines()
                .find_map(|l| l.strip_prefix("gateway_rotating_roll_seconds_count "))
                .map(|n| n.trim().to_string())
        };
        let other_task = tokio::spawn(async move { rolls_counted() });
        tokio::join!(
            pipeline.run(sightings, incoming, config_rx, cancel),
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                stop.cancel();
            }
        );
        assert!(!pipeline.people.rolling(), "the roll was left under way");
        assert_eq!(
            other_task.await.unwrap().as_deref(),
            Some("0"),
            "another task ran only after the roll"
        );
        let last_key = u128::try_from(keys).unwrap().to_be_bytes();
        let next = crate::identity::rotating_id(&last_key, (boundary_s / 600 + 1) as u32);
        assert!(
            pipeline.people.resolve(&next).is_some(),
            "the last key was not rolled onto the new window"
        );
    }

    /// The event clock starts at the wall clock when the pipeline is
    /// ready, not when it began loading the people.
    #[tokio::test]
    async fn the_clock_starts_where_the_wall_clock_is_once_the_people_are_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("db");
        {
            let store = Store::open(&storage).unwrap();
            for i in 0..2_000 {
                store.upsert_person(&opted_in(i)).unwrap();
            }
        }
        let began = wall_ms();
        let rig = Rig::new(config(&storage, ""), &storage, 1);
        let ready = wall_ms();
        assert_eq!(rig.pipeline.people.len(), 2_000);
        let behind = ready - rig.pipeline.clock.now_ms();
        assert!(
            behind <= 20,
            "the clock is {behind} ms behind the wall clock (loading took {} ms)",
            ready - began
        );
    }

    /// The set behind "recognised once per visit" holds only the people
    /// presence still follows: one who has left is dropped at the next
    /// tick, so a long run does not keep every visitor.
    #[tokio::test]
    async fn who_was_recognised_is_forgotten_once_presence_lets_them_go() {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("db");
        let rig = Rig::new(config(&storage, ""), &storage, 16);
        let mut pipeline = rig.pipeline;
        let here = PersonId::from("p-here");
        let gone = PersonId::from("p-gone");
        let now = pipeline.clock.now_ms();
        let mut events = Vec::new();
        pipeline
            .presence
            .observe(&here, "entrance", -55, now, &mut events);
        pipeline.recognised.insert(here.clone());
        pipeline.recognised.insert(gone.clone());
        pipeline.on_tick().await;
        assert!(pipeline.recognised.contains(&here));
        assert!(!pipeline.recognised.contains(&gone));
    }

    /// The twin's ten-zone store with its `tv` scanner 10 dB deaf (the
    /// store plan's `gain_db`, which the site file does not know): from
    /// the store's beacons alone the pipeline learns it, exports
    /// `gateway_scanner_gain_db{scanner="tv"}` near -10, counts one
    /// `drifted` alert, and takes the drift off tv's readings in presence.
    #[tokio::test]
    async fn a_scanner_gone_10_db_deaf_shows_in_the_gain_metric_and_an_alert() {
        let mut spec = firmware_sim::StoreSpec::from_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/sim/electronics-store.toml"
        ))
        .unwrap();
        spec.scanners
            .iter_mut()
            .find(|s| s.id == "tv")
            .unwrap()
            .gain_db = Some(-10.0);
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("db");
        let site = firmware_sim::site::site_toml(&spec);
        let config = Arc::new(
            crate::config::from_layers("site.toml", Some(&site), Default::default()).unwrap(),
        );
        assert!(
            config.scanner_gain.is_some(),
            "the twin's site file gives positions"
        );
        let rig = Rig::new(config, &storage, 1);
        let telemetry = rig.pipeline.telemetry.clone();
        let mut pipeline = rig.pipeline;
        let mut sim = firmware_sim::Simulation::new(
            spec.clone(),
            firmware_sim::Scenario::tour(&spec, 3, 5),
            firmware_sim::DEFAULT_START_UNIX_MS,
            3,
        )
        .unwrap();
        let records = sim.run_for(Duration::from_secs(180));
        let mut last_ms = 0;
        for r in &records {
            let sighting =
                crate::sighting::Sighting::from_json(&serde_json::to_string(r).unwrap()).unwrap();
            last_ms = sighting.at_ms;
            pipeline
                .handle_sighting(Ingested {
                    source: crate::telemetry::Source::Replay,
                    sighting,
                    received: std::time::Instant::now(),
                })
                .await;
        }
        pipeline.update_gains(last_ms);
        let gain = |scanner: &str| -> f64 {
            let text = telemetry.render();
            let prefix = format!("gateway_scanner_gain_db{{scanner=\"{scanner}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no gain series for {scanner}"))
                .parse()
                .unwrap()
        };
        assert!((gain("tv") + 10.0).abs() <= 1.5, "tv: {}", gain("tv"));
        for scanner in ["entrance", "laptops", "phones", "audio", "checkout"] {
            assert!(gain(scanner).abs() <= 1.5, "{scanner}: {}", gain(scanner));
        }
        assert_eq!(
            telemetry.counter("scanner_gain_alerts_total", &[("status", "drifted")]),
            1
        );
        assert_eq!(
            telemetry.counter("scanner_gain_alerts_total", &[("status", "deaf")]),
            0
        );
        // Presence takes the drift off tv's readings (no map: against 0).
        let drift = pipeline.gain.as_ref().unwrap().correction("tv").unwrap();
        assert!((drift + 10.0).abs() <= 1.5);
        assert!(!telemetry.render().contains("scanner=\"unknown"));

        // A reload of the same site keeps what was learned; one that moves
        // a scanner starts learning again (its expectations changed).
        let again = Arc::new(
            crate::config::from_layers("site.toml", Some(&site), Default::default()).unwrap(),
        );
        pipeline.apply_config(again);
        assert!(pipeline.gain.as_ref().unwrap().gain("tv").is_some());
        let moved = site.replacen("x = 34.0", "x = 33.0", 1);
        assert_ne!(moved, site);
        let moved = Arc::new(
            crate::config::from_layers("site.toml", Some(&moved), Default::default()).unwrap(),
        );
        pipeline.apply_config(moved);
        assert_eq!(pipeline.gain.as_ref().unwrap().gain("tv"), None);
    }
}
