//! The engine's shared vocabulary: which side of the pod a connection is on,
//! how a port is handled, what a connection turned out to carry, how
//! detection ended, and what TLS the proxy saw.
//!
//! Every stage speaks these types, and each one knows its own label: the
//! spelling in metrics (Linkerd's, where Linkerd has one), in `/connections`
//! and across the Node boundary (serde renames, so the generated TypeScript
//! types carry the same strings). Mapping one to another happens here and
//! nowhere else.

use serde::{Deserialize, Serialize};

/// Which side of the pod a connection is on, as Linkerd labels metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    /// For per-direction arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How a port's connections are handled. Mirrors Linkerd's Server
/// `proxyProtocol` values (`unknown` is `Detect`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum PortMode {
    /// Sniff the first bytes to find HTTP/1, HTTP/2 or TLS.
    Detect,
    /// No detection at all: connect at once and forward from the first byte.
    Opaque,
    /// Declared HTTP/1: validated, not trusted.
    Http1,
    /// Declared HTTP/2: validated against the client preface.
    Http2,
    /// gRPC is HTTP/2 on the wire.
    Grpc,
    /// Declared TLS: validated against a ClientHello.
    Tls,
}

impl PortMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PortMode::Detect => "detect",
            PortMode::Opaque => "opaque",
            PortMode::Http1 => "http1",
            PortMode::Http2 => "http2",
            PortMode::Grpc => "grpc",
            PortMode::Tls => "tls",
        }
    }

    /// What the classifier may conclude on a port in this mode.
    pub fn expect(self) -> crate::detect::Expect {
        use crate::detect::Expect;
        match self {
            PortMode::Http1 => Expect::Http1,
            PortMode::Http2 | PortMode::Grpc => Expect::Http2,
            PortMode::Tls => Expect::Tls,
            PortMode::Detect | PortMode::Opaque => Expect::Any,
        }
    }
}

/// What a connection carries, once detection has decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum Protocol {
    #[serde(rename = "http/1")]
    Http1,
    #[serde(rename = "http/2")]
    Http2,
    #[serde(rename = "tls")]
    Tls,
    /// Anything else: forwarded as bytes.
    #[serde(rename = "opaque")]
    Opaque,
}

impl Protocol {
    /// Inverse of `as u8` (for atomics); anything unknown is opaque.
    pub fn from_u8(v: u8) -> Protocol {
        match v {
            0 => Protocol::Http1,
            1 => Protocol::Http2,
            2 => Protocol::Tls,
            _ => Protocol::Opaque,
        }
    }
}

/// How detection ended for one connection: Linkerd's results plus
/// meshpipe's own (`server_first`, `client_closed`, `error`, `over_limit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum DetectResult {
    #[serde(rename = "http/1")]
    Http1 = 0,
    #[serde(rename = "http/2")]
    Http2,
    #[serde(rename = "tls")]
    Tls,
    /// The port is opaque: detection was skipped.
    #[serde(rename = "opaque_port")]
    OpaquePort,
    #[serde(rename = "not_http")]
    NotHttp,
    /// The server sent first (or is known to): no detection.
    #[serde(rename = "server_first")]
    ServerFirst,
    #[serde(rename = "read_timeout")]
    ReadTimeout,
    /// The client closed (or half-closed) before sending a byte.
    #[serde(rename = "client_closed")]
    ClientClosed,
    /// The client socket failed before a byte was read.
    #[serde(rename = "error")]
    Error,
    /// Too many connections of this direction were in detection: this one
    /// was forwarded as opaque TCP without it.
    #[serde(rename = "over_limit")]
    OverLimit,
}

impl DetectResult {
    pub const COUNT: usize = 10;
    pub const ALL: [DetectResult; Self::COUNT] = [
        DetectResult::Http1,
        DetectResult::Http2,
        DetectResult::Tls,
        DetectResult::OpaquePort,
        DetectResult::NotHttp,
        DetectResult::ServerFirst,
        DetectResult::ReadTimeout,
        DetectResult::ClientClosed,
        DetectResult::Error,
        DetectResult::OverLimit,
    ];

    /// The metric label (`result="..."`).
    pub fn as_str(self) -> &'static str {
        match self {
            DetectResult::Http1 => "http/1",
            DetectResult::Http2 => "http/2",
            DetectResult::Tls => "tls",
            DetectResult::OpaquePort => "opaque_port",
            DetectResult::NotHttp => "not_http",
            DetectResult::ServerFirst => "server_first",
            DetectResult::ReadTimeout => "read_timeout",
            DetectResult::ClientClosed => "client_closed",
            DetectResult::Error => "error",
            DetectResult::OverLimit => "over_limit",
        }
    }

    /// The protocol a connection with this outcome is forwarded as.
    pub fn protocol(self) -> Protocol {
        match self {
            DetectResult::Http1 => Protocol::Http1,
            DetectResult::Http2 => Protocol::Http2,
            DetectResult::Tls => Protocol::Tls,
            _ => Protocol::Opaque,
        }
    }

    /// The outcome for a classifier verdict.
    pub fn of(detected: &crate::detect::Detected) -> DetectResult {
        use crate::detect::Detected;
        match detected {
            Detected::Http1 => DetectResult::Http1,
            Detected::Http2 => DetectResult::Http2,
            Detected::Tls(_) => DetectResult::Tls,
            Detected::NotHttp => DetectResult::NotHttp,
        }
    }
}

