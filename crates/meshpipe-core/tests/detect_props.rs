//! Property-based tests of the protocol classifier (`meshpipe_core::detect`).
//!
//! The proxy hands the whole accumulated prefix to its connection's `Classifier` after every
//! read, so the answer must not depend on how the network split the bytes. These properties
//! prove it from the outside: the incremental classifier, fed any split, answers at every step
//! exactly what the one-shot `classify` answers for that prefix; the classifier never panics on
//! any bytes; feeding an input in arbitrary chunks
//! and stopping at the first decision gives what a byte-by-byte feed gives; once a prefix is
//! decided every longer input agrees; at the 16 KiB cap it always decides; and generated valid
//! request lines, prefaces and (fragmented) ClientHellos are recognised whatever the split. A
//! real ClientHello captured from `openssl s_client -servername x.example -alpn h2,http/1.1`
//! (tests/fixtures/openssl-client-hello.bin) pins the parser to what a real client sends.
//! Each property runs at most 2000 cases so the whole file takes seconds.

use meshpipe_core::detect::{classify, Classifier, Detected, Expect, TlsInfo, Verdict, DETECT_BUFFER_CAP};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const MODES: [Expect; 4] = [Expect::Any, Expect::Http1, Expect::Http2, Expect::Tls];
const REAL_HELLO: &[u8] = include_bytes!("fixtures/openssl-client-hello.bin");

/// Feeds `input` one byte at a time: the shortest deciding prefix length and its verdict.
fn first_decision(input: &[u8], expect: Expect) -> (usize, Verdict) {
    for end in 1..=input.len() {
        if let v @ Verdict::Decided(_) = classify(&input[..end], expect) {
            return (end, v);
        }
    }
    (input.len(), Verdict::NeedMore)
}

/// Feeds `input` in chunks of the given sizes (the rest in one final chunk) to one
/// `Classifier`, as the proxy does, stopping at the first decision.
fn feed_in_chunks(input: &[u8], chunks: &[usize], expect: Expect) -> Verdict {
    let mut classifier = Classifier::new(expect);
    let mut end = 0usize;
    for &n in chunks.iter().chain(std::iter::once(&usize::MAX)) {
        end = end.saturating_add(n).min(input.len());
        if let v @ Verdict::Decided(_) = classifier.update(&input[..end]) {
            return v;
        }
        if end == input.len() {
            break;
        }
    }
    Verdict::NeedMore
}

