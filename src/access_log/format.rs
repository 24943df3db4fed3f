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

use super::Entry;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

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
        let ms = since.subsec_millis();
        self.time.clear();
        self.time.push_str(&self.rfc);
        for c in [
            '.',
            char::from(b'0' + (ms / 100) as u8),
            char::from(b'0' + (ms / 10 % 10) as u8),
            char::from(b'0' + (ms % 10) as u8),
            'Z',
        ] {
            self.time.push(c);
        }
    }

    /// One JSON object. Written by hand: the keys and most values need no escaping, and
    /// the strings that might (path, clone, ID, user agent, referer) are copied as they
    /// are when they hold nothing to escape, which is almost always (serde_json's escaping
    /// looks at every byte through a table: it took 3/4 of a line's cost).
    pub(super) fn json(&mut self, buf: &mut Vec<u8>, e: &Entry, query: bool) {
        self.at(e.time);
        buf.extend_from_slice(b"{\"time\":\"");
        buf.extend_from_slice(self.time.as_bytes());
        buf.extend_from_slice(b"\",\"client\":\"");
        push_ip(buf, e.client.ip());
        buf.extend_from_slice(b"\",\"method\":");
        json_str(buf, e.method.as_str().as_bytes());
        buf.extend_from_slice(b",\"path\":");
        json_str(buf, target(e, query).as_bytes());
        buf.extend_from_slice(b",\"protocol\":\"");
        buf.extend_from_slice(protocol(e.head.version).as_bytes());
        buf.extend_from_slice(b"\",\"status\":");
        push_u64(buf, u64::from(e.status));
        buf.extend_from_slice(b",\"bytes\":");
        push_u64(buf, e.bytes);
        buf.extend_from_slice(b",\"duration_ms\":");
        push_ms(buf, e.duration);
        buf.extend_from_slice(b",\"head_ms\":");
        match e.head_time {
            Some(d) => push_ms(buf, d),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"clone\":");
        json_opt(buf, e.clone.as_deref().map(str::as_bytes));
        buf.extend_from_slice(b",\"attempts\":");
        push_u64(buf, u64::from(e.attempts));
        buf.extend_from_slice(b",\"outcome\":\"");
        buf.extend_from_slice(e.outcome.as_str().as_bytes());
        buf.extend_from_slice(b"\",\"request_id\":");
        json_str(buf, e.request_id.as_bytes());
        buf.extend_from_slice(b",\"user_agent\":");
        json_opt(buf, e.head.user_agent.as_ref().map(|v| v.as_bytes()));
        buf.extend_from_slice(b",\"referer\":");
        json_opt(buf, e.head.referer.as_ref().map(|v| v.as_bytes()));
        buf.extend_from_slice(b"}\n");
    }

    pub(super) fn combined(&mut self, buf: &mut Vec<u8>, e: &Entry, query: bool) {
        self.at(e.time);
        push_ip(buf, e.client.ip());
        buf.extend_from_slice(b" - - [");
        buf.extend_from_slice(self.clf.as_bytes());
        buf.extend_from_slice(b"] \"");
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

/// A JSON string of `v` (bytes that are not UTF-8 become U+FFFD).
fn json_str(buf: &mut Vec<u8>, v: &[u8]) {
    if v.iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        buf.push(b'"');
        buf.extend_from_slice(v);
        buf.push(b'"');
    } else {
        // Rare: something to escape. Writing a `str` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, &*String::from_utf8_lossy(v));
    }
}

fn json_opt(buf: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => json_str(buf, v),
        None => buf.extend_from_slice(b"null"),
    }
}

/// An IP address as `Display` writes it (IPv4 by hand: the common case, and `Display`
/// costs ten times as much).
fn push_ip(buf: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                push_u64(buf, u64::from(octet));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
}

/// Decimal digits of `n`.
fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Milliseconds with three decimals (microsecond precision): `2.400`.
fn push_ms(buf: &mut Vec<u8>, d: std::time::Duration) {
    let micros = d.as_micros().min(u128::from(u64::MAX)) as u64;
    push_u64(buf, micros / 1000);
    let frac = micros % 1000;
    buf.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

fn quoted_or_dash(buf: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) if !v.is_empty() => escaped(buf, v),
        _ => buf.push(b'-'),
    }
}

/// `"` and `\` and anything outside printable ASCII as `\xHH`.
fn escaped(buf: &mut Vec<u8>, v: &[u8]) {
    if v.iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        buf.extend_from_slice(v);
        return;
    }
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
        // Strings with something to escape, and bytes that are not UTF-8.
        let mut e = entry();
        e.head.uri = "/a%22b".parse().unwrap();
        e.request_id = HeaderValue::from_static("q\"\\x");
        e.head.referer = Some(HeaderValue::from_bytes(b"r\xff\t").unwrap());
        e.clone = None;
        e.head_time = None;
        let mut buf = Vec::new();
        Formatter::default().json(&mut buf, &e, false);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["request_id"], "q\"\\x");
        assert_eq!(v["referer"], "r\u{fffd}\t");
        assert_eq!(v["clone"], serde_json::Value::Null);
        assert_eq!(v["head_ms"], serde_json::Value::Null);
        assert_eq!(v["path"], "/a%22b");
        assert_eq!(v.as_object().unwrap().len(), 15);
    }

    #[test]
    fn addresses() {
        for ip in [
            "127.0.0.1",
            "10.200.3.45",
            "255.255.255.255",
            "0.0.0.0",
            "::1",
            "fe80::1",
        ] {
            let mut buf = Vec::new();
            push_ip(&mut buf, ip.parse().unwrap());
            assert_eq!(buf, ip.as_bytes());
        }
    }

    #[test]
    fn numbers() {
        for (n, want) in [
            (0u64, "0"),
            (7, "7"),
            (10, "10"),
            (u64::MAX, "18446744073709551615"),
        ] {
            let mut buf = Vec::new();
            push_u64(&mut buf, n);
            assert_eq!(buf, want.as_bytes());
        }
        for (us, want) in [
            (0u64, "0.000"),
            (1, "0.001"),
            (2_400, "2.400"),
            (61_234_567, "61234.567"),
        ] {
            let mut buf = Vec::new();
            push_ms(&mut buf, Duration::from_micros(us));
            assert_eq!(buf, want.as_bytes());
        }
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
        assert!(String::from_utf8(buf)
            .unwrap()
            .contains("[02/Dec/2026:10:00:00 +0000]"));
    }
}
