//! The reservation stage: decisions composed by the pipeline are reserved
//! durably in batches, off the pipeline's task.
//!
//! The pipeline sends one [`DecisionJob`] per person's decision into a
//! bounded channel and goes on with the next sighting; backpressure is the
//! channel filling up. One [`Decider`] task drains whatever is queued (up to
//! [`MAX_BATCH`] jobs), reserves them in one sled transaction
//! ([`Store::reserve_batch_unflushed`]) and then one group-commit flush, on
//! blocking threads, and only after the flush reports each outcome (events,
//! latency stamps) and wakes delivery. The flush of one batch overlaps the
//! transaction of the next (transactions stay one after the other, in
//! queue order), so the disk's wait is not added to every batch.
//! Jobs are handled in the order they were sent, so one person's decisions
//! keep their order; caps are checked inside the transaction, so they hold
//! exactly however the jobs are batched (docs/design.md §4 invariant 1).
//!
//! Shutdown: the decider stops when every [`Reservations`] handle is
//! dropped, after reserving everything still queued. A batch is written
//! whole or not at all, and is reported only once it is on disk.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::Config;
use crate::decide::Limits;
use crate::identity::PersonId;
use crate::store::{ChainJob, Reservation, ReserveCandidate, ReserveJob, Store, StoreError};
use crate::telemetry::{LatencyStamps, MAX_LATENCY_STAMPS, Telemetry, events};

/// Jobs that may wait for the decider before the pipeline waits too.
pub const QUEUE: usize = 1024;
/// Most jobs reserved in one transaction and one flush.
pub const MAX_BATCH: usize = 256;

/// One person's decision: the candidates that passed consent and were
/// composed, in priority order (see [`Store::reserve_batch`]).
pub struct DecisionJob {
    pub person: PersonId,
    /// The salted hash the person is logged as.
    pub person_hash: String,
    pub recipient: String,
    pub candidates: Vec<ReserveCandidate>,
    /// In a chain (`config.chain`): the person's chain hash, their own
    /// time zone (for `day = "home"`) and the decisions topic.
    pub chain: Option<ChainPersonJob>,
    /// The configuration in force when the candidates were made: caps,
    /// quiet hours, time zone, kill switch.
    pub config: Arc<Config>,
    /// When the sighting behind it arrived, for sighting → PUBACK.
    pub arrival: Option<Instant>,
    /// When it was handed to the stage.
    pub submitted: Instant,
    /// Whoever wants the outcome back (tests, benchmarks).
    pub reply: Option<oneshot::Sender<JobOutcome>>,
}

/// What a decision needs to know of the person in a chain.
#[derive(Clone, Debug)]
pub struct ChainPersonJob {
    pub person: crate::privacy::ChainPerson,
    pub home: Option<chrono_tz::Tz>,
    /// This store's `<p>/chain/decisions/<s>`.
    pub topic: String,
}

impl DecisionJob {
    fn view(&self) -> ReserveJob<'_> {
        let chain = match (&self.chain, &self.config.chain) {
            (Some(job), Some(settings)) => Some(ChainJob {
                person: job.person,
                caps: &settings.caps,
                home: job.home,
                topic: &job.topic,
            }),
            _ => None,
        };
        ReserveJob {
            chain,
            person: &self.person,
            recipient: &self.recipient,
            candidates: &self.candidates,
            limits: Limits {
                caps: &self.config.caps,
                quiet: self.config.quiet_hours.as_ref(),
                tz: &self.config.timezone,
                enabled: self.config.nudges_enabled,
            },
        }
    }
}

/// What became of a job, once durable.
#[derive(Debug)]
pub struct JobOutcome {
    /// Every candidate tried, in order (see [`Store::reserve_batch`]).
    pub tried: Result<Vec<Reservation>, Arc<StoreError>>,
    /// When the batch holding it was on disk (or failed).
    pub finished: Instant,
    /// How many jobs shared its transaction and flush.
    pub batch_size: usize,
}

