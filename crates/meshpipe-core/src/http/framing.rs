//! Message framing rules of a proxy (RFC 9112 §6): which transfer coding
//! the proxy can decode, which responses have no content whatever their
//! fields say, the one `Content-Length` a message is passed on with, and a
//! CONNECT request that claims content.
//!
//! These are the rules where two HTTP parsers disagreeing about where a
//! message ends lets one request hide inside another (request smuggling,
//! RFC 9112 §11.2), so every message the proxy passes on has one framing
//! that any conforming parser reads the same way.

use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request, StatusCode, Version};

/// The elements of a list-valued field (RFC 9110 §5.6.1) across all its
/// field lines, trimmed, with empty elements skipped: a recipient "MUST
/// accept and ignore" them (`, chunked` is `chunked`).
fn list_elements<'a>(headers: &'a HeaderMap, name: &http::header::HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers.get_all(name).iter().flat_map(|v| v.as_bytes().split(|b| *b == b',')).map(<[u8]>::trim_ascii).filter(|e| !e.is_empty())
}

/// Whether a message's transfer codings, if any, are exactly `chunked`
/// (RFC 9112 §6.1; coding names are case-insensitive), as the proxy's own
/// HTTP/1 client decodes it. No Transfer-Encoding field counts as
/// chunked-only: nothing to decode.
///
/// Empty list elements are ignored (RFC 9110 §5.6.1: `, chunked` is
/// `chunked`), but only where hyper's client ignores them too: it takes
/// the last element of the last field line as the final coding, so for
/// `chunked,` (or a last line that is empty) it does not decode chunks and
/// reads the body to the connection's close. Passing such a body on would
/// hand the client the chunk framing as content, so both readings must
/// agree before a coding counts as chunked.
pub fn transfer_coding_is_chunked(headers: &HeaderMap) -> bool {
    let Some(last_line) = headers.get_all(TRANSFER_ENCODING).iter().next_back() else {
        return true;
    };
    let decoded_as_chunked =
        last_line.as_bytes().rsplit(|b| *b == b',').next().is_some_and(|e| e.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    let mut codings = list_elements(headers, &TRANSFER_ENCODING);
    match codings.next() {
        // Only empty elements: no coding named, which is no valid field.
        None => false,
        Some(first) => decoded_as_chunked && first.eq_ignore_ascii_case(b"chunked") && codings.next().is_none(),
    }
}

/// Whether a response has no content whatever its header fields say
/// (RFC 9112 §6.3 rules 1 and 2): the answer to HEAD, a 1xx, 204 or 304,
/// and a 2xx to CONNECT (its bytes after the head are the tunnel's; the
/// client ignores its Content-Length and Transfer-Encoding).
pub fn bodiless_response(head_request: bool, connect_request: bool, status: StatusCode) -> bool {
    head_request || status.is_informational() || matches!(status.as_u16(), 204 | 304) || (connect_request && status.is_success())
}

/// Sends a `Content-Length` on as one decimal number without leading
/// zeros. hyper (and h2) accept a list of one repeated value (`2, 2`, two
/// `Content-Length: 2` lines, even `5, 05`: the values are compared as
/// numbers) and frame the message by it, as RFC 9110 §8.6 allows a
/// recipient to; passed on as it came, the next parser may refuse it or
/// read it another way, and the same section asks an intermediary to send
/// the single value instead. A single value with leading zeros (`010`) is
/// valid (`1*DIGIT`) but rewritten too, so no parser that reads a leading
/// zero as octal sees another length. Values that are not one repeated
/// number are left alone: hyper refuses those where they frame a body, and
/// where they do not (a response to HEAD) they frame nothing.
pub fn single_content_length(headers: &mut HeaderMap) {
    let mut lines = headers.get_all(CONTENT_LENGTH).iter();
    match (lines.next(), lines.next()) {
        (None, _) => return,
        (Some(one), None) => {
            let v = one.as_bytes();
            let leading_zero = v.len() > 1 && v[0] == b'0';
            if !v.contains(&b',') && !leading_zero {
                return;
            }
        }
        _ => {}
    }
    let mut values =
        headers.get_all(CONTENT_LENGTH).iter().flat_map(|v| v.as_bytes().split(|b| *b == b',')).map(|v| decimal(v.trim_ascii()));
    let Some(Some(first)) = values.next() else { return };
    if values.any(|v| v != Some(first)) {
        return;
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(first));
}

/// `1*DIGIT` as a number (RFC 9110 §8.6), as hyper reads it: no sign, no
/// space, no overflow.
fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, b| if b.is_ascii_digit() { n.checked_mul(10)?.checked_add(u64::from(b - b'0')) } else { None })
}

