//! Fuzzes workload identity names (`meshpipe_core::identity::Identity`) and
//! the certificate reader (`identity::cert::CertFacts`).
//!
//! Identity names come from flags, annotations, `--destinations` files and
//! peers' certificates. The input's first byte picks the target: a name, or
//! DER bytes for the certificate reader (which must refuse garbage, never
//! panic). For a name that parses, the target checks what the proxy relies
//! on:
//! - parsing is stable: the name's text parses to the same identity;
//! - the name matches itself as a SAN of its kind, and not as the other kind;
//! - when it passes `check_dialable` (as every identity the proxy dials
//!   must), its TLS server name (SNI, RFC 6066 §3: a host name) is one
//!   rustls accepts, so a destination accepted at start can be dialled;
//! - the Kubernetes parts, when present, are pieces of the name.
use meshpipe_core::identity::cert::CertFacts;
use meshpipe_core::identity::{Identity, IdentityKind};
use rustls_pki_types::ServerName;

/// Checks one input; panics (an assertion) when an invariant above is broken.
pub fn check(data: &[u8]) {
    let Some((&selector, input)) = data.split_first() else { return };
    if selector & 1 == 1 {
        // Any outcome but a panic; a certificate that reads has sane facts.
        if let Ok(facts) = CertFacts::parse(input) {
            for id in &facts.identities {
                assert!(Identity::parse(id.as_str()).is_ok());
            }
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(input) else { return };
    let Ok(id) = Identity::parse(text) else { return };
    assert_eq!(id.as_str(), text);
    assert_eq!(Identity::parse(id.as_str()).expect("a parsed name parses again"), id);
    let other = match id.kind() {
        IdentityKind::Dns => IdentityKind::Spiffe,
        IdentityKind::Spiffe => IdentityKind::Dns,
    };
    assert!(id.matches_san(id.kind(), text));
    assert!(!id.matches_san(other, text));
    let sni = id.server_name();
    if id.check_dialable().is_ok() {
        assert!(
            ServerName::try_from(sni.clone()).is_ok(),
            "{text:?} passed check_dialable but its server name {sni:?} is no TLS host name"
        );
        assert!(!sni.ends_with('.'), "{text:?}: a server name with a trailing dot");
    }
    if let Some(parts) = id.service_account() {
        for piece in [parts.service_account, parts.namespace, parts.trust_domain] {
            assert!(!piece.is_empty() && text.contains(piece), "{piece:?} of {text:?}");
        }
    }
}
