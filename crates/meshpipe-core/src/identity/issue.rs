//! A small local certificate authority for `meshpipe identity init` and
//! `meshpipe identity issue`, laid out like Linkerd's: a trust anchor (root
//! CA), an issuer (intermediate CA, path length 0) signed by it, and
//! workload certificates signed by the issuer. Every key is ECDSA P-256 with
//! SHA-256 signatures, as Linkerd's are.
//!
//! Workload certificates carry their identity as the only SAN (a DNS SAN
//! for a DNS identity, a URI SAN for a SPIFFE ID, RFC 5280 §4.2.1.6), key
//! usage digitalSignature (the only one an ECDHE-ECDSA handshake needs,
//! RFC 5280 §4.2.1.3) and extended key usages serverAuth and clientAuth
//! (§4.2.1.12), because every mesh proxy is both a TLS client and a TLS
//! server. This module returns PEM text; the caller writes the files.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::{self as pki_pem, PemObject};
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use time::OffsetDateTime;

use super::cert::{rfc3339, CertFacts};
use super::{Identity, IdentityKind};

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("invalid trust domain {0:?}: expected a DNS name such as cluster.local")]
    TrustDomain(String),
    #[error("invalid lifetime: {0}")]
    Ttl(String),
    #[error("{file}: {reason}")]
    Issuer { file: String, reason: String },
    #[error("cannot create the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot create the certificate: {0}")]
    Internal(String),
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct IssuedPem {
    /// The certificate; for a workload, followed by the issuer's (a chain, leaf first).
    pub cert_pem: String,
    /// PKCS#8.
    pub key_pem: String,
    /// The certificate's serial number (hex) and expiry, for the CLI's report.
    pub serial: String,
    pub not_after: String,
}

/// What `identity init` creates.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct TrustBundle {
    /// The trust anchor (`ca.crt`, `ca.key`).
    pub anchor: IssuedPem,
    /// The issuer (`issuer.crt`, `issuer.key`).
    pub issuer: IssuedPem,
}

/// Backdating of not-before, so that a peer whose clock runs a little behind
/// still accepts a certificate issued a moment ago.
const BACKDATE: Duration = Duration::from_secs(60);

/// Creates a trust anchor valid for `anchor_ttl` and an issuer valid for
/// `issuer_ttl` (at most the anchor's lifetime), named after `trust_domain`
/// like Linkerd's (`root.linkerd.<td>`, `identity.linkerd.<td>`).
pub fn init(trust_domain: &str, anchor_ttl: Duration, issuer_ttl: Duration, now: SystemTime) -> Result<TrustBundle, IssueError> {
    if Identity::parse(&format!("x.{trust_domain}")).is_err() {
        return Err(IssueError::TrustDomain(trust_domain.to_string()));
    }
    if issuer_ttl > anchor_ttl {
        return Err(IssueError::Ttl("the issuer cannot outlive the trust anchor".into()));
    }
    let anchor_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut anchor = ca_params(&format!("root.linkerd.{trust_domain}"), now, anchor_ttl, None)?;
    anchor.serial_number = Some(serial()?);
    let anchor_cert = anchor.self_signed(&anchor_key)?;
    let anchor_issuer = Issuer::new(anchor, &anchor_key);

    let issuer_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut issuer = ca_params(&format!("identity.linkerd.{trust_domain}"), now, issuer_ttl, Some(0))?;
    issuer.serial_number = Some(serial()?);
    let issuer_cert = issuer.signed_by(&issuer_key, &anchor_issuer)?;
    Ok(TrustBundle { anchor: pem_pair(anchor_cert.pem(), &anchor_key)?, issuer: pem_pair(issuer_cert.pem(), &issuer_key)? })
}