/// The metrics form of a name, computed independently of the library: lossy UTF-8 of all the
/// bytes, cut to 255 bytes on a character boundary.
fn metric_string(bytes: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

fn len16(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap().to_be_bytes()
}

fn vec16(data: &[u8]) -> Vec<u8> {
    let mut v = len16(data.len()).to_vec();
    v.extend(data);
    v
}

/// A ClientHello handshake message (header included) with the given SNI, ALPN names and other
/// extensions, built field by field as RFC 8446 §4.1.2, RFC 6066 §3 and RFC 7301 lay them out.
fn client_hello(sni: Option<&[u8]>, alpn: &[Vec<u8>], other: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(host) = sni {
        let mut entry = vec![0u8];
        entry.extend(vec16(host));
        exts.extend([0, 0]);
        exts.extend(vec16(&vec16(&entry)));
    }
    for (ty, data) in other {
        exts.extend(ty.to_be_bytes());
        exts.extend(vec16(data));
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for name in alpn {
            list.push(u8::try_from(name.len()).unwrap());
            list.extend(name);
        }
        exts.extend([0, 16]);
        exts.extend(vec16(&vec16(&list)));
    }
    let mut body = vec![0x03, 0x03];
    body.extend([7u8; 32]);
    body.extend([0, 0, 2, 0x13, 0x01, 1, 0]); // empty session id, one suite, null compression
    body.extend(vec16(&exts));
    let mut msg = vec![1];
    msg.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    msg.extend(body);
    msg
}

/// Wraps a handshake message in records of the given fragment sizes (at most 2^14 each).
fn records(msg: &[u8], sizes: &[usize], minor: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = msg;
    let mut sizes = sizes.iter().copied().chain(std::iter::repeat(1 << 14));
    while !rest.is_empty() {
        let n = sizes.next().unwrap().clamp(1, 1 << 14).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        out.extend([0x16, 0x03, minor]);
        out.extend(len16(n));
        out.extend(piece);
        rest = tail;
    }
    out
}

prop_compose! {
    /// A valid request line (optionally after one CRLF) followed by arbitrary bytes.
    fn request_line()(
        crlf in any::<bool>(),
        method in "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,32}",
        target in "[!-~]{1,200}",
        minor in 0u8..=1,
        tail in vec(any::<u8>(), 0..64),
    ) -> Vec<u8> {
        let mut v = if crlf { b"\r\n".to_vec() } else { Vec::new() };
        v.extend(format!("{method} {target} HTTP/1.{minor}\r\n").into_bytes());
        v.extend(tail);
        v
    }
}

/// Chunk sizes for splitting an input the way reads might.
fn chunks() -> impl Strategy<Value = Vec<usize>> {
    vec(prop_oneof![1usize..4, 1usize..64, 1usize..4096], 0..40)
}

/// Inputs that reach deep into each matcher: random bytes, and valid inputs of each protocol
/// cut short, with one byte changed, or with random bytes appended.
fn interesting() -> impl Strategy<Value = Vec<u8>> {
    let hello = (option::of(vec(any::<u8>(), 1..40)), vec(vec(any::<u8>(), 1..12), 0..4))
        .prop_map(|(sni, alpn)| records(&client_hello(sni.as_deref(), &alpn, &[]), &[50], 1));
    let valid = prop_oneof![request_line(), Just(PREFACE.to_vec()), hello, Just(REAL_HELLO.to_vec())];
    let mutated =
        (valid, any::<prop::sample::Index>(), any::<u8>(), 0usize..3, vec(any::<u8>(), 0..32)).prop_map(|(mut v, at, byte, how, extra)| {
            match how {
                0 => v.truncate(at.index(v.len() + 1)),
                1 => {
                    let i = at.index(v.len());
                    v[i] = byte;
                }
                _ => v.extend(extra),
            }
            v
        });
    prop_oneof![vec(any::<u8>(), 0..512), mutated]
}

#[test]
fn real_openssl_client_hello_yields_sni_and_alpn() {
    let want = Verdict::Decided(Detected::Tls(TlsInfo { sni: Some("x.example".into()), alpn: vec!["h2".into(), "http/1.1".into()] }));
    assert_eq!(classify(REAL_HELLO, Expect::Any), want);
    assert_eq!(classify(REAL_HELLO, Expect::Tls), want);
    assert_eq!(first_decision(REAL_HELLO, Expect::Any), (REAL_HELLO.len(), want.clone()));
    for expect in [Expect::Http1, Expect::Http2] {
        assert_eq!(classify(REAL_HELLO, expect), Verdict::Decided(Detected::NotHttp));
    }
    // Refragmented into three records, as a middlebox might.
    let msg: Vec<u8> = REAL_HELLO[5..].to_vec();
    assert_eq!(classify(&records(&msg, &[3, 100], 3), Expect::Any), want);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_and_decides_in_every_mode(input in interesting()) {
        for expect in MODES {
            let verdict = classify(&input, expect);
            if input.is_empty() {
                prop_assert_eq!(verdict, Verdict::NeedMore);
            }
        }
    }

    #[test]
    fn incremental_matches_one_shot_at_every_step(input in interesting(), sizes in chunks(), mode in 0usize..4) {
        let expect = MODES[mode];
        let mut classifier = Classifier::new(expect);
        let mut end = 0usize;
        for &n in sizes.iter().chain(std::iter::once(&usize::MAX)) {
            end = end.saturating_add(n).min(input.len());
            let step = classifier.update(&input[..end]);
            prop_assert_eq!(&step, &classify(&input[..end], expect), "prefix of {} bytes", end);
            if step != Verdict::NeedMore || end == input.len() {
                break;
            }
        }
    }

    #[test]
    fn split_invariance(input in interesting(), sizes in chunks(), mode in 0usize..4) {
        let expect = MODES[mode];
        let (_, byte_by_byte) = first_decision(&input, expect);
        prop_assert_eq!(feed_in_chunks(&input, &sizes, expect), byte_by_byte);
    }

    #[test]
    fn a_decision_is_final(input in interesting(), suffix in vec(any::<u8>(), 0..64), mode in 0usize..4) {
        let expect = MODES[mode];
        let (at, verdict) = first_decision(&input, expect);
        if let Verdict::Decided(_) = verdict {
            for end in at..=input.len() {
                prop_assert_eq!(&classify(&input[..end], expect), &verdict, "prefix {}", end);
            }
            let mut longer = input[..at].to_vec();
            longer.extend(&suffix);
            prop_assert_eq!(classify(&longer, expect), verdict);
        }
    }

    #[test]
    fn request_lines_are_http1_whatever_the_split(line in request_line(), sizes in chunks()) {
        let h1 = Verdict::Decided(Detected::Http1);
        prop_assert_eq!(feed_in_chunks(&line, &sizes, Expect::Any), h1.clone());
        prop_assert_eq!(feed_in_chunks(&line, &sizes, Expect::Http1), h1);
        let not_http = Verdict::Decided(Detected::NotHttp);
        prop_assert_eq!(feed_in_chunks(&line, &sizes, Expect::Http2), not_http.clone());
        prop_assert_eq!(feed_in_chunks(&line, &sizes, Expect::Tls), not_http);
    }

    #[test]
    fn preface_is_http2_whatever_the_split(tail in vec(any::<u8>(), 0..64), sizes in chunks()) {
        let mut input = PREFACE.to_vec();
        input.extend(tail);
        for expect in [Expect::Any, Expect::Http2] {
            prop_assert_eq!(feed_in_chunks(&input, &sizes, expect), Verdict::Decided(Detected::Http2));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn client_hellos_are_tls_whatever_the_fragmentation_and_split(
        sni in option::of(vec(any::<u8>(), 1..300)),
        alpn in vec(vec(any::<u8>(), 1..40), 0..20),
        other in vec((17u16..0xfe00, vec(any::<u8>(), 0..600)), 0..4),
        key_share in prop_oneof![Just(0usize), 1000usize..13_000],
        fragments in vec(prop_oneof![1usize..8, 1usize..5000], 0..6),
        minor in 0u8..=3,
        sizes in chunks(),
        tail in vec(any::<u8>(), 0..16),
    ) {
        let mut other = other;
        if key_share > 0 {
            other.push((51, vec![0x42; key_share]));
        }
        let msg = client_hello(sni.as_deref(), &alpn, &other);
        let mut input = records(&msg, &fragments, minor);
        // The whole hello must fit the cap; a bigger one is opaque TCP.
        let want = if input.len() <= DETECT_BUFFER_CAP {
            Detected::Tls(TlsInfo {
                sni: sni.as_deref().map(metric_string),
                alpn: alpn.iter().take(16).map(|n| metric_string(n)).collect(),
            })
        } else {
            Detected::NotHttp
        };
        let hello_len = input.len();
        input.extend(tail);
        for expect in [Expect::Any, Expect::Tls] {
            prop_assert_eq!(feed_in_chunks(&input, &sizes, expect), Verdict::Decided(want.clone()));
        }
        // Not decided before the last byte of the hello (unless its length alone rules it out).
        if 5 + msg.len() <= DETECT_BUFFER_CAP && hello_len <= DETECT_BUFFER_CAP {
            prop_assert_eq!(first_decision(&input, Expect::Any).0, hello_len);
        }
    }

    #[test]
    fn the_cap_always_forces_a_decision(
        kind in 0usize..3,
        len in (DETECT_BUFFER_CAP - 8)..(DETECT_BUFFER_CAP + 8),
        fill in prop_oneof![Just(b'a'), any::<u8>()],
    ) {
        // Prefixes that stay valid as long as possible: a request-target, a TLS record
        // claiming the largest fragment, and a bare method token.
        let mut input = match kind {
            0 => b"GET /".to_vec(),
            1 => vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xf7],
            _ => Vec::new(),
        };
        input.resize(len, fill);
        for expect in MODES {
            let verdict = classify(&input, expect);
            if len >= DETECT_BUFFER_CAP {
                prop_assert!(matches!(verdict, Verdict::Decided(_)), "{:?} at {}", expect, len);
            }
        }
    }
}
