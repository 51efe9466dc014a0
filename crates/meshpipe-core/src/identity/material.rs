//! Loading a proxy's own identity: certificate chain, private key and trust
//! anchors, from PEM (RFC 7468) bytes the caller read (the TypeScript layer
//! reads the files, the way cert-manager or a CSI driver mounts them).
//!
//! Every check that can fail at start up is done here, once, and each
//! failure names the file, what it should hold and why it does not: no PEM
//! block or PEM garbage, a key that does not match the leaf certificate, a
//! leaf that is expired or not yet valid, a chain that does not lead to one of
//! the trust anchors (for both TLS server and client use, RFC 5280 §6), and a
//! certificate with no usable identity name. What passes is everything the
//! TLS configs need ([`IdentityMaterial`]).

use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::sign::{CertifiedKey, SigningKey};
use serde::Serialize;

use super::cert::{rfc3339, unix_millis, CertFacts};
use super::{Identity, IdentityError};

/// One PEM input: the file it came from (for messages) and its bytes.
#[derive(Clone, Copy, Debug)]
pub struct PemSource<'a> {
    pub file: &'a str,
    pub pem: &'a [u8],
}

/// Everything an identity is loaded from.
#[derive(Clone, Copy, Debug)]
pub struct MaterialSources<'a> {
    /// The leaf certificate first, then its intermediates (`tls.crt`).
    pub cert: PemSource<'a>,
    /// The leaf's private key (`tls.key`): PKCS#8, SEC1 or PKCS#1.
    pub key: PemSource<'a>,
    /// The trust anchors (`ca.crt`): one or more CA certificates.
    pub anchors: PemSource<'a>,
    /// `--identity-name`: which of the leaf's SAN names is this proxy's
    /// identity, when the certificate alone does not say.
    pub name: Option<&'a str>,
}

/// Why identity material was refused. Every message names the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("{file}: expected {what} in PEM form: {reason}")]
    Pem { file: String, what: &'static str, reason: String },
    #[error("{file}: the private key cannot be used: {reason} (expected an ECDSA P-256/P-384, Ed25519 or RSA key)")]
    Key { file: String, reason: String },
    #[error("{key_file}: the private key does not match the certificate in {cert_file} (its public key differs from the leaf's)")]
    KeyMismatch { cert_file: String, key_file: String },
    #[error("{file}: the certificate {subject:?} expired at {not_after} (now {now})")]
    Expired { file: String, subject: String, not_after: String, now: String },
    #[error("{file}: the certificate {subject:?} is not valid before {not_before} (now {now}): check the clock or wait")]
    NotYetValid { file: String, subject: String, not_before: String, now: String },
    #[error("{cert_file}: the certificate chain is not rooted in the trust anchors of {anchors_file}: {reason}")]
    Untrusted { cert_file: String, anchors_file: String, reason: String },
    #[error("{file}: the certificate has no usable identity: {reason}")]
    NoIdentity { file: String, reason: String },
    #[error("--identity-name: {0}")]
    BadName(#[from] IdentityError),
    #[error("{file}: the certificate does not carry the identity {name} given by --identity-name (its SANs: {sans})")]
    NameNotInCert { file: String, name: String, sans: String },
}

/// A loaded, checked identity: what the TLS configs are built from.
#[derive(Debug)]
pub struct IdentityMaterial {
    /// This proxy's identity.
    pub identity: Identity,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<dyn SigningKey>,
    pub anchors: Vec<CertificateDer<'static>>,
    pub leaf: CertFacts,
}

/// What the TypeScript layer learns about a loaded identity (for logs,
/// `/ready` details and metrics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct IdentityInfo {
    /// This proxy's identity.
    pub name: String,
    /// Every identity-shaped SAN of the leaf.
    pub names: Vec<String>,
    /// The leaf's serial number, lowercase hex.
    pub serial: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    pub subject: String,
    pub issuer: String,
    /// Certificates in the chain, leaf included.
    pub chain_length: u32,
    /// Trust anchors loaded.
    pub anchors: u32,
}

impl IdentityMaterial {
    /// Parses and checks everything, as of `now`.
    pub fn load(src: &MaterialSources<'_>, provider: &CryptoProvider, now: SystemTime) -> Result<IdentityMaterial, MaterialError> {
        let chain = read_certs(src.cert, "a certificate chain (leaf first)")?;
        let anchors = read_certs(src.anchors, "one or more trust anchor (CA) certificates")?;
        let key_der = PrivateKeyDer::from_pem_slice(src.key.pem).map_err(|e| MaterialError::Pem {
            file: src.key.file.to_string(),
            what: "a private key",
            reason: pem_reason(e),
        })?;
        let key = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| MaterialError::Key { file: src.key.file.to_string(), reason: e.to_string() })?;
        let leaf = CertFacts::parse(&chain[0]).map_err(|e| MaterialError::Pem {
            file: src.cert.file.to_string(),
            what: "a certificate chain (leaf first)",
            reason: e.to_string(),
        })?;
        match CertifiedKey::new(chain.clone(), key.clone()).keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(MaterialError::KeyMismatch { cert_file: src.cert.file.to_string(), key_file: src.key.file.to_string() })
            }
            Err(e) => {
                return Err(MaterialError::Key {
                    file: src.key.file.to_string(),
                    reason: format!("cannot compare with the certificate: {e}"),
                })
            }
        }
        check_validity(&leaf, src.cert.file, now)?;
        verify_chain(&chain, &anchors, provider, now).map_err(|reason| MaterialError::Untrusted {
            cert_file: src.cert.file.to_string(),
            anchors_file: src.anchors.file.to_string(),
            reason,
        })?;
        let identity = choose_identity(&leaf, src.cert.file, src.name)?;
        Ok(IdentityMaterial { identity, chain, key, anchors, leaf })
    }

    pub fn info(&self) -> IdentityInfo {
        IdentityInfo {
            name: self.identity.to_string(),
            names: self.leaf.identities.iter().map(|i| i.to_string()).collect(),
            serial: self.leaf.serial.clone(),
            not_before_ms: unix_millis(self.leaf.not_before),
            not_after_ms: unix_millis(self.leaf.not_after),
            subject: self.leaf.subject.clone(),
            issuer: self.leaf.issuer.clone(),
            chain_length: self.chain.len() as u32,
            anchors: self.anchors.len() as u32,
        }
    }
}

