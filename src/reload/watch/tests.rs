//! The watcher against real files and directories: what is and is not reported.

use super::*;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Instant;

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "clonelb-watch-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Up to 5 s for the next report: `None` if none came.
async fn next(rx: &mut mpsc::Receiver<bool>) -> Option<bool> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .ok()
        .flatten()
}

/// A watcher of `files`, and its reports.
fn watching(files: &[(&Path, bool)]) -> (FileWatcher, mpsc::Receiver<bool>) {
    let (tx, rx) = mpsc::channel(16);
    let w = FileWatcher::new(tx).unwrap();
    w.set_files(files.iter().map(|(p, f)| (p.to_path_buf(), *f)).collect());
    (w, rx)
}

/// Write `sentinel` (watched with force = true) and check that the next report is its
/// own: inotify events come in order, so any report still pending from before would
/// come first, as a `false`.
async fn nothing_else_before(rx: &mut mpsc::Receiver<bool>, sentinel: &Path) {
    std::fs::write(sentinel, "sentinel").unwrap();
    assert_eq!(
        next(rx).await,
        Some(true),
        "a report came before the sentinel's"
    );
}

/// The ConfigMap layout: `lb.toml -> ..data/lb.toml`, `..data -> ..<stamp>`.
fn configmap(root: &Path, stamp: &str, text: &str) {
    std::fs::create_dir(root.join(stamp)).unwrap();
    std::fs::write(root.join(stamp).join("lb.toml"), text).unwrap();
    std::os::unix::fs::symlink(stamp, root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/lb.toml", root.join("lb.toml")).unwrap();
}

/// A ConfigMap update as the kubelet does it.
fn configmap_update(root: &Path, old: &str, new: &str, text: &str) {
    std::fs::create_dir(root.join(new)).unwrap();
    std::fs::write(root.join(new).join("lb.toml"), text).unwrap();
    std::os::unix::fs::symlink(new, root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join(old)).unwrap();
}

#[test]
fn resolve_records_every_link_of_the_chain() {
    let dir = TempDir::new("resolve");
    let root = std::fs::canonicalize(&dir.0).unwrap();
    configmap(&root, "..2026_12_01_10_00_00.123", "x");
    let r = resolve(&root.join("lb.toml"));
    assert_eq!(r.links, vec![root.join("lb.toml"), root.join("..data")]);
    assert_eq!(
        r.target,
        root.join("..2026_12_01_10_00_00.123").join("lb.toml")
    );
    // Not a link, or missing: itself.
    let plain = root.join("missing.toml");
    assert_eq!(resolve(&plain).target, plain);
    assert!(resolve(&plain).links.is_empty());
    // A loop ends.
    std::os::unix::fs::symlink("b", root.join("a")).unwrap();
    std::os::unix::fs::symlink("a", root.join("b")).unwrap();
    assert_eq!(resolve(&root.join("a")).links.len(), MAX_HOPS);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn slow_writer_is_reported_once_when_it_closes() {
    let dir = TempDir::new("slow");
    let (path, sentinel) = (dir.0.join("lb.toml"), dir.0.join("cert.pem"));
    std::fs::write(&path, "old").unwrap();
    std::fs::write(&sentinel, "").unwrap();
    let (_w, mut rx) = watching(&[(&path, false), (&sentinel, true)]);

    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"part 1\n").unwrap();
    f.flush().unwrap();
    // The pause is the scenario: no report while the file is open.
    let early = tokio::time::timeout(Duration::from_millis(400), rx.recv()).await;
    assert!(early.is_err(), "reported before the writer closed the file");
    f.write_all(b"part 2\n").unwrap();
    drop(f);
    assert_eq!(next(&mut rx).await, Some(false));
    nothing_else_before(&mut rx, &sentinel).await;
}

#[tokio::test]
async fn configmap_update_is_reported_and_followed() {
    let dir = TempDir::new("configmap");
    let root = std::fs::canonicalize(&dir.0).unwrap();
    configmap(&root, "..2026_12_01_10_00_00.123", "one");
    let (path, sentinel) = (root.join("lb.toml"), root.join("cert.pem"));
    std::fs::write(&sentinel, "").unwrap();
    let (w, mut rx) = watching(&[(&path, false), (&sentinel, true)]);

    configmap_update(
        &root,
        "..2026_12_01_10_00_00.123",
        "..2026_12_01_10_05_00.456",
        "two",
    );
    assert_eq!(
        next(&mut rx).await,
        Some(false),
        "the update was not reported"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
    // The new directory is watched now, the old one no longer.
    let new_dir = root.join("..2026_12_01_10_05_00.456");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !w.watched_dirs().contains(&new_dir) {
        assert!(Instant::now() < deadline, "{:?}", w.watched_dirs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!w
        .watched_dirs()
        .contains(&root.join("..2026_12_01_10_00_00.123")));
    // A second update is reported too (what the first left pending comes before the
    // sentinel's report).
    std::fs::write(&sentinel, "sentinel").unwrap();
    while !next(&mut rx).await.expect("the sentinel was not reported") {}
    configmap_update(
        &root,
        "..2026_12_01_10_05_00.456",
        "..2026_12_01_10_10_00.789",
        "three",
    );
    assert_eq!(
        next(&mut rx).await,
        Some(false),
        "the second update was lost"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "three");
}

#[tokio::test]
async fn sed_in_place_through_a_symlink_is_reported() {
    let dir = TempDir::new("sed");
    let conf = dir.0.join("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("real.toml"), "old").unwrap();
    let path = dir.0.join("lb.toml");
    std::os::unix::fs::symlink("conf/real.toml", &path).unwrap();
    let (_w, mut rx) = watching(&[(&path, false)]);

    // sed -i: a temporary file next to the target, renamed over it.
    let tmp = conf.join("sedAbC123");
    std::fs::write(&tmp, "new").unwrap();
    std::fs::rename(&tmp, conf.join("real.toml")).unwrap();
    assert_eq!(next(&mut rx).await, Some(false), "sed -i was not reported");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
}

#[tokio::test]
async fn a_directory_renamed_away_and_back_is_watched_again() {
    let dir = TempDir::new("moved");
    let conf = dir.0.join("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("real.toml"), "old").unwrap();
    let (path, sentinel) = (dir.0.join("lb.toml"), dir.0.join("cert.pem"));
    std::os::unix::fs::symlink("conf/real.toml", &path).unwrap();
    std::fs::write(&sentinel, "").unwrap();
    let (_w, mut rx) = watching(&[(&path, false), (&sentinel, true)]);

    // Back before the watcher looks again: the same directory, at the same path.
    std::fs::rename(&conf, dir.0.join("conf.away")).unwrap();
    std::fs::rename(dir.0.join("conf.away"), &conf).unwrap();
    assert_eq!(
        next(&mut rx).await,
        Some(false),
        "the moves went unreported"
    );
    // Past whatever the moves left pending, a write in place is still seen.
    std::fs::write(&sentinel, "sentinel").unwrap();
    while !next(&mut rx).await.expect("the sentinel was not reported") {}
    std::fs::write(conf.join("real.toml"), "new").unwrap();
    assert_eq!(
        next(&mut rx).await,
        Some(false),
        "the directory is no longer watched"
    );
}

#[tokio::test]
async fn unrelated_files_are_not_reported() {
    let dir = TempDir::new("unrelated");
    let (path, sentinel) = (dir.0.join("lb.toml"), dir.0.join("cert.pem"));
    std::fs::write(&path, "x").unwrap();
    std::fs::write(&sentinel, "").unwrap();
    let (_w, mut rx) = watching(&[(&path, false), (&sentinel, true)]);

    let other = dir.0.join("other.toml");
    std::fs::write(&other, "y").unwrap();
    std::fs::write(&other, "z").unwrap();
    std::fs::rename(&other, dir.0.join("lb.toml.bak")).unwrap();
    std::fs::remove_file(dir.0.join("lb.toml.bak")).unwrap();
    std::fs::create_dir(dir.0.join("sub")).unwrap();
    let _ = std::fs::read_to_string(&path).unwrap(); // reading is not a change
    nothing_else_before(&mut rx, &sentinel).await;
}
