//! Engine configuration: the one typed object the TypeScript layer hands over.
//!
//! The TypeScript layer has already validated user input against its schema
//! and turned it into this shape (see ARCHITECTURE.md). The engine validates
//! again anyway, because it is also a plain library and because a wrong value
//! here (a listener without a target, a zero buffer) would otherwise surface
//! as a confusing failure deep in the data path.

mod http;
mod sections;

use std::time::Duration;

use serde::Deserialize;

pub use http::HttpSpec;
pub use sections::{CopySpec, DetectSpec, InboundSpec, LimitsSpec, MetricsSpec, PortTimeoutSpec};

use crate::addr::{AddrError, BindAddr, TargetAddr};
use crate::policy::{Direction, PolicyError, PolicySpec, PolicyStore, PortMode};

/// Errors in an engine configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("listener {name:?}: {field}: {error}")]
    Address { name: String, field: &'static str, error: AddrError },
    #[error("listener {name:?} is defined twice: listener names must be unique")]
    DuplicateListener { name: String },
    #[error("no listeners configured: expected at least one listener")]
    NoListeners,
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error(
        "listener {name:?} forwards inbound connections to their original destination, so inbound.podIps must list the pod's IPs \
         (status.podIPs): connections to any other address are refused"
    )]
    InboundWithoutPodIps { name: String },
    #[error("{field} = {value}: {expected}")]
    Value { field: &'static str, value: String, expected: &'static str },
    #[error("{0}")]
    Loop(#[from] crate::loops::LoopError),
}

/// Where a listener's connections go, as configured.
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum TargetSpec {
    /// An explicit forward: every connection goes to `addr`.
    #[serde(rename_all = "camelCase")]
    Fixed { addr: String },
    /// An explicit forward to a host name the control layer resolves: new
    /// connections spread over `addrs` (IPs; replaced at run time with
    /// `set_target_addrs`), see `names.rs`.
    #[serde(rename_all = "camelCase")]
    Named { host: String, port: u16, addrs: Vec<String> },
    /// Transparent interception: the original destination of the redirected
    /// socket. `inbound_host` rewrites the host (e.g. to 127.0.0.1) so the
    /// inbound side reaches the app on the original port.
    #[serde(rename_all = "camelCase")]
    OriginalDst {
        #[serde(default)]
        inbound_host: Option<String>,
    },
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerSpec {
    pub name: String,
    pub bind: String,
    pub target: TargetSpec,
    #[serde(default)]
    pub mode: Option<PortMode>,
    pub direction: Direction,
}

/// The whole engine configuration as it arrives (camelCase JSON).
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineSpec {
    #[serde(default)]
    pub workers: usize,
    #[serde(default)]
    pub limits: LimitsSpec,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// A forwarded connection with no byte in either direction for this long
    /// is closed (both sides); 0 = never.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    pub listeners: Vec<ListenerSpec>,
    #[serde(default)]
    pub detect: DetectSpec,
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// Forwarding tunables; the defaults (`CopySpec::default`) when absent.
    #[serde(default)]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub copy: Option<CopySpec>,
    #[serde(default)]
    pub policy: PolicySpec,
    /// The inbound guard; required (with pod IPs) by transparent inbound listeners.
    #[serde(default)]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub inbound: Option<InboundSpec>,
    /// HTTP proxying; the defaults (`HttpSpec::default`) when absent.
    #[serde(default)]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub http: Option<HttpSpec>,
}

fn default_connect_timeout() -> u64 {
    10_000
}

/// Envoy's tcp_proxy default: long enough for connection pools that keep
/// idle connections (database pools, HTTP keep-alive), short enough that
/// connections whose peer vanished without a FIN or RST are reclaimed.
fn default_idle_timeout() -> u64 {
    3_600_000
}

/// A validated listener.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: BindAddr,
    pub target: Target,
    pub mode: Option<PortMode>,
    pub direction: Direction,
}

/// A validated target rule.
#[derive(Clone, Debug)]
pub enum Target {
    Fixed(TargetAddr),
    /// A host name's addresses, shared with the engine's name table.
    Named(std::sync::Arc<crate::names::NamedTarget>),
    OriginalDst {
        inbound_host: Option<std::net::IpAddr>,
    },
}

impl Target {
    /// The addresses a forward sends to (none for a transparent listener): for loop checks.
    pub fn fixed_addrs(&self) -> Vec<std::net::SocketAddr> {
        match self {
            Target::Fixed(a) => vec![a.0],
            Target::Named(n) => n.addrs(),
            Target::OriginalDst { .. } => Vec::new(),
        }
    }
}

