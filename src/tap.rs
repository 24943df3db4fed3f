//! How the request path hands a sampled answer to the consistency audit without knowing
//! it: a [`Tap`] sees a response body's data frames as they stream past and is told of its
//! clean end; an [`Audits`] (the audit, on `Shared`) makes the tap of one sampled request.
//! A leaf, so that neither `body` nor `context` depends on `audit`.

use std::sync::Arc;

use http::{HeaderMap, Method, StatusCode, Uri};

use crate::backend::BackendState;

/// A sampled response's observer: sees every data frame, is told of a clean end (dropped
/// otherwise).
pub trait Tap: Send + std::fmt::Debug {
    fn data(&mut self, chunk: &[u8]);
    fn end(self: Box<Self>);
}

/// The head of a sampled request as forwarded to its clone (cookies included,
/// hop-by-hop removed, `X-Forwarded-*` and `X-Request-Id` set).
#[derive(Debug)]
pub struct SampledHead {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl SampledHead {
    pub fn of<B>(req: &http::Request<B>) -> Self {
        SampledHead {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }
    }
}

/// Makes the tap of one sampled answer: from `served`, with `status` and `headers` as the
/// clone sent them (before clonelb adds its own); bodies compared up to `max_response`.
pub trait Audits: Send + Sync + std::fmt::Debug {
    fn tap(
        self: Arc<Self>,
        head: SampledHead,
        served: Arc<BackendState>,
        status: StatusCode,
        headers: HeaderMap,
        max_response: u64,
    ) -> Box<dyn Tap>;
}
