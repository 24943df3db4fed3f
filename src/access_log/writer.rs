//! The access log's thread: receive entries, format them into a buffer, write the buffer
//! to the file (or standard output) when the channel runs empty, when it is large, or
//! when its oldest line has waited [`FLUSH_EVERY`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use super::{format, Msg, Settings, FLUSH_BYTES, FLUSH_EVERY};
use crate::config::AccessFormat;
use crate::stats::ProcessStats;

pub(super) fn run(rx: Receiver<Msg>, stats: Arc<ProcessStats>) {
    let mut sink = Sink {
        settings: None,
        out: Out::Closed,
        buf: Vec::with_capacity(FLUSH_BYTES + 4096),
        lines: 0,
        oldest: None,
        failing: false,
        stats,
    };
    // Block for the next message; then take what else is queued without blocking, and
    // write when the queue is empty.
    while let Ok(msg) = rx.recv() {
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            sink.handle(msg);
            next = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => None,
            };
        }
        sink.flush();
    }
    // Every sender is gone (the balancer was dropped): write what is left.
    sink.flush();
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
    /// Formatted lines not yet written.
    buf: Vec<u8>,
    /// How many lines `buf` holds.
    lines: u64,
    /// When the oldest line in `buf` was added.
    oldest: Option<Instant>,
    /// An open or write failed and was logged; logged again only after a success.
    failing: bool,
    stats: Arc<ProcessStats>,
}

impl Sink {
    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Line(entry) => {
                let Some(settings) = &self.settings else {
                    return;
                };
                match settings.format {
                    AccessFormat::Off => return,
                    AccessFormat::Json => format::json(&mut self.buf, &entry, settings.query),
                    AccessFormat::Combined => {
                        format::combined(&mut self.buf, &entry, settings.query)
                    }
                }
                self.lines += 1;
                let oldest = *self.oldest.get_or_insert_with(Instant::now);
                if self.buf.len() >= FLUSH_BYTES || oldest.elapsed() >= FLUSH_EVERY {
                    self.flush();
                }
            }
            Msg::Configure(settings) => {
                self.flush();
                self.settings = Some(settings);
                self.open();
            }
            Msg::Reopen => {
                self.flush();
                self.open();
            }
            Msg::Flush(done) => {
                self.flush();
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
