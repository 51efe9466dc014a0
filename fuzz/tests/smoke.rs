//! The fuzz targets' checks on stable Rust: each target's `check` gets a
//! fixed corpus (its seeds, their truncations, mutations of them and seeded
//! random inputs, see `corpus/mod.rs`), so CI catches a broken invariant
//! without nightly or libFuzzer. Run it in release (the checks are cheap, the
//! inputs many):
//!
//! ```sh
//! cargo test --manifest-path fuzz/Cargo.toml --release
//! ```
//!
//! `seeds_reach_the_parsers` keeps the seeds honest: a seed that stopped
//! parsing (a fixture damaged, a parser tightened) would quietly leave the
//! mutations exploring the first bytes only, so it fails instead.

mod corpus;

use std::time::Instant;

use corpus::{seeds, Plan};
use meshpipe_core::addr::{Cidr, TargetAddr};
use meshpipe_core::detect::{classify, Detected, Expect, TlsInfo, Verdict, DETECT_BUFFER_CAP};
use meshpipe_core::http::client::peer_settings::{FirstFrame, Preface};
use meshpipe_core::identity::cert::CertFacts;
use meshpipe_core::identity::Identity;
use meshpipe_core::transport_header::{decode, PREFACE};

fn run(name: &str, seeds: &[Vec<u8>], plan: Plan<'_>, check: fn(&[u8])) {
    let started = Instant::now();
    let fed = corpus::run(name, seeds, &plan, check);
    println!("{name}: {} inputs ({} bytes) from {} seeds in {:.2?}", fed.inputs, fed.bytes, seeds.len(), started.elapsed());
}

#[test]
fn classify_check() {
    let seeds = seeds::with_selectors(&seeds::classify(), 4);
    let plan = Plan { dict: seeds::CLASSIFY_DICT, alphabet: b"GETPOST /HTP1.02\r\n*", mutations: 24_000, random: 8_000, random_len: 600 };
    run("classify", &seeds, plan, meshpipe_fuzz::classify::check);
}

#[test]
fn transport_header_check() {
    let plan = Plan { dict: seeds::TRANSPORT_HEADER_DICT, alphabet: &[], mutations: 1_500_000, random: 500_000, random_len: 64 };
    run("transport_header", &seeds::transport_header(), plan, meshpipe_fuzz::transport_header::check);
}

#[test]
fn http_headers_check() {
    let seeds = seeds::with_selectors(&seeds::http_headers(), 4);
    let alphabet = b"abcehkloprstuv-:, =;\"\n0123456789";
    let plan = Plan { dict: seeds::HTTP_HEADERS_DICT, alphabet, mutations: 400_000, random: 100_000, random_len: 200 };
    run("http_headers", &seeds, plan, meshpipe_fuzz::http_headers::check);
}

#[test]
fn identity_check() {
    let alphabet = b"\x00abcdefghijklmnopqrstuvwxyz0123456789-.:/*_A";
    let plan = Plan { dict: seeds::IDENTITY_DICT, alphabet, mutations: 1_500_000, random: 500_000, random_len: 120 };
    run("identity", &seeds::identity(), plan, meshpipe_fuzz::identity::check);
}

#[test]
fn addr_check() {
    let plan =
        Plan { dict: seeds::ADDR_DICT, alphabet: b"0123456789abcdefABCDEF.:/[]%x", mutations: 1_500_000, random: 500_000, random_len: 48 };
    run("addr", &seeds::addr(), plan, meshpipe_fuzz::addr::check);
}

#[test]
fn h2_settings_check() {
    let plan = Plan {
        dict: seeds::H2_SETTINGS_DICT,
        alphabet: b"\x00\x01\x04\x06\x08\x0c",
        mutations: 1_000_000,
        random: 300_000,
        random_len: 64,
    };
    run("h2_settings", &seeds::h2_settings(), plan, meshpipe_fuzz::h2_settings::check);
}

