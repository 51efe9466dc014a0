//! Workload identities: the names mesh TLS authenticates.
//!
//! A workload identity is a name carried in its certificate's subject
//! alternative names, in one of two forms:
//!
//! - Linkerd's DNS form `<sa>.<ns>.serviceaccount.identity.<control-ns>.<trust-domain>`
//!   (e.g. `web.emojivoto.serviceaccount.identity.linkerd.cluster.local`), or
//!   any other DNS name (RFC 1123), in a DNS SAN;
//! - a SPIFFE ID `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` in a URI SAN.
//!
//! Both are parsed strictly ([`Identity::parse`]): lowercase only (a
//! certificate's SAN is compared byte for byte by the peers), no wildcards, no
//! trailing dot, no empty labels or path segments, and the SPIFFE form must be
//! exactly the Kubernetes service-account path. Peers verify an identity by
//! finding it among the leaf certificate's SANs ([`Identity::matches_san`]),
//! never by the certificate's subject.
//!
//! The submodules load a proxy's own identity from PEM (`material`), read the
//! facts of a certificate (`cert`) and issue a local trust anchor, issuer and
//! workload certificates (`issue`); `ops` is what the addon calls.

pub mod cert;
pub mod issue;
pub mod material;
pub mod ops;

use std::fmt;
use std::str::FromStr;

/// Why a text is not an identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("invalid identity {text:?}: {reason}; expected a DNS name such as web.ns.serviceaccount.identity.linkerd.cluster.local or a SPIFFE ID spiffe://cluster.local/ns/NS/sa/SA")]
    Invalid { text: String, reason: &'static str },
}

/// The longest DNS name (RFC 1035 §2.3.4, without the trailing dot).
const MAX_DNS_LEN: usize = 253;
/// The longest SPIFFE ID (SPIFFE ID standard §2.3).
const MAX_SPIFFE_LEN: usize = 2048;

/// A workload identity, validated. Cheap to clone (one string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    text: String,
    kind: IdentityKind,
}

/// Which SAN type carries an identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityKind {
    /// A DNS SAN (Linkerd's form, or another DNS name).
    Dns,
    /// A URI SAN holding a SPIFFE ID.
    Spiffe,
}

/// The Kubernetes parts of an identity, when it has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceAccountParts<'a> {
    pub service_account: &'a str,
    pub namespace: &'a str,
    /// Linkerd's control-plane namespace (DNS form only).
    pub control_namespace: Option<&'a str>,
    pub trust_domain: &'a str,
}

impl Identity {
    /// Parses either form strictly.
    pub fn parse(text: &str) -> Result<Identity, IdentityError> {
        let bad = |reason| IdentityError::Invalid { text: text.to_string(), reason };
        if let Some(rest) = text.strip_prefix("spiffe://") {
            if text.len() > MAX_SPIFFE_LEN {
                return Err(bad("a SPIFFE ID is at most 2048 bytes"));
            }
            let (td, path) = rest.split_once('/').ok_or_else(|| bad("a SPIFFE ID needs a path /ns/NS/sa/SA"))?;
            check_trust_domain(td).map_err(bad)?;
            let segs: Vec<&str> = path.split('/').collect();
            match segs.as_slice() {
                ["ns", ns, "sa", sa] => {
                    check_k8s_name(ns, 63).map_err(bad)?;
                    check_k8s_name(sa, 253).map_err(bad)?;
                }
                _ => return Err(bad("the SPIFFE path must be exactly /ns/NS/sa/SA")),
            }
            return Ok(Identity { text: text.to_string(), kind: IdentityKind::Spiffe });
        }
        if text.contains("://") {
            return Err(bad("only spiffe:// URIs are identities"));
        }
        check_dns_name(text).map_err(bad)?;
        Ok(Identity { text: text.to_string(), kind: IdentityKind::Dns })
    }

    /// Parses an identity this proxy will dial (a meshed destination, or a
    /// workload certificate being issued): [`Identity::parse`], and then
    /// [`Identity::check_dialable`].
    pub fn parse_dialable(text: &str) -> Result<Identity, IdentityError> {
        let id = Identity::parse(text)?;
        id.check_dialable()?;
        Ok(id)
    }

