//! ClientHello body parser: the fields before the extensions, then SNI and ALPN.
//!
//! A ClientHello body (RFC 8446 §4.1.2) is `legacy_version(2) random(32)
//! legacy_session_id<0..32> cipher_suites<2..2^16-2> legacy_compression_methods<1..2^8-1>`
//! followed by an `extensions<0..2^16-1>` block that must fill the body exactly (it may be
//! absent altogether in SSL 3.0 / TLS 1.0 era hellos). Each `<a..b>` is a vector with a length
//! prefix of the width its upper bound needs, and every one of them is checked against the bytes
//! that contain it, so no length field can cause a panic or a read past the end: a length that
//! does not fit its container means the hello is malformed. From the extensions we keep the
//! `host_name` of server_name (type 0; RFC 6066 §3 allows at most one name per type) and the
//! protocol names of application_layer_protocol_negotiation (type 16, RFC 7301 §3.1), converted
//! lossily and capped for metrics. Repeated extensions are forbidden (RFC 8446 §4.2) and a
//! repeated server_name or ALPN would make the answer ambiguous, so it is malformed too.

use super::{lossy_capped, TlsInfo, ALPN_CAP};

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const NAME_TYPE_HOST_NAME: u8 = 0;
/// A bounds-checked cursor: every read returns `None` instead of running past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// An opaque vector with a one-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// An opaque vector with a two-byte length prefix.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Parses a ClientHello body (after the handshake header); `None` means malformed.
pub(super) fn parse(body: &[u8]) -> Option<TlsInfo> {
    let mut r = Reader(body);
    let version = r.u16()?;
    if version >> 8 != 0x03 || version & 0xff > 0x03 {
        return None;
    }
    r.take(32)?; // random
    if r.vec8()?.len() > 32 {
        return None; // legacy_session_id<0..32>
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return None;
    }
    if r.vec8()?.is_empty() {
        return None; // legacy_compression_methods<1..2^8-1>
    }
    let mut info = TlsInfo::default();
    if r.is_empty() {
        return Some(info); // a pre-TLS-1.2 hello may end without extensions
    }
    let mut exts = Reader(r.vec16()?);
    if !r.is_empty() {
        return None;
    }
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !exts.is_empty() {
        let ext_type = exts.u16()?;
        let data = exts.vec16()?;
        // A repeated extension is ambiguous (RFC 8446 §4.2 forbids it): treat as malformed.
        match ext_type {
            EXT_SERVER_NAME if seen_sni => return None,
            EXT_SERVER_NAME => (seen_sni, info.sni) = (true, parse_server_name(data)?),
            EXT_ALPN if seen_alpn => return None,
            EXT_ALPN => (seen_alpn, info.alpn) = (true, parse_alpn(data)?),
            _ => {}
        }
    }
    Some(info)
}

/// RFC 6066 §3: `ServerName server_name_list<1..2^16-1>`, each `name_type(1) HostName<1..2^16-1>`
/// for host_name; at most one name per type. Returns the host_name, if any.
fn parse_server_name(data: &[u8]) -> Option<Option<String>> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16()?);
    if !outer.is_empty() || list.is_empty() {
        return None;
    }
    let mut host = None;
    while !list.is_empty() {
        let name_type = list.u8()?;
        let name = list.vec16()?;
        if name_type == NAME_TYPE_HOST_NAME {
            if host.is_some() || name.is_empty() {
                return None;
            }
            host = Some(lossy_capped(name));
        }
    }
    Some(host)
}

/// RFC 7301 §3.1: `ProtocolName protocol_name_list<2..2^16-1>`, each `opaque<1..2^8-1>`.
/// Keeps the first [`ALPN_CAP`] names but validates them all.
fn parse_alpn(data: &[u8]) -> Option<Vec<String>> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16()?);
    if !outer.is_empty() || list.is_empty() {
        return None;
    }
    let mut names = Vec::new();
    while !list.is_empty() {
        let name = list.vec8()?;
        if name.is_empty() {
            return None;
        }
        if names.len() < ALPN_CAP {
            names.push(lossy_capped(name));
        }
    }
    Some(names)
}

/// Byte-by-byte builders for ClientHellos, shared by the TLS tests.
#[cfg(test)]
pub(super) mod build {
    pub fn len16(n: usize) -> [u8; 2] {
        u16::try_from(n).unwrap().to_be_bytes()
    }