/// Why a connection has no mesh identity (Linkerd's `no_tls_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum NoTlsReason {
    /// Inbound: the client did not start mesh TLS.
    NoTlsFromRemote,
    /// Outbound: the destination has no known mesh identity (not in the
    /// policy table).
    NotProvidedByServiceDiscovery,
    /// Outbound: the destination is a loopback address (never meshed).
    Loopback,
    /// Outbound: the destination is meshed but this proxy has no identity
    /// (no `--identity-dir`), so it cannot originate mesh TLS.
    Disabled,
}

/// What TLS the proxy saw on a connection, as Linkerd's `tls` label says it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TlsStatus {
    /// Plaintext, or TLS the proxy is not a party to and did not see.
    NoIdentity(NoTlsReason),
    /// The client's own TLS, passed through; the SNI it sent.
    Opaque { sni: std::sync::Arc<str> },
    /// Mesh TLS, this proxy a party to it: the peer's verified identity
    /// (the client's inbound, `client_id`; the server's outbound, `server_id`).
    Mesh { peer: std::sync::Arc<str> },
}

impl TlsStatus {
    /// Plaintext in `direction`, with Linkerd's reason for that side.
    pub fn plaintext(direction: Direction) -> TlsStatus {
        TlsStatus::NoIdentity(match direction {
            Direction::Inbound => NoTlsReason::NoTlsFromRemote,
            Direction::Outbound => NoTlsReason::NotProvidedByServiceDiscovery,
        })
    }

    /// The status for a connection in `direction` given the SNI detection saw.
    pub fn detected(direction: Direction, sni: Option<&std::sync::Arc<str>>) -> TlsStatus {
        match sni {
            Some(sni) => TlsStatus::Opaque { sni: sni.clone() },
            None => TlsStatus::plaintext(direction),
        }
    }

    /// The `tls` label.
    pub fn label(&self) -> TlsLabel {
        match self {
            TlsStatus::NoIdentity(_) => TlsLabel::NoIdentity,
            TlsStatus::Opaque { .. } => TlsLabel::Opaque,
            TlsStatus::Mesh { .. } => TlsLabel::True,
        }
    }

    /// The `tls` label as text (for traces).
    pub fn label_str(&self) -> &'static str {
        match self {
            TlsStatus::NoIdentity(_) => "no_identity",
            TlsStatus::Opaque { .. } => "opaque",
            TlsStatus::Mesh { .. } => "true",
        }
    }

    /// The `no_tls_reason` label, when there is one.
    pub fn no_tls_reason(&self) -> Option<NoTlsReason> {
        match self {
            TlsStatus::NoIdentity(r) => Some(*r),
            _ => None,
        }
    }

    /// The `sni` label, when there is one.
    pub fn sni(&self) -> Option<&str> {
        match self {
            TlsStatus::Opaque { sni } => Some(sni),
            _ => None,
        }
    }

    /// The mesh peer's identity (`client_id` inbound, `server_id` outbound).
    pub fn peer_id(&self) -> Option<&str> {
        match self {
            TlsStatus::Mesh { peer } => Some(peer),
            _ => None,
        }
    }
}

/// Linkerd's `tls` label values that meshpipe emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum TlsLabel {
    NoIdentity,
    Opaque,
    /// Mesh TLS with a verified peer (`tls="true"`).
    #[serde(rename = "true")]
    True,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_serialise_as_linkerd_spells_them() {
        let s = |v: serde_json::Value| v.as_str().unwrap().to_string();
        assert_eq!(s(serde_json::to_value(DetectResult::OpaquePort).unwrap()), "opaque_port");
        assert_eq!(s(serde_json::to_value(DetectResult::Http1).unwrap()), "http/1");
        assert_eq!(s(serde_json::to_value(Protocol::Http2).unwrap()), "http/2");
        assert_eq!(s(serde_json::to_value(NoTlsReason::NoTlsFromRemote).unwrap()), "no_tls_from_remote");
        assert_eq!(s(serde_json::to_value(TlsLabel::NoIdentity).unwrap()), "no_identity");
        assert_eq!(s(serde_json::to_value(TlsLabel::True).unwrap()), "true");
        assert_eq!(s(serde_json::to_value(NoTlsReason::NotProvidedByServiceDiscovery).unwrap()), "not_provided_by_service_discovery");
        assert_eq!(s(serde_json::to_value(PortMode::Grpc).unwrap()), "grpc");
        for (i, r) in DetectResult::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL is in discriminant order");
            assert_eq!(s(serde_json::to_value(r).unwrap()), r.as_str(), "serde and as_str agree");
        }
    }

    #[test]
    fn tls_status_per_direction() {
        let inbound = TlsStatus::detected(Direction::Inbound, None);
        assert_eq!(inbound.label(), TlsLabel::NoIdentity);
        assert_eq!(inbound.no_tls_reason(), Some(NoTlsReason::NoTlsFromRemote));
        let out = TlsStatus::detected(Direction::Outbound, Some(&std::sync::Arc::from("db.example")));
        assert_eq!(out.label(), TlsLabel::Opaque);
        assert_eq!(out.sni(), Some("db.example"));
        assert_eq!(out.no_tls_reason(), None);
        let mesh = TlsStatus::Mesh { peer: std::sync::Arc::from("web.shop.serviceaccount.identity.linkerd.cluster.local") };
        assert_eq!((mesh.label(), mesh.no_tls_reason(), mesh.sni()), (TlsLabel::True, None, None));
        assert_eq!(mesh.peer_id(), Some("web.shop.serviceaccount.identity.linkerd.cluster.local"));
    }
}
