//! Reloads you can trust: a half-written lb.toml is never applied, a symlinked one
//! (Kubernetes ConfigMap layout) is followed, and a file restored after a failed read
//! applies and clears the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        TempDir(fresh_dir("watch"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(path: &Path) -> clonelb::Balancer {
    clonelb::Balancer::start_from_file_with_workers(path, 1).unwrap()
}

/// Linux only: elsewhere there is no close event and a long pause can still be caught.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn slow_writer_is_never_applied_half_written() {
    let clones: Vec<TestClone> = ["a", "b", "c", "d"].map(spawn_clone).into();
    let three: Vec<(&TestClone, u32)> = clones[..3].iter().map(|c| (c, 1)).collect();
    let four: Vec<(&TestClone, u32)> = clones.iter().map(|c| (c, 1)).collect();
    let dir = TempDir::new();
    let path = dir.0.join("lb.toml");
    std::fs::write(&path, config_text("round-robin", &three, "")).unwrap();
    let lb = start(&path);
    let fewest = |lb: &clonelb::Balancer, fewest: &mut usize| {
        *fewest = (*fewest).min(lb.table().backends().len());
    };
    let mut min = 3;

    // Part 1 is a valid file with one clone: applied, it would drop two.
    let text = config_text("round-robin", &four, "");
    let cut = text.find("[[backend]]").unwrap();
    let cut = cut + text[cut + 1..].find("[[backend]]").unwrap() + 1;
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&text.as_bytes()[..cut]).unwrap();
    f.flush().unwrap();
    // The 400 ms pause is the scenario; watch the table all along.
    let pause = Instant::now() + Duration::from_millis(400);
    while Instant::now() < pause {
        fewest(&lb, &mut min);
        assert_eq!(lb.status().generation, 1, "reloaded while half-written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f.write_all(&text.as_bytes()[cut..]).unwrap();
    drop(f);
    let applied = eventually(Duration::from_secs(5), || {
        fewest(&lb, &mut min);
        lb.status().generation == 2
    })
    .await;
    assert!(applied, "the finished file was not applied");
    fewest(&lb, &mut min);
    assert_eq!(min, 3, "a generation was served with clones missing");
    assert_eq!(lb.table().backends().len(), 4);
    assert!(lb.status().last_error.is_none());
}

#[tokio::test]
async fn configmap_update_reloads() {
    let a = spawn_clone("a");
    let b = spawn_clone("b");
    let c = spawn_clone("c");
    let dir = TempDir::new();
    let (old, new, newer) = (
        "..2026_12_01_10_00_00.123",
        "..2026_12_01_10_05_00.456",
        "..2026_12_01_10_10_00.789",
    );
    kubelet_volume(
        &dir.0,
        old,
        "lb.toml",
        &config_text("round-robin", &[(&a, 1)], ""),
    );
    let lb = start(&dir.0.join("lb.toml"));

    kubelet_update(
        &dir.0,
        old,
        new,
        "lb.toml",
        &config_text("round-robin", &[(&a, 1), (&b, 1)], ""),
    );
    assert!(eventually(Duration::from_secs(5), || lb.status().generation == 2).await);
    assert!(lb.table().find(b.addr).is_some());

    // The watch followed the link: the next update applies too.
    kubelet_update(
        &dir.0,
        new,
        newer,
        "lb.toml",
        &config_text("round-robin", &[(&a, 1), (&b, 1), (&c, 1)], ""),
    );
    assert!(eventually(Duration::from_secs(5), || lb.status().generation == 3).await);
    assert!(lb.table().find(c.addr).is_some());
    assert!(lb.status().last_error.is_none());
}

#[tokio::test]
async fn file_restored_after_a_failed_read_applies_and_clears_the_error() {
    let a = spawn_clone("a");
    let dir = TempDir::new();
    let path = dir.0.join("lb.toml");
    let away = dir.0.join("lb.toml.away");
    std::fs::write(&path, config_text("round-robin", &[(&a, 1)], "")).unwrap();
    let lb = start(&path);

    std::fs::rename(&path, &away).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || lb.status().last_error.is_some()).await,
        "moving the file away reported nothing"
    );
    let errors = lb.status().last_error.unwrap();
    assert!(errors[0].contains("cannot read"), "{errors:?}");
    assert_eq!(lb.status().generation, 1);

    // Back with the same text.
    std::fs::rename(&away, &path).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || lb.status().last_error.is_none()).await,
        "the stale error stayed"
    );
    assert_eq!(lb.status().generation, 2);
    assert_eq!(get(lb.http_addr(), "/").await.status, 200);
}

/// `[reload] watch = false`: saving the file does nothing; an explicit reload (what SIGHUP
/// does) applies it.
#[tokio::test]
async fn watch_false_leaves_reloads_to_sighup() {
    let (a, b) = (spawn_clone("a"), spawn_clone("b"));
    let dir = TempDir::new();
    let path = dir.0.join("lb.toml");
    let off = "[reload]\nwatch = false\n";
    std::fs::write(
        &path,
        format!("{}{off}", config_text("round-robin", &[(&a, 1)], "")),
    )
    .unwrap();
    let lb = start(&path);
    std::fs::write(
        &path,
        format!(
            "{}{off}",
            config_text("round-robin", &[(&a, 1), (&b, 1)], "")
        ),
    )
    .unwrap();
    // Nothing to wait for: a watcher would have reloaded within this second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lb.status().generation, 1, "reloaded with watch = false");
    assert!(matches!(lb.reload(), clonelb::reload::Outcome::Reloaded(_)));
    let s = lb.status();
    assert_eq!((s.generation, s.backends.len()), (2, 2));
}