/// Issues a workload certificate for `name` valid for `ttl` from `now`,
/// signed by the issuer in `issuer_cert_pem`/`issuer_key_pem` (named by
/// `issuer_file` in errors). The returned chain is the leaf then the issuer.
pub fn issue(
    issuer_cert_pem: &str,
    issuer_key_pem: &str,
    issuer_file: &str,
    name: &Identity,
    ttl: Duration,
    now: SystemTime,
) -> Result<IssuedPem, IssueError> {
    let bad = |reason: String| IssueError::Issuer { file: issuer_file.to_string(), reason };
    if ttl < Duration::from_secs(1) {
        return Err(IssueError::Ttl("expected at least 1s".into()));
    }
    let issuer_der = CertificateDer::from_pem_slice(issuer_cert_pem.as_bytes())
        .map_err(|e| bad(format!("expected the issuer certificate in PEM form: {e}")))?;
    let facts = CertFacts::parse(&issuer_der).map_err(|e| bad(e.to_string()))?;
    if !facts.is_ca {
        return Err(bad(format!("{:?} is not a CA certificate: run `meshpipe identity init` for an issuer", facts.subject)));
    }
    if !facts.valid_at(now) {
        return Err(bad(format!("the issuer is not valid now (valid {} to {})", rfc3339(facts.not_before), rfc3339(facts.not_after))));
    }
    if now + ttl > facts.not_after {
        return Err(IssueError::Ttl(format!(
            "a certificate valid until {} would outlive its issuer (valid until {}): use a shorter --ttl",
            rfc3339(now + ttl),
            rfc3339(facts.not_after)
        )));
    }
    let key = KeyPair::from_pem(issuer_key_pem).map_err(|e| bad(format!("the issuer key does not load: {e}")))?;
    let issuer = Issuer::from_ca_cert_der(&issuer_der, &key).map_err(|e| bad(format!("the issuer certificate does not load: {e}")))?;

    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let san = name.as_str().to_string().try_into()?;
    match name.kind() {
        IdentityKind::Dns => {
            params.distinguished_name.push(DnType::CommonName, name.as_str());
            params.subject_alt_names = vec![SanType::DnsName(san)];
        }
        IdentityKind::Spiffe => params.subject_alt_names = vec![SanType::URI(san)],
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = datetime(now - BACKDATE)?;
    params.not_after = datetime(now + ttl)?;
    params.serial_number = Some(serial()?);
    let leaf = params.signed_by(&leaf_key, &issuer)?;
    let mut pair = pem_pair(leaf.pem(), &leaf_key)?;
    // The chain the workload presents: leaf, then the issuer (the anchor is
    // what peers already trust, so it is not sent).
    pair.cert_pem.push_str(&pem_encode(&issuer_der));
    Ok(pair)
}

fn ca_params(common_name: &str, now: SystemTime, ttl: Duration, path_len: Option<u8>) -> Result<CertificateParams, IssueError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(path_len.map_or(BasicConstraints::Unconstrained, BasicConstraints::Constrained));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = path_len.is_some();
    params.not_before = datetime(now - BACKDATE)?;
    params.not_after = datetime(now + ttl)?;
    Ok(params)
}

fn pem_pair(cert_pem: String, key: &KeyPair) -> Result<IssuedPem, IssueError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e: pki_pem::Error| IssueError::Internal(e.to_string()))?;
    let facts = CertFacts::parse(&der).map_err(|e| IssueError::Internal(e.to_string()))?;
    Ok(IssuedPem { cert_pem, key_pem: key.serialize_pem(), serial: facts.serial, not_after: rfc3339(facts.not_after) })
}

fn pem_encode(der: &[u8]) -> String {
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}

/// A random positive 128-bit serial (RFC 5280 §4.1.2.2: unique per issuer,
/// at most 20 octets; CA/B Forum asks for at least 64 random bits).
fn serial() -> Result<SerialNumber, IssueError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| IssueError::Internal("the system random generator failed".into()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn datetime(t: SystemTime) -> Result<OffsetDateTime, IssueError> {
    let secs = super::cert::unix_millis(t).div_euclid(1000);
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| IssueError::Ttl(format!("{e}: the time is out of range")))
}
