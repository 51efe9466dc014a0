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
/// (RFC 9112 §6.1; coding names are case-insensitive). No
/// Transfer-Encoding field counts as chunked-only: nothing to decode.
pub fn transfer_coding_is_chunked(headers: &HeaderMap) -> bool {
    if !headers.contains_key(TRANSFER_ENCODING) {
        return true;
    }
    let mut codings = list_elements(headers, &TRANSFER_ENCODING);
    match codings.next() {
        // Only empty elements: no coding named, which is no valid field.
        None => false,
        Some(first) => first.eq_ignore_ascii_case(b"chunked") && codings.next().is_none(),
    }
}

/// Whether a response has no content whatever its header fields say
/// (RFC 9112 §6.3 rule 1): the answer to HEAD, a 1xx, 204 or 304.
pub fn bodiless_response(head_request: bool, status: StatusCode) -> bool {
    head_request || status.is_informational() || matches!(status.as_u16(), 204 | 304)
}

/// Makes a `Content-Length` sent as a list of one repeated value (`2, 2`,
/// or two `Content-Length: 2` lines) a single value. hyper accepts such a
/// message (RFC 9110 §8.6 allows a recipient to) and frames it by that
/// value; passed on as it came, the next parser may refuse it or read it
/// another way, and the same section asks an intermediary to send the
/// single value instead. Values that are not one repeated number are left
/// alone: hyper refuses those where they frame a body, and where they do
/// not (a response to HEAD) they frame nothing.
pub fn single_content_length(headers: &mut HeaderMap) {
    let mut lines = headers.get_all(CONTENT_LENGTH).iter();
    match (lines.next(), lines.next()) {
        (None, _) => return,
        (Some(one), None) if !one.as_bytes().contains(&b',') => return,
        _ => {}
    }
    let mut values = headers.get_all(CONTENT_LENGTH).iter().flat_map(|v| v.as_bytes().split(|b| *b == b',')).map(<[u8]>::trim_ascii);
    let Some(first) = values.next() else { return };
    let digits = !first.is_empty() && first.len() <= 19 && first.iter().all(u8::is_ascii_digit);
    if !digits || values.any(|v| v != first) {
        return;
    }
    if let Ok(v) = HeaderValue::from_bytes(first) {
        headers.insert(CONTENT_LENGTH, v);
    }
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
        assert!(h(&["chunked ,"]));
        assert!(h(&["", "chunked"]));
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
        assert!(bodiless_response(true, StatusCode::OK));
        assert!(bodiless_response(false, StatusCode::NOT_MODIFIED));
        assert!(bodiless_response(false, StatusCode::NO_CONTENT));
        assert!(bodiless_response(false, StatusCode::CONTINUE));
        assert!(!bodiless_response(false, StatusCode::OK));
        assert!(!bodiless_response(false, StatusCode::NOT_FOUND));
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
        assert!(once(&[]).is_empty());
        // Not one repeated number: left as it came.
        assert_eq!(once(&["2, 3"]), ["2, 3"]);
        assert_eq!(once(&["2", "3"]), ["2", "3"]);
        assert_eq!(once(&["2, "]), ["2, "]);
        assert_eq!(once(&["x, x"]), ["x, x"]);
        assert_eq!(once(&["-1, -1"]), ["-1, -1"]);
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
