//! TLS matcher: handshake records carrying a complete ClientHello, reassembled if fragmented.
//!
//! A TLS client speaks first with a ClientHello handshake message (RFC 8446 §4.1.2) inside
//! handshake records. Each record (RFC 8446 §5.1) is `type(1) legacy_record_version(2)
//! length(2) fragment`: type 22 (0x16) for handshakes, a version of `0x03 0x00..=0x03` (clients
//! send 0x0301 in the first record for compatibility), and a length of 1..=2^14. A handshake
//! message may be fragmented across several consecutive handshake records, with no record of
//! another type in between, and even its 4-byte header (`msg_type(1)=1 length(3)`) may be
//! split, so the message is reassembled before its body goes to [`client_hello::parse`].
//!
//! Each header byte is checked as soon as it arrives, so a wrong content type, version or
//! message type decides at once. A ClientHello is only reported once all of it has arrived
//! within the detection cap; a malformed one, or one whose length says it cannot complete
//! within the cap, is not TLS as far as detection goes, and the connection is proxied as opaque
//! TCP. SSLv2-format hellos (first byte 0x80) are not recognised. The common single-record case
//! is parsed in place; a fragmented message is copied into a stack buffer once complete. The
//! matcher remembers the record it stopped in, so a client trickling a large hello (in one
//! record or many) costs time linear in its length, no copy per read, and nothing is allocated
//! except the returned strings.

use super::{client_hello, Detected, Probe, DETECT_BUFFER_CAP};

const RECORD_HEADER_LEN: usize = 5;
/// RFC 8446 §5.1: a record fragment MUST NOT exceed 2^14 bytes.
const MAX_FRAGMENT_LEN: usize = 1 << 14;
const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const HANDSHAKE_HEADER_LEN: usize = 4;

/// The TLS matcher: the record it is in and the handshake bytes seen before it, so each call
/// walks only the records that arrived since the previous one.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Tls {
    /// Offset of the record header being examined (earlier records are complete and valid).
    record: u32,
    /// Handshake bytes carried by the records before `record`.
    got: u32,
    /// The handshake message header (`msg_type(1) length(3)`), as far as it has arrived.
    header: [u8; HANDSHAKE_HEADER_LEN],
    header_len: u8,
    failed: bool,
}

impl Tls {
    /// Looks at the records of `buf` from the one it stopped in last time.
    pub(super) fn advance(&mut self, buf: &[u8]) -> Probe {
        if self.failed {
            return Probe::NoMatch;
        }
        let probe = self.walk_on(buf);
        if probe == Probe::NoMatch {
            self.failed = true;
        }
        probe
    }

    fn walk_on(&mut self, buf: &[u8]) -> Probe {
        loop {
            let record = self.record as usize;
            let header = &buf[record.min(buf.len())..(record + RECORD_HEADER_LEN).min(buf.len())];
            if !record_header_ok(header) {
                return Probe::NoMatch;
            }
            if header.len() < RECORD_HEADER_LEN {
                return Probe::Partial;
            }
            let fragment_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            let start = record + RECORD_HEADER_LEN;
            let present = buf.len().saturating_sub(start).min(fragment_len);
            let got = self.got as usize;
            // The message header may itself be split across records: take what this one adds.
            while usize::from(self.header_len) < HANDSHAKE_HEADER_LEN && usize::from(self.header_len) - got < present {
                self.header[usize::from(self.header_len)] = buf[start + usize::from(self.header_len) - got];
                self.header_len += 1;
            }
            // The message type alone can already rule TLS out.
            if self.header_len > 0 && self.header[0] != HANDSHAKE_CLIENT_HELLO {
                return Probe::NoMatch;
            }
            if usize::from(self.header_len) == HANDSHAKE_HEADER_LEN {
                let msg_len = HANDSHAKE_HEADER_LEN + u24(&self.header[1..]);
                // Even in a single record the message cannot complete within the cap: decide now.
                if RECORD_HEADER_LEN + msg_len > DETECT_BUFFER_CAP {
                    return Probe::NoMatch;
                }
                if got + present >= msg_len {
                    return parse_message(buf, msg_len, record == 0);
                }
            }
            if present < fragment_len {
                return Probe::Partial;
            }
            // Offsets stay below DETECT_BUFFER_CAP (the classifier caps the buffer it passes).
            self.got += fragment_len as u32;
            self.record = (start + fragment_len) as u32;
        }
    }
}

