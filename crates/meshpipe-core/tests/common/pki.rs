//! Test PKI: a trust anchor and issuer from meshpipe's own `identity::issue`,
//! workload certificates, and loaded identity material.
#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use meshpipe_core::identity::issue::{self, IssuedPem, TrustBundle};
use meshpipe_core::identity::material::{IdentityMaterial, MaterialSources, PemSource};
use meshpipe_core::identity::Identity;
use meshpipe_core::tls;

pub const DAY: Duration = Duration::from_secs(86_400);

pub fn id(name: &str) -> Identity {
    Identity::parse(name).unwrap()
}

/// `<sa>.<ns>.serviceaccount.identity.linkerd.cluster.local`
pub fn linkerd(sa: &str, ns: &str) -> Identity {
    id(&format!("{sa}.{ns}.serviceaccount.identity.linkerd.cluster.local"))
}

pub fn ca() -> TrustBundle {
    ca_at(SystemTime::now())
}

/// A trust anchor and issuer created at `t` (the issuer valid 30 days).
pub fn ca_at(t: SystemTime) -> TrustBundle {
    issue::init("cluster.local", 365 * DAY, 30 * DAY, t).unwrap()
}

pub fn workload(ca: &TrustBundle, name: &Identity, ttl: Duration, now: SystemTime) -> IssuedPem {
    issue::issue(&ca.issuer.cert_pem, &ca.issuer.key_pem, "issuer.crt", name, ttl, now).unwrap()
}

pub fn load(
    cert: &str,
    key: &str,
    anchors: &str,
    name: Option<&str>,
    now: SystemTime,
) -> Result<IdentityMaterial, meshpipe_core::identity::material::MaterialError> {
    let src = MaterialSources {
        cert: PemSource { file: "tls.crt", pem: cert.as_bytes() },
        key: PemSource { file: "tls.key", pem: key.as_bytes() },
        anchors: PemSource { file: "ca.crt", pem: anchors.as_bytes() },
        name,
    };
    IdentityMaterial::load(&src, &tls::provider(), now)
}

/// A workload identity issued by `ca` and loaded, valid for a day from now.
pub fn material(ca: &TrustBundle, name: &Identity) -> IdentityMaterial {
    let w = workload(ca, name, DAY, SystemTime::now());
    load(&w.cert_pem, &w.key_pem, &ca.anchor.cert_pem, None, SystemTime::now()).unwrap()
}