/// Detection settings, validated.
#[derive(Clone, Debug)]
pub struct DetectConfig {
    /// Per direction (index with `Direction::index`).
    pub timeout: [Duration; 2],
    /// Per port range (and optional direction); first match wins.
    pub port_timeouts: Vec<(Option<Direction>, crate::addr::PortRange, Duration)>,
    /// `None` turns the server-first fast path off.
    pub server_first_grace: Option<Duration>,
    pub server_first_capacity: usize,
    pub server_first_ttl: Duration,
}

impl DetectConfig {
    /// The detect timeout for a connection: a policy rule's own timeout wins,
    /// then the first matching per-port timeout, then the direction's.
    pub fn timeout_for(&self, direction: Direction, port: u16, rule: Option<Duration>) -> Duration {
        rule.or_else(|| {
            self.port_timeouts.iter().find(|(d, range, _)| d.is_none_or(|d| d == direction) && range.contains(port)).map(|(_, _, t)| *t)
        })
        .unwrap_or(self.timeout[direction.index()])
    }
}

/// The validated engine configuration.
#[derive(Debug)]
pub struct EngineConfig {
    /// Worker runtimes to run on (never 0: the spec's 0 means one per core).
    pub workers: usize,
    pub limits: LimitsSpec,
    pub connect_timeout: Duration,
    /// `None`: forwarded connections never time out.
    pub idle_timeout: Option<Duration>,
    pub listeners: Vec<ListenerConfig>,
    pub detect: DetectConfig,
    pub max_metric_targets: usize,
    /// `None`: series are kept forever.
    pub metrics_retain_idle: Option<Duration>,
    pub copy: crate::copy::CopyConfig,
    pub policy: PolicyStore,
    pub inbound: crate::target::InboundGuard,
    pub http: crate::http::HttpConfig,
}