    /// A TLS 1.3-style ClientHello body carrying `exts` as (type, data) pairs. Layout (offsets
    /// used by the corruption tests): version 0, random 2, session id length 34, cipher suites
    /// length 67, compression length 73, extensions length 75, first extension 77.
    pub fn hello_body(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0x03, 0x03];
        b.extend([0xab; 32]); // random
        b.push(32);
        b.extend([0x5a; 32]); // legacy_session_id
        b.extend([0x00, 0x04, 0x13, 0x01, 0x13, 0x02]); // two cipher suites
        b.extend([0x01, 0x00]); // null compression
        let mut e = Vec::new();
        for (ty, data) in exts {
            e.extend(ty.to_be_bytes());
            e.extend(len16(data.len()));
            e.extend(data);
        }
        b.extend(len16(e.len()));
        b.extend(e);
        b
    }

    pub fn sni(host: &[u8]) -> (u16, Vec<u8>) {
        let mut list = vec![super::NAME_TYPE_HOST_NAME];
        list.extend(len16(host.len()));
        list.extend(host);
        let mut data = len16(list.len()).to_vec();
        data.extend(list);
        (super::EXT_SERVER_NAME, data)
    }

    pub fn alpn(names: &[&[u8]]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for name in names {
            list.push(u8::try_from(name.len()).unwrap());
            list.extend(*name);
        }
        let mut data = len16(list.len()).to_vec();
        data.extend(list);
        (super::EXT_ALPN, data)
    }

    /// A key_share extension with one X25519MLKEM768-group share of `key_len` bytes.
    pub fn key_share(key_len: usize) -> (u16, Vec<u8>) {
        let mut entry = vec![0x11, 0xec];
        entry.extend(len16(key_len));
        entry.extend(vec![0x42; key_len]);
        let mut data = len16(entry.len()).to_vec();
        data.extend(entry);
        (51, data)
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn info(sni: Option<&str>, alpn: &[&str]) -> Option<TlsInfo> {
        Some(TlsInfo { sni: sni.map(str::to_owned), alpn: alpn.iter().map(|s| s.to_string()).collect() })
    }

    fn parse_exts(exts: &[(u16, Vec<u8>)]) -> Option<TlsInfo> {
        parse(&hello_body(exts))
    }

    #[test]
    fn sni_alpn_and_unknown_extensions() {
        let exts = [sni(b"x.example"), key_share(1184), alpn(&[b"h2", b"http/1.1"])];
        assert_eq!(parse_exts(&exts), info(Some("x.example"), &["h2", "http/1.1"]));
        assert_eq!(parse_exts(&[]), info(None, &[]));
        // A hello without an extensions block at all (SSL 3.0 / TLS 1.0 clients).
        let mut bare = hello_body(&[]);
        bare.truncate(bare.len() - 2);
        assert_eq!(parse(&bare), info(None, &[]));
    }

    #[test]
    fn every_truncation_of_a_body_is_malformed() {
        let body = hello_body(&[sni(b"x.example"), alpn(&[b"h2"])]);
        // Cutting exactly before the extensions block leaves a valid extension-less hello.
        let bare_len = 77 - 2;
        for end in (0..body.len()).filter(|&end| end != bare_len) {
            assert_eq!(parse(&body[..end]), None, "cut at {end}");
        }
        assert_eq!(parse(&body[..bare_len]), info(None, &[]));
    }

    #[test]
    fn corrupted_length_fields_are_malformed() {
        let body = hello_body(&[sni(b"x.example"), alpn(&[b"h2"])]);
        assert!(parse(&body).is_some());
        for (at, delta, what) in [
            (34, 1i8, "session id length 33"),
            (34, -1, "session id length 31"),
            (68, 1, "odd cipher suites length"),
            (68, -4, "empty cipher suites"),
            (73, -1, "no compression methods"),
            (76, 1, "extensions length past the end"),
            (76, -1, "extensions length short of the end"),
            (80, 1, "server_name data length +1"),
            (80, -1, "server_name data length -1"),
            (82, 1, "server_name list length +1"),
            (82, -1, "server_name list length -1"),
            (85, 1, "host name length +1"),
            (85, -1, "host name length -1"),
            (85, -9, "empty host name"),
            (100, 1, "ALPN list length +1"),
            (100, -1, "ALPN list length -1"),
            (101, 1, "protocol name length +1"),
            (101, -1, "protocol name length -1"),
            (101, -2, "empty protocol name"),
        ] {
            let mut bad = body.clone();
            bad[at] = bad[at].wrapping_add_signed(delta);
            assert_eq!(parse(&bad), None, "{what}");
        }
        let mut bad = body.clone();
        bad[1] = 0x04; // legacy_version 0x0304: TLS 1.3 keeps 0x0303 here
        assert_eq!(parse(&bad), None);
        bad[0] = 0x02;
        bad[1] = 0x00;
        assert_eq!(parse(&bad), None);
    }

    #[test]
    fn repeated_or_empty_names_are_malformed() {
        assert_eq!(parse_exts(&[sni(b"a"), sni(b"b")]), None, "duplicate server_name");
        assert_eq!(parse_exts(&[alpn(&[b"h2"]), alpn(&[b"h2"])]), None, "duplicate ALPN");
        assert_eq!(parse_exts(&[alpn(&[b"h2", b""])]), None, "empty protocol name");
        assert_eq!(parse_exts(&[(EXT_ALPN, vec![0, 0])]), None, "empty ALPN list");
        assert_eq!(parse_exts(&[(EXT_SERVER_NAME, vec![0, 0])]), None, "empty name list");
        let two_hosts = vec![0, 8, 0, 0, 1, b'a', 0, 0, 1, b'b'];
        assert_eq!(parse_exts(&[(EXT_SERVER_NAME, two_hosts)]), None, "two host_names");
        // A name of another type is skipped, leaving no host name.
        let other = vec![0, 4, 7, 0, 1, b'z'];
        assert_eq!(parse_exts(&[(EXT_SERVER_NAME, other)]), info(None, &[]));
    }

    #[test]
    fn names_are_converted_lossily_and_capped() {
        let names: Vec<Vec<u8>> = (0..20).map(|i| format!("p{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
        let many = parse_exts(&[alpn(&refs)]).unwrap();
        assert_eq!(many.alpn.len(), ALPN_CAP);
        assert_eq!(many.alpn[15], "p15");
        let long = vec![b'h'; 300];
        let weird: &[u8] = b"h\xff2";
        let got = parse_exts(&[sni(&long), alpn(&[weird])]).unwrap();
        assert_eq!(got.sni.as_deref(), Some("h".repeat(255).as_str()));
        assert_eq!(got.alpn, ["h\u{fffd}2"]);
    }
}
