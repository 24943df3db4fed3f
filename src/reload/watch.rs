//! Placeholder watcher (old behaviour), replaced by the close-write/symlink-aware one.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::Watcher;

/// File events closer together than this are one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

pub async fn settle() {
    tokio::time::sleep(DEBOUNCE).await;
}

pub struct FileWatcher {
    inner: Mutex<(notify::RecommendedWatcher, HashSet<PathBuf>)>,
    files: Arc<Mutex<HashMap<OsString, bool>>>,
}

impl FileWatcher {
    pub fn new(tx: tokio::sync::mpsc::Sender<bool>) -> notify::Result<FileWatcher> {
        let files: Arc<Mutex<HashMap<OsString, bool>>> = Arc::default();
        let names = Arc::clone(&files);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            let names = names.lock().unwrap_or_else(PoisonError::into_inner);
            for p in &event.paths {
                if let Some(&force) = p.file_name().and_then(|n| names.get(n)) {
                    let _ = tx.try_send(force);
                }
            }
        })?;
        Ok(FileWatcher {
            inner: Mutex::new((watcher, HashSet::new())),
            files,
        })
    }

    pub fn set_files(&self, wanted: Vec<(PathBuf, bool)>) {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (watcher, dirs) = &mut *guard;
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        files.clear();
        for (path, force) in wanted {
            let Some(name) = path.file_name() else {
                continue;
            };
            files.insert(name.to_os_string(), force);
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !dirs.contains(&dir) {
                match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        dirs.insert(dir);
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for changes")
                    }
                }
            }
        }
    }
}