impl EngineSpec {
    /// Validates the spec into an `EngineConfig`.
    pub fn validate(&self) -> Result<EngineConfig, ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::NoListeners);
        }
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for l in &self.listeners {
            if listeners.iter().any(|x: &ListenerConfig| x.name == l.name) {
                return Err(ConfigError::DuplicateListener { name: l.name.clone() });
            }
            let addr_err = |field, error| ConfigError::Address { name: l.name.clone(), field, error };
            let bind = l.bind.parse::<BindAddr>().map_err(|e| addr_err("bind", e))?;
            let target = match &l.target {
                TargetSpec::Fixed { addr } => Target::Fixed(addr.parse::<TargetAddr>().map_err(|e| addr_err("target", e))?),
                TargetSpec::Named { host, port, addrs } => {
                    if *port == 0 || host.trim().is_empty() {
                        return Err(addr_err("target", AddrError::Socket(format!("{host}:{port}"))));
                    }
                    let ips = crate::names::parse_addrs(addrs).map_err(|e| addr_err("target.addrs", AddrError::Socket(e.to_string())))?;
                    Target::Named(std::sync::Arc::new(crate::names::NamedTarget::new(host, *port, &ips)))
                }
                TargetSpec::OriginalDst { inbound_host } => Target::OriginalDst {
                    inbound_host: match inbound_host {
                        Some(h) => Some(h.parse().map_err(|_| addr_err("target.inboundHost", AddrError::Socket(h.clone())))?),
                        None => None,
                    },
                },
            };
            listeners.push(ListenerConfig { name: l.name.clone(), bind, target, mode: l.mode, direction: l.direction });
        }
        let inbound = self.inbound_guard(&listeners)?;
        crate::loops::check_config(&listeners)?;
        let d = &self.detect;
        for (field, v) in [("detect.inboundTimeoutMs", d.inbound_timeout_ms), ("detect.outboundTimeoutMs", d.outbound_timeout_ms)] {
            if v == 0 {
                return Err(ConfigError::Value { field, value: v.to_string(), expected: "a timeout of at least 1 ms" });
            }
        }
        let mut port_timeouts = Vec::with_capacity(d.port_timeouts.len());
        for (i, t) in d.port_timeouts.iter().enumerate() {
            let range = crate::addr::PortRange::new(t.ports.0, t.ports.1).map_err(|_| ConfigError::Value {
                field: "detect.portTimeouts",
                value: format!("entry {i}: [{}, {}]", t.ports.0, t.ports.1),
                expected: "a port range 1 <= low <= high <= 65535",
            })?;
            if t.timeout_ms == 0 {
                return Err(ConfigError::Value {
                    field: "detect.portTimeouts",
                    value: format!("entry {i}: 0 ms"),
                    expected: "a timeout of at least 1 ms",
                });
            }
            port_timeouts.push((t.direction, range, Duration::from_millis(t.timeout_ms)));
        }
        if self.connect_timeout_ms == 0 {
            return Err(ConfigError::Value { field: "connectTimeoutMs", value: "0".into(), expected: "a timeout of at least 1 ms" });
        }
        let workers = match self.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Ok(EngineConfig {
            workers,
            limits: self.limits.clone(),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            idle_timeout: (self.idle_timeout_ms > 0).then(|| Duration::from_millis(self.idle_timeout_ms)),
            listeners,
            detect: DetectConfig {
                timeout: [Duration::from_millis(d.inbound_timeout_ms), Duration::from_millis(d.outbound_timeout_ms)],
                port_timeouts,
                server_first_grace: (d.server_first_grace_ms > 0).then(|| Duration::from_millis(d.server_first_grace_ms)),
                server_first_capacity: d.server_first_capacity,
                server_first_ttl: Duration::from_millis(d.server_first_ttl_ms),
            },
            max_metric_targets: self.metrics.max_targets.max(1),
            metrics_retain_idle: (self.metrics.retain_idle_ms > 0).then(|| Duration::from_millis(self.metrics.retain_idle_ms)),
            copy: {
                let copy = self.copy.clone().unwrap_or_default();
                crate::copy::CopyConfig {
                    mode: copy.mode,
                    pipe_size: copy.pipe_size.clamp(4096, 1 << 20),
                    buffer_size: copy.buffer_size.clamp(1024, 1 << 20),
                    bulk_buffer_size: copy.bulk_buffer_size.clamp(64 << 10, 64 << 20),
                }
            },
            policy: PolicyStore::compile(&self.policy)?,
            inbound,
            http: self.http.clone().unwrap_or_default().validate()?,
        })
    }

    /// Validates `inbound`: pod IPs are unicast addresses other pods can
    /// reach, and a transparent inbound listener has at least one, because
    /// without them it would either refuse everything or guard nothing.
    fn inbound_guard(&self, listeners: &[ListenerConfig]) -> Result<crate::target::InboundGuard, ConfigError> {
        let spec = self.inbound.clone().unwrap_or_default();
        let mut ips = Vec::with_capacity(spec.pod_ips.len());
        for text in &spec.pod_ips {
            let ip: std::net::IpAddr = text.trim().parse().map_err(|_| ConfigError::Value {
                field: "inbound.podIps",
                value: format!("{text:?}"),
                expected: "IP addresses, e.g. 10.42.0.7 or fd00::7",
            })?;
            let ip = ip.to_canonical();
            if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
                return Err(ConfigError::Value {
                    field: "inbound.podIps",
                    value: ip.to_string(),
                    expected: "the pod's own unicast addresses (status.podIPs), not a loopback, unspecified or multicast address",
                });
            }
            ips.push(ip);
        }
        if let Some(port) = spec.proxy_ports.iter().find(|p| **p == 0) {
            return Err(ConfigError::Value { field: "inbound.proxyPorts", value: port.to_string(), expected: "ports 1-65535" });
        }
        let transparent_inbound =
            listeners.iter().find(|l| l.direction == Direction::Inbound && matches!(l.target, Target::OriginalDst { .. }));
        if let (Some(l), true) = (transparent_inbound, ips.is_empty()) {
            return Err(ConfigError::InboundWithoutPodIps { name: l.name.clone() });
        }
        Ok(crate::target::InboundGuard::new(ips, spec.proxy_ports))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<EngineConfig, String> {
        let spec: EngineSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_forward_config() {
        let c = parse(
            r#"{"listeners":[{"name":"a","bind":"127.0.0.1:0","target":{"kind":"fixed","addr":"127.0.0.1:9"},"direction":"outbound"}]}"#,
        )
        .unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.detect.timeout[1], Duration::from_secs(10));
        assert_eq!(c.detect.server_first_grace, Some(Duration::from_millis(100)));
    }

    #[test]
    fn port_timeouts_beat_the_direction_and_lose_to_rules() {
        let c = parse(r#"{"listeners":[{"name":"a","bind":"127.0.0.1:0","target":{"kind":"fixed","addr":"127.0.0.1:9"},"direction":"outbound"}],
            "detect":{"outboundTimeoutMs":10000,"portTimeouts":[{"ports":[8000,8100],"timeoutMs":500},{"direction":"inbound","ports":[9000,9000],"timeoutMs":50}]}}"#).unwrap();
        let d = &c.detect;
        assert_eq!(d.timeout_for(Direction::Outbound, 8050, None), Duration::from_millis(500));
        assert_eq!(d.timeout_for(Direction::Outbound, 9000, None), Duration::from_secs(10), "inbound-only entry");
        assert_eq!(d.timeout_for(Direction::Inbound, 9000, None), Duration::from_millis(50));
        assert_eq!(d.timeout_for(Direction::Outbound, 8050, Some(Duration::from_secs(3))), Duration::from_secs(3));
        let err = parse(r#"{"listeners":[{"name":"a","bind":"127.0.0.1:0","target":{"kind":"fixed","addr":"127.0.0.1:9"},"direction":"outbound"}],"detect":{"portTimeouts":[{"ports":[9,1],"timeoutMs":5}]}}"#).unwrap_err();
        assert!(err.contains("portTimeouts") && err.contains("[9, 1]"), "{err}");
    }

    #[test]
    fn errors_name_the_listener_and_field() {
        let err = parse(
            r#"{"listeners":[{"name":"db","bind":"127.0.0.1:0","target":{"kind":"fixed","addr":"nowhere"},"direction":"outbound"}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("\"db\"") && err.contains("target") && err.contains("nowhere"), "{err}");
        let err = parse(r#"{"listeners":[]}"#).unwrap_err();
        assert!(err.contains("no listeners"), "{err}");
        let err = parse(r#"{"listeners":[],"bogus":1}"#).unwrap_err();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn transparent_inbound_needs_pod_ips_and_they_must_be_unicast() {
        let listener = r#"{"name":"inbound","bind":"0.0.0.0:0","target":{"kind":"originalDst"},"direction":"inbound"}"#;
        let err = parse(&format!(r#"{{"listeners":[{listener}]}}"#)).unwrap_err();
        assert!(err.contains("\"inbound\"") && err.contains("inbound.podIps"), "{err}");
        let c =
            parse(&format!(r#"{{"listeners":[{listener}],"inbound":{{"podIps":["10.0.0.5","::ffff:10.0.0.6"],"proxyPorts":[4191]}}}}"#))
                .unwrap();
        assert!(c.inbound.check("10.0.0.6:80".parse().unwrap()).is_ok());
        assert!(c.inbound.check("10.0.0.5:4191".parse().unwrap()).is_err());
        for bad in ["127.0.0.1", "::1", "0.0.0.0", "224.0.0.1", "pod"] {
            let err = parse(&format!(r#"{{"listeners":[{listener}],"inbound":{{"podIps":["{bad}"]}}}}"#)).unwrap_err();
            assert!(err.contains("inbound.podIps"), "{bad}: {err}");
        }
        // Outbound-only and fixed-target configs need no pod IPs.
        let out = r#"{"name":"outbound","bind":"127.0.0.1:0","target":{"kind":"originalDst"},"direction":"outbound"}"#;
        assert!(parse(&format!(r#"{{"listeners":[{out}]}}"#)).is_ok());
    }

    #[test]
    fn a_forward_to_its_own_listener_is_refused() {
        let err = parse(
            r#"{"listeners":[{"name":"a","bind":"0.0.0.0:5000","target":{"kind":"fixed","addr":"127.0.0.1:5000"},"direction":"outbound"}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("\"a\" forwards to 127.0.0.1:5000") && err.contains("bind 0.0.0.0:5000"), "{err}");
    }

    #[test]
    fn limits_and_timeouts_have_defaults_and_zero_turns_them_off() {
        let c = parse(
            r#"{"listeners":[{"name":"a","bind":"127.0.0.1:0","target":{"kind":"fixed","addr":"127.0.0.1:9"},"direction":"outbound"}]}"#,
        )
        .unwrap();
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(c.metrics_retain_idle, Some(Duration::from_secs(600)));
        assert_eq!((c.limits.inbound_connections, c.limits.detecting_connections, c.limits.fd_reserve), (0, 1024, 128));
        let c = parse(
            r#"{"listeners":[{"name":"a","bind":"127.0.0.1:0","target":{"kind":"fixed","addr":"127.0.0.1:9"},"direction":"outbound"}],
            "idleTimeoutMs":0,"metrics":{"retainIdleMs":0},"limits":{"inboundConnections":5}}"#,
        )
        .unwrap();
        assert_eq!((c.idle_timeout, c.metrics_retain_idle), (None, None));
        assert_eq!((c.limits.inbound_connections, c.limits.fd_reserve), (5, 128), "unset fields keep their defaults");
    }
}
