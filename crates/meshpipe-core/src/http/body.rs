//! The response body the proxy hands to its HTTP server: either the
//! upstream's body, streamed frame by frame (hyper pulls a frame only when
//! the client can take it, so backpressure reaches the upstream through flow
//! control or TCP, and nothing is buffered whole), or a small body the proxy
//! made up (an error).
//!
//! The upstream body is also where a response is measured: the first frame
//! (data or trailers) records `response_latency_ms` (Linkerd measures to the
//! first response body frame), trailers carry the gRPC status, and the end
//! of the stream, clean or not, counts `response_total`. A body hyper drops
//! before its end (the client went away, the stream was reset) counts as a
//! `client_cancel` failure, and an error from upstream mid-body as
//! `response_body`.
//!
//! On the way in, an inbound request's body loses `l5d-client-id` from its
//! trailers ([`ScrubTrailers`]): only the proxy may say who the client is,
//! in the head, and frameworks that merge trailers into the headers would
//! otherwise let a client say it in the trailers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::http::client::Lease;
use crate::http::HttpErrorReason;
use crate::metrics::{HttpSeries, ResponseKey};

/// The error type of every body the proxy serves.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body served to the client.
pub enum ProxyBody {
    /// Nothing (error responses, upgrades, trailers-only gRPC).
    Empty,
    /// A small body the proxy made up.
    Full(Option<Bytes>),
    /// The upstream's body, measured.
    Upstream(Box<Metered>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Upstream(m) => Pin::new(m.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(d) => d.is_none(),
            ProxyBody::Upstream(m) => m.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            ProxyBody::Upstream(m) => m.inner.size_hint(),
        }
    }
}

/// An upstream response body that records its response when it ends.
pub struct Metered {
    inner: Incoming,
    series: Arc<HttpSeries>,
    /// When the request arrived.
    started: Instant,
    status: u16,
    /// The gRPC status seen so far (response headers of a trailers-only
    /// response, then trailers).
    grpc_status: Option<u8>,
    first_frame: bool,
    done: bool,
    /// The pooled HTTP/1 connection this response came on: checked back in
    /// when the body ended cleanly.
    lease: Option<Lease>,
}

impl Metered {
    pub fn new(inner: Incoming, series: Arc<HttpSeries>, started: Instant, status: u16, headers: &HeaderMap, lease: Option<Lease>) -> Self {
        Metered { inner, series, started, status, grpc_status: grpc_status(headers), first_frame: false, done: false, lease }
    }

    fn first_frame(&mut self) {
        if !self.first_frame {
            self.first_frame = true;
            self.series.latency.observe(self.started.elapsed());
        }
    }

    fn finish(&mut self, error: Option<HttpErrorReason>) {
        if self.done {
            return;
        }
        self.done = true;
        // An empty body's "first frame" is its end.
        self.first_frame();
        self.series.response(ResponseKey { status: self.status, grpc_status: self.grpc_status, error });
        if let Some(lease) = self.lease.take() {
            lease.release(error.is_none());
        }
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(mut frame))) => {
                this.first_frame();
                if let Some(trailers) = frame.trailers_mut() {
                    crate::http::headers::trim_field_values(trailers);
                    if let Some(g) = grpc_status(trailers) {
                        this.grpc_status = Some(g);
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(Some(HttpErrorReason::ResponseBody));
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish(None);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if !self.done {
            // hyper does not poll a body that says it has ended (HEAD, 204,
            // `content-length: 0`): that is a clean end. Anything else
            // dropped early was abandoned by the client.
            let error = if self.inner.is_end_stream() { None } else { Some(HttpErrorReason::ClientCancel) };
            self.finish(error);
        }
    }
}

/// The `grpc-status` of a header or trailer block.
pub fn grpc_status(headers: &HeaderMap) -> Option<u8> {
    let v = headers.get("grpc-status")?.to_str().ok()?;
    // Unknown (2) for a value that is not a small number.
    Some(v.trim().parse::<u8>().ok().filter(|c| *c <= 30).unwrap_or(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_values() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(grpc_status(&h), Some(14));
        h.insert("grpc-status", "banana".parse().unwrap());
        assert_eq!(grpc_status(&h), Some(2));
    }
}

/// A request body whose trailers lose `l5d-client-id` when `scrub` (an
/// inbound request: `headers::set_client_id` rules the head), so a client
/// cannot supply the field after its body either (RFC 9110 §6.5.1 lets a
/// recipient merge trailer fields into the header section). Trailer values
/// are trimmed as the head's are (`headers::trim_field_values`).
#[derive(Debug)]
pub struct ScrubTrailers<B> {
    inner: B,
    scrub: bool,
}

impl<B> ScrubTrailers<B> {
    pub fn new(inner: B, scrub: bool) -> ScrubTrailers<B> {
        ScrubTrailers { inner, scrub }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for ScrubTrailers<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let mut r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &mut r {
            if let Some(trailers) = frame.trailers_mut() {
                crate::http::headers::trim_field_values(trailers);
                if this.scrub {
                    crate::http::headers::set_client_id(trailers, None);
                }
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