fn read_certs(src: PemSource<'_>, what: &'static str) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let bad = |reason: String| MaterialError::Pem { file: src.file.to_string(), what, reason };
    let certs = CertificateDer::pem_slice_iter(src.pem).collect::<Result<Vec<_>, _>>().map_err(|e| bad(pem_reason(e)))?;
    if certs.is_empty() {
        return Err(bad(if src.pem.is_empty() {
            "the file is empty".into()
        } else {
            "no \"-----BEGIN CERTIFICATE-----\" block found".into()
        }));
    }
    for (i, der) in certs.iter().enumerate() {
        CertFacts::parse(der).map_err(|e| bad(format!("certificate {} of {}: {e}", i + 1, certs.len())))?;
    }
    Ok(certs)
}

fn pem_reason(e: pem::Error) -> String {
    match e {
        pem::Error::NoItemsFound => "no PEM block of that type found".into(),
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("a PEM block is not terminated (missing {:?})", String::from_utf8_lossy(&end_marker))
        }
        pem::Error::IllegalSectionStart { line } => format!("malformed PEM header line {:?}", String::from_utf8_lossy(&line)),
        pem::Error::Base64Decode(why) => format!("PEM base64 does not decode: {why}"),
        other => other.to_string(),
    }
}

fn check_validity(leaf: &CertFacts, file: &str, now: SystemTime) -> Result<(), MaterialError> {
    if now > leaf.not_after {
        return Err(MaterialError::Expired {
            file: file.to_string(),
            subject: leaf.subject.clone(),
            not_after: rfc3339(leaf.not_after),
            now: rfc3339(now),
        });
    }
    if now < leaf.not_before {
        return Err(MaterialError::NotYetValid {
            file: file.to_string(),
            subject: leaf.subject.clone(),
            not_before: rfc3339(leaf.not_before),
            now: rfc3339(now),
        });
    }
    Ok(())
}

/// Path validation (RFC 5280 §6) of the chain to one of the anchors, for
/// both uses the leaf serves in the mesh: TLS server and TLS client.
pub(crate) fn verify_chain(
    chain: &[CertificateDer<'static>],
    anchors: &[CertificateDer<'static>],
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<(), String> {
    let roots: Vec<_> = anchors
        .iter()
        .enumerate()
        .map(|(i, der)| webpki::anchor_from_trusted_cert(der).map_err(|e| format!("trust anchor {} does not parse: {e:?}", i + 1)))
        .collect::<Result<_, _>>()?;
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| format!("the leaf does not parse: {e:?}"))?;
    let time = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
    let algs = provider.signature_verification_algorithms.all;
    for (usage, name) in [(webpki::KeyUsage::server_auth(), "TLS server"), (webpki::KeyUsage::client_auth(), "TLS client")] {
        leaf.verify_for_usage(algs, &roots, &chain[1..], time, usage, None, None)
            .map_err(|e| format!("{} ({name} use)", webpki_reason(&e)))?;
    }
    Ok(())
}

/// Words for webpki's verification errors.
pub(crate) fn webpki_reason(e: &webpki::Error) -> String {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer => "no trust anchor issued it (unknown issuer)".into(),
        E::CertExpired { .. } => "a certificate in the chain has expired".into(),
        E::CertNotValidYet { .. } => "a certificate in the chain is not valid yet".into(),
        E::CaUsedAsEndEntity => "the leaf is a CA certificate, not a workload certificate".into(),
        E::EndEntityUsedAsCa => "an intermediate is not a CA certificate".into(),
        E::RequiredEkuNotFoundContext(_) => "the leaf's extended key usage does not allow this use".into(),
        E::InvalidSignatureForPublicKey => {
            "a signature in the chain is invalid (an issuer of the same name but another key: a different trust anchor?)".into()
        }
        E::UnsupportedSignatureAlgorithmContext(_) | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            "a signature algorithm in the chain is not supported".into()
        }
        E::PathLenConstraintViolated => "the chain violates a CA's path length constraint".into(),
        other => format!("{other:?}"),
    }
}

fn choose_identity(leaf: &CertFacts, file: &str, name: Option<&str>) -> Result<Identity, MaterialError> {
    let sans = || {
        if leaf.sans.is_empty() {
            "none".to_string()
        } else {
            leaf.sans.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>().join(", ")
        }
    };
    if let Some(name) = name {
        let id = Identity::parse(name)?;
        if !leaf.names(&id) {
            return Err(MaterialError::NameNotInCert { file: file.to_string(), name: name.to_string(), sans: sans() });
        }
        return Ok(id);
    }
    if let Some(id) = leaf.primary_identity() {
        return Ok(id.clone());
    }
    let reason = if leaf.identities.is_empty() {
        format!("no DNS or URI SAN is a workload identity (its SANs: {}); a Linkerd DNS name or a SPIFFE ID is expected", sans())
    } else {
        format!(
            "it names several identities ({}): pass --identity-name to choose one",
            leaf.identities.iter().map(|i| i.as_str()).collect::<Vec<_>>().join(", ")
        )
    };
    Err(MaterialError::NoIdentity { file: file.to_string(), reason })
}
