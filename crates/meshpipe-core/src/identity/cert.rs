//! The facts of one X.509 certificate that mesh identity needs: the names in
//! its subject alternative names (RFC 5280 §4.2.1.6), its serial number and
//! its validity window (§4.1.2.5). Signature and chain checks are webpki's
//! (see `material.rs` and `tls/verify.rs`); this module only reads.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Identity, IdentityKind};

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("not a DER X.509 certificate: {0}")]
    Der(String),
    #[error("the subject alternative name extension does not parse: {0}")]
    San(String),
}

/// What a certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    /// Every DNS and URI SAN, as written (also those that are not identities).
    pub sans: Vec<(IdentityKind, String)>,
    /// The SANs that parse as identities, in certificate order.
    pub identities: Vec<Identity>,
    /// The serial number, lowercase hex without separators.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The subject and issuer distinguished names (RFC 4514 text), for messages.
    pub subject: String,
    pub issuer: String,
    /// True for a CA certificate (basicConstraints cA).
    pub is_ca: bool,
}

impl CertFacts {
    /// Reads a DER certificate.
    pub fn parse(der: &[u8]) -> Result<CertFacts, CertError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Der(e.to_string()))?;
        let mut sans = Vec::new();
        if let Some(ext) = cert.subject_alternative_name().map_err(|e| CertError::San(e.to_string()))? {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push((IdentityKind::Dns, d.to_string())),
                    GeneralName::URI(u) => sans.push((IdentityKind::Spiffe, u.to_string())),
                    _ => {}
                }
            }
        }
        let identities = sans.iter().filter_map(|(kind, text)| Identity::parse(text).ok().filter(|id| id.kind() == *kind)).collect();
        let is_ca = cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
        Ok(CertFacts {
            sans,
            identities,
            serial: hex(cert.raw_serial()),
            not_before: to_system_time(cert.validity().not_before.timestamp()),
            not_after: to_system_time(cert.validity().not_after.timestamp()),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            is_ca,
        })
    }

    /// True when `now` lies inside the validity window (both ends inclusive,
    /// RFC 5280 §4.1.2.5).
    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// True when one of the SANs names `identity` (a DNS SAN for a DNS
    /// identity, a URI SAN for a SPIFFE ID).
    pub fn names(&self, identity: &Identity) -> bool {
        self.sans.iter().any(|(kind, san)| identity.matches_san(*kind, san))
    }

    /// The identity this certificate stands for when nobody says which:
    /// the one Linkerd-form DNS SAN, else the one SPIFFE ID, else the one
    /// other DNS name. Several candidates of the winning kind is ambiguous
    /// (None): the caller must name one (`--identity-name`).
    pub fn primary_identity(&self) -> Option<&Identity> {
        let linkerd: Vec<&Identity> =
            self.identities.iter().filter(|i| i.kind() == IdentityKind::Dns && i.service_account().is_some()).collect();
        let spiffe: Vec<&Identity> = self.identities.iter().filter(|i| i.kind() == IdentityKind::Spiffe).collect();
        let dns: Vec<&Identity> = self.identities.iter().filter(|i| i.kind() == IdentityKind::Dns).collect();
        for group in [linkerd, spiffe, dns] {
            match group.len() {
                0 => continue,
                1 => return Some(group[0]),
                _ => return None,
            }
        }
        None
    }
}

/// Milliseconds since the Unix epoch (for the TypeScript layer and metrics).
pub fn unix_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_millis().min(i64::MAX as u128) as i64),
    }
}

/// RFC 3339 text of a time, for messages (UTC, second precision).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = unix_millis(t).div_euclid(1000);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{secs}s since 1970"))
}

fn to_system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn hex(bytes: &[u8]) -> String {
    // A positive serial's DER carries a leading zero byte when its top bit is
    // set (X.690 §8.3.2): drop it, as openssl does.
    let bytes = match bytes {
        [0, rest @ ..] if !rest.is_empty() => rest,
        b => b,
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(CertFacts::parse(b"not a certificate"), Err(CertError::Der(_))));
        assert!(matches!(CertFacts::parse(&[]), Err(CertError::Der(_))));
    }

    #[test]
    fn serial_hex_drops_the_sign_byte() {
        assert_eq!(hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(hex(&[0x00]), "00");
        assert_eq!(hex(&[0x12]), "12");
    }

    #[test]
    fn times_format() {
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(86_400)), "1970-01-02T00:00:00Z");
        assert_eq!(unix_millis(UNIX_EPOCH + Duration::from_millis(1500)), 1500);
    }
}
