//! The audit task ([`Audit`]): the bounded queue the request path hands sampled
//! [`Job`]s to, the thread that replays them on a peer clone, and the verdicts and
//! counters `/status` and the metrics read.
//!
//! **Where replays run.** The issue puts them on the admin runtime, but that runtime
//! exists only with `[admin]`; the audit has its own thread instead (`clonelb-audit`, a
//! current-thread tokio runtime), started the first time the audit is configured on, as
//! the access log starts its writer. Either way no replay ever runs on a worker. The
//! thread ends when the `Audit` is dropped (its queue closes; replays still in flight are
//! dropped with the runtime).
//!
//! **The queue** is tokio's bounded `mpsc` (capacity [`QUEUE`]) rather than the access
//! log's `std::sync::mpsc::sync_channel`: its consumer is a task on the audit's runtime,
//! which must wait for jobs without blocking that runtime's thread. Its `try_send` never
//! blocks a worker; a full queue skips the sample as [`Skip::Busy`].
//!
//! **Replays in flight** are at most `max_concurrent`: a job that finds them all taken is
//! skipped as [`Skip::Busy`], never queued. This is a counter checked and bumped by the
//! one consumer (released when a replay ends) rather than a tokio `Semaphore`, so a reload
//! that changes `max_concurrent` applies to the next job at once.
//!
//! Per job, in order: the served answer over `max_response` ([`Skip::TooLarge`]); no
//! peer ([`Skip::NoPeer`], see [`replay::pick_peer`]); no free slot ([`Skip::Busy`]); then
//! the replay ([`replay::replay`]: [`Skip::TooLarge`] or [`Skip::ReplayFailed`]), the
//! comparison ([`verdict::compare`]) and [`Verdicts::record`] with the path (never the
//! query). Jobs that arrive while the audit is off are dropped uncounted.
//!
//! Owns: the queue, the thread, the verdicts, the skip counters. Must not touch: the
//! clones' counters, health or pools (see [`replay`]), the routing table's rotation.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use arc_swap::ArcSwapOption;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::mpsc;

use super::job::{Job, Settings, Skip};
use super::replay;
use super::verdict::{self, CloneKey, Verdicts};
use crate::table::SharedTable;

/// Jobs the queue holds before new ones are skipped as [`Skip::Busy`].
pub const QUEUE: usize = 1024;

/// The audit as `/status` and the metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSnapshot {
    /// Configured on (an `[audit]` section).
    pub enabled: bool,
    /// Samples not compared, per reason, in [`Skip::ALL`]'s order.
    pub skipped: [(Skip, u64); Skip::ALL.len()],
    /// Checked, mismatches (in total and per clone), the odd clone, the recent mismatches.
    pub verdicts: verdict::Snapshot,
}

impl AuditSnapshot {
    /// Samples compared (`clonelb_audit_checks_total`).
    pub fn checked(&self) -> u64 {
        self.verdicts.checked
    }

    /// Comparisons that disagreed.
    pub fn mismatches(&self) -> u64 {
        self.verdicts.mismatches
    }

    /// Samples skipped for `reason`.
    pub fn skipped(&self, reason: Skip) -> u64 {
        self.skipped
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Samples skipped for any reason.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.iter().map(|(_, n)| n).sum()
    }

    /// The odd clone's name, if there is one.
    pub fn odd_clone(&self) -> Option<&str> {
        self.verdicts.odd_clone.as_ref().map(|c| &*c.name)
    }
}

/// What the consumer reads per job: the settings and the table, swapped whole.
#[derive(Debug)]
struct Live {
    settings: Settings,
    table: Arc<SharedTable>,
}

/// What the request path, the control plane and the audit's thread share.
#[derive(Debug, Default)]
struct Inner {
    /// `None`: the audit is off.
    live: ArcSwapOption<Live>,
    verdicts: Mutex<Verdicts>,
    /// Per [`Skip`], indexed by [`slot`].
    skipped: [AtomicU64; Skip::ALL.len()],
}

/// The counter index of a skip reason.
fn slot(reason: Skip) -> usize {
    match reason {
        Skip::Busy => 0,
        Skip::NoPeer => 1,
        Skip::TooLarge => 2,
        Skip::ReplayFailed => 3,
    }
}

impl Inner {
    fn skip(&self, reason: Skip) {
        if let Some(n) = self.skipped.get(slot(reason)) {
            n.fetch_add(1, Relaxed);
        }
    }

    fn verdicts(&self) -> MutexGuard<'_, Verdicts> {
        self.verdicts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The consistency audit of one balancer, shared by `Arc` between the request path
/// ([`submit`](Self::submit)) and the control plane ([`configure`](Self::configure),
/// [`reset`](Self::reset), [`forget`](Self::forget), [`snapshot`](Self::snapshot)).
/// Off (no thread, no queue) until first configured on.
#[derive(Debug, Default)]
pub struct Audit {
    /// The queue to the audit's thread, once started.
    tx: OnceLock<mpsc::Sender<Job>>,
    inner: Arc<Inner>,
}

impl Audit {
    pub fn new() -> Audit {
        Audit::default()
    }

