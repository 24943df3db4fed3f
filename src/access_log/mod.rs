//! The access log: one line per request record (`[log] access = "combined" | "json"`), to
//! standard output or to `[log] access_path`.
//!
//! The request path only hands an [`Entry`] (reference-counted handles, no formatting,
//! no allocation) to a bounded channel with `try_send`; when the channel is full the
//! line is dropped and counted (`clonelb_access_log_dropped_total`), so a slow disk never
//! holds up a request. The access log's own thread (`clonelb-access`, started the first
//! time the log is turned on) formats the lines into a buffer and writes it whenever the
//! channel runs empty, when it holds [`FLUSH_BYTES`], or [`FLUSH_EVERY`] after its oldest
//! line: a line reaches the file within a second of its request's end. Busy, it looks at
//! the queue every 20 ms rather than being woken per line (a wake-up per request would
//! cost a context switch per request).
//!
//! Rotation is logrotate's convention: rename the file, then SIGUSR1 (or a reload, which
//! also reopens): lines queued before the signal go to the renamed file, the rest to a new
//! file of the configured name. A failed open or write is logged once (until a reopen
//! succeeds) and counted per line lost (`clonelb_access_log_write_errors_total`); the
//! balancer goes on serving.
//!
//! Owns: the channel, the writer thread, the file. Must not touch: the request path's
//! state (it sees only entries), the configuration (control hands it [`Settings`]).

mod format;
mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};

use crate::config::{AccessFormat, LogConfig};
use crate::record::{AccessSink, Outcome, RequestHead, RequestRecord};
use crate::stats::ProcessStats;

/// Lines the channel holds before new ones are dropped.
pub const CAPACITY: usize = 8192;
/// The writer writes its buffer once it holds this much.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// ... or once its oldest line has waited this long.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Where and how lines are written; from `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub format: AccessFormat,
    /// `None`: standard output.
    pub path: Option<PathBuf>,
    /// Print the query string with the path.
    pub query: bool,
}

impl Settings {
    pub fn of(log: &LogConfig) -> Settings {
        Settings {
            format: log.access,
            path: log.access_path.clone(),
            query: log.access_query,
        }
    }
}

/// One finished request, as the access log needs it. Built on the worker from the record
/// (clones of reference-counted handles), formatted on the writer thread.
#[derive(Debug)]
pub struct Entry {
    /// When the request ended.
    pub time: SystemTime,
    pub client: SocketAddr,
    pub method: Method,
    pub head: RequestHead,
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    pub head_time: Option<Duration>,
    pub clone: Option<Arc<str>>,
    pub attempts: u32,
    pub outcome: Outcome,
    pub request_id: HeaderValue,
}

impl Entry {
    pub fn of(record: &RequestRecord<'_>, head: &RequestHead) -> Entry {
        Entry {
            time: SystemTime::now(),
            client: record.client,
            method: record.method.clone(),
            head: head.clone(),
            status: record.status,
            bytes: record.bytes,
            duration: record.duration,
            head_time: record.head_time,
            clone: record.clone.map(|c| c.name()),
            attempts: record.attempts,
            outcome: record.outcome,
            request_id: record.request_id.clone(),
        }
    }
}

/// What goes through the queue. Control's requests do not (see [`Requests`]).
// `Line` is the message sent per request, `Wake` is rare: boxing `Line` to shrink the
// enum would cost an allocation per line.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Line(Entry),
    /// Look at the pending [`Requests`].
    Wake,
}

/// What the control side asks of the writer. Not sent through the queue, which may be
/// full of lines a stalled file holds up: a reopen, a reload or a flush must never block
/// the control thread (or the admin API, or shutdown). The writer looks at these after
/// every batch of at most [`CAPACITY`] lines, and when woken.
#[derive(Default)]
struct Requests {
    /// New settings: write what is buffered, then (re)open.
    settings: Option<Settings>,
    /// Write what is buffered, then reopen the same path.
    reopen: bool,
    /// Write what is buffered, then answer each.
    flushed: Vec<SyncSender<()>>,
}

