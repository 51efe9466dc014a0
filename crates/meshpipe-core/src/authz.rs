//! Inbound authorization: which clients may reach which port of this
//! workload, compiled by the TypeScript policy layer from Linkerd's
//! `policy.linkerd.io` resources (Server, AuthorizationPolicy,
//! MeshTLSAuthentication, NetworkAuthentication) and default policies, and
//! decided here per connection without allocation or lock.
//!
//! A port has a list of rules; a connection is allowed by the first rule it
//! satisfies and denied when none does (a port selected by a Server with no
//! AuthorizationPolicy denies everything, as in Linkerd). A rule is
//! satisfied when the client's address is in one of its networks (minus the
//! `except` networks; no networks = any address) and its client requirement
//! holds: anyone, or an authenticated (mesh TLS) client whose identity
//! matches an exact name, `*` (any identity) or `*.suffix`. Ports without an
//! entry fall to the table's default (the workload's default policy).
//! Lookups are a hash by port, then a short scan of that port's rules.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::addr::Cidr;
use crate::identity::Identity;

/// Why an authorization table was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthzError {
    #[error("authorization for port {port}: {reason}")]
    Port { port: u16, reason: String },
    #[error("authorization: port {0} is listed twice")]
    Duplicate(u16),
}

/// The table as the TypeScript layer sends it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzSpec {
    /// Ports with their own policy (selected by a Server).
    pub ports: Vec<PortAuthzSpec>,
    /// Every other port: the workload's default policy (`port` is ignored).
    pub default: PortAuthzSpec,
    /// The ports the workload exposes (its containers' ports), when known:
    /// the tunnel (4143) reaches only these. `None`: unknown (no pod spec),
    /// any port policy allows.
    #[serde(default)]
    pub exposed_ports: Option<Vec<u16>>,
}

/// The policy of one port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortAuthzSpec {
    pub port: u16,
    /// `server` (a Server selects the port) or `default` (a default policy).
    pub srv_kind: String,
    /// The Server's name, or the default policy's name (e.g. `all-unauthenticated`).
    pub srv_name: String,
    /// Ordered; the first satisfied rule allows.
    pub rules: Vec<AuthzRuleSpec>,
}

/// One way to be allowed: an AuthorizationPolicy or a default policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzRuleSpec {
    /// `authorizationpolicy` or `default`.
    pub kind: String,
    pub name: String,
    /// Client networks; empty = any address.
    pub networks: Vec<NetworkSpec>,
    /// Required client identities: empty = no mesh TLS needed;
    /// else exact names, `*` (any authenticated client) or `*.suffix`.
    pub identities: Vec<String>,
}

/// A client network: a CIDR minus some of its parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSpec {
    pub cidr: String,
    pub except: Vec<String>,
}

/// The outcome for one connection, with the labels Linkerd puts on
/// `inbound_tcp_authz_{allow,deny}_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    pub allow: bool,
    pub srv_kind: &'a str,
    pub srv_name: &'a str,
    /// The rule that allowed (None when denied).
    pub authz_kind: Option<&'a str>,
    pub authz_name: Option<&'a str>,
}

/// A [`Decision`] that owns its labels (for the addon and `meshpipe explain`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct DecisionInfo {
    pub allow: bool,
    pub srv_kind: String,
    pub srv_name: String,
    pub authz_kind: Option<String>,
    pub authz_name: Option<String>,
}

impl From<Decision<'_>> for DecisionInfo {
    fn from(d: Decision<'_>) -> Self {
        DecisionInfo {
            allow: d.allow,
            srv_kind: d.srv_kind.to_string(),
            srv_name: d.srv_name.to_string(),
            authz_kind: d.authz_kind.map(str::to_string),
            authz_name: d.authz_name.map(str::to_string),
        }
    }
}

#[derive(Debug)]
struct Network {
    net: Cidr,
    except: Vec<Cidr>,
}

#[derive(Debug, Default)]
struct Clients {
    /// No mesh TLS needed.
    anyone: bool,
    /// Any authenticated client (`*`).
    any_identity: bool,
    exact: Vec<String>,
    /// Suffixes with their leading dot (`*.ns.serviceaccount...` -> `.ns.serviceaccount...`).
    suffixes: Vec<String>,
}

