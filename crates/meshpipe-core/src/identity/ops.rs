//! The identity operations the TypeScript layer calls through the addon,
//! with their JSON inputs: create a trust anchor and issuer (`identity
//! init`), issue a workload certificate (`identity issue`), and check
//! identity material at start or reload (the engine installs it with
//! `Engine::set_identity`). Each returns a typed error whose message
//! names the file or flag and the reason.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::issue::{self, IssueError, IssuedPem, TrustBundle};
use super::material::{IdentityInfo, IdentityMaterial, MaterialError, MaterialSources, PemSource};
use super::Identity;

/// `meshpipe identity init`.
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InitSpec {
    pub trust_domain: String,
    pub anchor_ttl_ms: u64,
    pub issuer_ttl_ms: u64,
}

/// `meshpipe identity issue`.
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssueSpec {
    pub issuer_cert_pem: String,
    pub issuer_key_pem: String,
    /// Where the issuer came from, for messages.
    pub issuer_file: String,
    pub name: String,
    pub ttl_ms: u64,
}

/// Checking identity material: the file names (for messages) and
/// `--identity-name`; the PEM bytes travel beside it.
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadSpec {
    pub cert_file: String,
    pub key_file: String,
    pub anchors_file: String,
    pub name: Option<String>,
}

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error(transparent)]
    Material(#[from] MaterialError),
    #[error("--name: {0}")]
    Name(#[from] super::IdentityError),
}

pub fn init(spec: &InitSpec) -> Result<TrustBundle, OpError> {
    Ok(issue::init(
        &spec.trust_domain,
        Duration::from_millis(spec.anchor_ttl_ms),
        Duration::from_millis(spec.issuer_ttl_ms),
        SystemTime::now(),
    )?)
}

pub fn issue(spec: &IssueSpec) -> Result<IssuedPem, OpError> {
    let name = Identity::parse_dialable(&spec.name)?;
    let ttl = Duration::from_millis(spec.ttl_ms);
    Ok(issue::issue(&spec.issuer_cert_pem, &spec.issuer_key_pem, &spec.issuer_file, &name, ttl, SystemTime::now())?)
}

/// Loads and checks identity material as of now (for the engine).
pub fn load(spec: &LoadSpec, cert: &[u8], key: &[u8], anchors: &[u8]) -> Result<IdentityMaterial, OpError> {
    let src = MaterialSources {
        cert: PemSource { file: &spec.cert_file, pem: cert },
        key: PemSource { file: &spec.key_file, pem: key },
        anchors: PemSource { file: &spec.anchors_file, pem: anchors },
        name: spec.name.as_deref(),
    };
    Ok(IdentityMaterial::load(&src, &crate::tls::provider(), SystemTime::now())?)
}

/// Loads and checks identity material as of now; returns what it found.
pub fn check(spec: &LoadSpec, cert: &[u8], key: &[u8], anchors: &[u8]) -> Result<IdentityInfo, OpError> {
    let src = MaterialSources {
        cert: PemSource { file: &spec.cert_file, pem: cert },
        key: PemSource { file: &spec.key_file, pem: key },
        anchors: PemSource { file: &spec.anchors_file, pem: anchors },
        name: spec.name.as_deref(),
    };
    let material = IdentityMaterial::load(&src, &crate::tls::provider(), SystemTime::now())?;
    // Building the TLS configs proves the anchors and key are usable by rustls too.
    crate::tls::TlsState::new(&material, 0).map_err(|e| MaterialError::Untrusted {
        cert_file: spec.cert_file.clone(),
        anchors_file: spec.anchors_file.clone(),
        reason: e.to_string(),
    })?;
    Ok(material.info())
}
