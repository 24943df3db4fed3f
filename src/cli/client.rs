//! The admin API client: where the admin listener is (`--admin`, else `[admin] listen` of
//! lb.toml) and its token (`--token`, else `$CLONELB_ADMIN_TOKEN`, else, when lb.toml was
//! read for the address, its `[admin] token` or `token_file`), and one HTTP/1.1 request
//! per connection with hyper's `client::conn`, on a `current_thread` runtime owned by the
//! command.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{CliError, TOKEN_ENV};

/// Opening the TCP connection to the admin listener.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A whole request (connect to the end of the body), except `wait-drained`'s, which gets
/// its own wait plus this.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// An answer: its status and whole body.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// A resolved admin endpoint with its runtime.
pub(crate) struct Admin {
    /// As given or read from lb.toml (for messages and the `Host` header).
    pub addr: String,
    /// What is connected to: `addr`, with an unspecified IP (`0.0.0.0`, `[::]`) replaced
    /// by loopback.
    connect_to: String,
    token: Option<HeaderValue>,
    /// Whether a token was given at all (to tell "needs a token" from "wrong token").
    pub has_token: bool,
    runtime: tokio::runtime::Runtime,
}

impl Admin {
    pub fn new(
        admin: Option<&str>,
        config: Option<&Path>,
        token: Option<&str>,
    ) -> Result<Admin, CliError> {
        let (addr, config_token) = match admin {
            Some(a) => (a.to_string(), ConfigToken::None),
            None => admin_from_config(config.unwrap_or(Path::new("lb.toml")))?,
        };
        let connect_to = match addr.parse::<SocketAddr>() {
            Ok(mut a) if a.ip().is_unspecified() => {
                a.set_ip(match a.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                });
                a.to_string()
            }
            _ => addr.clone(),
        };
        let env_token = std::env::var(TOKEN_ENV).ok();
        let token = token
            .map(str::to_string)
            .or(env_token)
            .filter(|t| !t.is_empty());
        // lb.toml's token only when none was given: a given one needs no readable file.
        let token = match token {
            Some(t) => Some(t),
            None => config_token.read()?,
        };
        let has_token = token.is_some();
        let token = token
            .map(|t| {
                HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    CliError::Local("the token has characters a header cannot carry".into())
                })
            })
            .transpose()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::Local(format!("cannot start a runtime: {e}")))?;
        Ok(Admin {
            addr,
            connect_to,
            token,
            has_token,
            runtime,
        })
    }

    /// Send `method path` with an empty body and read the whole answer within `timeout`.
    pub fn call(&self, method: Method, path: &str, timeout: Duration) -> Result<Answer, CliError> {
        self.call_with(method, path, None, timeout)
    }

    /// [`Admin::call`] with a JSON body when `json` is given.
    pub fn call_with(
        &self,
        method: Method,
        path: &str,
        json: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Answer, CliError> {
        let unreachable = |reason: String| CliError::Unreachable {
            addr: self.addr.clone(),
            reason,
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.as_str())
            .header(
                USER_AGENT,
                concat!("clonelb-cli/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &self.token {
            builder = builder.header(AUTHORIZATION, t.clone());
        }
        if json.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(json.unwrap_or_default()))
            .map_err(|e| CliError::Local(format!("cannot build the request: {e}")))?;
        self.runtime.block_on(async {
            let exchange = async {
                let stream = match tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    TcpStream::connect(&self.connect_to),
                )
                .await
                {
                    Err(_) => {
                        return Err(unreachable(format!(
                            "connection timed out after {}s",
                            CONNECT_TIMEOUT.as_secs()
                        )))
                    }
                    Ok(Err(e)) => return Err(unreachable(describe(&e))),
                    Ok(Ok(s)) => s,
                };
                let _ = stream.set_nodelay(true);
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| unreachable(e.to_string()))?;
                tokio::spawn(conn);
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| unreachable(format!("no answer: {e}")))?;
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| unreachable(format!("answer cut short: {e}")))?
                    .to_bytes();
                Ok(Answer { status, body })
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or_else(|_| {
                    Err(unreachable(format!(
                        "no answer within {}",
                        humantime::format_duration(timeout)
                    )))
                })
        })
    }
}

/// `connection refused` rather than `Connection refused (os error 111)`.
fn describe(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset".into(),
        K::TimedOut => "connection timed out".into(),
        K::AddrNotAvailable => "address not available".into(),
        _ => e.to_string(),
    }
}

/// The token lb.toml's `[admin]` names, if any.
#[derive(Debug, PartialEq, Eq)]
enum ConfigToken {
    None,
    /// `token`.
    Inline(String),
    /// `token_file` (relative paths joined to lb.toml's folder), and lb.toml for messages.
    File {
        file: PathBuf,
        config: String,
    },
}

impl ConfigToken {
    /// The token, reading the file by the balancer's own rules (`token_file::read`).
    fn read(self) -> Result<Option<String>, CliError> {
        match self {
            ConfigToken::None => Ok(None),
            ConfigToken::Inline(t) => Ok(Some(t)),
            ConfigToken::File { file, config } => {
                crate::token_file::read(&file).map(Some).map_err(|why| {
                    CliError::Local(format!(
                        "cannot read the admin token ([admin] token_file of {config}): {why}"
                    ))
                })
            }
        }
    }
}

