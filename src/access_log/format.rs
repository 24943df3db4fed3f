//! The two line formats.
//!
//! `json`: one object per line, keys `time` (RFC 3339 UTC, milliseconds), `client`,
//! `method`, `path`, `protocol`, `status`, `bytes`, `duration_ms`, `head_ms`, `clone`,
//! `attempts`, `outcome`, `request_id`, and also `user_agent` and `referer` (null when
//! absent).
//!
//! `combined`: Apache/nginx "combined", then the duration in seconds (milliseconds
//! precision), the clone (`-` when none) and the request ID:
//! `127.0.0.1 - - [01/Dec/2026:10:00:00 +0000] "GET /a HTTP/1.1" 200 43 "-" "curl/8.0" 0.002 clone-1 5f0c…`.
//! Quoted fields escape `"`, `\` and bytes outside printable ASCII as `\xHH` (nginx's
//! rule), so a line always splits the same way.

use std::io::Write;
use std::time::SystemTime;

use serde::Serialize;

use super::Entry;
use crate::stats::as_ms;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

#[derive(Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    client: std::net::IpAddr,
    method: &'a str,
    path: &'a str,
    protocol: &'a str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    head_ms: Option<f64>,
    clone: Option<&'a str>,
    attempts: u32,
    outcome: &'a str,
    request_id: std::borrow::Cow<'a, str>,
    user_agent: Option<std::borrow::Cow<'a, str>>,
    referer: Option<std::borrow::Cow<'a, str>>,
}

/// The request target as logged: the path, and the query when `query`.
fn target(e: &Entry, query: bool) -> &str {
    let uri = &e.head.uri;
    match uri.path_and_query() {
        Some(pq) if query => pq.as_str(),
        _ => uri.path(),
    }
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// Milliseconds rounded to microseconds (three decimals).
fn ms(d: std::time::Duration) -> f64 {
    (as_ms(d) * 1000.0).round() / 1000.0
}

/// Formats lines; keeps the current second's date text, so a line's time costs a few
/// digits, not a calendar computation and an allocation.
#[derive(Default)]
pub(super) struct Formatter {
    /// The Unix second `rfc` and `clf` are for (`None` before the first line).
    second: Option<u64>,
    /// `2026-12-01T10:00:00`
    rfc: String,
    /// `01/Dec/2026:10:00:00 +0000`
    clf: String,
    /// `rfc` with `.mmmZ`: the line's own time.
    time: String,
}

impl Formatter {
    fn at(&mut self, t: SystemTime) {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        if self.second != Some(since.as_secs()) {
            self.second = Some(since.as_secs());
            let whole = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(since.as_secs());
            // `YYYY-MM-DDTHH:MM:SSZ` (humantime always writes four-digit years).
            let s = humantime::format_rfc3339_seconds(whole).to_string();
            self.rfc.clear();
            self.rfc.push_str(s.trim_end_matches('Z'));
            self.clf.clear();
            let month = s
                .get(5..7)
                .and_then(|m| m.parse::<usize>().ok())
                .and_then(|m| MONTHS.get(m.wrapping_sub(1)));
            match (month, s.get(0..4), s.get(8..10), s.get(11..19)) {
                (Some(mon), Some(year), Some(day), Some(hms)) => {
                    let _ = std::fmt::Write::write_fmt(
                        &mut self.clf,
                        format_args!("{day}/{mon}/{year}:{hms} +0000"),
                    );
                }
                _ => self.clf.push_str(&s),
            }
        }
        self.time.clear();
        self.time.push_str(&self.rfc);
        let _ = std::fmt::Write::write_fmt(
            &mut self.time,
            format_args!(".{:03}Z", since.subsec_millis()),
        );
    }

    pub(super) fn json(&mut self, buf: &mut Vec<u8>, e: &Entry, query: bool) {
        self.at(e.time);
        let line = JsonLine {
            time: &self.time,
            client: e.client.ip(),
            method: e.method.as_str(),
            path: target(e, query),
            protocol: protocol(e.head.version),
            status: e.status,
            bytes: e.bytes,
            duration_ms: ms(e.duration),
            head_ms: e.head_time.map(ms),
            clone: e.clone.as_deref(),
            attempts: e.attempts,
            outcome: e.outcome.as_str(),
            request_id: String::from_utf8_lossy(e.request_id.as_bytes()),
            user_agent: e
                .head
                .user_agent
                .as_ref()
                .map(|v| String::from_utf8_lossy(v.as_bytes())),
            referer: e
                .head
                .referer
                .as_ref()
                .map(|v| String::from_utf8_lossy(v.as_bytes())),
        };
        // Serializing plain fields into a Vec cannot fail; a failure would lose one line.
        if serde_json::to_writer(&mut *buf, &line).is_ok() {
            buf.push(b'\n');
        }
    }

    pub(super) fn combined(&mut self, buf: &mut Vec<u8>, e: &Entry, query: bool) {
        self.at(e.time);
        let _ = write!(buf, "{} - - [{}] \"", e.client.ip(), self.clf);
        escaped(buf, e.method.as_str().as_bytes());
        buf.push(b' ');
        escaped(buf, target(e, query).as_bytes());
        let _ = write!(
            buf,
            " {}\" {} {} \"",
            protocol(e.head.version),
            e.status,
            e.bytes
        );
        quoted_or_dash(buf, e.head.referer.as_ref().map(|v| v.as_bytes()));
        buf.extend_from_slice(b"\" \"");
        quoted_or_dash(buf, e.head.user_agent.as_ref().map(|v| v.as_bytes()));
        let _ = write!(
            buf,
            "\" {:.3} {} ",
            e.duration.as_secs_f64(),
            e.clone.as_deref().unwrap_or("-")
        );
        escaped(buf, e.request_id.as_bytes());
        buf.push(b'\n');
    }
}

fn quoted_or_dash(buf: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) if !v.is_empty() => escaped(buf, v),
        _ => buf.push(b'-'),
    }
}

