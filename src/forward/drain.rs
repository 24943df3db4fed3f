//! Finishing an exchange whose client left, for the connection's sake: the rest of an
//! answer abandoned mid-body, or the head (then the body) of one abandoned before its
//! head, read in the background (at most [`DRAIN_MAX`] bytes of body within
//! [`DRAIN_TIME`]) and the connection pooled when it ends cleanly. HAProxy keeps a server
//! connection after a client abort the same way; without it every client that hangs up
//! costs a new upstream connection (a load generator's end of run alone closed hundreds
//! at 256 connections).

use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};

use crate::backend::{BackendState, InFlightGuard};
use crate::upstream_conn::{PendingHead, Upstream};

/// An abandoned response is read on, for its connection's sake, when what is left is at
/// most this much ...
pub const DRAIN_MAX: u64 = 64 * 1024;
/// ... and arrives within this time.
pub const DRAIN_TIME: Duration = Duration::from_secs(1);

/// The client left mid-body (the caller checked it is worth it: the client left, the
/// clone keeps idle connections, what remains is at most [`DRAIN_MAX`]): read the rest in
/// the background.
pub(crate) fn after_body(inner: Incoming, guard: InFlightGuard, conn: Upstream) {
    // No runtime (dropped during shutdown): nothing to drain on, the connection closes.
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(drain(Rest::Body(inner), guard, conn));
}

/// The client left while its request waited for the clone's response head (see
/// `forward::send`): unless the clone is draining, disabled or cut, wait for the head and
/// read the rest as for an answer abandoned mid-body, holding one unit of the clone's
/// in-flight count meanwhile.
pub(crate) fn before_head(state: &Arc<BackendState>, conn: Upstream, head: PendingHead) {
    if !state.keeps_idle() || state.is_cut() {
        return; // dropping it closes the connection
    }
    // No runtime (dropped during shutdown): nothing to drain on, the connection closes.
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(drain(Rest::Head(head), state.hold(), conn));
}

/// What is left to read of an abandoned exchange.
enum Rest {
    /// Its response head (and then the body).
    Head(PendingHead),
    /// Its response body.
    Body(Incoming),
}

/// Read the rest of an abandoned response (at most [`DRAIN_MAX`] bytes of body, all
/// within [`DRAIN_TIME`]) and pool its connection when it ends cleanly. The in-flight
/// guard is held meanwhile: the connection is busy, and a drain cut or a disable sees it.
async fn drain(rest: Rest, guard: InFlightGuard, mut conn: Upstream) {
    let read_to_end = async {
        let mut inner = match rest {
            Rest::Body(inner) => inner,
            Rest::Head(mut head) => {
                match std::future::poll_fn(|cx| conn.poll_head(&mut head, cx)).await {
                    Ok(resp) => resp.into_body(),
                    Err(_) => return false,
                }
            }
        };
        if inner.size_hint().upper().is_some_and(|n| n > DRAIN_MAX) {
            return false;
        }
        if inner.is_end_stream() {
            return true;
        }
        let mut read = 0u64;
        loop {
            match std::future::poll_fn(|cx| conn.poll_body(&mut inner, cx)).await {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(frame)) => {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if read > DRAIN_MAX {
                        return false;
                    }
                    if inner.is_end_stream() {
                        return true;
                    }
                }
            }
        }
    };
    let read = matches!(
        tokio::time::timeout(DRAIN_TIME, read_to_end).await,
        Ok(true)
    );
    if read {
        let state = guard.state();
        conn.settle();
        state.idle.put(conn, !state.keeps_idle());
    }
    drop(guard);
}
