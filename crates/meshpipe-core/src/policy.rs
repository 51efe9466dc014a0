//! The port policy table: which mode (detect, opaque, a declared protocol)
//! and which detect timeout a new connection gets.
//!
//! The TypeScript policy layer does all the hard work (annotations, Kubernetes
//! objects, Linkerd's precedence rules) and hands the engine a flat, ordered
//! list of rules. The engine's job is only the lookup: the first rule whose
//! direction, network and port range match wins; no match means `detect`
//! (Linkerd's `unknown`). Tables are immutable; a new one is swapped in
//! atomically (`ArcSwap`) so the per-connection lookup takes no lock and an
//! update never touches connections already in flight.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::addr::{AddrError, Cidr, PortRange, TargetAddr};
pub use crate::vocab::{Direction, PortMode};

/// Errors in a policy table handed to the engine.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy rule {index} ({source_name}): {error}")]
    Rule { index: usize, source_name: String, error: AddrError },
}

/// One rule as it arrives from TypeScript (see ARCHITECTURE.md).
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    pub direction: Direction,
    pub net: Option<String>,
    pub ports: (u32, u32),
    pub mode: PortMode,
    pub detect_timeout_ms: Option<u64>,
    #[serde(default)]
    pub source: String,
}

/// A policy table as it arrives from TypeScript.
#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug)]
struct Rule {
    direction: Direction,
    net: Option<Cidr>,
    ports: PortRange,
    mode: PortMode,
    detect_timeout: Option<Duration>,
    source: Arc<str>,
}

/// The result of a lookup: what to do with one new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPolicy {
    pub mode: PortMode,
    /// `None` keeps the direction's default detect timeout.
    pub detect_timeout: Option<Duration>,
    /// Why: the rule's source (e.g. "default opaque ports"), or "default".
    pub source: Arc<str>,
}

/// A compiled, immutable policy table.
#[derive(Debug, Default)]
pub struct PolicyTable {
    generation: u64,
    rules: Vec<Rule>,
}

impl PolicyTable {
    /// Validates and compiles a table. Any bad rule rejects the whole table:
    /// a half-applied policy would silently widen or narrow what is detected.
    pub fn compile(spec: &PolicySpec) -> Result<Self, PolicyError> {
        let mut rules = Vec::with_capacity(spec.rules.len());
        for (index, r) in spec.rules.iter().enumerate() {
            let wrap = |error| PolicyError::Rule { index, source_name: r.source.clone(), error };
            let ports = PortRange::new(r.ports.0, r.ports.1).map_err(wrap)?;
            let net = match &r.net {
                Some(n) => Some(n.parse::<Cidr>().map_err(wrap)?),
                None => None,
            };
            rules.push(Rule {
                direction: r.direction,
                net,
                ports,
                mode: r.mode,
                detect_timeout: r.detect_timeout_ms.map(Duration::from_millis),
                source: Arc::from(r.source.as_str()),
            });
        }
        Ok(PolicyTable { generation: spec.generation, rules })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// First matching rule for a connection in `direction` to `target`.
    pub fn lookup(&self, direction: Direction, target: TargetAddr) -> PortPolicy {
        let port = target.port();
        let ip = target.ip();
        for rule in &self.rules {
            if rule.direction == direction && rule.ports.contains(port) && rule.net.is_none_or(|net| net.contains(ip)) {
                return PortPolicy { mode: rule.mode, detect_timeout: rule.detect_timeout, source: rule.source.clone() };
            }
        }
        PortPolicy { mode: PortMode::Detect, detect_timeout: None, source: Arc::from("default") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(direction: Direction, net: Option<&str>, ports: (u32, u32), mode: PortMode, source: &str) -> RuleSpec {
        RuleSpec { direction, net: net.map(str::to_string), ports, mode, detect_timeout_ms: None, source: source.to_string() }
    }

    #[test]
    fn first_match_wins_and_default_is_detect() {
        let spec = PolicySpec {
            generation: 7,
            rules: vec![
                rule(Direction::Outbound, Some("10.0.0.5/32"), (3306, 3306), PortMode::Detect, "pod"),
                rule(Direction::Outbound, Some("10.0.0.0/8"), (3306, 3306), PortMode::Opaque, "defaults"),
                rule(Direction::Inbound, None, (8000, 8100), PortMode::Http1, "server"),
            ],
        };
        let table = PolicyTable::compile(&spec).unwrap();
        assert_eq!(table.generation(), 7);
        let t = |s: &str| s.parse::<TargetAddr>().unwrap();
        assert_eq!(&*table.lookup(Direction::Outbound, t("10.0.0.5:3306")).source, "pod");
        assert_eq!(table.lookup(Direction::Outbound, t("10.1.0.5:3306")).mode, PortMode::Opaque);
        assert_eq!(table.lookup(Direction::Outbound, t("192.0.2.1:3306")).mode, PortMode::Detect);
        assert_eq!(table.lookup(Direction::Inbound, t("127.0.0.1:8050")).mode, PortMode::Http1);
        assert_eq!(table.lookup(Direction::Outbound, t("127.0.0.1:8050")).mode, PortMode::Detect);
    }

    #[test]
    fn a_bad_rule_rejects_the_table() {
        let spec = PolicySpec { generation: 1, rules: vec![rule(Direction::Inbound, None, (7000, 6000), PortMode::Opaque, "annotation")] };
        let err = PolicyTable::compile(&spec).unwrap_err().to_string();
        assert!(err.contains("annotation") && err.contains("7000"), "{err}");
    }

    #[test]
    fn modes_parse_from_json() {
        let spec: PolicySpec = serde_json::from_str(
            r#"{"generation":2,"rules":[{"direction":"inbound","net":null,"ports":[1,2],"mode":"grpc","detectTimeoutMs":5,"source":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(spec.rules[0].mode, PortMode::Grpc);
        assert!(serde_json::from_str::<PolicySpec>(r#"{"rules":[{"direction":"sideways","ports":[1,1],"mode":"opaque"}]}"#).is_err());
    }
}
