//! Watching files for settled changes, following symlinks. Knows nothing of lb.toml:
//! [`FileWatcher`] reports on a channel, [`next_change`] is the consumer's side.
//!
//! **What is reported.** On Linux (inotify) a file is reported when it is *closed after
//! writing* (`IN_CLOSE_WRITE`), *renamed into place or away* (`IN_MOVED_TO`/`FROM`),
//! *removed*, or when a symlink or directory is created at its place: never on the
//! individual writes, so a file caught half-written is not reported until its writer
//! closes it. A new regular file is reported when its creator closes it. Elsewhere
//! (FSEvents on macOS, which has no close event) every non-access event is reported and
//! [`next_change`] folds in what follows within [`SETTLE`] (100 ms) of the first: a
//! writer that pauses longer than that can be caught mid-write there.
//!
//! **Symlinks.** Each file is resolved like `realpath(3)` from its name on, and every
//! symlink met on the way (the file itself, a link to a directory on its target's path,
//! links to links …) is watched as well as the final target: the directory holding each
//! of them is watched, and an event is about a file when it names one of those paths or a
//! directory above one of them. Links in the configured file's *directory* path (such as
//! `/var -> /private/var`) are resolved but not watched. After each event that can change
//! a resolution (create, remove, rename) the files are resolved again and the watched
//! directories follow; a file whose resolution changed is reported once more, to cover the
//! instant before its new directory was watched. This is the Kubernetes ConfigMap layout
//! (`lb.toml -> ..data/lb.toml`, `..data -> ..<timestamp>`, updated by renaming a new
//! `..data` link into place) and `sed -i` on a link's target.
//!
//! **Threads.** `notify`'s callback runs on its event-loop thread; it only filters and
//! forwards to a worker thread that owns the watcher (adding a watch from the callback
//! would wait on the event loop itself). The worker re-resolves, updates the watches and
//! delivers reports without ever blocking on the channel: a report that does not fit is
//! kept (and merged with the next) until it does.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::event::ModifyKind;
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long [`next_change`] waits after a report for the rest of a burst. On Linux each
/// report is already a settled file and this only merges, say, a certificate and its key
/// written together into one reload; elsewhere it is the debounce that lets a save finish.
#[cfg(target_os = "linux")]
pub const SETTLE: Duration = Duration::from_millis(20);
/// How long [`next_change`] waits after a report for the rest of a burst. On Linux each
/// report is already a settled file and this only merges, say, a certificate and its key
/// written together into one reload; elsewhere it is the debounce that lets a save finish.
#[cfg(not(target_os = "linux"))]
pub const SETTLE: Duration = Duration::from_millis(100);

/// Symlinks followed per file before giving up (as the kernel's `ELOOP` limit).
const MAX_HOPS: usize = 40;

/// How often the worker retries a report the full channel did not take.
const RETRY: Duration = Duration::from_millis(10);

/// Watches files (following symlinks); sends `force` on `tx` for each settled change.
///
/// `force` is the flag given with the file in [`FileWatcher::set_files`] (or-ed when one
/// report covers several files). Reports may be merged when the channel is full, never
/// lost. Dropping the watcher stops it; the channel then closes.
pub struct FileWatcher {
    worker: std_mpsc::Sender<Msg>,
}

enum Msg {
    /// A watched file changed.
    Changed(bool),
    /// Something on these watched paths was created, removed or renamed: resolve again.
    Rescan(Vec<PathBuf>),
    SetFiles(Vec<(PathBuf, bool)>, std_mpsc::SyncSender<()>),
    #[cfg(test)]
    Dirs(std_mpsc::SyncSender<Vec<PathBuf>>),
    Stop,
}

/// Every path an event may name to be about a watched file (each link of each chain, and
/// each final target) → its `force` flag.
type Paths = Arc<Mutex<HashMap<PathBuf, bool>>>;

