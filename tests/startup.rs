//! What a new operator meets first: `--help`, `--version`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_clonelb");

fn clonelb(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("CLONELB_LOG")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn help_says_how_reload_signals_and_logs_work() {
    for args in [&["--help"][..], &["run", "--help"]] {
        let help = stdout(&clonelb(args));
        for needle in [
            "SIGHUP",
            "CLONELB_LOG",
            "stderr",
            "Reload on save",
            "SIGTERM",
        ] {
            assert!(
                help.contains(needle),
                "`clonelb {}` does not mention {needle}:\n{help}",
                args.join(" ")
            );
        }
    }
}

/// `clonelb 0.1.0`, or `clonelb 0.1.0 (abc1234)` / `(abc1234-dirty)` from a checkout.
fn is_version_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("clonelb ") else {
        return false;
    };
    let (version, commit) = match rest.split_once(' ') {
        Some((v, c)) => (v, Some(c)),
        None => (rest, None),
    };
    let parts: Vec<&str> = version.split('.').collect();
    let semver = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let commit_ok = commit.is_none_or(|c| {
        let Some(inner) = c.strip_prefix('(').and_then(|c| c.strip_suffix(')')) else {
            return false;
        };
        let hash = inner.strip_suffix("-dirty").unwrap_or(inner);
        hash.len() >= 7 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    semver && commit_ok
}

#[test]
fn version_line_names_the_commit_when_built_from_a_checkout() {
    // The pattern itself: ^clonelb \d+\.\d+\.\d+( \([0-9a-f]{7,}(-dirty)?\))?$
    for ok in [
        "clonelb 0.1.0",
        "clonelb 0.1.0 (abc1234)",
        "clonelb 10.2.33 (abc1234def-dirty)",
    ] {
        assert!(is_version_line(ok), "{ok}");
    }
    for bad in [
        "clonelb 0.1",
        "clonelb 0.1.0 ()",
        "clonelb 0.1.0 (abc12)",
        "clonelb 0.1.0 (ABC1234)",
        "clonelb 0.1.0 abc1234",
        "clonelb 0.1.0 (abc1234-wip)",
    ] {
        assert!(!is_version_line(bad), "{bad}");
    }
    let text = stdout(&clonelb(&["--version"]));
    let line = text.strip_suffix('\n').unwrap_or(&text);
    assert!(is_version_line(line), "{text:?}");
    // This test runs from the repository, so the commit must be there and be HEAD's.
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string());
    if let Some(head) = head {
        assert!(
            line.starts_with(&format!("clonelb {} ({head}", env!("CARGO_PKG_VERSION"))),
            "HEAD is {head}: {line:?}"
        );
    }
}