#[derive(Debug)]
struct Rule {
    kind: Arc<str>,
    name: Arc<str>,
    networks: Vec<Network>,
    clients: Clients,
}

#[derive(Debug)]
struct PortAuthz {
    srv_kind: Arc<str>,
    srv_name: Arc<str>,
    rules: Vec<Rule>,
}

/// The labels of a decision as shared strings (a metric key costs no
/// allocation per connection).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DecisionLabels {
    pub allow: bool,
    pub srv_kind: Arc<str>,
    pub srv_name: Arc<str>,
    pub authz_kind: Option<Arc<str>>,
    pub authz_name: Option<Arc<str>>,
}

/// The compiled, immutable table.
#[derive(Debug)]
pub struct AuthzTable {
    ports: HashMap<u16, PortAuthz>,
    default: PortAuthz,
    exposed: Option<HashSet<u16>>,
}

impl AuthzTable {
    /// Validates and compiles a spec.
    pub fn from_spec(spec: &AuthzSpec) -> Result<AuthzTable, AuthzError> {
        let mut ports = HashMap::with_capacity(spec.ports.len());
        for p in &spec.ports {
            if p.port == 0 {
                return Err(AuthzError::Port { port: 0, reason: "expected a port 1-65535".into() });
            }
            if ports.insert(p.port, compile_port(p)?).is_some() {
                return Err(AuthzError::Duplicate(p.port));
            }
        }
        let exposed = match &spec.exposed_ports {
            Some(list) if list.contains(&0) => return Err(AuthzError::Port { port: 0, reason: "exposed ports must be 1-65535".into() }),
            Some(list) => Some(list.iter().copied().collect()),
            None => None,
        };
        Ok(AuthzTable { ports, default: compile_port(&spec.default)?, exposed })
    }

    /// A table that allows everyone everywhere (Linkerd's cluster default,
    /// `all-unauthenticated`).
    pub fn allow_all() -> AuthzTable {
        let rule = AuthzRuleSpec { kind: "default".into(), name: "all-unauthenticated".into(), networks: vec![], identities: vec![] };
        let default = PortAuthzSpec { port: 0, srv_kind: "default".into(), srv_name: "all-unauthenticated".into(), rules: vec![rule] };
        AuthzTable::from_spec(&AuthzSpec { ports: vec![], default, exposed_ports: None }).expect("static table")
    }

    /// Who may connect to `port`, read back from the compiled table (for
    /// explain): its Server or the default policy, and the rules in the
    /// order they are tried.
    pub fn describe(&self, port: u16) -> PortAuthzSpec {
        let (p, port) = match self.ports.get(&port) {
            Some(p) => (p, port),
            None => (&self.default, 0),
        };
        let rules = p
            .rules
            .iter()
            .map(|r| AuthzRuleSpec {
                kind: r.kind.to_string(),
                name: r.name.to_string(),
                networks: r
                    .networks
                    .iter()
                    .map(|n| NetworkSpec { cidr: n.net.to_string(), except: n.except.iter().map(ToString::to_string).collect() })
                    .collect(),
                identities: r.clients.patterns(),
            })
            .collect();
        PortAuthzSpec { port, srv_kind: p.srv_kind.to_string(), srv_name: p.srv_name.to_string(), rules }
    }

