//! Hand-made seeds per target: the well-formed inputs each parser exists
//! for (so mutations start deep inside it) and a few near misses. Targets
//! whose first input byte is a selector get every seed under every
//! selector value that matters (`with_selectors`).
//!
//! The TLS ClientHello is a real one (OpenSSL's, `fixtures/client_hello.hex`),
//! also re-cut across records and grown past 12 KiB the way post-quantum key
//! shares grow it; the certificates are real DER (`fixtures/certificates.pem`).

use meshpipe_core::detect::DETECT_BUFFER_CAP;
use meshpipe_core::transport_header::{SessionProtocol, TransportHeader, PREFACE};
use std::num::NonZeroU16;

/// Every seed under each selector byte `0..selectors`.
pub fn with_selectors(payloads: &[Vec<u8>], selectors: u8) -> Vec<Vec<u8>> {
    (0..selectors).flat_map(|s| payloads.iter().map(move |p| [&[s][..], p].concat())).collect()
}

/// OpenSSL's ClientHello record (SNI web.emojivoto.svc.cluster.local,
/// ALPN h2 and http/1.1).
pub fn client_hello() -> Vec<u8> {
    let hex: String =
        include_str!("../fixtures/client_hello.hex").lines().filter(|l| !l.starts_with('#')).flat_map(|l| l.trim().chars()).collect();
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect()
}

