//! HTTP metrics with Linkerd's names: `request_total`, `response_total`
//! (`status_code`, `classification`, `grpc_status`, `error`) and the
//! `response_latency_ms` histogram, per (direction, authority, target, TLS).
//!
//! A connection looks its series up when a request's authority is new to it
//! (usually once: the series is cached on the connection), then only does
//! relaxed atomic adds. The response counters of a series are a small
//! lock-free table: each distinct (status, gRPC status, error) takes a slot
//! the first time it is seen (one compare-and-swap), so counting a response
//! is a scan of a few words and a `fetch_add`, never a lock. Past
//! `RESPONSE_SLOTS` distinct combinations in one series (a server answering
//! with dozens of status codes), responses fold into a per-class overflow.
//!
//! HTTP series share their direction's series budget with the TCP series:
//! an authority is one more series, so a client inventing `Host` headers
//! folds into the overflow series instead of growing the scrape.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::Serialize;

use super::{Histogram, HistogramSnapshot, Metrics};
use crate::addr::TargetAddr;
use crate::http::HttpErrorReason;
use crate::vocab::{Direction, NoTlsReason, TlsLabel, TlsStatus};

/// Distinct (status, gRPC status, error) combinations kept per series.
const RESPONSE_SLOTS: usize = 32;

/// The label set of one HTTP series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HttpKey {
    pub direction: Direction,
    /// `None`: the request named none (or a malformed one).
    pub authority: Option<Arc<str>>,
    pub target: TargetAddr,
    pub tls: TlsStatus,
}

/// Linkerd's response classification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    Success,
    Failure,
}

/// The gRPC codes Linkerd classifies as failures: Unknown, DeadlineExceeded,
/// PermissionDenied, Internal, Unavailable, DataLoss.
pub fn grpc_failure(code: u8) -> bool {
    matches!(code, 2 | 4 | 7 | 13 | 14 | 15)
}

/// One response's labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseKey {
    /// 0 when no response head was sent (the stream failed before it).
    pub status: u16,
    pub grpc_status: Option<u8>,
    pub error: Option<HttpErrorReason>,
}

impl ResponseKey {
    pub fn classification(&self) -> Classification {
        let failed = self.error.is_some() || self.status >= 500 || self.grpc_status.is_some_and(grpc_failure);
        if failed {
            Classification::Failure
        } else {
            Classification::Success
        }
    }

    /// A non-zero word: status in bits 0-9, gRPC status + 1 in 10-14,
    /// error index + 1 in 15-18, bit 31 set.
    fn pack(&self) -> u32 {
        let grpc = self.grpc_status.map_or(0, |g| u32::from(g.min(30)) + 1);
        let error = self.error.map_or(0, |e| e as u32 + 1);
        1 << 31 | u32::from(self.status.min(999)) | grpc << 10 | error << 15
    }

    fn unpack(w: u32) -> ResponseKey {
        let grpc = (w >> 10) & 0x1f;
        let error = (w >> 15) & 0xf;
        ResponseKey {
            status: (w & 0x3ff) as u16,
            grpc_status: (grpc > 0).then(|| (grpc - 1) as u8),
            error: if error > 0 { HttpErrorReason::from_index(error as usize - 1) } else { None },
        }
    }
}

/// Counters of one HTTP series.
pub struct HttpSeries {
    pub requests: AtomicU64,
    keys: [AtomicU32; RESPONSE_SLOTS],
    counts: [AtomicU64; RESPONSE_SLOTS],
    /// Responses past the slots, by classification (success, failure).
    overflow: [AtomicU64; 2],
    pub latency: Histogram,
}

impl Default for HttpSeries {
    fn default() -> Self {
        HttpSeries {
            requests: AtomicU64::new(0),
            keys: std::array::from_fn(|_| AtomicU32::new(0)),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            overflow: Default::default(),
            latency: Histogram::default(),
        }
    }
}

impl HttpSeries {
    /// Counts one finished response.
    pub fn response(&self, key: ResponseKey) {
        let word = key.pack();
        for (slot, count) in self.keys.iter().zip(&self.counts) {
            let mut seen = slot.load(Relaxed);
            if seen == 0 {
                // Claim the free slot; whoever wins, it now holds some key.
                seen = match slot.compare_exchange(0, word, Relaxed, Relaxed) {
                    Ok(_) => word,
                    Err(other) => other,
                };
            }
            if seen == word {
                count.fetch_add(1, Relaxed);
                return;
            }
        }
        self.overflow[key.classification() as usize].fetch_add(1, Relaxed);
    }