/// Parses the complete ClientHello of `msg_len` bytes (handshake header included) carried by
/// the records at the start of `buf`; `single` when it is all in the first record.
fn parse_message(buf: &[u8], msg_len: usize, single: bool) -> Probe {
    let parsed = if single {
        // Whole message in the first record: parse in place.
        client_hello::parse(&buf[RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN..RECORD_HEADER_LEN + msg_len])
    } else {
        // Fragmented: copied once, now that all of it has arrived.
        let mut msg = [0u8; DETECT_BUFFER_CAP];
        if gather(buf, &mut msg[..msg_len]) != Gathered::Full {
            return Probe::NoMatch; // unreachable: the walk already saw it all
        }
        client_hello::parse(&msg[HANDSHAKE_HEADER_LEN..msg_len])
    };
    match parsed {
        Some(info) => Probe::Match(Detected::Tls(info)),
        None => Probe::NoMatch,
    }
}

/// Matches a complete, well-formed ClientHello (one-shot).
#[cfg(test)]
pub(super) fn probe(buf: &[u8]) -> Probe {
    Tls::default().advance(buf)
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

#[derive(Debug, PartialEq, Eq)]
enum Gathered {
    /// `out` is filled with the first handshake bytes.
    Full,
    /// Valid so far, but only this many handshake bytes have arrived.
    Short(usize),
    /// A record header (or the part of it present) is not a TLS handshake record header.
    Bad,
}

/// Whether the bytes present of a record header can start a handshake record, so a wrong
/// content type or version is rejected from its first byte.
fn record_header_ok(h: &[u8]) -> bool {
    match *h {
        [t, ..] if t != CONTENT_TYPE_HANDSHAKE => false,
        [_, major, ..] if major != 0x03 => false,
        [_, _, minor, ..] if minor > 0x03 => false,
        // A length above 2^14 is known from its high byte alone.
        [_, _, _, hi] => usize::from(hi) << 8 <= MAX_FRAGMENT_LEN,
        [_, _, _, hi, lo, ..] => (1..=MAX_FRAGMENT_LEN).contains(&usize::from(u16::from_be_bytes([hi, lo]))),
        _ => true,
    }
}

/// Walks consecutive handshake records and hands the first `want` bytes of the handshake
/// stream they carry to `sink`, piece by piece. Records past the ones needed are not looked at.
fn walk(buf: &[u8], want: usize, mut sink: impl FnMut(&[u8])) -> Gathered {
    let mut pos = 0;
    let mut got = 0;
    while got < want {
        let header = &buf[pos.min(buf.len())..(pos + RECORD_HEADER_LEN).min(buf.len())];
        if !record_header_ok(header) {
            return Gathered::Bad;
        }
        if header.len() < RECORD_HEADER_LEN {
            return Gathered::Short(got);
        }
        let fragment_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let start = pos + RECORD_HEADER_LEN;
        let present = buf.len().saturating_sub(start).min(fragment_len);
        let take = present.min(want - got);
        sink(&buf[start..start + take]);
        got += take;
        if got < want && present < fragment_len {
            return Gathered::Short(got);
        }
        pos = start + fragment_len;
    }
    Gathered::Full
}

/// Copies the first `out.len()` handshake bytes into `out`.
fn gather(buf: &[u8], out: &mut [u8]) -> Gathered {
    let mut filled = 0;
    walk(buf, out.len(), |piece| {
        out[filled..filled + piece.len()].copy_from_slice(piece);
        filled += piece.len();
    })
}

#[cfg(test)]
mod tests {
    use super::super::client_hello::build::*;
    use super::super::TlsInfo;
    use super::*;

    fn handshake(body: &[u8]) -> Vec<u8> {
        let mut m = vec![HANDSHAKE_CLIENT_HELLO];
        m.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        m.extend(body);
        m
    }

    /// Wraps `msg` in handshake records: one per size in `cuts`, then one with the rest.
    fn records(msg: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = msg;
        for &n in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let (piece, tail) = rest.split_at(n.min(rest.len()));
            out.extend([CONTENT_TYPE_HANDSHAKE, 0x03, 0x01]);
            out.extend(len16(piece.len()));
            out.extend(piece);
            rest = tail;
        }
        out
    }

    fn tls(sni: Option<&str>, alpn: &[&str]) -> Probe {
        Probe::Match(Detected::Tls(TlsInfo { sni: sni.map(str::to_owned), alpn: alpn.iter().map(|s| s.to_string()).collect() }))
    }

    /// Every strict prefix must wait for more bytes, and the whole input must give `want`.
    fn assert_partial_until_complete(input: &[u8], want: &Probe) {
        for end in 1..input.len() {
            assert_eq!(probe(&input[..end]), Probe::Partial, "prefix of {end} bytes");
        }
        assert_eq!(&probe(input), want);
    }

    fn standard_hello() -> Vec<u8> {
        handshake(&hello_body(&[sni(b"x.example"), alpn(&[b"h2", b"http/1.1"])]))
    }

    #[test]
    fn single_record_hello_yields_sni_and_alpn_at_its_last_byte() {
        let input = records(&standard_hello(), &[]);
        assert_partial_until_complete(&input, &tls(Some("x.example"), &["h2", "http/1.1"]));
        // What follows the ClientHello (a next record, garbage) does not change the verdict.
        let mut more = input.clone();
        more.extend([0x17, 0xff, 0xff, 0x00]);
        assert_eq!(probe(&more), tls(Some("x.example"), &["h2", "http/1.1"]));
    }

    #[test]
    fn twelve_kib_post_quantum_key_share_parses() {
        let body = hello_body(&[sni(b"pq.example"), key_share(12 * 1024), alpn(&[b"h2"])]);
        let input = records(&handshake(&body), &[]);
        assert!(input.len() > 12 * 1024);
        assert_partial_until_complete(&input, &tls(Some("pq.example"), &["h2"]));
    }

    #[test]
    fn hello_fragmented_across_records_is_reassembled() {
        let msg = handshake(&hello_body(&[sni(b"frag.example"), key_share(1200), alpn(&[b"h2"])]));
        let want = tls(Some("frag.example"), &["h2"]);
        // Cuts inside the handshake header, inside the body, and three-way splits.
        for cuts in [&[1][..], &[2], &[3], &[4], &[100], &[1000], &[1, 1], &[2, 500], &[600, 600]] {
            assert_partial_until_complete(&records(&msg, cuts), &want);
        }
        // A 12 KiB hello in three records of at most 2^14 bytes each.
        let big = handshake(&hello_body(&[sni(b"big.example"), key_share(12 * 1024)]));
        assert_eq!(probe(&records(&big, &[4000, 4000])), tls(Some("big.example"), &[]));
    }

    #[test]
    fn other_record_types_between_fragments_are_not_tls() {
        let msg = standard_hello();
        let mut input = records(&msg[..50], &[]);
        input.extend([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]); // an alert record
        input.extend(records(&msg[50..], &[]));
        assert_eq!(probe(&input), Probe::NoMatch);
        assert_eq!(probe(&input[..61]), Probe::NoMatch, "decided at the alert's type byte");
    }

    #[test]
    fn record_layer_violations_are_rejected_early() {
        let good = records(&standard_hello(), &[]);
        for (at, value, what) in [
            (0, 0x17, "application data record"),
            (0, 0x80, "SSLv2-format hello"),
            (1, 0x02, "major version 2"),
            (2, 0x04, "record version 0x0304"),
            (3, 0x41, "fragment longer than 2^14"),
            (5, 0x02, "ServerHello, not ClientHello"),
        ] {
            let mut bad = good.clone();
            bad[at] = value;
            assert_eq!(probe(&bad[..=at]), Probe::NoMatch, "{what}, decided at byte {at}");
            assert_eq!(probe(&bad), Probe::NoMatch, "{what}");
        }
        assert_eq!(probe(&[0x16, 0x03, 0x01, 0x00, 0x00]), Probe::NoMatch, "empty fragment");
        assert_eq!(probe(&[0x16, 0x03, 0x01, 0x40, 0x01]), Probe::NoMatch, "2^14 + 1");
        for minor in 0..=3 {
            let mut v = good.clone();
            v[2] = minor;
            assert_eq!(probe(&v), tls(Some("x.example"), &["h2", "http/1.1"]), "0x03{minor:02x}");
        }
    }

    #[test]
    fn hello_that_cannot_fit_the_cap_is_decided_from_its_header() {
        // 5 + 4 + body > cap: known as soon as the length is read.
        let body_len = DETECT_BUFFER_CAP - RECORD_HEADER_LEN - HANDSHAKE_HEADER_LEN + 1;
        let mut head = vec![0x16, 0x03, 0x01, 0x40, 0x00, HANDSHAKE_CLIENT_HELLO];
        head.extend(&u32::try_from(body_len).unwrap().to_be_bytes()[1..]);
        assert_eq!(probe(&head), Probe::NoMatch);
        head[8] -= 1; // exactly fits
        assert_eq!(probe(&head), Probe::Partial);
    }

    #[test]
    fn any_single_byte_corruption_never_panics() {
        let input = records(&standard_hello(), &[7]);
        for at in 0..input.len() {
            for value in 0..=255u8 {
                let mut bad = input.clone();
                bad[at] = value;
                let _ = probe(&bad);
                let _ = probe(&bad[..at]);
            }
        }
    }
}
