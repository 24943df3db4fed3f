//! The access log's thread: receive entries, format them into a buffer, write the buffer
//! to the file (or standard output) when the channel runs empty, when it is large, or
//! when its oldest line has waited [`FLUSH_EVERY`]. Under load it looks at the queue every
//! [`TICK`] instead of being woken per line.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::format::Formatter;
use super::{Msg, Pending, Settings, CAPACITY, FLUSH_BYTES, FLUSH_EVERY};
use crate::config::AccessFormat;
use crate::stats::ProcessStats;

pub(super) fn run(rx: Receiver<Msg>, pending: Arc<Pending>, stats: Arc<ProcessStats>) {
    let mut sink = Sink {
        settings: None,
        out: Out::Closed,
        fmt: Formatter::default(),
        buf: Vec::with_capacity(FLUSH_BYTES + 4096),
        lines: 0,
        oldest: None,
        failing: false,
        stats,
        pending,
    };
    // Idle: block until a message comes (its sender wakes this thread). Busy: take what
    // is queued, write it, then sleep one tick instead of blocking, so that under load the
    // workers' sends never have a sleeping receiver to wake (a wake-up per line would cost
    // a context switch per request). Back to blocking after a tick that found nothing.
    // Control's requests are looked at after every batch.
    while let Ok(first) = rx.recv() {
        sink.handle(first);
        loop {
            let drained = drain(&rx, &mut sink);
            sink.serve();
            match drained {
                Drained::Some => {}
                Drained::None => break,
                Drained::Closed => {
                    sink.flush();
                    return;
                }
            }
            sink.flush();
            std::thread::sleep(TICK);
        }
        sink.flush();
    }
    // Every sender is gone (the balancer was dropped): write what is left.
    sink.serve();
    sink.flush();
}

/// How long a busy writer sleeps between two looks at the queue.
const TICK: Duration = Duration::from_millis(20);

enum Drained {
    /// Messages were handled.
    Some,
    /// The queue was empty.
    None,
    /// Every sender is gone.
    Closed,
}

/// Handle the messages queued now, at most a queue's worth (so that under a constant
/// stream control's requests are still looked at).
fn drain(rx: &Receiver<Msg>, sink: &mut Sink) -> Drained {
    let mut handled = 0;
    loop {
        match rx.try_recv() {
            Ok(msg) => {
                sink.handle(msg);
                handled += 1;
                if handled >= CAPACITY {
                    return Drained::Some;
                }
            }
            Err(TryRecvError::Empty) if handled > 0 => return Drained::Some,
            Err(TryRecvError::Empty) => return Drained::None,
            Err(TryRecvError::Disconnected) => return Drained::Closed,
        }
    }
}

enum Out {
    /// Not configured yet, turned off, or the file could not be opened.
    Closed,
    Stdout,
    File(File),
}

struct Sink {
    settings: Option<Settings>,
    out: Out,
    fmt: Formatter,
    /// Formatted lines not yet written.
    buf: Vec<u8>,
    /// How many lines `buf` holds.
    lines: u64,
    /// When the oldest line in `buf` was added.
    oldest: Option<Instant>,
    /// An open or write failed and was logged; logged again only after a success.
    failing: bool,
    stats: Arc<ProcessStats>,
    /// Control's requests.
    pending: Arc<Pending>,
}

impl Sink {
    fn handle(&mut self, msg: Msg) {
        let Msg::Line(entry) = msg else {
            // `Wake`, sent right after a request: serve it now, so lines queued after it
            // (a reload's new settings, then the new table's lines) follow it.
            self.serve();
            return;
        };
        let Some(settings) = &self.settings else {
            return;
        };
        match settings.format {
            AccessFormat::Off => return,
            AccessFormat::Json => self.fmt.json(&mut self.buf, &entry, settings.query),
            AccessFormat::Combined => self.fmt.combined(&mut self.buf, &entry, settings.query),
        }
        self.lines += 1;
        let oldest = *self.oldest.get_or_insert_with(Instant::now);
        if self.buf.len() >= FLUSH_BYTES || oldest.elapsed() >= FLUSH_EVERY {
            self.flush();
        }
    }

    /// Carry out control's requests: new settings or a reopen (after writing what is
    /// buffered to the old file), then answer the flushes.
    fn serve(&mut self) {
        let Some(r) = self.pending.take() else {
            return;
        };
        if let Some(settings) = r.settings {
            self.flush();
            self.settings = Some(settings);
            self.open();
        } else if r.reopen {
            self.flush();
            self.open();
        }
        if !r.flushed.is_empty() {
            self.flush();
            for done in r.flushed {
                let _ = done.send(());
            }
        }
    }

    /// (Re)open the configured destination; the previous file is closed.
    fn open(&mut self) {
        self.out = Out::Closed;
        let Some(settings) = &self.settings else {
            return;
        };
        if settings.format == AccessFormat::Off {
            return;
        }
        match &settings.path {
            None => self.out = Out::Stdout,
            Some(path) => match OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => {
                    if self.failing {
                        tracing::info!(path = %path.display(), "access log open again");
                    }
                    self.failing = false;
                    self.out = Out::File(f);
                }
                Err(e) => {
                    let why = format!("cannot open {}: {e}", path.display());
                    self.fail(&why);
                }
            },
        }
    }

    /// Write the buffer out. Lines that cannot be written are counted as lost.
    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let written = match &mut self.out {
            Out::Closed => Err(None),
            Out::Stdout => write_all(&mut io::stdout().lock(), &self.buf),
            Out::File(f) => write_all(f, &self.buf),
        };
        match written {
            Ok(()) if self.failing => {
                tracing::info!("access log: writing again");
                self.failing = false;
            }
            Ok(()) => {}
            Err(None) => {
                // The destination could not be opened (already logged).
                self.stats.count_access_log_write_errors(self.lines);
            }
            Err(Some(e)) => {
                self.stats.count_access_log_write_errors(self.lines);
                let why = format!("write failed: {e}");
                self.fail(&why);
            }
        }
        self.buf.clear();
        self.lines = 0;
        self.oldest = None;
    }

    /// Log a failure, once until the next successful open.
    fn fail(&mut self, why: &str) {
        if !self.failing {
            tracing::error!(
                "access log: {why}; lines are counted as lost (clonelb_access_log_write_errors_total) until a reopen succeeds (SIGUSR1 or a reload)"
            );
            self.failing = true;
        }
    }
}

fn write_all(w: &mut impl Write, buf: &[u8]) -> Result<(), Option<io::Error>> {
    w.write_all(buf).and_then(|()| w.flush()).map_err(Some)
}
