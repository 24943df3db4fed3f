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
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};

use crate::config::{AccessFormat, LogConfig};
use crate::record::{Outcome, RequestHead, RequestRecord};
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

// `Line` is the message sent per request, the others are rare: boxing it to shrink the
// enum would cost an allocation per line.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Line(Entry),
    /// New settings: flush, then (re)open.
    Configure(Settings),
    /// Flush, then reopen the same path.
    Reopen,
    /// Flush, then answer.
    Flush(SyncSender<()>),
}

/// The access log of one balancer. Off (no thread, no channel) until first configured on;
/// its thread ends when the `AccessLog` is dropped (after writing what it holds).
#[derive(Debug, Default)]
pub struct AccessLog {
    writer: OnceLock<SyncSender<Msg>>,
    /// Where its counters go (dropped and lost lines).
    stats: Arc<ProcessStats>,
}

impl AccessLog {
    pub fn new(stats: Arc<ProcessStats>) -> AccessLog {
        AccessLog {
            writer: OnceLock::new(),
            stats,
        }
    }

    /// Queue one line; never blocks. A full channel drops the line and counts it.
    #[inline]
    pub fn log(&self, entry: Entry) {
        let Some(tx) = self.writer.get() else {
            return;
        };
        if tx.try_send(Msg::Line(entry)).is_err() {
            self.stats.count_access_log_dropped();
        }
    }

    /// Apply `[log]`'s access settings and reopen the file (every publish: start-up and
    /// each reload). Turning the log on the first time starts its thread.
    pub fn configure(&self, settings: Settings) {
        if settings.format == AccessFormat::Off && self.writer.get().is_none() {
            return;
        }
        if let Some(tx) = self.writer() {
            let _ = tx.send(Msg::Configure(settings));
        }
    }

    /// Reopen the file (SIGUSR1, or a reload that was rejected).
    pub fn reopen(&self) {
        if let Some(tx) = self.writer.get() {
            let _ = tx.send(Msg::Reopen);
        }
    }

    /// Wait until every line queued so far is written (or lost and counted): at shutdown,
    /// once the workers have stopped, and in tests.
    pub fn flush(&self) {
        if let Some(tx) = self.writer.get() {
            let (done, wait) = mpsc::sync_channel(1);
            if tx.send(Msg::Flush(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }

    /// The writer's channel, its thread started on first use (`None` when the thread
    /// cannot be started: logged, and the log stays off).
    fn writer(&self) -> Option<&SyncSender<Msg>> {
        if let Some(tx) = self.writer.get() {
            return Some(tx);
        }
        let (tx, rx) = mpsc::sync_channel(CAPACITY);
        let stats = Arc::clone(&self.stats);
        let started = std::thread::Builder::new()
            .name("clonelb-access".into())
            .spawn(move || writer::run(rx, stats));
        match started {
            Ok(_) => {
                // A racing second start loses here; its thread sees its channel closed
                // and ends.
                let _ = self.writer.set(tx);
                self.writer.get()
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the access log's thread: no access log");
                None
            }
        }
    }
}