#[test]
fn seeds_reach_the_parsers() {
    let hello = seeds::client_hello();
    let tls = Verdict::Decided(Detected::Tls(TlsInfo {
        sni: Some("web.emojivoto.svc.cluster.local".into()),
        alpn: vec!["h2".into(), "http/1.1".into()],
    }));
    for (what, input) in [
        ("the hello", hello.clone()),
        ("the fragmented hello", seeds::fragmented(&hello, &[1, 4, 100])),
        ("the padded hello", seeds::padded(&hello, 12 * 1024)),
    ] {
        assert_eq!(classify(&input, Expect::Any), tls, "{what}");
    }
    // A greeting still partial at the cap is decided there, as opaque TCP.
    let (oversized, at_cap) = seeds::oversized_hello();
    assert_eq!(classify(&oversized[..DETECT_BUFFER_CAP - 1], Expect::Any), Verdict::NeedMore);
    assert_eq!(classify(&at_cap, Expect::Any), Verdict::Decided(Detected::NotHttp));
    let payloads = seeds::classify();
    assert_eq!(classify(&payloads[0], Expect::Any), Verdict::Decided(Detected::Http1));
    assert_eq!(classify(&payloads[1], Expect::Http1), Verdict::Decided(Detected::Http1));
    assert_eq!(classify(&payloads[6], Expect::Http2), Verdict::Decided(Detected::Http2));

    let (header, used) = decode(&seeds::transport_header()[0]).expect("the fixture decodes").expect("complete");
    assert_eq!((header.port.get(), header.name, header.protocol, used), (8080, None, None, 30));
    let headers = seeds::transport_header();
    for (i, seed) in headers.iter().enumerate() {
        let decoded = decode(seed).or_else(|_| decode(&[PREFACE, seed].concat()));
        assert_eq!(matches!(decoded, Ok(Some(_))), i < 7, "transport header seed {i}: {decoded:?}");
    }

    let certs = seeds::certificates();
    assert_eq!(certs.len(), 2);
    let workload = CertFacts::parse(&certs[0]).expect("the workload certificate reads");
    let ids: Vec<&str> = workload.identities.iter().map(Identity::as_str).collect();
    assert_eq!(ids, ["web.emojivoto.serviceaccount.identity.linkerd.cluster.local", "spiffe://cluster.local/ns/emojivoto/sa/web"]);
    let odd = CertFacts::parse(&certs[1]).expect("the CA certificate reads");
    assert!(odd.is_ca);
    let ids: Vec<&str> = odd.identities.iter().map(Identity::as_str).collect();
    assert_eq!(ids, ["db.prod.svc.cluster.local", "spiffe://cluster.local/ns/prod/sa/db"]);
    for seed in &seeds::identity()[..5] {
        let name = std::str::from_utf8(&seed[1..]).expect("a name");
        Identity::parse_dialable(name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
    }

    for cidr in ["10.0.0.0/8", "0.0.0.0/0", "::/0", "2001:db8::1/128", "::ffff:10.0.0.0/104"] {
        assert!(seeds::addr().iter().any(|s| s == cidr.as_bytes()), "{cidr} is no seed");
        cidr.parse::<Cidr>().unwrap_or_else(|e| panic!("{cidr:?}: {e}"));
    }
    for target in ["127.0.0.1:8080", "[::1]:4143", "[::ffff:1.2.3.4]:80"] {
        assert!(seeds::addr().iter().any(|s| s == target.as_bytes()), "{target} is no seed");
        target.parse::<TargetAddr>().unwrap_or_else(|e| panic!("{target:?}: {e}"));
    }

    // The first byte of an h2_settings seed is the check's piece size.
    let verdicts: Vec<Option<Preface>> = seeds::h2_settings().iter().map(|s| FirstFrame::default().feed(&s[1..])).collect();
    use Preface::*;
    let want = [ExtendedConnect, Plain, Plain, Plain, Invalid, Invalid, Invalid, Invalid, ExtendedConnect, Invalid];
    assert_eq!(verdicts, want.map(Some).to_vec(), "h2_settings seeds");
}

/// Every target's seeds and dictionary, written for libFuzzer: `DIR/NAME/`
/// holds the seeds (one file each) and `DIR/NAME.dict` the dictionary, in
/// libFuzzer's format. `guided.sh` runs this with `MESHPIPE_FUZZ_SEEDS` set
/// to a temporary directory it hands libFuzzer as a seed corpus, so
/// coverage-guided runs start from the same inputs as this smoke test;
/// unset, a directory of its own is written, read back and removed.
#[test]
fn seeds_export_for_libfuzzer() {
    let (dir, keep) = match std::env::var_os("MESHPIPE_FUZZ_SEEDS") {
        Some(d) => (std::path::PathBuf::from(d), true),
        None => (std::env::temp_dir().join(format!("meshpipe-fuzz-seeds-{}", std::process::id())), false),
    };
    let targets: [Export; 6] = [
        ("classify", seeds::with_selectors(&seeds::classify(), 4), seeds::CLASSIFY_DICT),
        ("transport_header", seeds::transport_header(), seeds::TRANSPORT_HEADER_DICT),
        ("http_headers", seeds::with_selectors(&seeds::http_headers(), 4), seeds::HTTP_HEADERS_DICT),
        ("identity", seeds::identity(), seeds::IDENTITY_DICT),
        ("addr", seeds::addr(), seeds::ADDR_DICT),
        ("h2_settings", seeds::h2_settings(), seeds::H2_SETTINGS_DICT),
    ];
    for (name, seeds, dict) in targets {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i:04}")), seed).unwrap();
        }
        std::fs::write(dir.join(format!("{name}.dict")), dict_text(dict)).unwrap();
        for (i, seed) in seeds.iter().enumerate() {
            assert_eq!(&std::fs::read(d.join(format!("seed-{i:04}"))).unwrap(), seed, "{name} seed {i}");
        }
        let lines = std::fs::read_to_string(dir.join(format!("{name}.dict"))).unwrap();
        assert_eq!(lines.lines().count(), dict.len(), "{name}: one dictionary entry per line");
    }
    if !keep {
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A target's name, seeds and dictionary.
type Export = (&'static str, Vec<Vec<u8>>, &'static [&'static [u8]]);

/// A libFuzzer dictionary: one quoted entry per line, bytes outside
/// printable ASCII (and `"` and `\`) as `\xNN`.
fn dict_text(dict: &[&[u8]]) -> String {
    let mut out = String::new();
    for entry in dict {
        out.push('"');
        for &b in *entry {
            if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02X}"));
            }
        }
        out.push_str("\"\n");
    }
    out
}

#[test]
fn dictionaries_are_escaped_for_libfuzzer() {
    assert_eq!(dict_text(&[b"GET ", b"\r\n", b"a\"b\\"]), "\"GET \"\n\"\\x0D\\x0A\"\n\"a\\x22b\\x5C\"\n");
}
