//! Mesh TLS over real loopback sockets: both ends authenticate, the expected
//! identity is enforced, every refusal is sorted into its reason, and a
//! certificate reload affects new connections only.

#[path = "common/pki.rs"]
mod pki;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshpipe_core::tls::{self, AlpnRule, ClientAlpn, HandshakeFailure, MeshTls, TlsState};
use pki::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(10);

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

/// Runs a client and a server handshake against each other.
async fn handshake(
    client: &TlsState,
    server: &TlsState,
    expect: &meshpipe_core::identity::Identity,
    alpn: ClientAlpn,
    rule: AlpnRule,
) -> (
    Result<(tokio_rustls::client::TlsStream<TcpStream>, tls::Connected), tls::HandshakeError>,
    Result<(tokio_rustls::server::TlsStream<TcpStream>, tls::Accepted), tls::HandshakeError>,
) {
    let (c, s) = pair().await;
    tokio::join!(tls::connect(client, c, expect, alpn, T), tls::accept(server, s, rule, T))
}

#[tokio::test]
async fn mutual_tls_between_two_identities() {
    let ca = ca();
    let (web, db) = (linkerd("web", "shop"), linkerd("db", "shop"));
    let client = MeshTls::new(&material(&ca, &web)).unwrap();
    let server = MeshTls::new(&material(&ca, &db)).unwrap();
    let (c, s) = handshake(&client.current(), &server.current(), &db, ClientAlpn::Tunnel, AlpnRule::Tunnel).await;
    let (mut c, connected) = c.unwrap();
    let (mut s, accepted) = s.unwrap();
    assert_eq!(connected.peer, db);
    assert!(connected.tunnel && accepted.tunnel);
    assert_eq!(accepted.client, web, "the server reads the client's identity from its certificate");
    assert_eq!(accepted.sni.as_deref(), Some(db.as_str()), "SNI is the server's identity");
    assert_eq!(c.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    // SPIFFE identities work the same way (SNI is derived, the URI SAN verified).
    let spiffe = id("spiffe://cluster.local/ns/shop/sa/cache");
    let server2 = MeshTls::new(&material(&ca, &spiffe)).unwrap();
    let (c, s) = handshake(&client.current(), &server2.current(), &spiffe, ClientAlpn::None, AlpnRule::Any).await;
    assert_eq!(c.unwrap().1.peer, spiffe);
    let accepted = s.unwrap().1;
    assert_eq!(accepted.sni.as_deref(), Some("cache.shop.serviceaccount.identity.spiffe.cluster.local"));
    assert!(!accepted.tunnel);
}

#[tokio::test]
async fn refusals_are_sorted_by_reason() {
    // Created five days ago, so that certificates from the past can be issued.
    let ca = ca_at(SystemTime::now() - 5 * DAY);
    let (web, db) = (linkerd("web", "shop"), linkerd("db", "shop"));
    let client = MeshTls::new(&material(&ca, &web)).unwrap().current();
    let server = MeshTls::new(&material(&ca, &db)).unwrap().current();

    // The peer proves another identity than the one expected.
    let (c, _s) = handshake(&client, &server, &linkerd("api", "shop"), ClientAlpn::Tunnel, AlpnRule::Tunnel).await;
    let err = c.unwrap_err();
    assert_eq!(err.reason, HandshakeFailure::IdentityMismatch, "{err}");
    assert!(err.to_string().contains("api.shop") && err.to_string().contains(db.as_str()), "{err}");
    assert!(err.reason.is_verification());

    // A peer from another mesh (another trust anchor).
    let foreign_ca = meshpipe_core::identity::issue::init("other.example", 365 * DAY, 30 * DAY, SystemTime::now()).unwrap();
    let foreign = MeshTls::new(&material(&foreign_ca, &db)).unwrap().current();
    let (c, s) = handshake(&client, &foreign, &db, ClientAlpn::Tunnel, AlpnRule::Tunnel).await;
    assert_eq!(c.unwrap_err().reason, HandshakeFailure::Untrusted);
    assert_eq!(s.unwrap_err().reason, HandshakeFailure::PeerRejected, "the client's alert reaches the server");
    // ... and the server refuses a client from the other mesh (one that trusts both anchors,
    // so it is the server that decides).
    let fw = workload(&foreign_ca, &web, DAY, SystemTime::now());
    let both = format!("{}{}", ca.anchor.cert_pem, foreign_ca.anchor.cert_pem);
    let outsider = TlsState::new(&load(&fw.cert_pem, &fw.key_pem, &both, None, SystemTime::now()).unwrap(), 1).unwrap();
    let (c, s) = handshake(&outsider, &server, &db, ClientAlpn::Tunnel, AlpnRule::Tunnel).await;
    assert_eq!(s.unwrap_err().reason, HandshakeFailure::Untrusted);
    // TLS 1.3: the client finished first; the server's refusal arrives as an alert on its first read.
    let (mut c, _) = c.unwrap();
    let mut buf = [0u8; 1];
    let read = c.read(&mut buf).await;
    assert!(read.is_err() || read.unwrap() == 0, "the refused client cannot read");

    // An expired server certificate (loaded as of two days ago, valid one day).
    let past = SystemTime::now() - 2 * DAY;
    let old = workload(&ca, &db, DAY, past);
    let expired = TlsState::new(&load(&old.cert_pem, &old.key_pem, &ca.anchor.cert_pem, None, past).unwrap(), 1).unwrap();
    let (c, _s) = handshake(&client, &expired, &db, ClientAlpn::Tunnel, AlpnRule::Tunnel).await;
    assert_eq!(c.unwrap_err().reason, HandshakeFailure::Expired);
    // Not yet valid.
    let future = SystemTime::now() + DAY;
    let young = workload(&ca, &db, DAY, future);
    let early = TlsState::new(&load(&young.cert_pem, &young.key_pem, &ca.anchor.cert_pem, None, future).unwrap(), 1).unwrap();
    let (c, _s) = handshake(&client, &early, &db, ClientAlpn::Tunnel, AlpnRule::Tunnel).await;
    assert_eq!(c.unwrap_err().reason, HandshakeFailure::NotYetValid);

    // The tunnel requires the ALPN.
    let (_c, s) = handshake(&client, &server, &db, ClientAlpn::None, AlpnRule::Tunnel).await;
    let err = s.unwrap_err();
    assert_eq!(err.reason, HandshakeFailure::Alpn, "{err}");
    assert!(err.to_string().contains("negotiated none"), "{err}");
}

#[tokio::test]
async fn clients_outside_the_mesh_are_refused() {
    let ca = ca();
    let db = linkerd("db", "shop");
    let server = MeshTls::new(&material(&ca, &db)).unwrap().current();

    // A TLS client with no certificate (trusting the mesh's anchor).
    let mut roots = rustls::RootCertStore::empty();
    let anchor = rustls::pki_types::pem::PemObject::from_pem_slice(ca.anchor.cert_pem.as_bytes()).unwrap();
    roots.add(anchor).unwrap();
    let anon = |alpn: &[u8]| {
        let mut cfg = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    };
    let (c, s) = pair().await;
    let name = rustls::pki_types::ServerName::try_from(db.to_string()).unwrap();
    let (_, s) = tokio::join!(anon(b"transport.l5d.io/v1").connect(name.clone(), c), tls::accept(&server, s, AlpnRule::Tunnel, T));
    assert_eq!(s.unwrap_err().reason, HandshakeFailure::NoClientCert);

    // A client offering only another ALPN protocol.
    let web = MeshTls::new(&material(&ca, &linkerd("web", "shop"))).unwrap().current();
    let mut h2 = (*web.client_config(&db, ClientAlpn::None)).clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    let (c, s) = pair().await;
    let (_, s) =
        tokio::join!(tokio_rustls::TlsConnector::from(Arc::new(h2)).connect(name, c), tls::accept(&server, s, AlpnRule::Tunnel, T));
    assert_eq!(s.unwrap_err().reason, HandshakeFailure::Alpn);

    // Plaintext sent to a TLS server.
    let (mut c, s) = pair().await;
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let err = tls::accept(&server, s, AlpnRule::Tunnel, T).await.unwrap_err();
    assert_eq!(err.reason, HandshakeFailure::Handshake, "{err}");

    // A client that says nothing: the deadline ends the handshake.
    let (_c, s) = pair().await;
    let err = tls::accept(&server, s, AlpnRule::Tunnel, Duration::from_millis(100)).await.unwrap_err();
    assert_eq!(err.reason, HandshakeFailure::Timeout, "{err}");

    // A client that hangs up mid-handshake.
    let (c, s) = pair().await;
    drop(c);
    let err = tls::accept(&server, s, AlpnRule::Tunnel, T).await.unwrap_err();
    assert_eq!(err.reason, HandshakeFailure::Io, "{err}");
}

#[tokio::test]
async fn reload_affects_new_connections_only() {
    let ca = ca();
    let (web, db) = (linkerd("web", "shop"), linkerd("db", "shop"));
    let client = MeshTls::new(&material(&ca, &web)).unwrap();
    let first = material(&ca, &db);
    let serial1 = first.info().serial;
    let server = MeshTls::new(&first).unwrap();
    assert_eq!(server.current().generation(), 1);

    let (c, s) = handshake(&client.current(), &server.current(), &db, ClientAlpn::Tunnel, AlpnRule::Tunnel).await;
    let (mut open_c, _) = c.unwrap();
    let (mut open_s, _) = s.unwrap();
    let serial_of = |c: &tokio_rustls::client::TlsStream<TcpStream>| {
        let leaf = &c.get_ref().1.peer_certificates().unwrap()[0];
        meshpipe_core::identity::cert::CertFacts::parse(leaf).unwrap().serial
    };
    assert_eq!(serial_of(&open_c), serial1);

    let second = material(&ca, &db);
    let serial2 = second.info().serial;
    assert_ne!(serial1, serial2);
    assert_eq!(server.reload(&second).unwrap(), 2);
    assert_eq!(server.current().info().serial, serial2, "metrics see the new serial");

    let (c, s) = handshake(&client.current(), &server.current(), &db, ClientAlpn::Tunnel, AlpnRule::Tunnel).await;
    assert_eq!(serial_of(&c.unwrap().0), serial2, "a new connection gets the new certificate");
    s.unwrap();

    // The connection opened before the reload goes on.
    open_c.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    open_s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
    open_s.write_all(b"ok").await.unwrap();
    let mut buf = [0u8; 2];
    open_c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ok");
}

/// Chains already verified are remembered (tls/cache.rs): none of that may
/// change what is accepted. Every handshake here runs on this test's thread,
/// so each one after the first meets the remembered chains.
#[tokio::test]
async fn remembered_chains_change_nothing_that_is_refused() {
    let ca = ca();
    let (web, db) = (linkerd("web", "shop"), linkerd("db", "shop"));
    let web_m = material(&ca, &web);
    let client = MeshTls::new(&web_m).unwrap().current();
    let server = MeshTls::new(&material(&ca, &db)).unwrap().current();
    for _ in 0..2 {
        let (c, s) = handshake(&client, &server, &db, ClientAlpn::Tunnel, AlpnRule::Tunnel).await;
        assert_eq!((c.unwrap().1.peer, s.unwrap().1.client), (db.clone(), web.clone()));
    }
    // The same (remembered) chain is still checked against the expected identity.
    let (c, _s) = handshake(&client, &server, &linkerd("api", "shop"), ClientAlpn::Tunnel, AlpnRule::Tunnel).await;
    assert_eq!(c.unwrap_err().reason, HandshakeFailure::IdentityMismatch);
    // A remembered certificate is not a credential: without its key, the
    // signature over this handshake fails.
    let other_key = material(&ca, &web).key;
    let stolen = meshpipe_core::identity::material::IdentityMaterial {
        identity: web_m.identity.clone(),
        chain: web_m.chain.clone(),
        key: other_key,
        anchors: web_m.anchors.clone(),
        leaf: web_m.leaf.clone(),
    };
    let thief = MeshTls::new(&stolen).unwrap().current();
    let (_c, s) = handshake(&thief, &server, &db, ClientAlpn::Tunnel, AlpnRule::Tunnel).await;
    let err = s.unwrap_err();
    assert!(err.reason.is_verification() || err.reason == HandshakeFailure::Handshake, "{err}");
    // Other trust anchors do not see the first state's remembered chains.
    let strict = MeshTls::new(&material(&pki::ca(), &web)).unwrap().current();
    let (c, _s) = handshake(&strict, &server, &db, ClientAlpn::Tunnel, AlpnRule::Tunnel).await;
    assert_eq!(c.unwrap_err().reason, HandshakeFailure::Untrusted, "the server's chain, remembered by the first client, is unknown here");
}

/// The first bytes (the tunnel's header) leave with the client's Finished:
/// the server holds them, decrypted, as soon as its handshake completes,
/// without another read of the socket.
#[tokio::test]
async fn first_bytes_ride_with_the_clients_finished() {
    use std::io::Read;
    let ca = ca();
    let (web, db) = (linkerd("web", "shop"), linkerd("db", "shop"));
    let client = MeshTls::new(&material(&ca, &web)).unwrap().current();
    let server = MeshTls::new(&material(&ca, &db)).unwrap().current();
    let (c, s) = pair().await;
    let (c, s) = tokio::join!(
        tls::connect_with_first(&client, c, &db, ClientAlpn::Tunnel, b"transport header", T),
        tls::accept(&server, s, AlpnRule::Tunnel, T)
    );
    let (_c, _) = c.unwrap();
    let (mut s, _) = s.unwrap();
    let mut buf = [0u8; 64];
    let n = s.get_mut().1.reader().read(&mut buf).expect("already received with the handshake");
    assert_eq!(&buf[..n], b"transport header");
}