    fn responses(&self) -> Vec<ResponseSnapshot> {
        let mut out = Vec::new();
        for (slot, count) in self.keys.iter().zip(&self.counts) {
            let word = slot.load(Relaxed);
            let n = count.load(Relaxed);
            if word != 0 && n > 0 {
                let k = ResponseKey::unpack(word);
                out.push(ResponseSnapshot {
                    status_code: (k.status > 0).then_some(k.status),
                    classification: k.classification(),
                    grpc_status: k.grpc_status,
                    error: k.error,
                    count: n,
                });
            }
        }
        for (class, c) in [Classification::Success, Classification::Failure].into_iter().zip(&self.overflow) {
            let n = c.load(Relaxed);
            if n > 0 {
                out.push(ResponseSnapshot { status_code: None, classification: class, grpc_status: None, error: None, count: n });
            }
        }
        out
    }
}

impl Metrics {
    /// The HTTP series for `key`; its direction's overflow series once the
    /// direction's budget (shared with the TCP series) is spent.
    pub fn http_series(&self, key: &HttpKey) -> Arc<HttpSeries> {
        let d = key.direction.index();
        let room = self.max_targets.saturating_sub(self.tcp[d].len());
        self.http[d].get(key, room).unwrap_or_else(|| self.http_overflow[d].clone())
    }

    /// Counts an HTTP error by reason (`{direction}_http_errors_total`).
    pub fn http_error(&self, direction: Direction, reason: HttpErrorReason) {
        self.http_errors[direction.index()][reason as usize].fetch_add(1, Relaxed);
    }

    /// HTTP series kept now, per direction (overflow not counted).
    pub fn http_series_count(&self, direction: Direction) -> usize {
        self.http[direction.index()].len()
    }

    pub fn snapshot_http(&self) -> (Vec<HttpSnapshot>, Vec<HttpErrorSnapshot>) {
        let mut series = Vec::new();
        for map in &self.http {
            map.for_each(|k, s| series.push(http_snapshot(Some(k), k.direction, s)));
        }
        for d in Direction::ALL {
            let s = &self.http_overflow[d.index()];
            if s.requests.load(Relaxed) > 0 {
                series.push(http_snapshot(None, d, s));
            }
        }
        let mut errors = Vec::with_capacity(2 * HttpErrorReason::COUNT);
        for direction in Direction::ALL {
            for error in HttpErrorReason::ALL {
                let count = self.http_errors[direction.index()][error as usize].load(Relaxed);
                errors.push(HttpErrorSnapshot { direction, error, count });
            }
        }
        (series, errors)
    }
}

fn http_snapshot(key: Option<&HttpKey>, direction: Direction, s: &HttpSeries) -> HttpSnapshot {
    let tls = key.map_or_else(|| TlsStatus::plaintext(direction), |k| k.tls.clone());
    HttpSnapshot {
        direction,
        authority: key.and_then(|k| k.authority.as_deref().map(str::to_string)),
        target_addr: key.map(|k| k.target.to_string()),
        target_ip: key.map(|k| k.target.ip().to_string()),
        target_port: key.map(|k| k.target.port()),
        tls: tls.label(),
        no_tls_reason: tls.no_tls_reason(),
        sni: tls.sni().map(str::to_string),
        client_id: tls.peer_id().filter(|_| direction == Direction::Inbound).map(str::to_string),
        server_id: tls.peer_id().filter(|_| direction == Direction::Outbound).map(str::to_string),
        overflow: key.is_none(),
        requests: s.requests.load(Relaxed),
        responses: s.responses(),
        latency_ms: s.latency.snapshot(),
    }
}

/// Responses of one series with one label set (`response_total`).
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct ResponseSnapshot {
    /// `None` when the stream failed before a response head, or for the
    /// per-class overflow of a series with very many distinct statuses.
    pub status_code: Option<u16>,
    pub classification: Classification,
    /// The gRPC status from the trailers (or a trailers-only response).
    pub grpc_status: Option<u8>,
    pub error: Option<HttpErrorReason>,
    pub count: u64,
}