/// The requests and a flag that says there are some (one relaxed load per batch).
#[derive(Default)]
struct Pending {
    any: AtomicBool,
    requests: Mutex<Requests>,
}

impl Pending {
    /// The requests made since the last call, if any.
    fn take(&self) -> Option<Requests> {
        if !self.any.swap(false, Ordering::Acquire) {
            return None;
        }
        let mut r = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        Some(std::mem::take(&mut *r))
    }
}

/// The writer thread's two inputs.
struct Writer {
    tx: SyncSender<Msg>,
    pending: Arc<Pending>,
}

impl Writer {
    /// Record a request and wake the writer (when the queue is full it is busy and looks
    /// at the requests after its current batch anyway).
    fn ask(&self, f: impl FnOnce(&mut Requests)) {
        f(&mut self
            .pending
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner));
        self.pending.any.store(true, Ordering::Release);
        let _ = self.tx.try_send(Msg::Wake);
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

/// The access log of one balancer. Off (no thread, no queue) until first configured on;
/// its thread ends when the `AccessLog` is dropped (after writing what it holds).
#[derive(Debug, Default)]
pub struct AccessLog {
    writer: OnceLock<Writer>,
    /// Where its counters go (dropped and lost lines).
    stats: Arc<ProcessStats>,
}

impl AccessSink for AccessLog {
    #[inline]
    fn log(&self, record: &RequestRecord<'_>, head: &RequestHead) {
        AccessLog::log(self, Entry::of(record, head));
    }
}

impl AccessLog {
    pub fn new(stats: Arc<ProcessStats>) -> AccessLog {
        AccessLog {
            writer: OnceLock::new(),
            stats,
        }
    }

    /// Queue one line; never blocks. A full queue drops the line and counts it.
    #[inline]
    pub fn log(&self, entry: Entry) {
        let Some(w) = self.writer.get() else {
            return;
        };
        if w.tx.try_send(Msg::Line(entry)).is_err() {
            self.stats.count_access_log_dropped();
        }
    }

    /// Apply `[log]`'s access settings and reopen the file (every publish: start-up and
    /// each reload). Turning the log on the first time starts its thread. Never blocks.
    pub fn configure(&self, settings: Settings) {
        if settings.format == AccessFormat::Off && self.writer.get().is_none() {
            return;
        }
        if let Some(w) = self.writer() {
            w.ask(|r| r.settings = Some(settings));
        }
    }

    /// Reopen the file (SIGUSR1, or a reload that was rejected). Never blocks.
    pub fn reopen(&self) {
        if let Some(w) = self.writer.get() {
            w.ask(|r| r.reopen = true);
        }
    }

    /// Wait, up to `timeout`, until every line queued so far is written (or lost and
    /// counted): at shutdown, once the workers have stopped, and in tests. `false` when
    /// the writer did not get there in time (a file that takes no writes: a full pipe, a
    /// hung network mount).
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(w) = self.writer.get() else {
            return true;
        };
        let (done, wait) = mpsc::sync_channel(1);
        w.ask(|r| r.flushed.push(done));
        wait.recv_timeout(timeout).is_ok()
    }

    /// The writer, its thread started on first use (`None` when the thread cannot be
    /// started: logged, and the log stays off).
    fn writer(&self) -> Option<&Writer> {
        if let Some(w) = self.writer.get() {
            return Some(w);
        }
        let (tx, rx) = mpsc::sync_channel(CAPACITY);
        let pending = Arc::new(Pending::default());
        let stats = Arc::clone(&self.stats);
        let theirs = Arc::clone(&pending);
        let started = std::thread::Builder::new()
            .name("clonelb-access".into())
            .spawn(move || writer::run(rx, theirs, stats));
        match started {
            Ok(_) => {
                // A racing second start loses here; its thread sees its queue closed and
                // ends.
                let _ = self.writer.set(Writer { tx, pending });
                self.writer.get()
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the access log's thread: no access log");
                None
            }
        }
    }
}