impl FileWatcher {
    /// A watcher of nothing yet; see [`FileWatcher::set_files`].
    pub fn new(tx: mpsc::Sender<bool>) -> notify::Result<FileWatcher> {
        let paths: Paths = Arc::default();
        let (worker, inbox) = std_mpsc::channel();
        let (cb_paths, cb_worker) = (Arc::clone(&paths), worker.clone());
        let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            if let Ok(event) = event {
                on_event(&event, &cb_paths, &cb_worker);
            }
        })?;
        let mut state = Worker {
            watcher,
            paths,
            tx,
            files: Vec::new(),
            resolved: HashMap::new(),
            dirs: HashMap::new(),
            owed: None,
        };
        std::thread::Builder::new()
            .name("clonelb-watch".into())
            .spawn(move || state.run(&inbox))
            .map_err(notify::Error::io)?;
        Ok(FileWatcher { worker })
    }

    /// Replace the watched set: (path as configured, force). Re-resolves symlinks. Returns
    /// once the watches are in place, so a change made after it returns is seen.
    pub fn set_files(&self, files: Vec<(PathBuf, bool)>) {
        let (done, wait) = std_mpsc::sync_channel(1);
        if self.worker.send(Msg::SetFiles(files, done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// The directories watched now, once everything queued before the call is handled.
    #[cfg(test)]
    fn watched_dirs(&self) -> Vec<PathBuf> {
        let (reply, wait) = std_mpsc::sync_channel(1);
        let _ = self.worker.send(Msg::Dirs(reply));
        wait.recv().unwrap_or_default()
    }
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        let _ = self.worker.send(Msg::Stop);
    }
}

/// Wait for the next report on `rx` and fold in those arriving within [`SETTLE`]:
/// `Some(force)` (true if any report was), `None` once the watcher is gone.
pub async fn next_change(rx: &mut mpsc::Receiver<bool>) -> Option<bool> {
    let mut force = rx.recv().await?;
    tokio::time::sleep(SETTLE).await;
    while let Ok(f) = rx.try_recv() {
        force |= f;
    }
    Some(force)
}

/// On notify's thread: is `event` a settled change of a watched file? Tell the worker.
fn on_event(event: &Event, paths: &Paths, worker: &std_mpsc::Sender<Msg>) {
    let force = {
        let paths = paths.lock().unwrap_or_else(PoisonError::into_inner);
        if event.need_rescan() {
            // Events were lost (queue overflow): anything may have changed.
            (!paths.is_empty()).then(|| paths.values().any(|&f| f))
        } else {
            event
                .paths
                .iter()
                .filter_map(|p| about(&paths, p))
                .reduce(|a, b| a | b)
        }
    };
    let Some(force) = force else { return };
    if event.need_rescan() || reports(&event.kind, event.paths.first()) {
        let _ = worker.send(Msg::Changed(force));
    }
    if event.need_rescan() || reshapes(&event.kind) {
        let _ = worker.send(Msg::Rescan(event.paths.clone()));
    }
}

/// The `force` of the watched files an event on `path` is about: those whose chain holds
/// `path`, or a path under it (a directory on the way was created, removed or renamed).
fn about(paths: &HashMap<PathBuf, bool>, path: &Path) -> Option<bool> {
    paths
        .iter()
        .filter(|(p, _)| p.starts_with(path))
        .map(|(_, &f)| f)
        .reduce(|a, b| a | b)
}

/// Whether an event of this kind on a watched path is a settled change to report.
#[cfg(target_os = "linux")]
fn reports(kind: &EventKind, path: Option<&PathBuf>) -> bool {
    use notify::event::{AccessKind, AccessMode, RenameMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        // notify also reports each half alone; the `To` half is the one that matters.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => false,
        EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => true,
        // A new regular file is reported when its writer closes it; a symlink or a
        // directory is complete as created.
        EventKind::Create(_) => path.is_none_or(|p| {
            std::fs::symlink_metadata(p).map_or(true, |m| !m.file_type().is_file())
        }),
        EventKind::Other => true,
        // Each write (`Modify(Data)`), chmod, open and read.
        _ => false,
    }
}

/// Without a close event: everything but reads and opens, and [`SETTLE`] debounces.
#[cfg(not(target_os = "linux"))]
fn reports(kind: &EventKind, _path: Option<&PathBuf>) -> bool {
    !kind.is_access()
}

/// Whether an event of this kind can change what a watched path resolves to.
fn reshapes(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Other
    )
}

/// A file resolved: the symlinks met, in order, and the path they end at (which may not
/// exist).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    links: Vec<PathBuf>,
    target: PathBuf,
}

impl Resolved {
    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.links.iter().chain(std::iter::once(&self.target))
    }
}

enum Part {
    Root(OsString),
    Parent,
    Name(OsString),
}

fn parts(path: &Path) -> impl DoubleEndedIterator<Item = Part> + '_ {
    path.components().filter_map(|c| match c {
        Component::Prefix(_) | Component::RootDir => Some(Part::Root(c.as_os_str().into())),
        Component::CurDir => None,
        Component::ParentDir => Some(Part::Parent),
        Component::Normal(n) => Some(Part::Name(n.into())),
    })
}

