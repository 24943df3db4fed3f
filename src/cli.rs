//! `clonelb status | disable | enable | reload | pin | unpin`: the operator's commands, as
//! clients of a running balancer's admin API (`status`, `disable` and `enable` of several
//! balancers at once: [`many`]).
//!
//! `main.rs` parses the arguments into a [`Target`] and calls one function per command;
//! each prints its normal output on stdout and returns `Ok(())` (exit 0) or a [`CliError`],
//! whose text goes to stderr and whose [`CliError::exit_code`] is the exit status. Each
//! command builds its own `current_thread` runtime and opens one connection per request.
//!
//! Must not touch: the balancer's state (everything goes through the admin API), the
//! config schema (`[admin] listen`, `token` and `token_file` are read from lb.toml with
//! `toml` alone; the token file by `token_file::read`, the balancer's own rules).

mod client;
pub mod many;
mod render;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use serde::de::DeserializeOwned;

use self::client::{Admin, Answer, REQUEST_TIMEOUT};
use self::render::{Backend, Deploy, ErrorBody, NotDrained, Rejected, Reloaded, Status};

/// The environment variable read when no `--token` is given.
pub const TOKEN_ENV: &str = "CLONELB_ADMIN_TOKEN";

/// Which admin API to talk to, and how.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `--admin ADDR` (`IP:PORT` or `HOST:PORT`); when `None`, `[admin] listen` of `config`.
    pub admin: Option<String>,
    /// `--config PATH`; `None` means `./lb.toml`. Only read when `admin` is `None`.
    pub config: Option<PathBuf>,
    /// `--token TOKEN`; when `None`, [`TOKEN_ENV`] (an empty value counts as unset); when
    /// neither and `config` is read for the address, its `[admin] token` or `token_file`.
    pub token: Option<String>,
}

/// Why a command failed. `Display` is exactly what is printed on stderr: one line starting
/// with `clonelb: `, except a failed reload's (its header and the error lines).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No `--admin` and no `[admin] listen` to read (exit 2, a usage error).
    #[error("clonelb: {0}")]
    NoAdmin(String),
    /// Nothing answered at the admin address, or not with HTTP.
    #[error("clonelb: cannot reach the admin API at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// 401 to a request that carried a token.
    #[error("clonelb: the admin API refused the token (401)")]
    BadToken,
    /// 401 to a request without a token.
    #[error("clonelb: the admin API needs a token (401): give --token or set {TOKEN_ENV}")]
    NoToken,
    /// 404 for a clone.
    #[error("clonelb: no clone named {0:?}")]
    NoClone(String),
    /// `disable --wait` reached its timeout with requests still in flight.
    #[error("clonelb: clone {name:?} not drained after {timeout}: {in_flight} in flight")]
    NotDrained {
        name: String,
        timeout: String,
        in_flight: u64,
    },
    /// `pin` or `unpin` answered 409: mixed mode, or a version no clone reports; the
    /// balancer's one-line reason. Nothing changed.
    #[error("clonelb: {0}")]
    PinRefused(String),
    /// `wait-drained` answered 409: the clone was enabled again meanwhile.
    #[error("clonelb: clone {0:?} is enabled again, so it will not drain")]
    Enabled(String),
    /// `reload` answered 422: the file was rejected, the old configuration keeps serving.
    #[error(
        "reload failed (generation {generation} still serving):{}",
        lines(errors)
    )]
    ReloadFailed {
        generation: u64,
        errors: Vec<String>,
    },
    /// Any other error answer, with the `error` of its body.
    #[error("clonelb: the admin API answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// An answer that is not the JSON it should be.
    #[error("clonelb: unexpected answer from the admin API: {0}")]
    BadAnswer(String),
    /// A local problem (runtime, token not fit for a header).
    #[error("clonelb: {0}")]
    Local(String),
    /// Several balancers (`--admin` more than once): this many of them failed, each with
    /// its own line already printed (see [`many`]).
    #[error("clonelb: {failed} of {total} balancers failed")]
    Several { failed: usize, total: usize },
}

fn lines(v: &[String]) -> String {
    v.iter().map(|l| format!("\n{l}")).collect()
}

impl CliError {
    /// 2 for a missing admin address (a usage error, like clap's), 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::NoAdmin(_) => 2,
            _ => 1,
        }
    }
}

