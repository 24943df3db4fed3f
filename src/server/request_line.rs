//! The request target's length, watched on the client socket before hyper parses it.
//!
//! hyper answers 431 once a request head outgrows its read buffer (`max_header_size`),
//! before clonelb sees the request, so a 70 KB URI would be 431 although its target alone
//! is over `max_request_line` (414). [`LineWatch`] follows the first line of each request
//! head as the bytes are read: it skips the method, then counts the target's path and query
//! (what `forward::prepare` measures: the scheme and authority of an absolute-form target
//! are not counted), and stops at the end of the target. Once more than `max_request_line`
//! bytes of it are in, [`super::deadline::DeadlineIo`] hides them from hyper and answers
//! [`RESPONSE`] itself.
//!
//! Cost: a byte-by-byte pass over the request line's bytes only, once per request; nothing
//! after the target is looked at, nothing is allocated.
//!
//! A head is known to start at the first byte of a connection and at the first byte read
//! after a request was served. A pipelined request whose head began inside an earlier
//! read is not followed (those bytes are not the start of a line here); a line that does
//! not start like `METHOD /…` or `METHOD scheme://…` is not counted. Either way the request
//! is then judged as before: 414 by `forward::prepare`, or 431 if its head overflows first.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The body of clonelb's own 414 (`proxy::error_text` of `RequestError::UriTooLong`).
macro_rules! body {
    () => {
        "414 URI Too Long: request target longer than max_request_line\n"
    };
}

/// The whole answer written when a request target is too long; the connection then closes.
pub const RESPONSE: &[u8] = concat!(
    "HTTP/1.1 414 URI Too Long\r\n",
    "content-type: text/plain; charset=utf-8\r\n",
    "connection: close\r\n",
    "content-length: 62\r\n",
    "\r\n",
    body!(),
)
.as_bytes();

/// Longer than any method worth counting a target for: the bytes are not a request line.
const MAX_METHOD: u16 = 64;
/// Longer than any scheme: an authority-form target (`CONNECT a:443`) or not a URI.
const MAX_SCHEME: u16 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The method, so far this long.
    Method(u16),
    /// After the method's space: the target's first byte decides its form.
    TargetStart,
    /// Absolute-form: the scheme, so far this long, and how much of "://" matched.
    Scheme(u16, u8),
    /// Absolute-form: the authority, up to the path or query.
    Authority,
    /// Path and query: counted.
    Path,
    /// The target ended (or this was no request line): nothing more to look at.
    Done,
}

/// What the bytes read so far say about the current request line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Fine so far, or judged fine.
    Pass,
    /// The target has more than `max_request_line` bytes.
    TooLong,
}

/// One connection's watch over its request lines.
#[derive(Debug)]
pub struct LineWatch {
    /// `max_request_line`; 0: off (HTTP/2).
    limit: u64,
    state: State,
    /// Path-and-query bytes of the current target so far.
    counted: u64,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl LineWatch {
    /// Watching the first request line of a connection; `limit` 0 turns the watch off.
    pub fn new(limit: u64) -> Self {
        LineWatch {
            limit,
            state: if limit == 0 {
                State::Done
            } else {
                State::Method(0)
            },
            counted: 0,
        }
    }

    /// The next bytes read start a request head.
    #[inline]
    pub fn start(&mut self) {
        if self.limit != 0 {
            self.state = State::Method(0);
            self.counted = 0;
        }
    }

    /// Whether bytes read now need a look (a cheap check before [`LineWatch::scan`]).
    #[inline]
    pub fn watching(&self) -> bool {
        self.state != State::Done
    }

    /// Follow the line through `bytes`, the next ones read.
    pub fn scan(&mut self, bytes: &[u8]) -> Verdict {
        for &b in bytes {
            self.state = match self.state {
                State::Done => return Verdict::Pass,
                State::Method(n) if b == b' ' && n > 0 => State::TargetStart,
                State::Method(n) if is_tchar(b) && n < MAX_METHOD => State::Method(n + 1),
                State::Method(_) => State::Done,
                State::TargetStart => match b {
                    b'/' => {
                        self.counted = 1;
                        State::Path
                    }
                    b' ' | b'\r' | b'\n' | b'*' => State::Done,
                    _ => State::Scheme(1, u8::from(b == b':')),
                },
                State::Scheme(n, matched) => match b {
                    b' ' | b'\r' | b'\n' => State::Done,
                    _ if n >= MAX_SCHEME => State::Done,
                    b'/' if matched == 2 => State::Authority,
                    b'/' if matched == 1 => State::Scheme(n + 1, 2),
                    b':' => State::Scheme(n + 1, 1),
                    _ => State::Scheme(n + 1, 0),
                },
                State::Authority => match b {
                    b'/' | b'?' => {
                        self.counted = 1;
                        State::Path
                    }
                    b' ' | b'\r' | b'\n' | b'#' => State::Done,
                    _ => State::Authority,
                },
                State::Path => match b {
                    b' ' | b'\r' | b'\n' | b'#' => State::Done,
                    _ => {
                        self.counted += 1;
                        if self.counted > self.limit {
                            self.state = State::Done;
                            return Verdict::TooLong;
                        }
                        State::Path
                    }
                },
            };
        }
        Verdict::Pass
    }
}

/// Where the 414 answer is: written, flushed, the write side shut, then what the client
/// still sends is read and dropped until it closes (closing a socket with unread bytes
/// would send a reset, and the client could lose the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejecting {
    Write(usize),
    Flush,
    Shutdown,
    Drain,
}