/// Whether `req` is an HTTP/1 CONNECT that frames content (a
/// Transfer-Encoding, or a Content-Length other than 0). RFC 9110 §9.3.6:
/// a CONNECT request has no content, and the bytes after its head are the
/// tunnel's once a 2xx comes back. With such a field the client and the
/// proxy can disagree about which bytes are a body and which the tunnel's,
/// so the request is refused and its connection closed. (In HTTP/2 the
/// tunnel is the stream's DATA frames whatever the fields say.)
pub fn connect_with_content<B>(req: &Request<B>) -> bool {
    if req.method() != Method::CONNECT || req.version() == Version::HTTP_2 {
        return false;
    }
    req.headers().contains_key(TRANSFER_ENCODING) || list_elements(req.headers(), &CONTENT_LENGTH).any(|v| v.iter().any(|b| *b != b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append(name, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn only_chunked_alone_is_a_coding_the_proxy_decodes() {
        let h = |values: &[&str]| transfer_coding_is_chunked(&map("transfer-encoding", values));
        assert!(h(&[]));
        assert!(h(&["chunked"]));
        assert!(h(&[" Chunked "]));
        assert!(h(&[", chunked"]), "empty list elements are ignored (RFC 9110 §5.6.1)");
        assert!(h(&["", "chunked"]));
        // hyper's client takes the last element of the last line as the
        // final coding: an empty one there means it would not decode chunks.
        assert!(!h(&["chunked ,"]));
        assert!(!h(&["chunked,"]));
        assert!(!h(&["chunked", ""]));
        assert!(!h(&["gzip"]));
        assert!(!h(&["gzip, chunked"]));
        assert!(!h(&["gzip", "chunked"]));
        assert!(!h(&["chunked, chunked"]));
        assert!(!h(&["identity"]));
        assert!(!h(&[""]));
        assert!(!h(&[" , "]));
    }

    #[test]
    fn responses_without_content() {
        assert!(bodiless_response(true, false, StatusCode::OK));
        assert!(bodiless_response(false, false, StatusCode::NOT_MODIFIED));
        assert!(bodiless_response(false, false, StatusCode::NO_CONTENT));
        assert!(bodiless_response(false, false, StatusCode::CONTINUE));
        assert!(!bodiless_response(false, false, StatusCode::OK));
        assert!(!bodiless_response(false, false, StatusCode::NOT_FOUND));
        assert!(bodiless_response(false, true, StatusCode::OK), "a 2xx to CONNECT starts the tunnel");
        assert!(!bodiless_response(false, true, StatusCode::PROXY_AUTHENTICATION_REQUIRED));
    }

    #[test]
    fn a_repeated_content_length_becomes_one_value() {
        let once = |values: &[&str]| {
            let mut m = map("content-length", values);
            single_content_length(&mut m);
            m.get_all(CONTENT_LENGTH).iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>()
        };
        assert_eq!(once(&["2, 2"]), ["2"]);
        assert_eq!(once(&["2", "2"]), ["2"]);
        assert_eq!(once(&["2,2", " 2 "]), ["2"]);
        assert_eq!(once(&["17"]), ["17"]);
        assert_eq!(once(&["0"]), ["0"]);
        // Compared as numbers, as hyper and h2 do; sent without leading zeros.
        assert_eq!(once(&["5, 05"]), ["5"]);
        assert_eq!(once(&["10", "010"]), ["10"]);
        assert_eq!(once(&["010"]), ["10"]);
        assert_eq!(once(&["00"]), ["0"]);
        assert_eq!(once(&["00000000000000000002, 2"]), ["2"]);
        assert!(once(&[]).is_empty());
        // Not one repeated number: left as it came.
        assert_eq!(once(&["2, 3"]), ["2, 3"]);
        assert_eq!(once(&["2", "3"]), ["2", "3"]);
        assert_eq!(once(&["2, "]), ["2, "]);
        assert_eq!(once(&["x, x"]), ["x, x"]);
        assert_eq!(once(&["-1, -1"]), ["-1, -1"]);
        assert_eq!(once(&["+5, 5"]), ["+5, 5"]);
        assert_eq!(once(&["18446744073709551616, 18446744073709551616"]), ["18446744073709551616, 18446744073709551616"]);
    }

    #[test]
    fn a_connect_request_with_content_is_told_apart() {
        let connect = |version: Version, fields: &[(&str, &str)]| {
            let mut b = Request::builder().method(Method::CONNECT).uri("example.test:443").version(version);
            for (k, v) in fields {
                b = b.header(*k, *v);
            }
            connect_with_content(&b.body(()).unwrap())
        };
        assert!(!connect(Version::HTTP_11, &[]));
        assert!(!connect(Version::HTTP_11, &[("content-length", "0")]));
        assert!(!connect(Version::HTTP_10, &[("content-length", "00")]));
        assert!(connect(Version::HTTP_11, &[("content-length", "5")]));
        assert!(connect(Version::HTTP_10, &[("content-length", "0, 1")]));
        assert!(connect(Version::HTTP_11, &[("transfer-encoding", "chunked")]));
        assert!(!connect(Version::HTTP_2, &[("content-length", "5")]), "HTTP/2 frames the tunnel itself");
        let get = Request::builder().uri("/").header("content-length", "5").body(()).unwrap();
        assert!(!connect_with_content(&get));
    }
}