/// `clonelb status`: header, last reload error, clone table (state coloured when stdout is
/// a terminal and `NO_COLOR` is unset or empty).
pub fn status(target: &Target) -> Result<(), CliError> {
    let admin = connect(target)?;
    print(&status_text(&admin)?);
    Ok(())
}

/// What `clonelb status` prints for one balancer.
fn status_text(admin: &Admin) -> Result<String, CliError> {
    let answer = admin.call(Method::GET, "/status", REQUEST_TIMEOUT)?;
    let status: Status = expect_ok(admin, answer, None)?;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let color = std::io::stdout().is_terminal() && !no_color;
    Ok(render::status(&status, SystemTime::now(), color))
}

/// `clonelb disable NAME [--wait [--timeout T]]`: disable, print the clone's line; with
/// `wait`, then wait until it has nothing in flight, at most that long.
pub fn disable(target: &Target, name: &str, wait: Option<Duration>) -> Result<(), CliError> {
    let admin = connect(target)?;
    let mut out = |line: &str| print(&format!("{line}\n"));
    disable_one(&admin, name, &mut out)?;
    match wait {
        Some(timeout) => wait_drained(&admin, name, timeout, &mut out),
        None => Ok(()),
    }
}

/// Disable `name` on one balancer; its new state is one line for `out`.
fn disable_one(admin: &Admin, name: &str, out: &mut dyn FnMut(&str)) -> Result<(), CliError> {
    let path = format!("/backends/{}/disable", encode(name));
    let answer = admin.call(Method::POST, &path, REQUEST_TIMEOUT)?;
    let backend: Backend = expect_ok(admin, answer, Some(name))?;
    out(&render::backend_line(&backend));
    Ok(())
}

/// Wait until `name` has nothing in flight on one balancer, at most `timeout`; then one
/// line for `out`.
fn wait_drained(
    admin: &Admin,
    name: &str,
    timeout: Duration,
    out: &mut dyn FnMut(&str),
) -> Result<(), CliError> {
    let shown = duration_param(timeout);
    let path = format!("/backends/{}/wait-drained?timeout={shown}", encode(name));
    let answer = admin.call(Method::GET, &path, timeout + REQUEST_TIMEOUT)?;
    match answer.status {
        StatusCode::REQUEST_TIMEOUT => {
            let body: NotDrained = json(&answer)?;
            Err(CliError::NotDrained {
                name: name.to_string(),
                timeout: shown,
                in_flight: body.in_flight,
            })
        }
        StatusCode::CONFLICT => Err(CliError::Enabled(name.to_string())),
        // Only the status matters: the body of a 200 is not read.
        StatusCode::OK => {
            out(&format!("{name}: drained, 0 in flight"));
            Ok(())
        }
        _ => expect_ok::<serde_json::Value>(admin, answer, Some(name)).map(drop),
    }
}

/// `clonelb enable NAME`: enable, print the clone's line.
pub fn enable(target: &Target, name: &str) -> Result<(), CliError> {
    let admin = connect(target)?;
    enable_one(&admin, name, &mut |line| print(&format!("{line}\n")))
}

/// Enable `name` on one balancer; its new state is one line for `out`.
fn enable_one(admin: &Admin, name: &str, out: &mut dyn FnMut(&str)) -> Result<(), CliError> {
    let path = format!("/backends/{}/enable", encode(name));
    let answer = admin.call(Method::POST, &path, REQUEST_TIMEOUT)?;
    let backend: Backend = expect_ok(admin, answer, Some(name))?;
    out(&render::backend_line(&backend));
    Ok(())
}

/// `clonelb pin VERSION`: make `VERSION` the active version until `unpin`; print what is
/// active and pinned now.
pub fn pin(target: &Target, version: &str) -> Result<(), CliError> {
    let admin = connect(target)?;
    let body = serde_json::json!({ "version": version }).to_string();
    let answer = admin.call_with(
        Method::POST,
        "/deploy/pin",
        Some(body.into()),
        REQUEST_TIMEOUT,
    )?;
    deploy_answer(&admin, answer)
}

/// `clonelb unpin`: let cutovers choose the active version again; print what is active now.
pub fn unpin(target: &Target) -> Result<(), CliError> {
    let admin = connect(target)?;
    let answer = admin.call(Method::DELETE, "/deploy/pin", REQUEST_TIMEOUT)?;
    deploy_answer(&admin, answer)
}

