//! Chains already verified, so that a peer seen before costs one signature
//! check per handshake instead of three.
//!
//! A full mutual handshake makes each side verify the peer's chain (leaf by
//! issuer, issuer by trust anchor: two ECDSA verifications, the most
//! expensive part of the handshake) and the peer's CertificateVerify
//! signature over this handshake (RFC 8446 §4.4.3: the proof that the peer
//! holds the leaf's key). In a mesh the same few certificates arrive again
//! and again (every connection from a client pod presents that pod's
//! certificate until it rotates), and the outcome of chain verification
//! depends only on the certificates' bytes, the trust anchors, the usage
//! (client or server authentication) and the time. So a successful
//! verification is remembered, keyed by exactly those: a SHA-256 over the
//! DER of the leaf and every intermediate (length-prefixed, in order), the
//! [`TlsState`](super::TlsState) whose anchors verified it (each state has a
//! unique id: new anchors, new cache keys) and the usage. The entry holds
//! the window in which the verification stays true: the latest `notBefore`
//! and the earliest `notAfter` among the leaf and intermediates presented
//! (webpki checks each certificate of the path against the time; the window
//! over all presented certificates is never wider than the path's), and is
//! used only inside it. The CertificateVerify signature is still checked on
//! every handshake, so a replayed certificate without its key fails exactly
//! as before. Failures are never remembered.
//!
//! The cache also keeps the leaf's parsed facts (identities, SANs, serial),
//! which the handshake needs for the identity check, the client's identity
//! and the connection's serials, so the certificate is parsed once.
//!
//! It is per worker thread (a connection lives on one thread), so the
//! handshake path takes no lock; each thread holds at most [`CAPACITY`]
//! entries and drops expired ones, or all of them, when it is full.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};

use crate::identity::cert::CertFacts;

/// Entries per worker thread: a server sees one certificate per client pod.
pub(crate) const CAPACITY: usize = 4096;

/// What a chain was verified for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Usage {
    /// A client's chain, verified by a server.
    Client,
    /// A server's chain, verified by a client.
    Server,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    state: u64,
    usage: Usage,
    digest: [u8; 32],
}

impl Key {
    /// The key of a presented chain (leaf first) verified by the state `state`.
    pub(crate) fn new(state: u64, usage: Usage, end_entity: &[u8], intermediates: &[CertificateDer<'_>]) -> Key {
        let hash = super::sha256();
        let mut ctx = hash.start();
        for der in std::iter::once(end_entity).chain(intermediates.iter().map(|c| c.as_ref())) {
            ctx.update(&(der.len() as u64).to_be_bytes());
            ctx.update(der);
        }
        let out = ctx.finish();
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&out.as_ref()[..32]);
        Key { state, usage, digest }
    }
}

struct Entry {
    /// Seconds since the epoch: the verification holds from `from` to `until`, both inclusive.
    from: u64,
    until: u64,
    facts: Arc<CertFacts>,
}

thread_local! {
    static VERIFIED: RefCell<HashMap<Key, Entry>> = RefCell::new(HashMap::new());
}

