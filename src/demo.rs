//! `clonelb demo`: three embedded clones on loopback and a balancer in front of them, so a
//! newcomer can see round-robin work with one command and no files.
//!
//! [`serve_clone`] is a tiny app server (the same one `examples/clone.rs` runs): every
//! answer names the clone and its version, every answer (`GET /healthz` too, which
//! answers `ok`) carries the version in [`VERSION_HEADER`], and the demo balancer tracks
//! it (`[health] version_header`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::{
    AdminConfig, BackendConfig, BalancerConfig, Config, HealthConfig, ListenConfig, ProxyConfig,
};
use crate::error::StartError;

/// Accept on `listener` forever, answering as clone `name` running code `version`.
pub async fn serve_clone(listener: TcpListener, name: String, version: String) {
    let ident: Arc<(String, String)> = Arc::new((name, version));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let ident = Arc::clone(&ident);
        tokio::spawn(async move {
            let service = service_fn(move |req| clone_answer(req, Arc::clone(&ident)));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn clone_answer(
    req: Request<Incoming>,
    ident: Arc<(String, String)>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (name, version) = &*ident;
    let body = if req.uri().path() == "/healthz" {
        "ok\n".to_string()
    } else {
        format!(
            "hello from {name} (version {version}): {} {}\n",
            req.method(),
            req.uri().path()
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::OK;
    if let Ok(v) = name.parse() {
        resp.headers_mut().insert("x-clone", v);
    }
    if let Ok(v) = version.parse() {
        resp.headers_mut().insert(VERSION_HEADER, v);
    }
    Ok(resp)
}

/// The header the demo clones report their version in.
pub const VERSION_HEADER: &str = "x-clone-version";

/// The balancer's address when `demo` is given none (any free port when it is taken).
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

/// Start the demo and serve until SIGINT/SIGTERM. Prints the URL as the first line.
///
/// The balancer listens on `listen`, an error when it is taken; without one on
/// [`DEFAULT_LISTEN`], or any free port when that is taken. The admin API is on
/// 127.0.0.1:9090, or any free port when that is taken (or asked for by `listen`).
pub fn run(listen: Option<SocketAddr>) -> Result<(), StartError> {
    let (tx, rx) = std::sync::mpsc::channel();
    // The clones get their own thread and runtime, as separate servers would.
    std::thread::Builder::new()
        .name("clonelb-demo-clones".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let mut addrs = Vec::new();
                let mut listeners = Vec::new();
                for _ in 0..3 {
                    match TcpListener::bind("127.0.0.1:0").await {
                        Ok(l) => {
                            addrs.push(l.local_addr());
                            listeners.push(l);
                        }
                        Err(e) => addrs.push(Err(e)),
                    }
                }
                let _ = tx.send(addrs);
                let clones = listeners.into_iter().enumerate().map(|(i, l)| {
                    tokio::spawn(serve_clone(l, format!("clone-{}", i + 1), "1.0.0".into()))
                });
                for c in clones.collect::<Vec<_>>() {
                    let _ = c.await;
                }
            });
        })
        .map_err(StartError::Thread)?;
    let addrs = rx
        .recv()
        .map_err(|_| StartError::Thread(std::io::Error::other("demo clones did not start")))?;
    let mut backends = Vec::new();
    for (i, a) in addrs.into_iter().enumerate() {
        let address = a.map_err(StartError::Thread)?;
        backends.push(BackendConfig {
            address,
            name: format!("clone-{}", i + 1),
            weight: 1,
        });
    }
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let (http, given) = match listen {
        Some(a) => (a, true),
        None => (DEFAULT_LISTEN, false),
    };
    // The admin API steps aside when the balancer is asked for its port.
    let admin = loopback(if http.port() == 9090 { 0 } else { 9090 });
    let mut config = Config {
        listen: ListenConfig::http(http),
        balancer: BalancerConfig::default(),
        proxy: ProxyConfig::default(),
        health: Some(HealthConfig {
            version_header: Some(VERSION_HEADER.to_string()),
            ..HealthConfig::default()
        }),
        limits: Default::default(),
        reload: Default::default(),
        admin: Some(AdminConfig {
            listen: Some(admin),
            token: None,
            token_file: None,
        }),
        log: Default::default(),
        deploy: Default::default(),
        audit: None,
        error_pages: Default::default(),
        dns: Default::default(),
        backends,
        dns_backends: Vec::new(),
    };
    // The default ports when free, any free port for whichever is taken (but a given
    // listen address).
    let balancer = loop {
        match crate::start_with_signals(&config) {
            Ok(b) => break b,
            Err(StartError::Bind { address, .. }) if address == admin && address.port() != 0 => {
                config.admin = Some(AdminConfig {
                    listen: Some(loopback(0)),
                    token: None,
                    token_file: None,
                });
            }
            Err(StartError::Bind { address, .. })
                if !given && address == http && address.port() != 0 =>
            {
                config.listen = ListenConfig::http(loopback(0));
            }
            Err(e) => return Err(e),
        }
    };
    let url = format!("http://{}/", balancer.http_addr());
    println!("{url}");
    if let Some(admin) = balancer.admin_addr() {
        println!("admin: http://{admin}/ (try /status and /metrics)");
    }
    println!();
    println!(
        "clonelb demo: three clones (clone-1, clone-2, clone-3) behind a round-robin balancer."
    );
    println!("Try it from another terminal; each answer names the clone that served it:");
    println!();
    println!("    for i in 1 2 3 4 5 6; do curl -s {url}; done");
    println!();
    println!("Press Ctrl-C to stop.");
    crate::serve_until_stopped(balancer, false);
    Ok(())
}
