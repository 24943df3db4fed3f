//! `[error_pages]` files → the pages served for the answers clonelb builds itself (400,
//! 408, 413, 414, 502, 503, 504). Answers from clones are never replaced.
//!
//! `config` validates the keys and the paths (no I/O); the files are read here, when
//! lb.toml is loaded (`reload::load`: start-up, every reload, `clonelb check`), the way
//! `tls` reads the certificate. A missing or unreadable file, or one over
//! [`MAX_ERROR_PAGE`], is a `PATH:LINE:COL` problem at the value that names it, and the
//! whole load fails (a reload keeps the running pages). The loaded pages travel in
//! `control::Inputs` to the routing table, so a reload swaps them with everything else.
//!
//! Owns the pages' loading and lookup. Must not touch: the running configuration (control
//! stores it), the request path's types.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::HeaderValue;

use crate::config::{
    page_content_type, Checked, ConfigError, Diagnostic, LoadError, ERROR_PAGE_STATUSES,
    MAX_ERROR_PAGE,
};

/// Where a page shows the request's ID: every occurrence is replaced by it (escaped for
/// HTML and JSON pages).
pub const REQUEST_ID_PLACEHOLDER: &str = "{{request_id}}";

/// One page: its bytes and content type.
#[derive(Debug, Clone)]
pub struct Page {
    pub body: Bytes,
    pub content_type: HeaderValue,
    /// Whether `body` holds [`REQUEST_ID_PLACEHOLDER`] (found once, when read).
    pub has_placeholder: bool,
}

impl Page {
    /// The body to send for a request with ID `request_id`: the file's bytes as they are
    /// (a reference count), or with the placeholder replaced (an allocation, error path
    /// only).
    pub fn render(&self, request_id: &HeaderValue) -> Bytes {
        if !self.has_placeholder {
            return self.body.clone();
        }
        let id = String::from_utf8_lossy(request_id.as_bytes());
        let ct = self.content_type.as_bytes();
        let id = if ct.starts_with(b"text/html") {
            html_escape(&id)
        } else if ct.starts_with(b"application/json") {
            // A JSON string's content, without its quotes.
            let quoted = serde_json::Value::from(id.as_ref()).to_string();
            quoted.trim_matches('"').to_string()
        } else {
            id.into_owned()
        };
        let body = String::from_utf8_lossy(&self.body).replace(REQUEST_ID_PLACEHOLDER, &id);
        Bytes::from(body)
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The pages of one configuration, by status (none by default).
#[derive(Debug, Default)]
pub struct ErrorPages {
    pages: [Option<Page>; ERROR_PAGE_STATUSES.len()],
}

impl ErrorPages {
    /// The page for `status`, if one was configured. No allocation.
    #[inline]
    pub fn get(&self, status: u16) -> Option<&Page> {
        let i = ERROR_PAGE_STATUSES.iter().position(|s| *s == status)?;
        self.pages.get(i)?.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.pages.iter().all(Option::is_none)
    }

    /// Read every file of `paths` (status → file); the first problem of each file, by
    /// status.
    pub fn load(paths: &BTreeMap<u16, PathBuf>) -> Result<ErrorPages, Vec<(u16, String)>> {
        let mut out = ErrorPages::default();
        let mut problems = Vec::new();
        for (status, path) in paths {
            let slot = ERROR_PAGE_STATUSES
                .iter()
                .position(|s| s == status)
                .and_then(|i| out.pages.get_mut(i));
            match (read(path), slot) {
                (Ok(page), Some(slot)) => *slot = Some(page),
                (Ok(_), None) => {
                    problems.push((*status, "is for a status clonelb does not answer".into()))
                }
                (Err(why), _) => problems.push((*status, why)),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }
}

/// Read one page: at most [`MAX_ERROR_PAGE`] bytes, its content type from its extension.
pub fn read(path: &Path) -> Result<Page, String> {
    let shown = path.display();
    let content_type = page_content_type(path)
        .ok_or_else(|| format!("{shown} must end in .html, .json or .txt"))?;
    let body = crate::files::read_at_most(path, MAX_ERROR_PAGE)?;
    let has_placeholder = body
        .windows(REQUEST_ID_PLACEHOLDER.len())
        .any(|w| w == REQUEST_ID_PLACEHOLDER.as_bytes());
    Ok(Page {
        body: Bytes::from(body),
        content_type: HeaderValue::from_static(content_type),
        has_placeholder,
    })
}

/// The pages of a checked lb.toml, or every unusable file as a `PATH:LINE:COL`
/// diagnostic pointing at the value that names it.
pub fn from_checked(label: &str, checked: &Checked) -> Result<ErrorPages, LoadError> {
    ErrorPages::load(&checked.config.error_pages).map_err(|problems| LoadError {
        path: label.to_string(),
        diagnostics: problems
            .into_iter()
            .map(|(status, why)| {
                let (line, col) = checked
                    .error_pages_at
                    .get(&status)
                    .copied()
                    .unwrap_or((1, 1));
                Diagnostic {
                    line,
                    col,
                    error: ConfigError::ErrorPage(why),
                }
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_by_status_and_their_limits() {
        let dir = std::env::temp_dir().join(format!("clonelb-pages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let html = dir.join("502.html");
        std::fs::write(&html, "<h1>down</h1>").unwrap();
        let big = dir.join("big.txt");
        std::fs::write(&big, vec![b'x'; MAX_ERROR_PAGE as usize + 1]).unwrap();
        let exact = dir.join("exact.json");
        std::fs::write(&exact, vec![b' '; MAX_ERROR_PAGE as usize]).unwrap();

        let pages = ErrorPages::load(&BTreeMap::from([(502, html), (503, exact)])).unwrap();
        let p = pages.get(502).unwrap();
        assert_eq!(
            (&p.body[..], p.content_type.to_str().unwrap()),
            (&b"<h1>down</h1>"[..], "text/html; charset=utf-8")
        );
        assert_eq!(pages.get(503).unwrap().content_type, "application/json");
        assert!(pages.get(504).is_none() && pages.get(200).is_none());
        assert!(ErrorPages::default().is_empty() && !pages.is_empty());

        let e = ErrorPages::load(&BTreeMap::from([(504, big), (400, dir.join("none.txt"))]))
            .unwrap_err();
        assert_eq!(e.len(), 2);
        assert!(e[0].1.contains("cannot read"), "{e:?}");
        assert!(e[1].1.ends_with("is larger than 64 KiB"), "{e:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn placeholder_is_replaced_and_escaped() {
        let page = |body: &str, ct: &'static str| Page {
            body: Bytes::from(body.to_string()),
            content_type: HeaderValue::from_static(ct),
            has_placeholder: body.contains(REQUEST_ID_PLACEHOLDER),
        };
        let id = HeaderValue::from_static("<a>\"&");
        let html = page("<p>id {{request_id}}</p>", "text/html; charset=utf-8");
        assert_eq!(&html.render(&id)[..], b"<p>id &lt;a&gt;&quot;&amp;</p>");
        let json = page("{\"id\":\"{{request_id}}\"}", "application/json");
        let v: serde_json::Value = serde_json::from_slice(&json.render(&id)).unwrap();
        assert_eq!(v["id"], "<a>\"&");
        let plain = page("no id here", "text/plain; charset=utf-8");
        assert_eq!(&plain.render(&id)[..], b"no id here");
    }
}