/// One HTTP series: (direction, authority, target, TLS) and its counters.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct HttpSnapshot {
    pub direction: Direction,
    pub authority: Option<String>,
    /// `None` on the overflow series.
    pub target_addr: Option<String>,
    pub target_ip: Option<String>,
    pub target_port: Option<u16>,
    pub tls: TlsLabel,
    pub no_tls_reason: Option<NoTlsReason>,
    pub sni: Option<String>,
    /// Inbound mesh TLS: the client's verified identity.
    pub client_id: Option<String>,
    /// Outbound mesh TLS: the server's verified identity.
    pub server_id: Option<String>,
    pub overflow: bool,
    /// `request_total`.
    pub requests: u64,
    /// `response_total`, one entry per label set.
    pub responses: Vec<ResponseSnapshot>,
    /// `response_latency_ms`: request received to first response body frame.
    pub latency_ms: HistogramSnapshot,
}

/// HTTP errors of one direction for one reason, zeros included.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct HttpErrorSnapshot {
    pub direction: Direction,
    pub error: HttpErrorReason,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_keys_round_trip_and_classify() {
        for key in [
            ResponseKey { status: 200, grpc_status: None, error: None },
            ResponseKey { status: 200, grpc_status: Some(0), error: None },
            ResponseKey { status: 200, grpc_status: Some(14), error: None },
            ResponseKey { status: 503, grpc_status: None, error: Some(HttpErrorReason::Unavailable) },
            ResponseKey { status: 0, grpc_status: None, error: Some(HttpErrorReason::ClientCancel) },
        ] {
            assert_eq!(ResponseKey::unpack(key.pack()), key);
        }
        let c = |status, grpc| ResponseKey { status, grpc_status: grpc, error: None }.classification();
        assert_eq!(c(200, None), Classification::Success);
        assert_eq!(c(404, None), Classification::Success);
        assert_eq!(c(500, None), Classification::Failure);
        assert_eq!(c(200, Some(5)), Classification::Success, "NotFound is not a failure");
        for code in [2, 4, 7, 13, 14, 15] {
            assert_eq!(c(200, Some(code)), Classification::Failure, "{code}");
        }
    }

    #[test]
    fn responses_fill_slots_then_overflow_by_class() {
        let s = HttpSeries::default();
        for status in 100..100 + RESPONSE_SLOTS as u16 + 3 {
            s.response(ResponseKey { status, grpc_status: None, error: None });
        }
        s.response(ResponseKey { status: 100, grpc_status: None, error: None });
        let r = s.responses();
        assert_eq!(r.len(), RESPONSE_SLOTS + 1);
        assert_eq!(r.iter().find(|x| x.status_code == Some(100)).unwrap().count, 2);
        let overflow = r.iter().find(|x| x.status_code.is_none()).unwrap();
        assert_eq!((overflow.count, overflow.classification), (3, Classification::Success));
    }

    #[test]
    fn authorities_share_the_direction_budget_with_tcp_series() {
        let m = Metrics::new(3);
        let target: TargetAddr = "127.0.0.1:80".parse().unwrap();
        let tls = TlsStatus::plaintext(Direction::Inbound);
        m.series(&super::super::SeriesKey { direction: Direction::Inbound, target, tls: tls.clone() });
        let key = |a: &str| HttpKey { direction: Direction::Inbound, authority: Some(Arc::from(a)), target, tls: tls.clone() };
        for i in 0..10 {
            m.http_series(&key(&format!("h{i}.example"))).requests.fetch_add(1, Relaxed);
        }
        let (series, _) = m.snapshot_http();
        assert_eq!(series.iter().filter(|s| !s.overflow).count(), 2, "one TCP series + two authorities fill 3");
        assert_eq!(series.iter().find(|s| s.overflow).unwrap().requests, 8);
        // The other direction is untouched.
        let out = HttpKey { direction: Direction::Outbound, ..key("x") };
        m.http_series(&out).requests.fetch_add(1, Relaxed);
        assert_eq!(m.http_series_count(Direction::Outbound), 1);
    }
}