/// The handshake message of a single-record hello, re-cut into records at
/// `cuts` (offsets into the message), as a client may fragment it.
pub fn fragmented(record: &[u8], cuts: &[usize]) -> Vec<u8> {
    let msg = &record[5..];
    let mut bounds = vec![0];
    bounds.extend(cuts.iter().copied().filter(|&c| c > 0 && c < msg.len()));
    bounds.push(msg.len());
    let mut out = Vec::new();
    for w in bounds.windows(2) {
        let part = &msg[w[0]..w[1]];
        out.extend_from_slice(&record[..3]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The hello with a padding extension (RFC 7685, type 21) of `pad` bytes
/// appended, every length field fixed up: a 12 KiB key share has the same
/// shape on the wire.
pub fn padded(record: &[u8], pad: usize) -> Vec<u8> {
    let mut msg = record[5..].to_vec();
    // Handshake header (4), version (2), random (32), then the session id,
    // cipher suites and compression methods vectors, then the extensions.
    let mut at = 4 + 2 + 32;
    at += 1 + usize::from(msg[at]);
    at += 2 + usize::from(u16::from_be_bytes([msg[at], msg[at + 1]]));
    at += 1 + usize::from(msg[at]);
    let exts_len = usize::from(u16::from_be_bytes([msg[at], msg[at + 1]])) + 4 + pad;
    msg[at..at + 2].copy_from_slice(&(exts_len as u16).to_be_bytes());
    msg.extend_from_slice(&21u16.to_be_bytes());
    msg.extend_from_slice(&(pad as u16).to_be_bytes());
    msg.resize(msg.len() + pad, 0);
    let body_len = (msg.len() - 4) as u32;
    msg[1..4].copy_from_slice(&body_len.to_be_bytes()[1..]);
    let mut out = record[..3].to_vec();
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}

/// A hello that does not fit the detection cap, and the same cut to exactly
/// `DETECT_BUFFER_CAP` bytes: the one length at which a still-partial
/// greeting must be decided. Its message (15.6 KiB) would fit in one record
/// under the cap, so the matcher cannot rule it out from its length; cut
/// into records of 100 bytes, their headers take it to 16.7 KiB.
pub fn oversized_hello() -> (Vec<u8>, Vec<u8>) {
    let one_record = padded(&client_hello(), 15_600);
    let cuts: Vec<usize> = (100..one_record.len()).step_by(100).collect();
    let whole = fragmented(&one_record, &cuts);
    assert!(whole.len() > DETECT_BUFFER_CAP && one_record.len() <= DETECT_BUFFER_CAP);
    let at_cap = whole[..DETECT_BUFFER_CAP].to_vec();
    (whole, at_cap)
}

/// classify: payloads; the target prefixes a mode byte (0-3).
pub fn classify() -> Vec<Vec<u8>> {
    let hello = client_hello();
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // an empty SETTINGS frame
    let (oversized, at_cap) = oversized_hello();
    let mut over_cap = b"GET /".to_vec();
    over_cap.resize(16 * 1024 + 100, b'a');
    vec![
        b"GET / HTTP/1.1\r\nHost: web\r\n\r\n".to_vec(),
        b"POST /api/v1/items?x=1&y=%20 HTTP/1.0\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"OPTIONS * HTTP/1.1\r\n".to_vec(),
        b"CONNECT web.example:443 HTTP/1.1\r\n\r\n".to_vec(),
        b"GET http://web.example/path HTTP/1.1\r\n".to_vec(),
        b"DELETE /a HTTP/2.0\r\n".to_vec(),
        preface,
        hello.clone(),
        fragmented(&hello, &[1, 4, 100]),
        padded(&hello, 12 * 1024),
        fragmented(&padded(&hello, 12 * 1024), &[6000]),
        oversized,
        at_cap,
        b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
        b"*1\r\n$4\r\nPING\r\n".to_vec(),
        vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], // PostgreSQL SSLRequest
        over_cap,
    ]
}

pub const CLASSIFY_DICT: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0",
    b"HTTP/2.0",
    b"\r\n",
    b"\r\n\r\n",
    b"PRI * ",
    b"\x16\x03\x01",
    b"\x16\x03\x03",
    b"\x00\x00",
    b"\x00\x10",
    b"h2",
];

/// http_headers: `name: value` lines; the target's selector byte picks
/// upgrade (bit 0) and HTTP/1.0 (bit 1).
pub fn http_headers() -> Vec<Vec<u8>> {
    [
        &b"host: web.example:8080\nconnection: keep-alive, x-trace\nkeep-alive: timeout=5, max=100\nx-trace: 1\nte: trailers\ntransfer-encoding: chunked\naccept: */*\n"[..],
        b"connection: upgrade\nupgrade: websocket\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\nhost: [::1]:8080\n",
        b"proxy-connection: keep-alive\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\nte: gzip, trailers\nhost: a\nhost: b\n",
        b"keep-alive: timeout=999999999\nhost: web\n",
        b"keep-alive: max=5, timeout = 30\n",
        b"Connection: close, TE, Upgrade\nTE: trailers\nUpgrade: h2c\nX-A: 1\nx-a: 2\n",
        b"host: web.emojivoto.svc.cluster.local\n",
        b"host: 10.0.0.1:80\nconnection: Keep-Alive\nkeep-alive: timeout=0\n",
        b"host: \n",
        b"host: bad host\n",
        b"",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

pub const HTTP_HEADERS_DICT: &[&[u8]] = &[
    b"connection: ",
    b"keep-alive",
    b"timeout=",
    b"upgrade",
    b"te: ",
    b"trailers",
    b"transfer-encoding",
    b"proxy-connection",
    b"http2-settings",
    b"host: ",
    b", ",
    b"\n",
    b"999999",
];

/// identity: names (selector 0) and DER certificates (selector 1).
pub fn identity() -> Vec<Vec<u8>> {
    let names = [
        "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
        "spiffe://cluster.local/ns/emojivoto/sa/web",
        "spiffe://example.org/ns/a/sa/b",
        "example.com",
        "db-0.db.prod.svc.cluster.local",
        "a.b.c.10",
        "x.0x1f",
        "spiffe://td/ns/ns/sa/",
        "spiffe://cluster.local/ns/a/sa/b/extra",
        "WEB.example",
        "*.example.com",
        "a..b",
        "trailing.dot.",
        "https://example.com",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example",
    ];
    let mut seeds: Vec<Vec<u8>> = names.iter().map(|n| [&[0u8][..], n.as_bytes()].concat()).collect();
    seeds.extend(certificates().into_iter().map(|der| [vec![1u8], der].concat()));
    seeds
}

/// The DER of the certificates in `fixtures/certificates.pem`.
pub fn certificates() -> Vec<Vec<u8>> {
    let pems = pem::parse_many(include_str!("../fixtures/certificates.pem")).expect("fixtures/certificates.pem parses");
    pems.into_iter().map(|p| p.into_contents()).collect()
}

pub const IDENTITY_DICT: &[&[u8]] = &[
    b"spiffe://",
    b"/ns/",
    b"/sa/",
    b".serviceaccount.identity.",
    b"linkerd",
    b".cluster.local",
    b".",
    b"-",
    b"0x",
    b"\x30\x82",
    b"\x55\x1d\x11",
];

/// transport_header: the target tries each input as is and after the
/// preface, so seeds come both ways.
pub fn transport_header() -> Vec<Vec<u8>> {
    let port = |p| NonZeroU16::new(p).expect("a port");
    let named =
        TransportHeader { port: port(4143), name: Some("web.emojivoto.svc.cluster.local".into()), protocol: Some(SessionProtocol::Http2) };
    let http1 = TransportHeader { port: port(1), name: None, protocol: Some(SessionProtocol::Http1) };
    let with_message = |msg: &[u8]| [PREFACE, &(msg.len() as u32).to_be_bytes(), msg].concat();
    // The first seven decode (checked by seeds_reach_the_parsers), the rest are refused.
    vec![
        // Port 8080 (field 1, varint 0x90 0x3f), opaque.
        [PREFACE, &[0, 0, 0, 3, 0x08, 0x90, 0x3f]].concat(),
        vec![0, 0, 0, 3, 0x08, 0x90, 0x3f],
        named.encode(),
        http1.encode(),
        TransportHeader::opaque(port(65535)).encode(),
        // Unknown varint and fixed64 fields, then the port: skipped.
        with_message(&[0x20, 0x01, 0x29, 1, 2, 3, 4, 5, 6, 7, 8, 0x08, 0x50]),
        // The port twice: the last wins.
        with_message(&[0x08, 0x01, 0x08, 0x02]),
        // A group (wire type 3), an overlong varint, no port at all.
        with_message(&[0x0b, 0x08, 0x50, 0x0c]),
        with_message(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        with_message(&[]),
        // Invalid UTF-8 in the name; a length past the bound.
        with_message(&[0x08, 0x50, 0x12, 0x02, 0xc3, 0x28]),
        [PREFACE, &[0xff, 0xff, 0xff, 0xff]].concat(),
        b"transport.l5d".to_vec(),
    ]
}

pub const TRANSPORT_HEADER_DICT: &[&[u8]] =
    &[b"transport.l5d.io/v1\r\n\r\n", b"\x08", b"\x12", b"\x1a\x02\x0a\x00", b"\x1a\x02\x12\x00", b"\x80\x80"];

/// addr: CIDRs, targets and bind addresses, good and bad.
pub fn addr() -> Vec<Vec<u8>> {
    [
        "10.0.0.0/8",
        "192.168.1.1/32",
        "10.1.2.3/8",
        "0.0.0.0/0",
        "10.1.2.3/33",
        "::/0",
        "fd00::/8",
        "2001:db8::1/128",
        "::ffff:10.0.0.0/104",
        "::ffff:10.0.0.0/95",
        "::ffff:10.0.0.1",
        "10.0.0.1",
        "127.0.0.1:8080",
        "0.0.0.0:4140",
        "[::1]:4143",
        "[fe80::1%eth0]:80",
        "[::ffff:1.2.3.4]:80",
        "1.2.3.4:0",
        ":8080",
        "db.internal:5432",
        "010.0.0.1/8",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

pub const ADDR_DICT: &[&[u8]] = &[b"::", b"::ffff:", b"/", b"/128", b"/32", b"/0", b":65535", b":0", b"[", b"]", b"%", b"255.", b"."];

/// h2_settings: an HTTP/2 server's first frame (after the piece-size byte
/// the check reads first): SETTINGS with and without
/// ENABLE_CONNECT_PROTOCOL, repeated, out of range, and frames that are no
/// server preface.
pub fn h2_settings() -> Vec<Vec<u8>> {
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = payload.len() as u32;
        let mut f = vec![3u8, (len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let setting = |id: u16, value: u32| [id.to_be_bytes().as_slice(), &value.to_be_bytes()].concat();
    vec![
        frame(4, 0, 0, &[setting(3, 100), setting(8, 1)].concat()),
        frame(4, 0, 0, &[setting(8, 1), setting(8, 0)].concat()),
        frame(4, 0, 0, &[setting(1, 4096), setting(4, 65535), setting(5, 16384), setting(6, 16384)].concat()),
        frame(4, 0, 0, &[]),
        frame(4, 0, 0, &setting(8, 2)),
        frame(4, 1, 0, &[]),
        frame(4, 0, 1, &setting(8, 1)),
        frame(0, 0, 1, b"hello"),
        [frame(4, 0, 0, &setting(8, 1)), frame(4, 1, 0, &[])[1..].to_vec()].concat(),
        b"\x01HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
    ]
}

pub const H2_SETTINGS_DICT: &[&[u8]] =
    &[b"\x04\x00\x00\x00\x00\x00", b"\x00\x08\x00\x00\x00\x01", b"\x00\x08\x00\x00\x00\x00", b"\x00\x00\x06", b"\x00\x00\x0c"];