    /// Hand a sampled request to the audit; never blocks. A full queue skips it
    /// ([`Skip::Busy`]); before the audit was ever configured on, it is dropped.
    pub fn submit(&self, job: Job) {
        let Some(tx) = self.tx.get() else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(job) {
            self.inner.skip(Skip::Busy);
        }
    }

    /// Apply `[audit]` (every publish: start-up and each reload): `None` turns the audit
    /// off (queued jobs are then dropped, the verdicts and counters stay), `Some` on with
    /// these settings and `table` (the balancer's shared routing table). The first `Some`
    /// starts the audit's thread. Never blocks.
    pub fn configure(&self, settings: Option<Settings>, table: Arc<SharedTable>) {
        match settings {
            None => self.inner.live.store(None),
            Some(settings) => {
                self.inner
                    .live
                    .store(Some(Arc::new(Live { settings, table })));
                self.start();
            }
        }
    }

    /// Whether the audit is configured on.
    pub fn is_on(&self) -> bool {
        self.inner.live.load().is_some()
    }

    /// Clear a clone's comparison window: it went down, was enabled, or reports a new
    /// version (see [`Verdicts::reset`]).
    pub fn reset(&self, addr: SocketAddr) {
        self.inner.verdicts().reset(addr);
    }

    /// Drop a clone that left the pool (see [`Verdicts::forget`]).
    pub fn forget(&self, addr: SocketAddr) {
        self.inner.verdicts().forget(addr);
    }

    /// Everything `/status` and the metrics show of the audit.
    pub fn snapshot(&self) -> AuditSnapshot {
        let verdicts = self.inner.verdicts().snapshot();
        AuditSnapshot {
            enabled: self.is_on(),
            skipped: Skip::ALL.map(|r| {
                let n = self
                    .inner
                    .skipped
                    .get(slot(r))
                    .map_or(0, |n| n.load(Relaxed));
                (r, n)
            }),
            verdicts,
        }
    }

    /// Start the audit's thread, unless it runs already (only the control plane
    /// configures, so there is no race to start it twice).
    fn start(&self) {
        if self.tx.get().is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let inner = Arc::clone(&self.inner);
        let started = std::thread::Builder::new()
            .name("clonelb-audit".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(rt) => rt.block_on(run(rx, inner)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the audit's runtime: no audit")
                    }
                }
            });
        match started {
            Ok(_) => {
                let _ = self.tx.set(tx);
            }
            Err(e) => tracing::error!(error = %e, "cannot start the audit's thread: no audit"),
        }
    }
}

/// A replay slot, given back when the replay ends (or its task is dropped).
struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The consumer: one job at a time off the queue, each replay on a task of its own.
async fn run(mut rx: mpsc::Receiver<Job>, inner: Arc<Inner>) {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let in_flight = Arc::new(AtomicU32::new(0));
    while let Some(job) = rx.recv().await {
        let Some(live) = inner.live.load_full() else {
            continue; // off: dropped uncounted
        };
        if job.answer.body_len > live.settings.max_response {
            inner.skip(Skip::TooLarge);
            continue;
        }
        let peer = {
            let table = live.table.load();
            replay::pick_peer(&table, &job.served, &mut rng).map(|b| Arc::clone(&b.state))
        };
        let Some(peer) = peer else {
            inner.skip(Skip::NoPeer);
            continue;
        };
        // Checked and bumped only here, on the one consumer: no race between the two.
        if in_flight.load(Relaxed) >= live.settings.max_concurrent {
            inner.skip(Skip::Busy);
            continue;
        }
        in_flight.fetch_add(1, Relaxed);
        let slot = Slot(Arc::clone(&in_flight));
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            let _slot = slot;
            let settings = &live.settings;
            let replayed = match replay::replay(&job, &peer, settings).await {
                Ok(answer) => answer,
                Err(reason) => {
                    inner.skip(reason);
                    return;
                }
            };
            let difference = verdict::compare(&job.answer, &replayed, &settings.ignore_headers);
            let served = CloneKey::new(job.served.address(), job.served.name());
            let peer = CloneKey::new(peer.address(), peer.name());
            inner
                .verdicts()
                .record(served, peer, job.uri.path(), difference);
        });
    }
}

#[cfg(test)]
mod tests;

impl crate::tap::Audits for Audit {
    fn tap(
        self: Arc<Self>,
        head: crate::tap::SampledHead,
        served: Arc<crate::backend::BackendState>,
        status: http::StatusCode,
        headers: http::HeaderMap,
        max_response: u64,
    ) -> Box<dyn crate::tap::Tap> {
        Box::new(super::job::AuditTap::new(
            head,
            served,
            status,
            headers,
            max_response,
            self,
        ))
    }
}
