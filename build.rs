//! Sets `CLONELB_VERSION` for `clonelb --version`: the package version, plus the git
//! commit when built from a checkout of this repository ("0.1.0 (abc1234)", with
//! "-dirty" when tracked files differ from it). Without git, or outside a checkout (a
//! tarball, or a tarball unpacked inside some other repository), just "0.1.0".

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(PathBuf::new, PathBuf::from);
    println!("cargo:rerun-if-changed=build.rs");
    // The dirty mark follows edits of what the binary is built from.
    for p in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={p}");
    }
    let full = match commit(&dir) {
        Some(c) => format!("{version} ({c})"),
        None => version,
    };
    println!("cargo:rustc-env=CLONELB_VERSION={full}");
}

/// `git` run in `dir`: its trimmed stdout when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

fn commit(dir: &Path) -> Option<String> {
    // This crate's own checkout only: Cargo.toml must be a tracked file of the repository.
    git(dir, &["ls-files", "--error-unmatch", "Cargo.toml"])?;
    watch_git_files(dir);
    let hash = git(dir, &["rev-parse", "--short", "HEAD"])?;
    if hash.is_empty() {
        return None;
    }
    let dirty =
        git(dir, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}

/// Rerun when HEAD moves: HEAD itself (a checkout), the ref it points to (a commit), the
/// packed refs and the index. Works in a linked worktree too (`--git-path`). A missing
/// loose ref is watched through its folder (cargo reruns every build for a missing file).
fn watch_git_files(dir: &Path) {
    let path = |name: &str| git(dir, &["rev-parse", "--git-path", name]).map(|p| dir.join(p));
    let mut watch = vec![path("HEAD"), path("packed-refs"), path("index")];
    if let Some(r) = git(dir, &["rev-parse", "--symbolic-full-name", "HEAD"]) {
        if r.starts_with("refs/") {
            let file = path(&r);
            match file {
                Some(f) if !f.exists() => watch.push(f.parent().map(Path::to_path_buf)),
                f => watch.push(f),
            }
        }
    }
    for p in watch.into_iter().flatten().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
