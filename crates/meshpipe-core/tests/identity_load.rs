//! Identity material: what `identity::issue` writes is what a workload
//! needs (checked by openssl too), and every bad input is refused with the
//! file and the reason. openssl also makes certificates meshpipe did not
//! issue (a SPIFFE ID, no SAN, several SANs) to check the loader on them.

#[path = "common/pki.rs"]
mod pki;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use meshpipe_core::identity::material::MaterialError;
use meshpipe_core::identity::IdentityKind;
use pki::*;

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("meshpipe-identity-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn issued_identity_loads_and_openssl_agrees() {
    let ca = ca();
    let name = linkerd("web", "emojivoto");
    let w = workload(&ca, &name, DAY, SystemTime::now());
    let m = load(&w.cert_pem, &w.key_pem, &ca.anchor.cert_pem, None, SystemTime::now()).unwrap();
    assert_eq!(m.identity, name);
    assert_eq!(m.chain.len(), 2, "leaf then issuer");
    let info = m.info();
    assert_eq!(info.serial, w.serial);
    assert_eq!(info.names, vec![name.to_string()]);
    let lifetime = info.not_after_ms - info.not_before_ms;
    assert!((86_400_000..=86_400_000 + 61_000).contains(&lifetime), "a day plus the backdating: {lifetime} ms");

    // openssl: the chain verifies for both TLS roles, and the extensions are Linkerd's.
    let dir = tmpdir("openssl");
    std::fs::write(dir.join("ca.crt"), &ca.anchor.cert_pem).unwrap();
    std::fs::write(dir.join("issuer.crt"), &ca.issuer.cert_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), &w.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &w.key_pem).unwrap();
    for purpose in ["sslserver", "sslclient"] {
        let out = openssl(&dir, &["verify", "-purpose", purpose, "-CAfile", "ca.crt", "-untrusted", "issuer.crt", "tls.crt"]);
        assert!(out.contains("tls.crt: OK"), "{out}");
    }
    let text = openssl(&dir, &["x509", "-in", "tls.crt", "-noout", "-text"]);
    assert!(text.contains(&format!("DNS:{name}")), "{text}");
    assert!(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("ecdsa-with-SHA256") && text.contains("prime256v1"), "ECDSA P-256: {text}");
    let issuer = openssl(&dir, &["x509", "-in", "issuer.crt", "-noout", "-text"]);
    assert!(issuer.contains("CA:TRUE, pathlen:0"), "{issuer}");
    // The key matches the certificate, as openssl sees it.
    let pub_cert = openssl(&dir, &["x509", "-in", "tls.crt", "-noout", "-pubkey"]);
    let pub_key = openssl(&dir, &["pkey", "-in", "tls.key", "-pubout"]);
    assert_eq!(pub_cert, pub_key);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn spiffe_identity_from_an_openssl_certificate() {
    let dir = tmpdir("spiffe");
    openssl(&dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"]);
    openssl(&dir, &["req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=spiffe root", "-days", "2", "-out", "ca.crt"]);
    openssl(&dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "tls.key"]);
    openssl(&dir, &["req", "-new", "-key", "tls.key", "-subj", "/O=mesh", "-out", "tls.csr"]);
    let ext =
        "subjectAltName=URI:spiffe://example.org/ns/shop/sa/cart\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\n";
    std::fs::write(dir.join("ext.cnf"), ext).unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "tls.crt",
        ],
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    // The key is SEC1 ("EC PRIVATE KEY"), not PKCS#8: both load.
    assert!(read("tls.key").contains("BEGIN EC PRIVATE KEY"));
    let m = load(&read("tls.crt"), &read("tls.key"), &read("ca.crt"), None, SystemTime::now()).unwrap();
    assert_eq!(m.identity.as_str(), "spiffe://example.org/ns/shop/sa/cart");
    assert_eq!(m.identity.kind(), IdentityKind::Spiffe);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn certificates_without_a_single_identity_need_identity_name() {
    let dir = tmpdir("names");
    openssl(&dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"]);
    openssl(&dir, &["req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=root", "-days", "2", "-out", "ca.crt"]);
    openssl(&dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "tls.key"]);
    openssl(&dir, &["req", "-new", "-key", "tls.key", "-subj", "/CN=x", "-out", "tls.csr"]);
    let sign = |ext: &str, out: &str| {
        std::fs::write(dir.join("ext.cnf"), ext).unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "tls.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
                "-out",
                out,
            ],
        );
        std::fs::read_to_string(dir.join(out)).unwrap()
    };
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let (key, anchors) = (read("tls.key"), read("ca.crt"));

    let none = sign("keyUsage=digitalSignature\n", "none.crt");
    let err = load(&none, &key, &anchors, None, SystemTime::now()).unwrap_err();
    assert!(matches!(err, MaterialError::NoIdentity { .. }), "{err}");
    assert!(err.to_string().contains("tls.crt") && err.to_string().contains("SANs: none"), "{err}");

    let two = sign(
        "subjectAltName=DNS:a.ns.serviceaccount.identity.linkerd.cluster.local,DNS:b.ns.serviceaccount.identity.linkerd.cluster.local\n",
        "two.crt",
    );
    let err = load(&two, &key, &anchors, None, SystemTime::now()).unwrap_err();
    assert!(err.to_string().contains("several identities") && err.to_string().contains("--identity-name"), "{err}");
    let b = "b.ns.serviceaccount.identity.linkerd.cluster.local";
    assert_eq!(load(&two, &key, &anchors, Some(b), SystemTime::now()).unwrap().identity.as_str(), b);
    let err = load(&two, &key, &anchors, Some("c.ns.serviceaccount.identity.linkerd.cluster.local"), SystemTime::now()).unwrap_err();
    assert!(matches!(err, MaterialError::NameNotInCert { .. }) && err.to_string().contains("does not carry"), "{err}");
    let err = load(&two, &key, &anchors, Some("Not A Name"), SystemTime::now()).unwrap_err();
    assert!(err.to_string().starts_with("--identity-name: invalid identity"), "{err}");

    // A Linkerd-form name wins over a SPIFFE ID and a plain DNS name.
    let mixed = sign("subjectAltName=DNS:web.example.org,URI:spiffe://cluster.local/ns/ns/sa/web,DNS:web.ns.serviceaccount.identity.linkerd.cluster.local\n", "mixed.crt");
    let m = load(&mixed, &key, &anchors, None, SystemTime::now()).unwrap();
    assert_eq!(m.identity.as_str(), "web.ns.serviceaccount.identity.linkerd.cluster.local");
    assert_eq!(m.info().names.len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_refused_naming_the_file_and_the_reason() {
    let ca = ca();
    let same_name = pki::ca();
    let other = meshpipe_core::identity::issue::init("other.example", 365 * DAY, 30 * DAY, SystemTime::now()).unwrap();
    let name = linkerd("web", "ns");
    let now = SystemTime::now();
    let w = workload(&ca, &name, DAY, now);
    let w2 = workload(&ca, &name, DAY, now);
    let check = |err: MaterialError, file: &str, words: &[&str]| {
        let text = err.to_string();
        assert!(text.starts_with(file), "names {file} first: {text}");
        for w in words {
            assert!(text.contains(w), "{text} should say {w:?}");
        }
    };
    check(load("", &w.key_pem, &ca.anchor.cert_pem, None, now).unwrap_err(), "tls.crt", &["certificate", "empty"]);
    check(load("hello\n", &w.key_pem, &ca.anchor.cert_pem, None, now).unwrap_err(), "tls.crt", &["no \"-----BEGIN CERTIFICATE-----\""]);
    let broken = "-----BEGIN CERTIFICATE-----\nnot base64 !!!\n-----END CERTIFICATE-----\n";
    check(load(broken, &w.key_pem, &ca.anchor.cert_pem, None, now).unwrap_err(), "tls.crt", &["PEM"]);
    let not_der = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    check(load(not_der, &w.key_pem, &ca.anchor.cert_pem, None, now).unwrap_err(), "tls.crt", &["not a DER X.509 certificate"]);
    let cut = &w.cert_pem[..w.cert_pem.len() / 3];
    check(load(cut, &w.key_pem, &ca.anchor.cert_pem, None, now).unwrap_err(), "tls.crt", &["not terminated"]);
    check(load(&w.cert_pem, "", &ca.anchor.cert_pem, None, now).unwrap_err(), "tls.key", &["private key"]);
    check(load(&w.cert_pem, &w.cert_pem, &ca.anchor.cert_pem, None, now).unwrap_err(), "tls.key", &["private key", "no PEM block"]);
    check(load(&w.cert_pem, &w.key_pem, "junk", None, now).unwrap_err(), "ca.crt", &["trust anchor"]);
    let mismatch = load(&w.cert_pem, &w2.key_pem, &ca.anchor.cert_pem, None, now).unwrap_err();
    assert!(matches!(mismatch, MaterialError::KeyMismatch { .. }));
    check(mismatch, "tls.key", &["does not match the certificate in tls.crt"]);
    let untrusted = load(&w.cert_pem, &w.key_pem, &other.anchor.cert_pem, None, now).unwrap_err();
    assert!(matches!(untrusted, MaterialError::Untrusted { .. }));
    check(untrusted, "tls.crt", &["not rooted in the trust anchors of ca.crt", "unknown issuer"]);
    // An anchor with the same name but another key (a rotated or foreign mesh).
    let impostor = load(&w.cert_pem, &w.key_pem, &same_name.anchor.cert_pem, None, now).unwrap_err();
    check(impostor, "tls.crt", &["not rooted in the trust anchors of ca.crt", "signature"]);
    // Only the leaf, without its issuer: no path to the anchor.
    let leaf_only = w.cert_pem.split_inclusive("-----END CERTIFICATE-----\n").next().unwrap();
    check(load(leaf_only, &w.key_pem, &ca.anchor.cert_pem, None, now).unwrap_err(), "tls.crt", &["unknown issuer"]);
    // Time: the same certificate, judged an hour after it expired and an hour before it starts.
    let expired = load(&w.cert_pem, &w.key_pem, &ca.anchor.cert_pem, None, now + DAY + Duration::from_secs(3600)).unwrap_err();
    assert!(matches!(expired, MaterialError::Expired { .. }));
    check(expired, "tls.crt", &["expired at"]);
    let early = load(&w.cert_pem, &w.key_pem, &ca.anchor.cert_pem, None, now - Duration::from_secs(3600)).unwrap_err();
    assert!(matches!(early, MaterialError::NotYetValid { .. }));
    check(early, "tls.crt", &["not valid before"]);
    // A CA certificate is not a workload certificate.
    let ca_as_leaf = load(&ca.issuer.cert_pem, &ca.issuer.key_pem, &ca.anchor.cert_pem, None, now).unwrap_err();
    assert!(ca_as_leaf.to_string().contains("CA certificate") || ca_as_leaf.to_string().contains("no usable identity"), "{ca_as_leaf}");
}

#[test]
fn issuing_refuses_what_would_not_work() {
    let ca = ca();
    let name = linkerd("web", "ns");
    let now = SystemTime::now();
    let err =
        meshpipe_core::identity::issue::issue(&ca.issuer.cert_pem, &ca.issuer.key_pem, "issuer.crt", &name, 400 * DAY, now).unwrap_err();
    assert!(err.to_string().contains("outlive its issuer"), "{err}");
    let w = workload(&ca, &name, DAY, now);
    let err = meshpipe_core::identity::issue::issue(&w.cert_pem, &w.key_pem, "tls.crt", &name, DAY, now).unwrap_err();
    assert!(err.to_string().starts_with("tls.crt: ") && err.to_string().contains("not a CA certificate"), "{err}");
    let err = meshpipe_core::identity::issue::issue(&ca.issuer.cert_pem, "junk", "issuer.crt", &name, DAY, now).unwrap_err();
    assert!(err.to_string().contains("issuer key"), "{err}");
    assert!(meshpipe_core::identity::issue::init("Not Valid", DAY, DAY, now).is_err());
    // A SPIFFE identity goes into a URI SAN.
    let spiffe = id("spiffe://cluster.local/ns/ns/sa/web");
    let w = workload(&ca, &spiffe, DAY, now);
    let m = load(&w.cert_pem, &w.key_pem, &ca.anchor.cert_pem, None, now).unwrap();
    assert_eq!(m.identity, spiffe);
    assert_eq!(m.leaf.sans, vec![(IdentityKind::Spiffe, spiffe.to_string())]);
}
