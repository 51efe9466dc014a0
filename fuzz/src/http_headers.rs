//! Fuzzes the HTTP layer's header rules (`meshpipe_core::http::headers`) and
//! framing rules (`meshpipe_core::http::framing`) on arbitrary header
//! fields: the `Keep-Alive: timeout=N` hint an upstream sends, the
//! hop-by-hop stripping every request and response goes through (RFC 9110
//! §7.6.1), the `Host` fix-up of an HTTP/1 request (RFC 9112 §3.2), the
//! `authority` label, and the one `Content-Length` a message goes on with.
//!
//! The input is `name: value` lines; the first byte picks whether the
//! message is an upgrade being carried through, and the request's version.
//! Beyond "no panic", the target checks what the proxy relies on:
//! - a hint is at most six digits of seconds;
//! - after stripping, no hop-by-hop field is left (`TE` only as exactly
//!   `trailers`, `Connection: upgrade` and `Upgrade` only for an upgrade),
//!   no field the `Connection` header named survives, every other field
//!   keeps its values in order, and stripping again changes nothing;
//! - an HTTP/1.1 request leaves `fix_host` with exactly one `Host` (never
//!   with userinfo) or is refused, and an authority label is short and made
//!   of host characters;
//! - `Content-Length` is left as it came, or becomes one field whose value
//!   every element it came with had, and doing it again changes nothing;
//! - an upgrade goes upstream offering no `h2c`, a 101 naming any one
//!   protocol it offered is accepted, and with nothing offered no 101 is.
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{Request, Version};
use meshpipe_core::http::framing::{single_content_length, transfer_coding_is_chunked};
use meshpipe_core::http::headers::{authority_raw, fix_host, keep_alive_timeout, offered_upgrades, strip_hop_by_hop, switch_was_offered};

/// Hop-by-hop by definition (RFC 9110 §7.6.1, plus HTTP2-Settings, RFC 7540 §3.2.1).
const HOP_BY_HOP: [&str; 4] = ["keep-alive", "proxy-connection", "transfer-encoding", "http2-settings"];

/// The fields of `input`: one per `name: value` line that makes a valid field.
fn fields(input: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in input.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    map
}

