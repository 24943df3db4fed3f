//! `[admin] token_file` → the admin token: the file a Kubernetes Secret (or any secret
//! store) mounts, so the token need not be written in lb.toml.
//!
//! `config` validates the key and the path (no I/O); the file is read here, when lb.toml is
//! loaded (`reload::load`: start-up, every reload, `clonelb check`), the way `tls` reads the
//! certificate, and the token it holds becomes `[admin] token` of the loaded
//! configuration, so the admin API's check knows one token whatever its source. The
//! watcher watches the file like the TLS files, so a rotated Secret reloads. A file that
//! cannot be used is a `PATH:LINE:COL` problem at the value that names it, and the whole
//! load fails (a reload keeps the running token). `clonelb status` and the other admin
//! commands read the same file through [`read`].
//!
//! The token itself is never in a message: problems name the file, not its contents.
//!
//! Owns the file's rules ([`read`]). Must not touch: the admin API, the running
//! configuration.

use std::path::Path;

use crate::config::{Checked, Config, ConfigError, Diagnostic, LoadError, Secret};
use crate::files;

/// The largest token file accepted: a token is a line, not a document.
pub const MAX_TOKEN_FILE: u64 = 4 * 1024;

/// The token in the file at `path`: its text with surrounding whitespace (a trailing
/// newline, as `echo` or an editor leaves) trimmed. Refused, with the reason after the
/// file's name: unreadable, over [`MAX_TOKEN_FILE`], not UTF-8, empty once trimmed, or
/// holding a control character (a second line among them).
pub fn read(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let bytes = files::read_at_most(path, MAX_TOKEN_FILE)?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{shown} is not UTF-8 text"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{shown} is empty"));
    }
    if token.chars().any(char::is_control) {
        return Err(format!(
            "{shown} must hold the token alone, on one line without control characters"
        ));
    }
    Ok(token.to_string())
}

/// Set `[admin] token` of `config` from its `token_file`, when it has one. The reason a
/// file cannot be used, naming the file, otherwise.
pub fn fill(config: &mut Config) -> Result<(), String> {
    let Some(admin) = config.admin.as_mut() else {
        return Ok(());
    };
    if let Some(path) = &admin.token_file {
        admin.token = Some(Secret::new(read(path)?));
    }
    Ok(())
}

/// [`fill`] for a checked lb.toml, the problem as a `PATH:LINE:COL` diagnostic pointing at
/// the `token_file` value.
pub fn from_checked(label: &str, checked: &mut Checked) -> Result<(), LoadError> {
    fill(&mut checked.config).map_err(|why| {
        let (line, col) = checked.token_file_at;
        LoadError {
            path: label.to_string(),
            diagnostics: vec![Diagnostic {
                line,
                col,
                error: ConfigError::TokenFile(why),
            }],
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_the_trimmed_line_and_bad_files_say_why() {
        let dir = std::env::temp_dir().join(format!("clonelb-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        assert_eq!(read(&file("a", b"s3cret\n")).unwrap(), "s3cret");
        assert_eq!(read(&file("b", b"  s3 cret \r\n\n")).unwrap(), "s3 cret");
        let exact = vec![b'x'; MAX_TOKEN_FILE as usize];
        assert_eq!(read(&file("c", &exact)).unwrap().len(), exact.len());
        let why = |name: &str, bytes: &[u8]| {
            let p = file(name, bytes);
            read(&p).unwrap_err().replace(&p.display().to_string(), "F")
        };
        assert_eq!(why("d", b" \n\t\n"), "F is empty");
        assert_eq!(why("e", b""), "F is empty");
        let big = vec![b'x'; MAX_TOKEN_FILE as usize + 1];
        assert_eq!(why("f", &big), "F is larger than 4 KiB");
        assert_eq!(why("g", b"\xff\xfe"), "F is not UTF-8 text");
        assert_eq!(
            why("h", b"one\ntwo\n"),
            "F must hold the token alone, on one line without control characters"
        );
        let missing = read(&dir.join("none")).unwrap_err();
        assert!(missing.contains("none: cannot read: "), "{missing}");
        // The token is never in a message.
        assert!(!why("i", b"s3cret\nmore").contains("s3cret"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
