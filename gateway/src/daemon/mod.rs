//! `gateway run`: the sources, the pipeline, delivery and the admin
//! endpoint as tasks joined by bounded channels, stopped by one
//! cancellation token. The wiring is here; the sighting path is in
//! `pipeline.rs`, each incoming MQTT topic in `incoming/` (the imports
//! below are shared with them).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::{EventClock, wall_ms};
use crate::config::{Config, SourceSettings};
use crate::decide::{self, ContentSources, Happening, NotReady, Prepared, build_nudge};
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
use crate::people::{People, PeopleError};
use crate::presence::gain::{GainStatus, GainTracker};
use crate::presence::{PresenceEngine, PresenceEvent, VisitSeed};
use crate::privacy::hashed;
use crate::ratelimit::{PerSecond, RecipientLimiter};
use crate::reservations::{self, DecisionJob, Reservations};
use crate::store::{FeedbackEntry, ReserveCandidate, Store, StoreError};
use crate::telemetry::{
    GainAlert, MAX_ECHO_CHARS, MAX_REASON_CHARS, MAX_TOPIC_ECHO_CHARS, Telemetry, events, truncated,
};
use crate::topics::{self, Incoming, classify};

mod incoming;
mod pipeline;
mod roll;

pub use incoming::{MAX_INCOMING_BYTES, beacon_scanner_id};
pub use pipeline::Pipeline;

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
    /// Recognised once per visit (a person who comes back is counted
    /// again): the run keeps no list of everyone it saw.
    pub people_recognised: u64,
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
        let (path, cache) = (config.storage_path.clone(), config.storage_cache_bytes);
        tokio::task::spawn_blocking(move || Store::open_with_cache(&path, cache))
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
    let homeassistant_outgoing = outgoing_tx.clone();
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
    // In a chain: other stores' decisions are folded by a task of their
    // own (stops, like the decider, once the pipeline is gone), and the
    // index from chain hash to person catches up with people imported
    // while the daemon was stopped, off the start's critical path.
    // Whether the chain index holds every person (it is kept as people
    // change from here on): then a snapshot written at shutdown can say so.
    let chain_index_complete = Arc::new(AtomicBool::new(false));
    let chain_folder = match &config.chain {
        Some(chain) => {
            let (folds_tx, folds_rx) = mpsc::channel(incoming::FOLD_QUEUE);
            pipeline.chain_folds = Some(folds_tx);
            let (sync_store, sync_telemetry, chain, complete) = (
                store.clone(),
                telemetry.clone(),
                chain.clone(),
                chain_index_complete.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let (store, telemetry) = (sync_store, sync_telemetry);
                let index_of = chain.person("");
                if store.chain_index_complete(&index_of).unwrap_or(false) {
                    complete.store(true, Ordering::SeqCst);
                    tracing::info!("chain index complete for these people; not checked again");
                    return;
                }
                match store
                    .chain_index_sync(&index_of, |id| chain.person(id))
                    .and_then(|added| store.mark_chain_index_complete().map(|()| added))
                {
                    Ok(added) => {
                        complete.store(true, Ordering::SeqCst);
                        tracing::info!(added, "chain index up to date");
                    }
                    Err(e) => events::storage_error(&telemetry, "chain_index", &e),
                }
            });
            Some(tokio::spawn(
                incoming::ChainFolder {
                    store: store.clone(),
                    telemetry: telemetry.clone(),
                    rx: folds_rx,
                }
                .run(),
            ))
        }
        None => None,
    };
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
        let (tx, telemetry, cancel) = (sighting_tx.clone(), telemetry.clone(), cancel.clone());
        spawn_source(&mut tasks, &sources_running, async move {
            sources::run_udp(socket, tx, telemetry, cancel).await;
        });
    }
    for source in config.sources.iter() {
        if let SourceSettings::Replay { path, speed } = source {
            let (tx, telemetry, cancel) = (sighting_tx.clone(), telemetry.clone(), cancel.clone());
            let (path, speed) = (path.clone(), *speed);
            spawn_source(&mut tasks, &sources_running, async move {
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
                let (tx, telemetry, cancel) =
                    (sighting_tx.clone(), telemetry.clone(), cancel.clone());
                spawn_source(&mut tasks, &sources_running, async move {
                    crate::io::ble::run_bluez(settings, tx, telemetry, cancel).await;
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
    // The broker's retained copies of our own discovery configs, for the
    // Home Assistant task to clear those an earlier run left.
    let (ha_found_tx, ha_found_rx) = mpsc::channel(mqtt::RETAINED_WATCH_QUEUE);
    tasks.spawn(crate::io::homeassistant::run(
        config_rx.clone(),
        telemetry.clone(),
        homeassistant_outgoing,
        config.homeassistant_scope.clone(),
        ha_found_rx,
        cancel.clone(),
    ));
    let delivery_cancel = CancellationToken::new();
    let delivery = tokio::spawn(
        mqtt::Delivery {
            config: config.clone(),
            store: store.clone(),
            telemetry: telemetry.clone(),
            outbox_ready: outbox_ready.clone(),
            incoming: incoming_tx,
            outgoing: outgoing_rx,
            subscriptions: topics::all_subscriptions(&config.topics),
            connected: connected_tx,
            refused_subscriptions: refused_tx,
            config_updates: config_rx.clone(),
            latency_stamps,
            retained_watch: Some(mqtt::RetainedWatch {
                filter: crate::io::homeassistant::watch_filter(&config.homeassistant_scope),
                found: ha_found_tx,
            }),
        }
        .run(delivery_cancel.clone()),
    );

    if let Some(started) = started {
        let _ = started.send(handles);
    }
    // The people from memory: sled's `len` walks the whole tree, and sled
    // keeps what a walk paged in (80 MB at a million people).
    tracing::info!(store = %config.store_id, people = pipeline.people.len(), outbox = store.outbox_len(), "gateway running");

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
    drop(pipeline);
    if let Err(e) = decider.await {
        events::storage_error(&telemetry, "reserve", &e);
    }
    if let Some(folder) = chain_folder {
        if let Err(e) = folder.await {
            events::storage_error(&telemetry, "chain_fold", &e);
        }
    }
    while tasks.join_next().await.is_some() {}
    outbox_ready.notify_one();
    delivery_cancel.cancel();
    let _ = delivery.await;
    if let Err(e) = store.flush_async().await {
        events::storage_error(&telemetry, "shutdown_flush", &e);
    }
    // People changed while it ran: the next start would scan sled (slower,
    // and sled keeps what the scan paged in); a snapshot written now saves
    // that (also when the current one is in tag order, written during this
    // start's scan). Cut short by a kill, it is simply not used.
    if store.people_snapshot_needs_writing() {
        let (snapshot_store, started) = (store.clone(), std::time::Instant::now());
        match tokio::task::spawn_blocking(move || snapshot_store.write_people_snapshot()).await {
            Ok(Ok(people)) => {
                tracing::info!(
                    people,
                    ms = started.elapsed().as_millis() as u64,
                    "people snapshot written for the next start"
                );
                // Every person this run changed was indexed as it changed.
                if config.chain.is_some() && chain_index_complete.load(Ordering::SeqCst) {
                    if let Err(e) = store.mark_chain_index_complete() {
                        events::storage_error(&telemetry, "chain_index", &e);
                    }
                }
            }
            Ok(Err(e)) => events::storage_error(&telemetry, "people_snapshot", &e),
            Err(e) => tracing::warn!(error = %e, "people snapshot task failed"),
        }
    }
    Ok(summarise(&telemetry))
}

/// Run a sighting source as a task, counted in `running` (what `/readyz`
/// reads) from now until it ends.
fn spawn_source(
    tasks: &mut tokio::task::JoinSet<()>,
    running: &Arc<AtomicUsize>,
    source: impl std::future::Future<Output = ()> + Send + 'static,
) {
    running.fetch_add(1, Ordering::Relaxed);
    let running = running.clone();
    tasks.spawn(async move {
        source.await;
        running.fetch_sub(1, Ordering::Relaxed);
    });
}

fn summarise(t: &Telemetry) -> RunSummary {
    let caps = [
        "per_visit",
        "per_day",
        "per_week",
        "min_gap",
        "per_kind_per_day",
        "rule_cooldown",
        "store_rate",
        "quiet_hours",
        "chain_per_day",
        "chain_per_week",
        "chain_min_gap",
    ];
    let held_by_caps: u64 = caps
        .iter()
        .map(|r| t.counter("nudges_held_total", &[("reason", r)]))
        .sum();
    RunSummary {
        sightings: t.counter("sightings_total", &[]),
        people_recognised: t.counter("people_recognised_total", &[]),
        nudges_reserved: t.counter("nudges_reserved_total", &[]),
        nudges_held_by_caps: held_by_caps,
        nudges_held_other: t.counter("nudges_held_total", &[]) - held_by_caps,
    }
}