/// The names a `Connection` header lists (the ones that are valid names).
fn named_by_connection(map: &HeaderMap) -> Vec<HeaderName> {
    map.get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Checks one input; panics (an assertion) when an invariant above is broken.
pub fn check(data: &[u8]) {
    let Some((&selector, input)) = data.split_first() else { return };
    let upgrade = selector & 1 == 1;
    let original = fields(input);

    if let Some(hint) = keep_alive_timeout(&original) {
        assert!(hint.as_secs() <= 999_999, "a hint of {hint:?}");
    }

    let mut stripped = original.clone();
    strip_hop_by_hop(&mut stripped, upgrade);
    for name in HOP_BY_HOP {
        assert!(!stripped.contains_key(name), "{name} survived");
    }
    assert!(stripped.get_all(TE).iter().all(|v| v == "trailers"), "TE other than trailers survived");
    assert!(stripped.get_all(TE).iter().count() <= 1);
    let connection: Vec<_> = stripped.get_all(CONNECTION).iter().collect();
    if upgrade {
        assert_eq!(connection, ["upgrade"], "an upgrade goes on with Connection: upgrade only");
    } else {
        assert!(connection.is_empty(), "Connection survived");
        assert!(!stripped.contains_key(UPGRADE), "Upgrade survived a plain message");
    }
    let named = named_by_connection(&original);
    for name in &named {
        if *name != TE && *name != CONNECTION && !(upgrade && *name == UPGRADE) {
            assert!(!stripped.contains_key(name), "{name} was named by Connection and survived");
        }
    }
    // Everything else is end to end: kept, every value, in order.
    for name in original.keys() {
        let hop =
            HOP_BY_HOP.contains(&name.as_str()) || *name == CONNECTION || *name == TE || *name == UPGRADE || *name == TRANSFER_ENCODING;
        if hop || named.contains(name) {
            continue;
        }
        let before: Vec<_> = original.get_all(name).iter().collect();
        let after: Vec<_> = stripped.get_all(name).iter().collect();
        assert_eq!(before, after, "end-to-end field {name} changed");
    }
    let mut again = stripped.clone();
    strip_hop_by_hop(&mut again, upgrade);
    assert_eq!(again, stripped, "stripping twice differs from once");

    // RFC 9110 §7.8: the 101 may switch to what the request offered, only.
    let offered = offered_upgrades(&stripped);
    assert!(offered.iter().all(|t| !t.eq_ignore_ascii_case(b"h2c")), "h2c offered upstream: {offered:?}");
    for t in &offered {
        let mut switched = HeaderMap::new();
        switched.insert(UPGRADE, HeaderValue::from_bytes(t).expect("a token of a valid field"));
        assert!(switch_was_offered(&offered, &switched), "a 101 to the offered {t:?} refused");
    }
    assert!(!switch_was_offered(&[], &original), "a 101 accepted with nothing offered");

    let mut once = original.clone();
    single_content_length(&mut once);
    let before: Vec<_> = original.get_all(CONTENT_LENGTH).iter().collect();
    let after: Vec<_> = once.get_all(CONTENT_LENGTH).iter().collect();
    if before != after {
        assert_eq!(after.len(), 1, "Content-Length became {after:?}");
        let value = after[0].as_bytes();
        assert!(!value.is_empty() && value.iter().all(u8::is_ascii_digit), "Content-Length {value:?}");
        assert!(value == b"0" || value[0] != b'0', "Content-Length {value:?} keeps a leading zero");
        // Every element was that number (compared as numbers, as hyper does).
        let number =
            |e: &[u8]| std::str::from_utf8(e).ok().filter(|t| t.bytes().all(|b| b.is_ascii_digit())).and_then(|t| t.parse::<u64>().ok());
        let elements = before.iter().flat_map(|v| v.as_bytes().split(|b| *b == b',')).map(<[u8]>::trim_ascii);
        for e in elements {
            assert_eq!(number(e), number(value), "Content-Length {before:?} became {value:?}");
            assert!(number(e).is_some(), "Content-Length {before:?} became {value:?}");
        }
    }
    let mut twice = once.clone();
    single_content_length(&mut twice);
    assert_eq!(twice, once, "single_content_length twice differs from once");
    // Chunked only when hyper's client decodes chunks too (the last element
    // of the last line) and no other coding is named.
    if transfer_coding_is_chunked(&original) {
        let lines: Vec<_> = original.get_all(TRANSFER_ENCODING).iter().collect();
        if let Some(last) = lines.last() {
            let text = String::from_utf8_lossy(last.as_bytes()).to_string();
            assert!(text.rsplit(',').next().is_some_and(|e| e.trim().eq_ignore_ascii_case("chunked")), "TE {lines:?} counted as chunked");
            let named =
                lines.iter().flat_map(|v| v.as_bytes().split(|b| *b == b',')).map(<[u8]>::trim_ascii).filter(|e| !e.is_empty()).count();
            assert_eq!(named, 1, "TE {lines:?} counted as chunked");
        }
    }

    // An HTTP/1 request with these fields: one Host after fix_host, or refused.
    let version = if selector & 2 == 2 { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut req = Request::builder().uri("/").version(version).body(()).expect("a request");
    *req.headers_mut() = original;
    let target = std::net::SocketAddr::from(([10, 0, 0, 1], 8080));
    if fix_host(&mut req, target).is_ok() {
        let hosts = req.headers().get_all(HOST).iter().count();
        assert!(hosts == 1 || (hosts == 0 && version == Version::HTTP_10), "{hosts} Host fields after fix_host");
        assert!(req.headers().get_all(HOST).iter().all(|h| !h.as_bytes().contains(&b'@')), "userinfo in Host after fix_host");
    }
    if let Some(authority) = authority_raw(&req) {
        assert!(!authority.is_empty() && authority.len() <= 260, "authority of {} bytes", authority.len());
        assert!(authority.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b)), "authority {authority:?}");
    }
}