    /// Whether a client can dial this identity: its TLS server name
    /// ([`Identity::server_name`], RFC 6066 §3: a host name) must be one
    /// rustls sends. A DNS identity whose last label is a number (decimal,
    /// or `0x` hex: it reads as part of an IPv4 address) is not, nor is a
    /// SPIFFE ID whose server name is too long or has a trust-domain label
    /// that is no host label. Checked where an identity is dialled, so such
    /// a name is refused where it is configured rather than failing every
    /// dial; not where an identity is only matched (a client's certificate,
    /// an authorization rule), since nobody dials those by name.
    pub fn check_dialable(&self) -> Result<(), IdentityError> {
        let bad = |reason| IdentityError::Invalid { text: self.text.clone(), reason };
        match self.kind {
            IdentityKind::Dns if self.text.rsplit('.').next().is_some_and(ends_in_a_number) => {
                Err(bad("its last label is a number (decimal, or hex as 0x...), which reads as an IPv4 address: TLS cannot send it as a server name, so it cannot be dialled"))
            }
            IdentityKind::Dns => Ok(()),
            IdentityKind::Spiffe => check_spiffe_server_name(&self.server_name()).map_err(bad),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn kind(&self) -> IdentityKind {
        self.kind
    }

    /// The service account, namespace and trust domain, for Linkerd's DNS
    /// form and for SPIFFE IDs (None for other DNS names).
    pub fn service_account(&self) -> Option<ServiceAccountParts<'_>> {
        match self.kind {
            IdentityKind::Spiffe => {
                let rest = &self.text["spiffe://".len()..];
                let (td, path) = rest.split_once('/')?;
                let mut segs = path.split('/');
                let (_, ns, _, sa) = (segs.next()?, segs.next()?, segs.next()?, segs.next()?);
                Some(ServiceAccountParts { service_account: sa, namespace: ns, control_namespace: None, trust_domain: td })
            }
            IdentityKind::Dns => {
                let mut labels = self.text.splitn(6, '.');
                let sa = labels.next()?;
                let ns = labels.next()?;
                if labels.next()? != "serviceaccount" || labels.next()? != "identity" {
                    return None;
                }
                let control = labels.next()?;
                let td = labels.next()?;
                Some(ServiceAccountParts { service_account: sa, namespace: ns, control_namespace: Some(control), trust_domain: td })
            }
        }
    }

    /// The TLS server name (SNI) a client sends to reach this identity. For
    /// a DNS identity it is the identity itself, as in Linkerd. A SPIFFE ID
    /// cannot be sent as SNI (RFC 6066 §3 allows only host names), so it maps
    /// to `<sa>.<ns>.serviceaccount.identity.spiffe.<trust-domain>`: a
    /// meshpipe convention both ends compute the same way. The SNI only
    /// routes; the peer is authenticated by its certificate's SANs.
    pub fn server_name(&self) -> String {
        match (self.kind, self.service_account()) {
            (IdentityKind::Spiffe, Some(p)) => {
                format!("{}.{}.serviceaccount.identity.spiffe.{}", p.service_account, p.namespace, p.trust_domain)
            }
            _ => self.text.clone(),
        }
    }

    /// True when a SAN of the given kind names this identity. DNS names
    /// compare ASCII case-insensitively (RFC 4343); SPIFFE IDs compare
    /// exactly except the scheme and trust domain (case-insensitive per the
    /// SPIFFE ID standard, but they are lowercase once parsed).
    pub fn matches_san(&self, kind: IdentityKind, san: &str) -> bool {
        self.kind == kind && self.text.eq_ignore_ascii_case(san) && (kind == IdentityKind::Dns || self.path_eq(san))
    }

    fn path_eq(&self, san: &str) -> bool {
        let path = |s: &str| s.get("spiffe://".len()..).and_then(|r| r.split_once('/')).map(|(_, p)| p.to_string());
        path(&self.text) == path(san)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.text)
    }
}

impl FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identity::parse(s)
    }
}

/// A DNS name as RFC 1123 §2.1 allows it for host names: labels of 1-63
/// lowercase letters, digits and hyphens, not starting or ending with a
/// hyphen, at most 253 bytes, no trailing dot, at least two labels.
fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > MAX_DNS_LEN {
        return Err("a DNS name is at most 253 bytes");
    }
    if name.ends_with('.') {
        return Err("it ends with a dot");
    }
    if name.contains('*') {
        return Err("wildcards are not identities");
    }
    if !name.contains('.') {
        return Err("a single label is not a workload identity");
    }
    for label in name.split('.') {
        check_label(label)?;
    }
    if name.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return Err("it looks like an IP address, not a name");
    }
    Ok(())
}