enum Request {
    Decide(DecisionJob),
    /// Answered once every job sent before it is durable and reported.
    Settle(oneshot::Sender<()>),
}

#[derive(Debug, thiserror::Error)]
#[error("the reservation stage has stopped")]
pub struct Stopped;

/// The sending side, held by the pipeline.
#[derive(Clone)]
pub struct Reservations {
    tx: mpsc::Sender<Request>,
}

impl Reservations {
    /// Queue a decision; waits only while the queue is full.
    pub async fn submit(&self, job: DecisionJob) -> Result<(), Stopped> {
        self.tx
            .send(Request::Decide(job))
            .await
            .map_err(|_| Stopped)
    }

    /// Wait until every decision submitted so far is durable and reported:
    /// before a consent withdrawal or an erasure touches the person's data,
    /// so that no queued decision is reserved after it.
    pub async fn settle(&self) -> Result<(), Stopped> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Settle(tx))
            .await
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }
}

/// The receiving side: run it as one task.
pub struct Decider {
    store: Store,
    telemetry: Arc<Telemetry>,
    outbox_ready: Arc<Notify>,
    latency_stamps: LatencyStamps,
    rx: mpsc::Receiver<Request>,
    max_batch: usize,
}

/// A bounded stage: `queue` jobs may wait, at most `max_batch` share a
/// transaction (both at least 1).
pub fn stage(
    store: Store,
    telemetry: Arc<Telemetry>,
    outbox_ready: Arc<Notify>,
    latency_stamps: LatencyStamps,
    queue: usize,
    max_batch: usize,
) -> (Reservations, Decider) {
    let (tx, rx) = mpsc::channel(queue.max(1));
    (
        Reservations { tx },
        Decider {
            store,
            telemetry,
            outbox_ready,
            latency_stamps,
            rx,
            max_batch: max_batch.max(1),
        },
    )
}

/// A batch whose transaction is committed and whose flush is running.
struct Flushing {
    jobs: Vec<DecisionJob>,
    tried: Vec<Tried>,
    flush: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl Decider {
    /// Reserve batches until every sender is gone and the queue is empty.
    pub async fn run(mut self) {
        let mut jobs = Vec::with_capacity(self.max_batch);
        let mut settled = Vec::new();
        let mut flushing: Option<Flushing> = None;
        loop {
            // While a batch is being flushed, start the next only with what
            // is already queued; otherwise finish that one first.
            let first = if flushing.is_some() {
                match self.rx.try_recv() {
                    Ok(request) => Some(request),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.finish(flushing.take()).await;
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            } else {
                self.rx.recv().await
            };
            let Some(first) = first else { break };
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Decide(job) => jobs.push(job),
                    // Everything before it is in this batch: answer after it.
                    Request::Settle(done) => {
                        settled.push(done);
                        break;
                    }
                }
                if jobs.len() < self.max_batch {
                    next = self.rx.try_recv().ok();
                }
            }
            if !jobs.is_empty() {
                let batch = std::mem::replace(&mut jobs, Vec::with_capacity(self.max_batch));
                // This batch's transaction runs while the previous batch's
                // flush finishes; transactions stay in queue order.
                let committed = self.commit(batch).await;
                self.finish(flushing.take()).await;
                flushing = committed.map(|(jobs, tried)| self.start_flush(jobs, tried));
            }
            if !settled.is_empty() {
                self.finish(flushing.take()).await;
                for done in settled.drain(..) {
                    let _ = done.send(());
                }
            }
        }
        self.finish(flushing.take()).await;
    }

    /// The batch's transaction, on a blocking thread. `None` if that
    /// thread panicked (the jobs went with it).
    async fn commit(&self, jobs: Vec<DecisionJob>) -> Option<(Vec<DecisionJob>, Vec<Tried>)> {
        let store = self.store.clone();
        // sled transactions and flushes block: keep them off the workers.
        match tokio::task::spawn_blocking(move || reserve(&store, jobs)).await {
            Ok(done) => Some(done),
            Err(e) => {
                events::storage_error(&self.telemetry, "reserve", &e);
                None
            }
        }
    }

