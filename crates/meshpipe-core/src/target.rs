//! Target resolution: where an accepted connection should go.
//!
//! An explicit forward always goes to its configured address. A transparent
//! listener asks the kernel for the connection's original destination (the
//! address the app dialled before iptables redirected it) and refuses
//! connections that were addressed to the proxy itself: without that check a
//! direct connection to 4140/4143 would be forwarded to itself forever.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::addr::TargetAddr;
use crate::config::Target;
use crate::socket;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot read the original destination (SO_ORIGINAL_DST): {0}; is the connection redirected by iptables?")]
    OriginalDst(io::Error),
    #[error("connection addressed to the proxy's own listener {0} refused (loop protection)")]
    Loop(SocketAddr),
}

/// Resolves the target of `stream` according to the listener's rule.
pub fn resolve(rule: &Target, stream: &TcpStream) -> Result<TargetAddr, TargetError> {
    match *rule {
        Target::Fixed(addr) => Ok(addr),
        Target::OriginalDst { inbound_host } => {
            let orig = socket::original_dst(stream).map_err(TargetError::OriginalDst)?;
            let local = stream.local_addr().map_err(TargetError::OriginalDst)?;
            if orig == local {
                return Err(TargetError::Loop(orig));
            }
            let ip = inbound_host.unwrap_or(orig.ip());
            Ok(TargetAddr(SocketAddr::new(ip, orig.port())))
        }
    }
}