    /// Decides a connection to `port` from `client_ip`, authenticated as
    /// `client` (None: no mesh TLS).
    pub fn authorize(&self, port: u16, client: Option<&Identity>, client_ip: IpAddr) -> Decision<'_> {
        let (p, hit) = self.find(port, client, client_ip);
        Decision {
            allow: hit.is_some(),
            srv_kind: &p.srv_kind,
            srv_name: &p.srv_name,
            authz_kind: hit.map(|r| &*r.kind),
            authz_name: hit.map(|r| &*r.name),
        }
    }

    /// [`authorize`](Self::authorize) with the labels as shared strings, for
    /// the data path's metrics.
    pub fn decide(&self, port: u16, client: Option<&Identity>, client_ip: IpAddr) -> DecisionLabels {
        let (p, hit) = self.find(port, client, client_ip);
        DecisionLabels {
            allow: hit.is_some(),
            srv_kind: p.srv_kind.clone(),
            srv_name: p.srv_name.clone(),
            authz_kind: hit.map(|r| r.kind.clone()),
            authz_name: hit.map(|r| r.name.clone()),
        }
    }

    /// Whether a client with this identity (or none) and address would be
    /// allowed on `port`: the decision without its labels.
    pub fn allows(&self, port: u16, client: Option<&Identity>, client_ip: IpAddr) -> bool {
        self.find(port, client, client_ip).1.is_some()
    }

    /// Whether the tunnel may reach `port`: the workload exposes it (when
    /// its ports are known).
    pub fn exposes(&self, port: u16) -> bool {
        self.exposed.as_ref().is_none_or(|e| e.contains(&port))
    }

    fn find(&self, port: u16, client: Option<&Identity>, client_ip: IpAddr) -> (&PortAuthz, Option<&Rule>) {
        let p = self.ports.get(&port).unwrap_or(&self.default);
        (p, p.rules.iter().find(|r| r.allows(client, client_ip)))
    }
}

impl Rule {
    fn allows(&self, client: Option<&Identity>, ip: IpAddr) -> bool {
        let in_network =
            self.networks.is_empty() || self.networks.iter().any(|n| n.net.contains(ip) && !n.except.iter().any(|e| e.contains(ip)));
        in_network && self.clients.allow(client)
    }
}

impl Clients {
    /// The identity patterns as they were given (empty: no mesh TLS needed).
    fn patterns(&self) -> Vec<String> {
        if self.anyone {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(self.exact.len() + self.suffixes.len() + 1);
        if self.any_identity {
            out.push("*".to_string());
        }
        out.extend(self.exact.iter().cloned());
        out.extend(self.suffixes.iter().map(|s| format!("*{s}")));
        out
    }

    fn allow(&self, client: Option<&Identity>) -> bool {
        if self.anyone {
            return true;
        }
        let Some(id) = client else { return false };
        let name = id.as_str();
        self.any_identity
            || self.exact.iter().any(|e| e == name)
            || self.suffixes.iter().any(|s| name.len() > s.len() && name.ends_with(s.as_str()))
    }
}

fn compile_port(p: &PortAuthzSpec) -> Result<PortAuthz, AuthzError> {
    let bad = |reason: String| AuthzError::Port { port: p.port, reason };
    let mut rules = Vec::with_capacity(p.rules.len());
    for r in &p.rules {
        let mut networks = Vec::with_capacity(r.networks.len());
        for n in &r.networks {
            let net = Cidr::from_str(&n.cidr).map_err(|e| bad(format!("{} {}: {e}", r.kind, r.name)))?;
            let except = n
                .except
                .iter()
                .map(|e| Cidr::from_str(e))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("{} {}: {e}", r.kind, r.name)))?;
            networks.push(Network { net, except });
        }
        let mut clients = Clients { anyone: r.identities.is_empty(), ..Clients::default() };
        for pattern in &r.identities {
            if pattern == "*" {
                clients.any_identity = true;
            } else if let Some(suffix) = pattern.strip_prefix("*.") {
                Identity::parse(&format!("x.{suffix}"))
                    .map_err(|e| bad(format!("{} {}: identity pattern {pattern:?}: {e}", r.kind, r.name)))?;
                clients.suffixes.push(format!(".{suffix}"));
            } else {
                let id = Identity::parse(pattern).map_err(|e| bad(format!("{} {}: {e}", r.kind, r.name)))?;
                clients.exact.push(id.to_string());
            }
        }
        rules.push(Rule { kind: Arc::from(r.kind.as_str()), name: Arc::from(r.name.as_str()), networks, clients });
    }
    Ok(PortAuthz { srv_kind: Arc::from(p.srv_kind.as_str()), srv_name: Arc::from(p.srv_name.as_str()), rules })
}

#[cfg(test)]
mod tests;