/// `[admin] listen` of the config file, and the token its `token` or `token_file` gives,
/// read with `toml` alone (not the schema: the command line must work against any
/// balancer's file, and only needs these keys). The file itself is not read here.
fn admin_from_config(path: &Path) -> Result<(String, ConfigToken), CliError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::NoAdmin(format!(
            "no --admin given and cannot read {shown}: {}",
            describe_read(&e)
        ))
    })?;
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        CliError::NoAdmin(format!(
            "no --admin given and {shown} is not valid TOML: {}",
            e.message()
        ))
    })?;
    let admin = doc.get("admin");
    let listen = match admin.and_then(|a| a.get("listen")) {
        Some(toml::Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(CliError::NoAdmin(format!(
                "no --admin given and [admin] listen in {shown} is not a string"
            )))
        }
        None => {
            return Err(CliError::NoAdmin(format!(
                "no --admin given and {shown} has no [admin] listen"
            )))
        }
    };
    let not_a_string =
        |key: &str| CliError::Local(format!("[admin] {key} in {shown} is not a string"));
    let token = match (
        admin.and_then(|a| a.get("token")),
        admin.and_then(|a| a.get("token_file")),
    ) {
        (Some(toml::Value::String(t)), _) => ConfigToken::Inline(t.clone()),
        (Some(_), _) => return Err(not_a_string("token")),
        (None, Some(toml::Value::String(f))) => {
            let file = PathBuf::from(f);
            let file = match path.parent() {
                Some(dir) if file.is_relative() => dir.join(file),
                _ => file,
            };
            ConfigToken::File {
                file,
                config: shown,
            }
        }
        (None, Some(_)) => return Err(not_a_string("token_file")),
        (None, None) => ConfigToken::None,
    };
    Ok((listen, token))
}

fn describe_read(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("clonelb-cli-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn listen_is_read_from_the_admin_section_only() {
        let listen = |p: &Path| admin_from_config(p).map(|(l, _)| l);
        let ok = write(
            "ok.toml",
            "[listen]\nhttp = \"127.0.0.1:1\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n",
        );
        assert_eq!(
            admin_from_config(&ok).unwrap(),
            ("127.0.0.1:9090".to_string(), ConfigToken::None)
        );
        let none = write("none.toml", "[listen]\nhttp = \"127.0.0.1:1\"\n");
        let msg = listen(&none).unwrap_err().to_string();
        assert!(msg.ends_with("has no [admin] listen"), "{msg}");
        let bad = write("bad.toml", "[admin\n");
        let msg = listen(&bad).unwrap_err().to_string();
        assert!(msg.contains("is not valid TOML"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        let msg = listen(Path::new("/nonexistent/lb.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "clonelb: no --admin given and cannot read /nonexistent/lb.toml: no such file"
        );
        for p in [ok, none, bad] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn the_token_comes_from_token_or_token_file_beside_the_config() {
        let admin = "[admin]\nlisten = \"127.0.0.1:9090\"\n";
        let inline = write("inline.toml", &format!("{admin}token = \"tk\"\n"));
        let (_, token) = admin_from_config(&inline).unwrap();
        assert_eq!(token, ConfigToken::Inline("tk".into()));
        assert_eq!(token.read().unwrap().as_deref(), Some("tk"));
        // Relative to the config's folder, and read by the balancer's rules (trimmed).
        let dir = std::env::temp_dir().join(format!("clonelb-cli-tf-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("secret")).unwrap();
        std::fs::write(dir.join("secret/token"), "from-file\n").unwrap();
        let config = dir.join("lb.toml");
        std::fs::write(&config, format!("{admin}token_file = \"secret/token\"\n")).unwrap();
        let (_, token) = admin_from_config(&config).unwrap();
        assert_eq!(token.read().unwrap().as_deref(), Some("from-file"));
        std::fs::remove_file(dir.join("secret/token")).unwrap();
        let (_, token) = admin_from_config(&config).unwrap();
        let msg = token.read().unwrap_err().to_string();
        let want = format!(
            "clonelb: cannot read the admin token ([admin] token_file of {}): {}: cannot read: ",
            config.display(),
            dir.join("secret/token").display()
        );
        assert!(msg.starts_with(&want), "{msg}");
        let number = write("number.toml", &format!("{admin}token = 7\n"));
        let msg = admin_from_config(&number).unwrap_err().to_string();
        let want = format!(
            "clonelb: [admin] token in {} is not a string",
            number.display()
        );
        assert_eq!(msg, want);
        for p in [inline, number] {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unspecified_listen_address_is_reached_on_loopback() {
        let a = Admin::new(Some("0.0.0.0:9090"), None, Some("t")).unwrap();
        assert_eq!(a.connect_to, "127.0.0.1:9090");
        let a = Admin::new(Some("[::]:9090"), None, Some("t")).unwrap();
        assert_eq!(a.connect_to, "[::1]:9090");
        let a = Admin::new(Some("localhost:9090"), None, Some("t")).unwrap();
        assert_eq!(a.connect_to, "localhost:9090");
    }
}
