//! Tests of the transport header: Linkerd's interop fixture, every refusal
//! reason, and properties (round trip; any split of the bytes decodes the
//! same; arbitrary bytes never panic and never decode past the bound).

use super::*;
use proptest::prelude::*;

fn port(p: u16) -> NonZeroU16 {
    NonZeroU16::new(p).unwrap()
}

/// Builds a header around a raw protobuf message.
fn framed(msg: &[u8]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

#[test]
fn linkerd_interop_fixture_port_8080_opaque() {
    // linkerd-facts.md: port 8080 opaque is the preface then 00 00 00 03 08 90 3F.
    let mut expected = b"transport.l5d.io/v1\r\n\r\n".to_vec();
    expected.extend_from_slice(&[0x00, 0x00, 0x00, 0x03, 0x08, 0x90, 0x3F]);
    assert_eq!(TransportHeader::opaque(port(8080)).encode(), expected);
    let (h, used) = decode(&expected).unwrap().unwrap();
    assert_eq!((h, used), (TransportHeader::opaque(port(8080)), expected.len()));
}

#[test]
fn session_protocols_and_name_encode_like_prost() {
    let h = TransportHeader { port: port(80), name: None, protocol: Some(SessionProtocol::Http1) };
    // port 80 = 08 50; field 3, len 2, { field 1, len 0 }.
    assert_eq!(&h.encode()[23..], &[0, 0, 0, 6, 0x08, 0x50, 0x1a, 0x02, 0x0a, 0x00]);
    let h = TransportHeader { port: port(1), name: Some("web.ns.svc.cluster.local".into()), protocol: Some(SessionProtocol::Http2) };
    let bytes = h.encode();
    assert_eq!(&bytes[27..31], &[0x08, 0x01, 0x12, 24]);
    assert_eq!(&bytes[bytes.len() - 4..], &[0x1a, 0x02, 0x12, 0x00]);
    assert_eq!(decode(&bytes).unwrap().unwrap().0, h);
}

#[test]
fn protobuf_rules_fields_in_any_order_last_wins_unknown_skipped() {
    // protocol first, then unknown fields of every wire type, port twice (the last wins).
    let msg = [
        0x1a, 0x02, 0x12, 0x00, // http2
        0x20, 0x96, 0x01, // field 4 varint
        0x29, 1, 2, 3, 4, 5, 6, 7, 8, // field 5 fixed64
        0x35, 1, 2, 3, 4, // field 6 fixed32
        0x3a, 0x01, 0xff, // field 7 bytes
        0x08, 0x01, 0x08, 0x90, 0x3f, // port 1 then 8080
    ];
    let (h, _) = decode(&framed(&msg)).unwrap().unwrap();
    assert_eq!(h, TransportHeader { port: port(8080), name: None, protocol: Some(SessionProtocol::Http2) });
    // An empty SessionProtocol is opaque.
    let (h, _) = decode(&framed(&[0x08, 0x50, 0x1a, 0x00])).unwrap().unwrap();
    assert_eq!(h.protocol, None);
}

#[test]
fn refusals_by_reason() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GET / HTTP/1.1\r\n".to_vec(), "preface"),
        (b"transport.l5d.io/v2\r\n\r\n\0\0\0\x01\x08".to_vec(), "preface"),
        (framed(&[]), "port"),                                                                      // no port
        (framed(&[0x08, 0x00]), "port"),                                                            // port 0
        (framed(&[0x08, 0x80, 0x80, 0x04]), "port"),                                                // 65536
        (framed(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), "port"),      // -1
        (framed(&[0x08]), "malformed"),                                                             // truncated varint
        (framed(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]), "malformed"), // > 64 bits
        (framed(&[0x0a, 0x01, 0x50]), "malformed"),                                                 // port as bytes
        (framed(&[0x08, 0x50, 0x12, 0x05, b'a']), "malformed"),                                     // name past the end
        (framed(&[0x08, 0x50, 0x12, 0x02, 0xc3, 0x28]), "malformed"),                               // name not UTF-8
        (framed(&[0x08, 0x50, 0x12, 0x03, b'a', b' ', b'b']), "malformed"),                         // name not DNS
        (framed(&[0x08, 0x50, 0x1b]), "malformed"),                                                 // group
        (framed(&[0x00, 0x00]), "malformed"),                                                       // field 0
        (framed(&[0x08, 0x50, 0x1a, 0x02, 0x08, 0x01]), "malformed"),                               // http1 as varint
    ];
    for (bytes, reason) in cases {
        let err = decode(&bytes).expect_err(&format!("{bytes:02x?}"));
        assert_eq!(err.reason(), reason, "{bytes:02x?}: {err}");
    }
}

