//! The service for one client request: load the table once → pick a clone → take its
//! in-flight guard → forward → stream the answer back, or answer the error.
//!
//! The table guard is dropped before the first `.await`; after that the request holds only
//! its clone's `Arc<BackendState>` (inside the guard), so a reload never waits for it and a
//! removed clone's state lives exactly as long as its last request.

use std::cell::RefCell;
use std::convert::Infallible;
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response};
use hyper::body::Incoming;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::backend::InFlightGuard;
use crate::body::{ResponseBody, UpstreamBody};
use crate::config::ProxyConfig;
use crate::deadline::{ActiveRequest, ConnActivity};
use crate::error::ProxyError;
use crate::forward::{self, ClientInfo, SendFailure};
use crate::table::SharedTable;

/// Everything a request needs from its client connection; one per connection.
#[derive(Debug)]
pub struct ConnContext {
    pub table: Arc<SharedTable>,
    pub client: ClientInfo,
    pub activity: Arc<ConnActivity>,
}

thread_local! {
    /// Randomness for strategies that sample (least-connections on large pools).
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// Serve one request. Never fails: every error becomes a response.
pub async fn handle(
    req: Request<Incoming>,
    cx: Arc<ConnContext>,
) -> Result<Response<ResponseBody>, Infallible> {
    let active = ActiveRequest::new(&cx.activity);
    let (picked, proxy) = {
        let table = cx.table.load();
        let picked = RNG.with(|rng| {
            table
                .pick(&mut *rng.borrow_mut())
                .map(|b| b.state.acquire())
        });
        (picked, *table.proxy())
    };
    let Some(guard) = picked else {
        return Ok(error_response(&ProxyError::NoClone));
    };
    let req = forward::prepare(req, &cx.client);
    Ok(match proxy_to(guard, req, &proxy, active).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(error = %e, "request failed");
            error_response(&e)
        }
    })
}

/// Forward to the clone behind `guard`. On a pooled connection that turns out to be closed
/// before the request left, the request is sent once more on a fresh connection.
async fn proxy_to(
    guard: InFlightGuard,
    req: Request<UpstreamBody>,
    proxy: &ProxyConfig,
    active: ActiveRequest,
) -> Result<Response<ResponseBody>, ProxyError> {
    let state = guard.state();
    let address = state.address();
    let result = async {
        let mut conn = forward::connect(state, proxy.connect_timeout, true).await?;
        match forward::send(&mut conn, req, address, proxy.response_timeout).await {
            Ok(resp) => Ok((resp, conn)),
            Err(SendFailure {
                request: Some(req), ..
            }) if conn.reused => {
                let mut conn = forward::connect(state, proxy.connect_timeout, false).await?;
                let resp = forward::send(&mut conn, req, address, proxy.response_timeout)
                    .await
                    .map_err(|f| f.error)?;
                Ok((resp, conn))
            }
            Err(f) => Err(f.error),
        }
    }
    .await;
    match result {
        Ok((resp, conn)) => {
            let (parts, body) = resp.into_parts();
            Ok(Response::from_parts(
                parts,
                ResponseBody::upstream(body, guard, conn.sender, Some(active)),
            ))
        }
        Err(e) => {
            state.record_failure();
            Err(e)
        }
    }
}

/// The client's answer for a failed request: the status from [`ProxyError::status`] and one
/// short plain-text line naming the cause.
pub fn error_response(e: &ProxyError) -> Response<ResponseBody> {
    let status = e.status();
    let text = format!(
        "{} {}: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        e
    );
    let mut resp = Response::new(ResponseBody::full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
