//! What a request knows about the balancer and about its client connection: one
//! [`Shared`] per balancer, one [`ConnContext`] per client connection. A new
//! per-connection field is added to `ConnContext` and nowhere else.
//!
//! Owns: these two structs and the connection's "request in progress" count
//! ([`ConnActivity`], [`ActiveRequest`]), which the client socket's deadlines read.
//! Must not touch: the table's contents, any clone's state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use rustls::ServerConfig;
use tokio::time::Instant;

use crate::config::{LimitsConfig, ProxyConfig};
use crate::record::Completion;
use crate::stats::ProcessStats;
use crate::table::SharedTable;
use crate::tap::Audits;

/// What every worker and every request shares: the routing table and the TLS
/// configuration (both swapped whole by the control plane), the completion hook, and
/// whether the balancer is cutting the connections still open (end of `shutdown_timeout`,
/// or an abort).
pub struct Shared {
    pub table: Arc<SharedTable>,
    pub tls: Arc<ArcSwapOption<ServerConfig>>,
    pub completion: Completion,
    /// Where sampled answers go (`[audit]`; `None`: no audit at all).
    pub audit: Option<Arc<dyn Audits>>,
    cutting: AtomicBool,
}

impl Shared {
    pub fn new(
        table: Arc<SharedTable>,
        tls: Arc<ArcSwapOption<ServerConfig>>,
        completion: Completion,
        audit: Option<Arc<dyn Audits>>,
    ) -> Self {
        Shared {
            table,
            tls,
            completion,
            audit,
            cutting: AtomicBool::new(false),
        }
    }

    /// From now on, requests that end because their connection is dropped were cut by
    /// the balancer, not abandoned by their client.
    pub fn start_cutting(&self) {
        self.cutting.store(true, Relaxed);
    }

    pub fn is_cutting(&self) -> bool {
        self.cutting.load(Relaxed)
    }

    /// The balancer's own counters (held by the completion hook).
    pub fn process_stats(&self) -> &Arc<ProcessStats> {
        self.completion.process_stats()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("cutting", &self.is_cutting())
            .finish_non_exhaustive()
    }
}

/// One client connection, as every request on it sees it. Settings that apply per
/// connection (timeouts, limits) are taken from the table when it is accepted.
#[derive(Debug)]
pub struct ConnContext {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    pub accepted_at: Instant,
    /// The client's IP as an `X-Forwarded-For` element.
    pub forwarded_for: HeaderValue,
    /// "http" or "https", for `X-Forwarded-Proto`.
    pub proto: HeaderValue,
    pub proxy: ProxyConfig,
    pub limits: LimitsConfig,
    pub activity: Arc<ConnActivity>,
}

impl ConnContext {
    pub fn new(
        shared: Arc<Shared>,
        peer: SocketAddr,
        proto: &'static str,
        accepted_at: Instant,
    ) -> Self {
        let (proxy, limits) = {
            let t = shared.table.load();
            (*t.proxy(), t.policy().limits)
        };
        let ip = peer.ip().to_canonical().to_string();
        ConnContext {
            shared,
            peer,
            accepted_at,
            // An IP address is always a valid header value.
            forwarded_for: HeaderValue::from_str(&ip)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static(proto),
            proxy,
            limits,
            activity: Arc::default(),
        }
    }
}

/// Requests in progress on one client connection; shared by its socket's deadlines and
/// its service.
#[derive(Debug, Default)]
pub struct ConnActivity {
    requests: AtomicU32,
}

impl ConnActivity {
    /// A request is being served: no client-side deadline applies.
    pub fn in_progress(&self) -> bool {
        self.requests.load(Relaxed) > 0
    }

    /// A request starts; pair with [`ConnActivity::end`] (or hold an [`ActiveRequest`]).
    pub fn begin(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn end(&self) {
        self.requests.fetch_sub(1, Relaxed);
    }
}

/// Marks a request in progress on its client connection until dropped.
#[derive(Debug)]
pub struct ActiveRequest(Arc<ConnActivity>);

impl ActiveRequest {
    pub fn new(activity: &Arc<ConnActivity>) -> Self {
        activity.begin();
        ActiveRequest(Arc::clone(activity))
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.end();
    }
}