#[test]
fn oversized_is_refused_from_the_length_alone() {
    let mut bytes = PREFACE.to_vec();
    bytes.extend_from_slice(&((MAX_HEADER_LEN - 27 + 1) as u32).to_be_bytes());
    let err = decode(&bytes).unwrap_err();
    assert_eq!(err.reason(), "oversized", "{err}");
    assert!(err.to_string().contains("65536"), "{err}");
    // Exactly at the bound is still accepted (then refused for its content, not its size).
    let mut at = PREFACE.to_vec();
    at.extend_from_slice(&((MAX_HEADER_LEN - 27) as u32).to_be_bytes());
    assert!(decode(&at).unwrap().is_none());
    assert_eq!(needed(&at), MAX_HEADER_LEN - 27);
}

#[tokio::test]
async fn read_header_stops_at_its_end_and_reports_truncation_and_timeout() {
    let mut bytes = TransportHeader::opaque(port(8080)).encode();
    bytes.extend_from_slice(b"payload");
    let mut io = &bytes[..];
    let h = read_header(&mut io, Duration::from_secs(5)).await.unwrap();
    assert_eq!(h.port.get(), 8080);
    assert_eq!(io, b"payload", "the bytes after the header stay in the stream");

    let short = &bytes[..29];
    let err = read_header(&mut &short[..], Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(err.reason(), "truncated", "{err}");
    assert!(matches!(err, HeaderError::Truncated { have: 29 }), "{err}");

    let (mut quiet, _keep_open) = tokio::io::duplex(64);
    tokio::time::pause();
    let err = read_header(&mut quiet, Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(err.reason(), "timeout", "{err}");
}

fn header_strategy() -> impl Strategy<Value = TransportHeader> {
    (
        1u16..=65535,
        proptest::option::of("[a-z]([a-z0-9-]{0,18}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,18}[a-z0-9])?){0,4}"),
        proptest::option::of(prop_oneof![Just(SessionProtocol::Http1), Just(SessionProtocol::Http2)]),
    )
        .prop_map(|(p, name, protocol)| TransportHeader { port: port(p), name, protocol })
}

proptest! {
    #[test]
    fn encode_decode_round_trip(h in header_strategy(), tail in proptest::collection::vec(any::<u8>(), 0..32)) {
        let mut bytes = h.encode();
        let len = bytes.len();
        bytes.extend_from_slice(&tail);
        let (back, used) = decode(&bytes).unwrap().unwrap();
        prop_assert_eq!(back, h);
        prop_assert_eq!(used, len);
    }

    #[test]
    fn every_prefix_is_incomplete_and_needed_is_honest(h in header_strategy()) {
        let bytes = h.encode();
        for cut in 0..bytes.len() {
            prop_assert!(decode(&bytes[..cut]).unwrap().is_none(), "prefix of {} bytes", cut);
            prop_assert!(needed(&bytes[..cut]) >= 1 && cut + needed(&bytes[..cut]) <= bytes.len());
        }
    }

    #[test]
    fn any_split_of_the_stream_reads_the_same(h in header_strategy(), cuts in proptest::collection::vec(1usize..40, 0..8)) {
        let mut bytes = h.encode();
        bytes.extend_from_slice(b"after");
        // Deliver the bytes in arbitrary pieces through a pipe.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = rt.block_on(async {
            let (mut tx, mut rx) = tokio::io::duplex(8);
            let data = bytes.clone();
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut rest = &data[..];
                for c in cuts.iter().chain(std::iter::repeat(&7)) {
                    if rest.is_empty() { break; }
                    let n = (*c).min(rest.len());
                    tx.write_all(&rest[..n]).await.unwrap();
                    rest = &rest[n..];
                }
            });
            let h = read_header(&mut rx, Duration::from_secs(5)).await;
            let mut after = Vec::new();
            rx.read_to_end(&mut after).await.unwrap();
            writer.await.unwrap();
            (h.map_err(|e| e.to_string()), after)
        });
        prop_assert_eq!(got.0, Ok(h));
        prop_assert_eq!(got.1, b"after".to_vec());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), preface in any::<bool>()) {
        let input = if preface { let mut v = PREFACE.to_vec(); v.extend_from_slice(&bytes); v } else { bytes };
        if let Ok(Some((h, used))) = decode(&input) {
            prop_assert!(used <= input.len() && used <= MAX_HEADER_LEN);
            prop_assert!(h.port.get() >= 1);
        }
    }
}