/// Resolve `path` like `realpath(3)`, recording the symlinks met from its file name on
/// (its directory is canonicalized without recording).
fn resolve(path: &Path) -> Resolved {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let (Some(dir), Some(name)) = (abs.parent(), abs.file_name()) else {
        return Resolved {
            links: Vec::new(),
            target: abs,
        };
    };
    let mut at = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut rest: VecDeque<Part> = VecDeque::from([Part::Name(name.into())]);
    let mut links = Vec::new();
    while let Some(part) = rest.pop_front() {
        match part {
            Part::Root(r) => {
                at = PathBuf::new();
                at.push(r);
            }
            Part::Parent => {
                at.pop();
            }
            Part::Name(n) => {
                let next = at.join(n);
                match std::fs::read_link(&next) {
                    Ok(target) if links.len() < MAX_HOPS => {
                        links.push(next);
                        for p in parts(&target).rev() {
                            rest.push_front(p);
                        }
                    }
                    _ => at = next,
                }
            }
        }
    }
    Resolved { links, target: at }
}

/// The directory to watch for changes to `path`: its parent, or the nearest ancestor of it
/// that exists.
fn dir_for(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .skip(1)
        .find(|d| d.is_dir())
        .map(Path::to_path_buf)
}

/// What tells a directory from another put at its path.
#[cfg(unix)]
fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn identity(_dir: &Path) -> Option<(u64, u64)> {
    None
}

/// The worker thread's state: owns the `notify` watcher.
struct Worker {
    watcher: notify::RecommendedWatcher,
    paths: Paths,
    tx: mpsc::Sender<bool>,
    files: Vec<(PathBuf, bool)>,
    /// Configured path → its last resolution.
    resolved: HashMap<PathBuf, Resolved>,
    /// Watched directory → its identity when the watch was added.
    dirs: HashMap<PathBuf, Option<(u64, u64)>>,
    /// A report not yet taken by the channel.
    owed: Option<bool>,
}

impl Worker {
    fn run(&mut self, inbox: &std_mpsc::Receiver<Msg>) {
        loop {
            let msg = if self.owed.is_some() {
                match inbox.recv_timeout(RETRY) {
                    Ok(m) => Some(m),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match inbox.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                }
            };
            match msg {
                None => {}
                Some(Msg::Stop) => return,
                Some(Msg::Changed(force)) => self.owe(force),
                Some(Msg::Rescan(moved)) => self.refresh(&moved),
                Some(Msg::SetFiles(files, done)) => {
                    self.files = files;
                    self.refresh(&[]);
                    let _ = done.send(());
                }
                #[cfg(test)]
                Some(Msg::Dirs(reply)) => {
                    let _ = reply.send(self.dirs.keys().cloned().collect());
                }
            }
            if let Some(force) = self.owed {
                match self.tx.try_send(force) {
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                    Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => self.owed = None,
                }
            }
        }
    }

    fn owe(&mut self, force: bool) {
        self.owed = Some(self.owed.unwrap_or(false) | force);
    }

    /// Resolve every file again; move the watches to the directories now involved; report
    /// the files whose resolution changed. A watched directory in `moved` is watched anew:
    /// `notify` drops the watch of a directory renamed away, even if it comes back.
    fn refresh(&mut self, moved: &[PathBuf]) {
        let mut resolved = HashMap::new();
        let mut paths: HashMap<PathBuf, bool> = HashMap::new();
        let mut wanted: HashMap<PathBuf, Option<(u64, u64)>> = HashMap::new();
        for (file, force) in &self.files {
            let r = resolve(file);
            if self.resolved.get(file).is_some_and(|old| *old != r) {
                self.owed = Some(self.owed.unwrap_or(false) | force);
            }
            for p in r.paths() {
                *paths.entry(p.clone()).or_insert(false) |= force;
                if let Some(d) = dir_for(p) {
                    let id = identity(&d);
                    wanted.insert(d, id);
                }
            }
            resolved.insert(file.clone(), r);
        }
        // Stop watching what is no longer involved, or is another directory now.
        let stale: Vec<PathBuf> = self
            .dirs
            .iter()
            .filter(|(d, id)| wanted.get(*d) != Some(id) || moved.contains(d))
            .map(|(d, _)| d.clone())
            .collect();
        for d in stale {
            // Fails when the directory is gone (and its watch with it).
            let _ = self.watcher.unwatch(&d);
            self.dirs.remove(&d);
        }
        for (d, id) in wanted {
            if self.dirs.contains_key(&d) {
                continue;
            }
            match self.watcher.watch(&d, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(d, id);
                }
                Err(e) => {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot watch for changes")
                }
            }
        }
        self.resolved = resolved;
        *self.paths.lock().unwrap_or_else(PoisonError::into_inner) = paths;
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests;