    fn start_flush(&self, jobs: Vec<DecisionJob>, tried: Vec<Tried>) -> Flushing {
        let store = self.store.clone();
        Flushing {
            jobs,
            tried,
            flush: tokio::task::spawn_blocking(move || store.flush()),
        }
    }

    /// Wait for a batch's flush, then report it and wake delivery.
    async fn finish(&self, flushing: Option<Flushing>) {
        let Some(Flushing { jobs, tried, flush }) = flushing else {
            return;
        };
        let flushed: Result<(), Arc<StoreError>> = match flush.await {
            Ok(result) => result.map_err(Arc::new),
            Err(e) => Err(Arc::new(StoreError::Flush(e.to_string()))),
        };
        let finished = Instant::now();
        let batch_size = jobs.len();
        events::reservation_batch(&self.telemetry, batch_size);
        let mut reserved_any = false;
        for (job, tried) in jobs.into_iter().zip(tried) {
            // Not durable, not done: a failed flush fails the whole batch.
            let tried = match (&flushed, tried) {
                (Err(e), Ok(_)) => Err(e.clone()),
                (_, tried) => tried,
            };
            events::decision_durable(&self.telemetry, finished.duration_since(job.submitted));
            match &tried {
                Ok(tried) => {
                    for (candidate, outcome) in job.candidates.iter().zip(tried) {
                        match outcome {
                            Reservation::Reserved { .. } => {
                                reserved_any = true;
                                self.stamp(&candidate.nudge_id, job.arrival);
                                events::nudge_reserved(
                                    &self.telemetry,
                                    &job.person_hash,
                                    &candidate.rule,
                                    candidate.kind,
                                    &candidate.nudge_id,
                                );
                                // Its chain entry went into the chain
                                // outbox in the same transaction.
                                if job.chain.is_some() && job.config.chain.is_some() {
                                    events::chain_entries_queued(&self.telemetry, 1);
                                }
                            }
                            Reservation::Held(reason) => events::nudge_held(
                                &self.telemetry,
                                &job.person_hash,
                                &candidate.rule,
                                reason,
                            ),
                        }
                    }
                }
                Err(e) => events::storage_error(&self.telemetry, "reserve", e),
            }
            if let Some(reply) = job.reply {
                let _ = reply.send(JobOutcome {
                    tried,
                    finished,
                    batch_size,
                });
            }
        }
        // Delivery sees the batch only now that it is on disk.
        if reserved_any {
            self.outbox_ready.notify_one();
        }
    }

    fn stamp(&self, nudge_id: &str, arrival: Option<Instant>) {
        let Some(arrived) = arrival else {
            return;
        };
        let mut stamps = self
            .latency_stamps
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if stamps.len() < MAX_LATENCY_STAMPS {
            stamps.insert(nudge_id.to_string(), arrived);
        }
    }
}

type Tried = Result<Vec<Reservation>, Arc<StoreError>>;

/// Commit a batch (not flushed); if it fails on one person's data before
/// anything was written (a ledger that does not parse, a key that could
/// not be made), commit the jobs one by one so that only that person's
/// decision fails.
fn reserve(store: &Store, jobs: Vec<DecisionJob>) -> (Vec<DecisionJob>, Vec<Tried>) {
    let views: Vec<ReserveJob<'_>> = jobs.iter().map(DecisionJob::view).collect();
    let outcomes = match store.reserve_batch_unflushed(&views) {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(StoreError::Corrupt { .. } | StoreError::Vault(_)) if views.len() > 1 => views
            .iter()
            .map(|view| {
                store
                    .reserve_batch_unflushed(std::slice::from_ref(view))
                    .map(|mut one| one.pop().unwrap_or_default())
                    .map_err(Arc::new)
            })
            .collect(),
        Err(e) => {
            let e = Arc::new(e);
            views.iter().map(|_| Err(e.clone())).collect()
        }
    };
    drop(views);
    (jobs, outcomes)
}

#[cfg(test)]
mod tests;