/// `"` and `\` and anything outside printable ASCII as `\xHH`.
fn escaped(buf: &mut Vec<u8>, v: &[u8]) {
    for &b in v {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(buf, "\\x{b:02X}");
        } else {
            buf.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Outcome, RequestHead};
    use http::HeaderValue;
    use std::time::Duration;

    fn entry() -> Entry {
        Entry {
            // 2026-12-01T10:00:00Z
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_119_200),
            client: "127.0.0.1:5555".parse().unwrap(),
            method: http::Method::GET,
            head: RequestHead {
                uri: "/a?token=x".parse().unwrap(),
                version: http::Version::HTTP_11,
                user_agent: Some(HeaderValue::from_static("curl/8.0")),
                referer: None,
            },
            status: 200,
            bytes: 43,
            duration: Duration::from_micros(2_400),
            head_time: Some(Duration::from_micros(1_500)),
            clone: Some("clone-1".into()),
            attempts: 1,
            outcome: Outcome::Complete,
            request_id: HeaderValue::from_static("5f0c"),
        }
    }

    #[test]
    fn combined_line() {
        let mut buf = Vec::new();
        Formatter::default().combined(&mut buf, &entry(), false);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "127.0.0.1 - - [01/Dec/2026:10:00:00 +0000] \"GET /a HTTP/1.1\" 200 43 \"-\" \"curl/8.0\" 0.002 clone-1 5f0c\n"
        );
        let mut buf = Vec::new();
        let mut e = entry();
        e.head.user_agent = Some(HeaderValue::from_bytes(b"a\"b\\c\xff").unwrap());
        e.clone = None;
        Formatter::default().combined(&mut buf, &e, true);
        let line = String::from_utf8(buf).unwrap();
        assert!(line.contains("\"GET /a?token=x HTTP/1.1\""), "{line}");
        assert!(line.contains("\"a\\x22b\\x5Cc\\xFF\""), "{line}");
        assert!(line.ends_with(" - 5f0c\n"), "{line}");
    }

    #[test]
    fn json_line() {
        let mut buf = Vec::new();
        Formatter::default().json(&mut buf, &entry(), false);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["time"], "2026-12-01T10:00:00.000Z");
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(v["path"], "/a");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 2.4);
        assert_eq!(v["head_ms"], 1.5);
        assert_eq!(v["clone"], "clone-1");
        assert_eq!(v["outcome"], "complete");
        assert_eq!(v["request_id"], "5f0c");
        assert_eq!(v["referer"], serde_json::Value::Null);
        assert_eq!(*buf.last().unwrap(), b'\n');
    }

    #[test]
    fn the_cached_second_follows_the_clock() {
        let mut f = Formatter::default();
        let mut e = entry();
        let mut buf = Vec::new();
        for (offset_ms, want) in [
            (0, "2026-12-01T10:00:00.000Z"),
            (999, "2026-12-01T10:00:00.999Z"),
            (1_001, "2026-12-01T10:00:01.001Z"),
            (86_400_000, "2026-12-02T10:00:00.000Z"),
        ] {
            e.time = entry().time + Duration::from_millis(offset_ms);
            buf.clear();
            f.json(&mut buf, &e, false);
            let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            assert_eq!(v["time"], want);
        }
        buf.clear();
        f.combined(&mut buf, &e, false);
        assert!(String::from_utf8(buf).unwrap().contains("[02/Dec/2026:10:00:00 +0000]"));
    }
}