#[cfg(test)]
thread_local! {
    /// Verifications remembered on this thread (each one a full chain check).
    static REMEMBERED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The leaf's facts if this chain was verified and `now` is inside its window.
pub(crate) fn lookup(key: &Key, now: UnixTime) -> Option<Arc<CertFacts>> {
    let t = now.as_secs();
    VERIFIED.with(|v| v.borrow().get(key).filter(|e| e.from <= t && t <= e.until).map(|e| e.facts.clone()))
}

/// The leaf's facts if this chain was verified, whatever the time (for the
/// facts of a handshake that just verified it).
pub(crate) fn facts(key: &Key) -> Option<Arc<CertFacts>> {
    VERIFIED.with(|v| v.borrow().get(key).map(|e| e.facts.clone()))
}

/// Remembers a successful verification. `certs` are the leaf's and the
/// intermediates' facts (the window is their intersection).
pub(crate) fn remember(key: Key, leaf: Arc<CertFacts>, intermediates: &[CertFacts]) {
    let secs = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut from = secs(leaf.not_before);
    let mut until = secs(leaf.not_after);
    for c in intermediates {
        from = from.max(secs(c.not_before));
        until = until.min(secs(c.not_after));
    }
    #[cfg(test)]
    REMEMBERED.with(|n| n.set(n.get() + 1));
    VERIFIED.with(|v| {
        let mut map = v.borrow_mut();
        if map.len() >= CAPACITY && !map.contains_key(&key) {
            let now = secs(std::time::SystemTime::now());
            map.retain(|_, e| e.until >= now);
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        map.insert(key, Entry { from, until, facts: leaf });
    });
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::identity::issue;
    use crate::identity::material::{IdentityMaterial, MaterialSources, PemSource};
    use crate::identity::Identity;
    use crate::tls::{self, AlpnRule, ClientAlpn, TlsState};

    const DAY: Duration = Duration::from_secs(86_400);

    fn material(ca: &issue::TrustBundle, name: &str) -> IdentityMaterial {
        let w =
            issue::issue(&ca.issuer.cert_pem, &ca.issuer.key_pem, "issuer.crt", &Identity::parse(name).unwrap(), DAY, SystemTime::now())
                .unwrap();
        let src = MaterialSources {
            cert: PemSource { file: "tls.crt", pem: w.cert_pem.as_bytes() },
            key: PemSource { file: "tls.key", pem: w.key_pem.as_bytes() },
            anchors: PemSource { file: "ca.crt", pem: ca.anchor.cert_pem.as_bytes() },
            name: None,
        };
        IdentityMaterial::load(&src, &tls::provider(), SystemTime::now()).unwrap()
    }

    fn remembered() -> usize {
        REMEMBERED.with(|n| n.get())
    }

    async fn handshake(client: &TlsState, server: &TlsState, expect: &Identity) -> (bool, bool) {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let (c, s) = tokio::join!(tls::connect(client, c, expect, ClientAlpn::Tunnel, DAY), tls::accept(server, s, AlpnRule::Tunnel, DAY));
        (c.is_ok(), s.is_ok())
    }

    #[tokio::test]
    async fn a_peer_seen_before_is_not_verified_again() {
        let ca = issue::init("cluster.local", 365 * DAY, 30 * DAY, SystemTime::now()).unwrap();
        let web = TlsState::new(&material(&ca, "web.shop.serviceaccount.identity.linkerd.cluster.local"), 1).unwrap();
        let db_id = Identity::parse("db.shop.serviceaccount.identity.linkerd.cluster.local").unwrap();
        let db = TlsState::new(&material(&ca, db_id.as_str()), 1).unwrap();
        let before = remembered();
        assert_eq!(handshake(&web, &db, &db_id).await, (true, true));
        assert_eq!(remembered() - before, 2, "each side verified the other's chain once");
        for _ in 0..3 {
            assert_eq!(handshake(&web, &db, &db_id).await, (true, true));
        }
        assert_eq!(remembered() - before, 2, "later handshakes reuse both verifications");
        // Another state (another identity generation, possibly other anchors): its own entries.
        let db2 = TlsState::new(&material(&ca, db_id.as_str()), 2).unwrap();
        assert_eq!(handshake(&web, &db2, &db_id).await, (true, true));
        assert_eq!(remembered() - before, 4, "a new certificate and a new verifier: both verified again");
    }

    fn facts(from: u64, until: u64) -> Arc<CertFacts> {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        Arc::new(CertFacts {
            sans: vec![],
            identities: vec![],
            serial: "01".into(),
            not_before: t(from),
            not_after: t(until),
            subject: String::new(),
            issuer: String::new(),
            is_ca: false,
        })
    }

    #[test]
    fn an_entry_is_used_only_inside_the_validity_of_every_presented_certificate() {
        let key = Key::new(u64::MAX, Usage::Client, b"leaf", &[CertificateDer::from(&b"issuer"[..])]);
        let issuer = facts(1_500, 1_800);
        remember(key, facts(1_000, 2_000), &[(*issuer).clone()]);
        let at = |s: u64| lookup(&key, UnixTime::since_unix_epoch(Duration::from_secs(s))).is_some();
        assert!(!at(1_200), "before the issuer's notBefore");
        assert!(at(1_500) && at(1_700) && at(1_800), "inside both windows, ends included");
        assert!(!at(1_801), "after the issuer's notAfter, though the leaf is still valid");
        let other = Key::new(u64::MAX, Usage::Server, b"leaf", &[CertificateDer::from(&b"issuer"[..])]);
        assert!(lookup(&other, UnixTime::since_unix_epoch(Duration::from_secs(1_600))).is_none(), "the usage is part of the key");
        let longer = Key::new(u64::MAX, Usage::Client, b"leaf", &[]);
        assert!(lookup(&longer, UnixTime::since_unix_epoch(Duration::from_secs(1_600))).is_none(), "so is every certificate");
    }
}
