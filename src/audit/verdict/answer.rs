//! Answers and their comparison (see [`compare`]).

use std::fmt;

use http::{HeaderMap, HeaderName, StatusCode};

use super::BodyHash;

/// A response as compared: status, headers (hop-by-hop already stripped by the caller),
/// and the body's [`BodyHash::finish`] and length.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body_hash: u64,
    pub body_len: u64,
}

impl Answer {
    /// An answer from a finished, not overflowed, body hash.
    pub fn new(status: StatusCode, headers: HeaderMap, body: &BodyHash) -> Self {
        Answer {
            status,
            headers,
            body_hash: body.finish(),
            body_len: body.len(),
        }
    }
}

/// What differed between an answer and its replay. Only a header's name, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    Status,
    Header(HeaderName),
    Body,
}

impl fmt::Display for Difference {
    /// "status", "header x-foo" or "body".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Status => f.write_str("status"),
            Difference::Header(name) => write!(f, "header {name}"),
            Difference::Body => f.write_str("body"),
        }
    }
}

/// The first difference between `served` and `replay`, or `None` when they agree.
///
/// Checked in this order: the status; every header whose name is not in `ignore` (names
/// are case-insensitive: `http` keeps them lowercase; the values of one name are compared
/// as an ordered list; a name on one side only differs; the order of different names does
/// not matter), reporting the differing name that sorts first; the body hash and length.
/// Allocates nothing.
pub fn compare(served: &Answer, replay: &Answer, ignore: &[HeaderName]) -> Option<Difference> {
    if served.status != replay.status {
        return Some(Difference::Status);
    }
    let mut first: Option<&HeaderName> = None;
    for name in served.headers.keys().chain(replay.headers.keys()) {
        if ignore.contains(name) || first.is_some_and(|f| f.as_str() <= name.as_str()) {
            continue;
        }
        let same = served
            .headers
            .get_all(name)
            .iter()
            .eq(replay.headers.get_all(name).iter());
        if !same {
            first = Some(name);
        }
    }
    if let Some(name) = first {
        return Some(Difference::Header(name.clone()));
    }
    if served.body_hash != replay.body_hash || served.body_len != replay.body_len {
        return Some(Difference::Body);
    }
    None
}