/// The `deploy` object of a pin or an unpin, printed as one line; a 409 is the reason.
fn deploy_answer(admin: &Admin, answer: Answer) -> Result<(), CliError> {
    if answer.status == StatusCode::CONFLICT {
        return Err(CliError::PinRefused(error_message(&answer)));
    }
    let deploy: Deploy = expect_ok(admin, answer, None)?;
    print(&format!("{}\n", render::deploy_line(&deploy)));
    Ok(())
}

/// `clonelb reload`: reload the config file now; print what changed, or fail with the
/// file's error lines.
pub fn reload(target: &Target) -> Result<(), CliError> {
    let admin = connect(target)?;
    let answer = admin.call(Method::POST, "/reload", REQUEST_TIMEOUT)?;
    if answer.status == StatusCode::UNPROCESSABLE_ENTITY {
        let r: Rejected = json(&answer)?;
        return Err(CliError::ReloadFailed {
            generation: r.generation,
            errors: r.errors,
        });
    }
    let r: Reloaded = expect_ok(&admin, answer, None)?;
    print(&format!("{}\n", render::reloaded(&r)));
    Ok(())
}

fn connect(target: &Target) -> Result<Admin, CliError> {
    Admin::new(
        target.admin.as_deref(),
        target.config.as_deref(),
        target.token.as_deref(),
    )
}

/// A 200's JSON body, or the error its status means (`clone`: 404 names that clone).
fn expect_ok<T: DeserializeOwned>(
    admin: &Admin,
    answer: Answer,
    clone: Option<&str>,
) -> Result<T, CliError> {
    match (answer.status, clone) {
        (StatusCode::OK, _) => json(&answer),
        (StatusCode::UNAUTHORIZED, _) if admin.has_token => Err(CliError::BadToken),
        (StatusCode::UNAUTHORIZED, _) => Err(CliError::NoToken),
        (StatusCode::NOT_FOUND, Some(name)) => Err(CliError::NoClone(name.to_string())),
        (status, _) => Err(CliError::Refused {
            status: status.as_u16(),
            message: error_message(&answer),
        }),
    }
}

fn json<T: DeserializeOwned>(answer: &Answer) -> Result<T, CliError> {
    serde_json::from_slice(&answer.body).map_err(|e| {
        CliError::BadAnswer(format!(
            "status {}, body not the expected JSON: {e}",
            answer.status.as_u16()
        ))
    })
}

/// The `error` of an error body, else its first line, else the status's reason.
fn error_message(answer: &Answer) -> String {
    if let Ok(ErrorBody { error }) = serde_json::from_slice(&answer.body) {
        if !error.is_empty() {
            return error;
        }
    }
    let text = String::from_utf8_lossy(&answer.body);
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(l) => l.to_string(),
        None => answer
            .status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_string(),
    }
}

/// Write to stdout, ignoring a closed pipe (`clonelb status | head -1`).
fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// A clone name as one path segment: everything but unreserved characters
/// percent-encoded, byte by byte (the server decodes it).
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `60s` for whole seconds, else milliseconds (`1500ms`): the lb.toml duration grammar.
fn duration_param(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis().max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_encoded_segment() {
        assert_eq!(encode("clone-1"), "clone-1");
        assert_eq!(encode("127.0.0.1:9001"), "127.0.0.1%3A9001");
        assert_eq!(encode("a/b c?é"), "a%2Fb%20c%3F%C3%A9");
    }

    #[test]
    fn timeouts_are_sent_in_the_config_grammar() {
        assert_eq!(duration_param(Duration::from_secs(60)), "60s");
        assert_eq!(duration_param(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration_param(Duration::from_nanos(10)), "1ms");
    }

    #[test]
    fn reload_failure_text() {
        let e = CliError::ReloadFailed {
            generation: 7,
            errors: vec!["lb.toml:1:1: a".into(), "lb.toml:2:1: b".into()],
        };
        assert_eq!(
            e.to_string(),
            "reload failed (generation 7 still serving):\nlb.toml:1:1: a\nlb.toml:2:1: b"
        );
        assert_eq!(e.exit_code(), 1);
    }
}
