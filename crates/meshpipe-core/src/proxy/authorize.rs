//! The pipeline's inbound authorization stage: once the TLS decision is
//! made (mesh TLS with a verified client identity, the client's own TLS
//! passed through, or plaintext), the connection is decided by the
//! workload's authorization table (`authz.rs`, part of the policy table) for the port it is for (the
//! original destination's port, or inside the tunnel the header's port),
//! with the client's identity (or none) and its address. A port selected by
//! a Server denies anything not authorized; other ports follow the default
//! policy. Every decision is counted with Linkerd's labels
//! (`inbound_tcp_authz_allow_total` / `_deny_total`); a denied connection
//! is reset before anything is dialled.
//!
//! The caller passes the table it loaded: a stage that makes more than one
//! policy check for a connection (the tunnel asks whether the port is
//! exposed, then authorizes) must judge it by one generation of the policy,
//! not by two when a swap falls between the checks.

use std::net::IpAddr;

use tracing::debug;

use super::Context;
use crate::authz::AuthzTable;
use crate::identity::Identity;
use crate::vocab::TlsStatus;

/// Decides and counts one inbound connection by `authz`; true when it may
/// go on.
pub(crate) fn inbound(ctx: &Context, authz: &AuthzTable, port: u16, client: Option<&Identity>, client_ip: IpAddr, tls: &TlsStatus) -> bool {
    let decision = authz.decide(port, client, client_ip);
    let client_id = match tls {
        TlsStatus::Mesh { peer } => Some(peer),
        _ => None,
    };
    ctx.mesh.metrics.authz(&decision, port, tls.label(), client_id);
    if decision.allow {
        debug!(srv = %decision.srv_name, authz = decision.authz_name.as_deref(), client_id = client_id.map(|c| &**c), "authorized");
    } else {
        debug!(srv_kind = %decision.srv_kind, srv = %decision.srv_name, client_id = client_id.map(|c| &**c), %client_ip, "refused: not authorized");
    }
    decision.allow
}
