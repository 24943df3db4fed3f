//! `[error_pages]`: files served for the answers clonelb builds itself, with the content
//! type of their extension; answers from clones pass untouched; a reload whose page file
//! is missing fails whole and keeps the running pages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use clonelb::reload::Outcome;
use common::*;

const PAGE_503: &str = "{\"error\": \"down for maintenance\"}\n";
const PAGE_502: &str = "<h1>Something went wrong</h1>\n";

/// A directory with `errors/503.json` and `errors/502.html`, removed on drop.
struct Site {
    dir: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = fresh_dir("pages");
        std::fs::create_dir_all(dir.join("errors")).unwrap();
        std::fs::write(dir.join("errors/503.json"), PAGE_503).unwrap();
        std::fs::write(dir.join("errors/502.html"), PAGE_502).unwrap();
        Site { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.join("lb.toml")
    }

    /// lb.toml text: a listener, the two pages (relative paths), `backends` lines, no
    /// watcher (reloads are explicit here).
    fn text(&self, pages: &str, backends: &str) -> String {
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[reload]\nwatch = false\n[error_pages]\n{pages}\n{backends}"
        )
    }

    /// A balancer started from `text` parsed with this directory as lb.toml's folder
    /// (the pages are read by `Balancer::start`).
    fn start(&self, text: &str) -> clonelb::Balancer {
        let label = self.config().display().to_string();
        let checked = clonelb::config::parse(&label, text).unwrap();
        clonelb::Balancer::start_with_workers(&checked.config, 2).unwrap()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const PAGES: &str = "503 = \"errors/503.json\"\n502 = \"errors/502.html\"";

fn backend(addr: std::net::SocketAddr) -> String {
    format!("[[backend]]\naddress = \"{addr}\"\nname = \"app\"\n")
}

#[tokio::test]
async fn pages_replace_clonelbs_own_503_and_502_with_their_content_type() {
    let site = Site::new();
    let empty = site.start(&site.text(PAGES, ""));
    let a = get(empty.http_addr(), "/").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.text(), PAGE_503);

    let refused = site.start(&site.text(PAGES, &backend(refused_addr())));
    let a = get(refused.http_addr(), "/").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(a.text(), PAGE_502);

    // A status without a page keeps clonelb's plain line.
    let only_503 = site.start(&site.text("503 = \"errors/503.json\"", &backend(refused_addr())));
    let a = get(only_503.http_addr(), "/").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        a.error_line(),
        "502 Bad Gateway: the upstream server refused the connection\n"
    );
}

#[tokio::test]
async fn answers_from_clones_pass_untouched_with_pages_set() {
    let site = Site::new();
    let c = spawn_clone("app");
    let lb = site.start(&site.text(PAGES, &backend(c.addr)));
    for code in [404, 500, 502, 503] {
        let a = get(lb.http_addr(), &format!("/status?code={code}")).await;
        assert_eq!(a.status, code);
        assert_eq!(a.text(), format!("clone=app status={code}"));
        assert_eq!(a.clone_name(), "app");
    }
}

/// Write `text` to lb.toml and reload it.
fn reload(lb: &clonelb::Balancer, path: &Path, text: &str) -> Outcome {
    std::fs::write(path, text).unwrap();
    lb.reload()
}

#[tokio::test]
async fn a_reload_whose_page_is_missing_keeps_the_old_pages() {
    let site = Site::new();
    let path = site.config();
    std::fs::write(&path, site.text(PAGES, "")).unwrap();
    let lb = clonelb::Balancer::start_from_file_with_workers(&path, 2).unwrap();
    assert_eq!(get(lb.http_addr(), "/").await.text(), PAGE_503);

    // Line 6 names a file that is not there: the whole reload fails, at that line.
    let missing = site.text("503 = \"errors/gone.json\"", "");
    let Outcome::Failed(lines) = reload(&lb, &path, &missing) else {
        panic!("a reload naming a missing page applied");
    };
    let want = format!(
        "{}:6:7: error page {}: cannot read:",
        path.display(),
        site.dir.join("errors/gone.json").display()
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with(&want), "{lines:?}");
    assert_eq!(lb.status().last_error, Some(lines));
    assert_eq!(lb.status().generation, 1);
    let a = get(lb.http_addr(), "/").await;
    assert_eq!((a.status.as_u16(), a.text()), (503, PAGE_503.to_string()));

    // A good reload swaps the pages with the rest of the table.
    std::fs::write(site.dir.join("errors/new.txt"), "closed\n").unwrap();
    let next = site.text("503 = \"errors/new.txt\"", "");
    assert!(matches!(reload(&lb, &path, &next), Outcome::Reloaded(_)));
    let a = get(lb.http_addr(), "/").await;
    assert_eq!(a.text(), "closed\n");
    assert_eq!(a.headers["content-type"], "text/plain; charset=utf-8");
}