/// Whether a name's last label is a number (WHATWG URL's "ends in a number"
/// rule: decimal digits, or `0x` and hex digits, as `inet_aton` reads
/// them). rustls refuses such a name as a server name (RFC 9849 §6.1.7
/// gives the same rule), so an identity with one cannot be dialled.
fn ends_in_a_number(label: &str) -> bool {
    let hex = label.strip_prefix("0x").or_else(|| label.strip_prefix("0X"));
    match hex {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// A SPIFFE ID's server name (`Identity::server_name`) must be a host name
/// TLS can send (RFC 6066 §3): each part fits on its own, but the sum may be
/// too long, and a trust domain's labels are not checked as host labels.
fn check_spiffe_server_name(name: &str) -> Result<(), &'static str> {
    if name.len() > MAX_DNS_LEN {
        return Err("its TLS server name <sa>.<ns>.serviceaccount.identity.spiffe.<trust-domain> would be longer than 253 bytes");
    }
    if name.rsplit('.').next().is_some_and(ends_in_a_number) {
        return Err("the trust domain's last label is a number, so its TLS server name would read as an IP address");
    }
    const NOT_A_HOST_NAME: &str = "its TLS server name <sa>.<ns>.serviceaccount.identity.spiffe.<trust-domain> is not a host name: \
         a trust domain label is empty, longer than 63 bytes, or starts or ends with a hyphen";
    // rustls takes one trailing dot as a fully qualified name, but an
    // identity has none (module doc): `cluster.local.` is a trust domain
    // whose last label is empty, refused as `cluster..local` is (and as
    // ts/identity/name.ts refuses both).
    if name.ends_with('.') {
        return Err(NOT_A_HOST_NAME);
    }
    rustls_pki_types::ServerName::try_from(name).map(|_| ()).map_err(|_| NOT_A_HOST_NAME)
}

fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err("it has an empty label");
    }
    if label.len() > 63 {
        return Err("a DNS label is at most 63 bytes");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("a label starts or ends with a hyphen");
    }
    if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err("only lowercase letters, digits, hyphens and dots are allowed");
    }
    Ok(())
}

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-` and `_`
/// (SPIFFE ID standard §2.1).
fn check_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty() {
        return Err("the SPIFFE trust domain is empty");
    }
    if td.len() > 255 {
        return Err("a SPIFFE trust domain is at most 255 bytes");
    }
    if !td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_') {
        return Err("a SPIFFE trust domain has only lowercase letters, digits, '.', '-' and '_' (no port, user or uppercase)");
    }
    Ok(())
}

/// A Kubernetes object name (a namespace is an RFC 1123 label, a service
/// account a DNS subdomain).
fn check_k8s_name(name: &str, max: usize) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > max {
        return Err("a namespace or service account name is empty or too long");
    }
    if max <= 63 && name.contains('.') {
        return Err("a namespace name has no dots");
    }
    name.split('.').try_for_each(check_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linkerd_dns_identities() {
        let id = Identity::parse("web.emojivoto.serviceaccount.identity.linkerd.cluster.local").unwrap();
        assert_eq!(id.kind(), IdentityKind::Dns);
        let p = id.service_account().unwrap();
        assert_eq!(
            (p.service_account, p.namespace, p.control_namespace, p.trust_domain),
            ("web", "emojivoto", Some("linkerd"), "cluster.local")
        );
        assert_eq!(id.server_name(), id.as_str());
        let plain = Identity::parse("db.example.org").unwrap();
        assert!(plain.service_account().is_none());
    }

    #[test]
    fn spiffe_identities() {
        let id = Identity::parse("spiffe://cluster.local/ns/emojivoto/sa/web").unwrap();
        assert_eq!(id.kind(), IdentityKind::Spiffe);
        let p = id.service_account().unwrap();
        assert_eq!((p.service_account, p.namespace, p.control_namespace, p.trust_domain), ("web", "emojivoto", None, "cluster.local"));
        assert_eq!(id.server_name(), "web.emojivoto.serviceaccount.identity.spiffe.cluster.local");
        assert!(id.matches_san(IdentityKind::Spiffe, "SPIFFE://CLUSTER.LOCAL/ns/emojivoto/sa/web"));
        assert!(!id.matches_san(IdentityKind::Spiffe, "spiffe://cluster.local/ns/EMOJIVOTO/sa/web"), "paths are case-sensitive");
        assert!(!id.matches_san(IdentityKind::Dns, id.as_str()), "a DNS SAN never names a SPIFFE identity");
    }

    #[test]
    fn strict_parsing() {
        for bad in [
            "",
            "web",
            "Web.ns.serviceaccount.identity.linkerd.cluster.local",
            "web.ns.serviceaccount.identity.linkerd.cluster.local.",
            "*.ns.serviceaccount.identity.linkerd.cluster.local",
            "web..cluster.local",
            "-web.cluster.local",
            "web_1.cluster.local",
            "10.0.0.1",
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns/a/sa/",
            "spiffe://cluster.local/ns/a.b/sa/c",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local:8080/ns/a/sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://cluster.local",
        ] {
            let err = Identity::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("invalid identity") && err.contains("expected"), "{bad}: {err}");
        }
        let long = format!("{}.cluster.local", "a".repeat(64));
        assert!(Identity::parse(&long).is_err(), "label over 63 bytes");
        let many = vec!["a".repeat(60); 5].join(".");
        assert!(Identity::parse(&many).is_err(), "name over 253 bytes");
    }

    /// Identities this proxy dials must have a server name rustls sends.
    /// Found by the `identity` fuzz target: a last label such as `0x` or
    /// `0xbeef` (a hex number, read as part of an IPv4 address), and SPIFFE
    /// IDs whose parts fit but whose server name does not. Such names are
    /// still identities (a client's certificate may carry one, and nobody
    /// dials a client by name), so only `parse_dialable` refuses them.
    #[test]
    fn dialled_identities_have_a_server_name_tls_accepts() {
        let long =
            format!("spiffe://cluster.local/ns/{}/sa/{}", "n".repeat(63), ["s".repeat(63), "s".repeat(63), "s".repeat(40)].join("."));
        let long_td = format!("spiffe://{}.local/ns/a/sa/b", "t".repeat(64));
        for (bad, why) in [
            ("9.aam0.0x", "is a number"),
            ("web.ns.0xbeef", "is a number"),
            ("spiffe://cluster.0x1f/ns/a/sa/b", "is a number"),
            ("spiffe://cluster.-local/ns/a/sa/b", "not a host name"),
            ("spiffe://-td.example/ns/a/sa/b", "not a host name"),
            ("spiffe://cluster..local/ns/a/sa/b", "not a host name"),
            // rustls accepts a trailing dot; an identity has none.
            ("spiffe://cluster.local./ns/a/sa/b", "not a host name"),
            (long.as_str(), "longer than 253 bytes"),
            (long_td.as_str(), "not a host name"),
        ] {
            let id = Identity::parse(bad).unwrap_or_else(|e| panic!("{bad} is an identity (a client may carry it): {e}"));
            let err = id.check_dialable().expect_err(bad).to_string();
            assert!(err.contains(why) && err.contains("invalid identity"), "{bad}: {err}");
            assert_eq!(Identity::parse_dialable(bad).expect_err(bad).to_string(), err);
        }
        for good in ["web.ns.0xg", "web.ns.x0", "web.ns.0a1", "spiffe://my_domain.example/ns/a/sa/b.c", "spiffe://local/ns/a/sa/b"] {
            let id = Identity::parse_dialable(good).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert!(rustls_pki_types::ServerName::try_from(id.server_name()).is_ok(), "{good}");
        }
        // A decimal last label is no identity at all (as before).
        assert!(Identity::parse("web.ns.10").is_err());
    }

    #[test]
    fn dns_san_matching_is_case_insensitive() {
        let id = Identity::parse("web.ns.serviceaccount.identity.linkerd.cluster.local").unwrap();
        assert!(id.matches_san(IdentityKind::Dns, "WEB.ns.serviceaccount.identity.linkerd.cluster.local"));
        assert!(!id.matches_san(IdentityKind::Dns, "web.ns.serviceaccount.identity.linkerd.cluster.local."));
        assert!(!id.matches_san(IdentityKind::Dns, "api.ns.serviceaccount.identity.linkerd.cluster.local"));
    }
}