/// Reads dropped per poll while draining before yielding to other tasks.
const DRAIN_READS_PER_POLL: usize = 16;

/// Drive the 414 answer on `io`. `buf` is the reader's buffer, used as scratch (nothing is
/// left in it). Ends in an error (the client closed, or the socket failed), never in bytes
/// for the reader: hyper answers nothing of its own on an I/O error.
pub fn poll_reject<T: AsyncRead + AsyncWrite + Unpin>(
    step: &mut Rejecting,
    io: &mut T,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    loop {
        match *step {
            Rejecting::Write(at) if at < RESPONSE.len() => {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, &RESPONSE[at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *step = Rejecting::Write(at + n);
            }
            Rejecting::Write(_) => *step = Rejecting::Flush,
            Rejecting::Flush => {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                *step = Rejecting::Shutdown;
            }
            Rejecting::Shutdown => {
                ready!(Pin::new(&mut *io).poll_shutdown(cx))?;
                *step = Rejecting::Drain;
            }
            Rejecting::Drain => {
                for _ in 0..DRAIN_READS_PER_POLL {
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut *io).poll_read(cx, buf))?;
                    let got = buf.filled().len() - before;
                    buf.set_filled(before);
                    if got == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "request target longer than max_request_line: answered 414",
                        )));
                    }
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ProxyError, RequestError};

    #[test]
    fn the_answer_is_clonelbs_own_414() {
        let text = crate::proxy::error_text(&ProxyError::Rejected(RequestError::UriTooLong), None);
        const BODY: &str = body!();
        assert_eq!(BODY.as_bytes(), &text[..]);
        let answer = std::str::from_utf8(RESPONSE).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, BODY);
        assert!(head.contains(&format!("\r\ncontent-length: {}", BODY.len())));
    }

    /// The verdict on `line` fed in pieces of `step` bytes.
    fn judge(limit: u64, line: &str, step: usize) -> Verdict {
        let mut w = LineWatch::new(limit);
        for piece in line.as_bytes().chunks(step) {
            if w.scan(piece) == Verdict::TooLong {
                return Verdict::TooLong;
            }
        }
        Verdict::Pass
    }

    #[test]
    fn counts_the_path_and_query_as_prepare_does() {
        let at = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9));
        let over = format!("GET /{}", "a".repeat(10));
        let query = format!("GET /?{}", "q".repeat(9));
        let absolute = format!("GET http://host.example:80/{} HTTP/1.1\r\n", "a".repeat(9));
        let absolute_over = format!("GET https://h/{}", "a".repeat(10));
        let fragment = format!("GET /a#{} HTTP/1.1\r\n", "f".repeat(100));
        let header = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "b".repeat(100));
        for step in [1, 3, 1000] {
            assert_eq!(judge(10, &at, step), Verdict::Pass, "{step}");
            assert_eq!(judge(10, &over, step), Verdict::TooLong, "{step}");
            assert_eq!(judge(10, &query, step), Verdict::TooLong, "{step}");
            assert_eq!(judge(10, &absolute, step), Verdict::Pass, "{step}");
            assert_eq!(judge(10, &absolute_over, step), Verdict::TooLong, "{step}");
            assert_eq!(judge(10, &fragment, step), Verdict::Pass, "{step}");
            assert_eq!(judge(10, &header, step), Verdict::Pass, "{step}");
        }
    }

    #[test]
    fn what_is_not_a_request_line_is_not_counted() {
        let long = "a".repeat(100);
        for line in [
            long.clone(),
            format!("Host: {long}"),
            format!(" /{long}"),
            format!("{long} /{long}"),
            format!("CONNECT {long}:443 HTTP/1.1"),
            format!("OPTIONS * {long}"),
            format!("GET {long}"),
            "\u{1}\u{2}GET /{long}".to_string(),
        ] {
            assert_eq!(judge(10, &line, 7), Verdict::Pass, "{line:?}");
        }
        // Off.
        assert_eq!(judge(0, &format!("GET /{long}"), 7), Verdict::Pass);
    }

    #[test]
    fn each_request_is_watched_from_its_start() {
        let mut w = LineWatch::new(10);
        assert_eq!(w.scan(b"GET /short HTTP/1.1\r\nHost: a\r\n"), Verdict::Pass);
        assert!(!w.watching());
        w.start();
        assert!(w.watching());
        assert_eq!(w.scan(b"GET /0123456789a"), Verdict::TooLong);
        assert!(!w.watching());
    }
}
