//! Header rules of a proxy: what is hop-by-hop and dropped, what an upgrade
//! looks like, which authority a request is for, the one `Host` an HTTP/1
//! request goes upstream with, and the inbound client's proven identity
//! (`l5d-client-id`).
//!
//! RFC 9110 §7.6.1: a proxy removes the `Connection` header and every field
//! it names, plus the fields that are hop-by-hop by definition
//! (`Proxy-Connection`, `Keep-Alive`, `TE`, `Transfer-Encoding`, `Upgrade`),
//! and adds its own. Exceptions, both end to end in practice: `TE: trailers`
//! (gRPC servers look for it; RFC 9113 §8.2.2 allows exactly that value in
//! HTTP/2), and the `Upgrade`/`Connection: upgrade` pair of an upgrade the
//! proxy carries through. `Proxy-Authorization` is not hop-by-hop for a
//! transparent proxy: a forward proxy behind meshpipe is its audience.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{Method, Request, Version};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
static L5D_PROXY_CONNECTION: HeaderName = HeaderName::from_static("l5d-proxy-connection");
static L5D_CLIENT_ID: HeaderName = HeaderName::from_static("l5d-client-id");

/// How a request asks to leave request/response behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    /// A plain request.
    None,
    /// HTTP/1.1 `Upgrade` (WebSocket and others): a tunnel after a 101.
    Upgrade,
    /// `CONNECT` (HTTP/1.x), or HTTP/2 CONNECT with or without `:protocol`
    /// (RFC 8441): a tunnel after a 2xx.
    Connect,
}

/// Whether a `Connection` header lists `token` (case-insensitive, RFC 9110 §7.6.1).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The protocols an `Upgrade` field lists (RFC 9110 §7.8), trimmed, across
/// its lines; empty list elements skipped.
fn upgrade_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers.get_all(UPGRADE).iter().flat_map(|v| v.as_bytes().split(|b| *b == b',')).map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// What kind of exchange `req` starts. An HTTP/1 `Upgrade: h2c` is not one
/// (RFC 9113 §3.1 removed it; Linkerd strips it): the request is proxied as
/// a plain request with the upgrade headers removed.
pub fn tunnel_of<B>(req: &Request<B>) -> Tunnel {
    if req.method() == Method::CONNECT {
        return Tunnel::Connect;
    }
    // RFC 9110 §7.8: a server MUST ignore an Upgrade received in an
    // HTTP/1.0 request (the field is stripped as hop-by-hop).
    // Only `h2c` offered (RFC 9113 §3.1 removed it) is a plain request.
    if req.version() == Version::HTTP_11
        && connection_has(req.headers(), "upgrade")
        && upgrade_tokens(req.headers()).any(|t| !t.eq_ignore_ascii_case(b"h2c"))
    {
        return Tunnel::Upgrade;
    }
    Tunnel::None
}

/// At most this many protocols of a request's `Upgrade` are kept to check
/// the 101 against, and a 101 naming more is refused: real offers name one
/// or two (WebSocket), and the check stays a few comparisons whatever the
/// size of the fields.
pub const MAX_UPGRADE_PROTOCOLS: usize = 16;

/// The protocols an upgrade request offers, as sent upstream (`h2c`
/// already removed by [`strip_hop_by_hop`]), the first
/// [`MAX_UPGRADE_PROTOCOLS`] of them.
pub fn offered_upgrades(headers: &HeaderMap) -> Vec<Box<[u8]>> {
    upgrade_tokens(headers).take(MAX_UPGRADE_PROTOCOLS).map(Box::from).collect()
}

/// Whether a 101's `Upgrade` switches only to protocols the request
/// offered (RFC 9110 §7.8: the server MUST send `Upgrade` with a 101 and
/// MUST NOT switch to a protocol the client did not indicate). Names are
/// compared case-insensitively, as the RFC recommends; a version on one
/// side only matches the same name (the client offered the protocol at any
/// version, or the server did not say which), two versions must be equal.
/// Layers are listed in ascending order, so after an offered protocol the
/// list may go on with `HTTP/1.1`, the protocol that stays on top of it
/// (RFC 2817 §3.3: `Upgrade: TLS/1.0, HTTP/1.1`).
pub fn switch_was_offered(offered: &[Box<[u8]>], response: &HeaderMap) -> bool {
    let mut named = 0;
    for got in upgrade_tokens(response) {
        named += 1;
        let layered = named > 1 && got.eq_ignore_ascii_case(b"HTTP/1.1");
        if named > MAX_UPGRADE_PROTOCOLS || !(layered || offered.iter().any(|o| same_protocol(o, got))) {
            return false;
        }
    }
    named > 0
}

/// A protocol token's name and version (`name/version`, RFC 9110 §7.8).
fn name_version(t: &[u8]) -> (&[u8], Option<&[u8]>) {
    match t.iter().position(|c| *c == b'/') {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    }
}

fn same_protocol(a: &[u8], b: &[u8]) -> bool {
    let ((an, av), (bn, bv)) = (name_version(a), name_version(b));
    an.eq_ignore_ascii_case(bn)
        && match (av, bv) {
            (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
            _ => true,
        }
}

/// Removes hop-by-hop fields (RFC 9110 §7.6.1). With `upgrade`, the
/// `Upgrade` field survives and `Connection: upgrade` is set again.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none: one pass over the names instead of a
    // hashed removal per hop-by-hop field. (Fields a `Connection` header
    // names need a `Connection` header.)
    if !upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Fields the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if name == TE || (upgrade && name == UPGRADE) {
            continue;
        }
        headers.remove(&name);
    }
    headers.remove(CONNECTION);
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    if headers.remove(TRANSFER_ENCODING).is_some() {
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and an
        // intermediary MUST remove the received Content-Length before
        // forwarding; kept, it would frame the body it no longer describes.
        headers.remove(CONTENT_LENGTH);
    }
    headers.remove(&HTTP2_SETTINGS);
    let te_trailers = headers.get_all(TE).iter().any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers.remove(TE);
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        // `h2c` is no upgrade a proxy carries (RFC 9113 §3.1): offered
        // beside another protocol, only the others go on.
        if upgrade_tokens(headers).any(|t| t.eq_ignore_ascii_case(b"h2c")) {
            let others: Vec<&[u8]> = upgrade_tokens(headers).filter(|t| !t.eq_ignore_ascii_case(b"h2c")).collect();
            match HeaderValue::from_bytes(&others.join(&b", "[..])) {
                Ok(v) if !others.is_empty() => {
                    headers.insert(UPGRADE, v);
                }
                _ => {
                    headers.remove(UPGRADE);
                }
            }
        }
    } else {
        headers.remove(UPGRADE);
    }
}

/// Sets `l5d-client-id` on an inbound request to the identity mesh TLS
/// proved (`peer`), or removes it when there is none: as Linkerd's inbound
/// proxy does, an application may trust it, so a client can never supply
/// its own.
pub fn set_client_id(headers: &mut HeaderMap, peer: Option<&str>) {
    match peer.and_then(|p| HeaderValue::from_str(p).ok()) {
        Some(v) => {
            headers.insert(&L5D_CLIENT_ID, v);
        }
        None => {
            headers.remove(&L5D_CLIENT_ID);
        }
    }
}

/// Why an HTTP/1 request's `Host` cannot be passed on.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("the request has {0} Host header fields: RFC 9112 §3.2 allows exactly one")]
    Several(usize),
    #[error("the HTTP/1.1 request has no Host header field, which RFC 9112 §3.2 requires")]
    Missing,
    #[error("the HTTP/2 request's Host header field ({host}) names another authority than its :authority ({authority}): RFC 9113 §8.3.1")]
    Conflict { authority: String, host: String },
    /// Holds the authority with its userinfo replaced by `<userinfo>`: the
    /// credentials never reach a log, a 400 body or `l5d-proxy-error`.
    #[error("the request's authority ({0}) carries userinfo (`user@`), which RFC 9110 §4.2.4 forbids in an http or https target; expected host[:port]")]
    UserInfo(String),
}

/// Removes the spaces and tabs around HTTP/2 field values (headers or
/// trailers, both ways). RFC 9110 §5.5 excludes them from a field value,
/// and HTTP/1 parsers strip them, but HTTP/2 carries them (RFC 9113 §8.2.1
/// calls such a message malformed): passed on as received, two hops
/// could read two different values. Trimmed rather than refused, because
/// real peers send them (grpc-go does not encode the spaces of a
/// `grpc-message`; a pasted token keeps its trailing space): each value
/// goes on as every HTTP/1 hop would read it. Allocates only for a padded
/// value. (h2 itself refuses NUL, CR and LF in values, and uppercase or
/// connection-specific field names.)
pub fn trim_field_values(headers: &mut HeaderMap) {
    let padded = |v: &[u8]| matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t'));
    for value in headers.values_mut() {
        if padded(value.as_bytes()) {
            let trimmed = value.as_bytes().trim_ascii();
            // A slice of a valid value, without its ends' whitespace, is a valid value.
            if let Ok(mut v) = HeaderValue::from_bytes(trimmed) {
                v.set_sensitive(value.is_sensitive());
                *value = v;
            }
        }
    }
}

/// Refuses userinfo in the request's target authority (absolute-form,
/// CONNECT's authority-form, HTTP/2 `:authority`) or `Host`. RFC 9110
/// §4.2.4 forbids it in http(s) URIs and asks a recipient to treat it as an
/// error; RFC 9113 §8.3.1 forbids it in `:authority`; `Host` has no room
/// for it at all (RFC 9110 §7.2). Passed on, `user@host` is read as a
/// different host by different parsers, and carries credentials to every
/// log on the way.
fn check_userinfo<B>(req: &Request<B>) -> Result<(), HostError> {
    let target = req.uri().authority().map(|a| a.as_str().as_bytes());
    let hosts = req.headers().get_all(HOST).iter().map(HeaderValue::as_bytes);
    match target.into_iter().chain(hosts).find(|v| v.contains(&b'@')) {
        Some(v) => Err(HostError::UserInfo(redact_userinfo(v))),
        None => Ok(()),
    }
}

/// `user:secret@api.test` as `<userinfo>@api.test`: what follows the last
/// `@` (the host, for every parser that accepts the form) is kept so the
/// error still says which authority was refused.
fn redact_userinfo(v: &[u8]) -> String {
    let at = v.iter().rposition(|b| *b == b'@').map_or(0, |i| i + 1);
    format!("<userinfo>@{}", String::from_utf8_lossy(&v[at..]))
}

/// Makes an HTTP/1 request's `Host` what the upstream must see, so the
/// proxy and the application never read two different hosts from one
/// request (RFC 9112 §3.2): more than one `Host`, or none in HTTP/1.1, is
/// refused (a server answers 400); an absolute-form (or CONNECT) target
/// replaces `Host` with its authority (§3.2.2: a proxy must); an HTTP/1.0
/// request without one, which goes upstream as HTTP/1.1, gets the
/// destination's address (`target`).
pub fn fix_host<B>(req: &mut Request<B>, target: std::net::SocketAddr) -> Result<(), HostError> {
    let n = req.headers().get_all(HOST).iter().count();
    if n > 1 {
        return Err(HostError::Several(n));
    }
    check_userinfo(req)?;
    if let Some(authority) = req.uri().authority() {
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(HOST, v);
        }
        return Ok(());
    }
    if n == 0 {
        if req.version() == Version::HTTP_11 {
            return Err(HostError::Missing);
        }
        if let Ok(v) = HeaderValue::from_str(&target.to_string()) {
            req.headers_mut().insert(HOST, v);
        }
    }
    Ok(())
}

/// Refuses an HTTP/2 request whose `Host` disagrees with its `:authority`
/// (RFC 9113 §8.3.1: a server should treat it as malformed), or that has
/// more than one `Host`: the proxy's `authority` label and routing read
/// `:authority`, an application may read `Host`, and they must be the same
/// host. Compared case-insensitively; a request without `:authority` keeps
/// its one `Host`.
pub fn check_h2_host<B>(req: &Request<B>) -> Result<(), HostError> {
    check_userinfo(req)?;
    let mut hosts = req.headers().get_all(HOST).iter();
    let (Some(host), more) = (hosts.next(), hosts.count()) else { return Ok(()) };
    if more > 0 {
        return Err(HostError::Several(more + 1));
    }
    let Some(authority) = req.uri().authority() else { return Ok(()) };
    if host.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes()) {
        return Ok(());
    }
    Err(HostError::Conflict { authority: authority.as_str().to_string(), host: String::from_utf8_lossy(host.as_bytes()).into_owned() })
}

/// Removes a peer proxy's `l5d-proxy-connection` from a response (it is
/// meant for this proxy, never for the application) and says whether it
/// asked to close: the peer hit an error that ends its connection (Linkerd's
/// outbound does the same, and then closes the application's connection).
pub fn take_peer_close(headers: &mut HeaderMap) -> bool {
    headers.remove(&L5D_PROXY_CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}

/// The idle time an HTTP/1 upstream says it keeps a connection open for
/// (`Keep-Alive: timeout=N`, seconds; RFC 2068 §19.7.1, which RFC 9112 left
/// to practice: Node, Apache and others send it). Read before the
/// hop-by-hop fields are stripped; `None` without a usable one.
pub fn keep_alive_timeout(headers: &HeaderMap) -> Option<std::time::Duration> {
    headers.get_all(&KEEP_ALIVE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("timeout") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        // At most six digits (11 days): a larger hint says nothing a pool
        // would use (its own idle timeout is shorter), and parsing cannot
        // overflow.
        (value.len() <= 6 && !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
            .then(|| std::time::Duration::from_secs(value.parse().unwrap_or(0)))
    })
}

/// A field that is hop-by-hop by definition (or `TE`, kept only as
/// `trailers`).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == HTTP2_SETTINGS
}

/// The authority a request is for: the URI's (HTTP/2 `:authority`, HTTP/1
/// absolute-form and CONNECT authority-form), else the `Host` header;
/// lower-cased, as Linkerd's `authority` label. `None` when there is none or
/// it is not a plausible `host[:port]` (the label must not carry junk).
pub fn authority<B>(req: &Request<B>) -> Option<String> {
    authority_raw(req).map(str::to_ascii_lowercase)
}

/// [`authority`] before lower-casing (no allocation: the request path
/// compares it with the last one seen, case-insensitively).
pub fn authority_raw<B>(req: &Request<B>) -> Option<&str> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(HOST)?.to_str().ok()?,
    };
    // DNS names are at most 253 characters; a port adds 6.
    let ok = !raw.is_empty()
        && raw.len() <= 260
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'));
    ok.then_some(raw)
}

/// Whether a gRPC exchange: `content-type: application/grpc[+proto|;...]`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/grpc") && (v.len() == 16 || matches!(v[16], b'+' | b';'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_timeout_hint() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("keep-alive", HeaderValue::from_str(v).unwrap());
            keep_alive_timeout(&m)
        };
        let secs = |n| Some(std::time::Duration::from_secs(n));
        assert_eq!(h("timeout=5"), secs(5));
        assert_eq!(h("max=1000, Timeout = 72"), secs(72));
        assert_eq!(h("timeout=\"0\""), secs(0));
        assert_eq!(h("max=5"), None);
        assert_eq!(h("timeout=-1"), None);
        assert_eq!(h("timeout=5s"), None);
        assert_eq!(h("timeout=99999999999999999999"), None);
        assert_eq!(keep_alive_timeout(&HeaderMap::new()), None);
        assert_eq!(h("timeout=999999"), secs(999_999));
        assert_eq!(h("timeout=1000000"), None);
        assert_eq!(h("timeout="), None);
        assert_eq!(h("timeout"), None);
        assert_eq!(h(" max=3 ,timeout=\t7 "), secs(7));
        // Several fields: the first usable timeout; a field that is not
        // ASCII is passed over, not the others.
        let mut m = HeaderMap::new();
        m.append("keep-alive", HeaderValue::from_bytes(b"timeout=\xff9").unwrap());
        m.append("keep-alive", HeaderValue::from_static("max=2"));
        m.append("keep-alive", HeaderValue::from_static("timeout=3"));
        m.append("keep-alive", HeaderValue::from_static("timeout=40"));
        assert_eq!(keep_alive_timeout(&m), secs(3));
    }

    #[test]
    fn a_peer_close_is_taken_out_of_the_response() {
        let mut h = HeaderMap::new();
        assert!(!take_peer_close(&mut h));
        h.insert("l5d-proxy-connection", HeaderValue::from_static("Close"));
        h.insert("l5d-proxy-error", HeaderValue::from_static("loop"));
        assert!(take_peer_close(&mut h));
        assert!(h.get("l5d-proxy-connection").is_none(), "never passed to the application");
        assert_eq!(h["l5d-proxy-error"], "loop", "the error stays, as Linkerd keeps it");
        h.insert("l5d-proxy-connection", HeaderValue::from_static("keep"));
        assert!(!take_peer_close(&mut h));
        assert!(h.get("l5d-proxy-connection").is_none());
    }

    #[test]
    fn an_http2_host_must_agree_with_the_authority() {
        let h2 = |uri: &str, hosts: &[&str]| {
            let mut b = Request::builder().uri(uri).version(Version::HTTP_2);
            for h in hosts {
                b = b.header(HOST, *h);
            }
            check_h2_host(&b.body(()).unwrap())
        };
        assert!(h2("http://api.test/x", &[]).is_ok(), ":authority alone");
        assert!(h2("http://api.test/x", &["API.test"]).is_ok(), "the same host, another case");
        assert!(h2("/x", &["web.test"]).is_ok(), "Host alone");
        let e = h2("http://api.test/x", &["admin.test"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the HTTP/2 request's Host header field (admin.test) names another authority than its :authority (api.test): RFC 9113 §8.3.1"
        );
        assert!(matches!(h2("http://api.test/x", &["api.test", "api.test"]), Err(HostError::Several(2))));
        assert!(matches!(h2("/x", &["a.test", "b.test"]), Err(HostError::Several(2))));
    }

    #[test]
    fn userinfo_in_the_authority_or_host_is_refused() {
        let build = |version: Version, uri: &str, hosts: &[&str]| {
            let mut b = Request::builder().uri(uri).version(version);
            for h in hosts {
                b = b.header(HOST, *h);
            }
            b.body(()).unwrap()
        };
        let target = "127.0.0.1:80".parse().unwrap();
        let h1 = |uri: &str, hosts: &[&str]| fix_host(&mut build(Version::HTTP_11, uri, hosts), target);
        let h2 = |uri: &str, hosts: &[&str]| check_h2_host(&build(Version::HTTP_2, uri, hosts));
        assert!(matches!(h1("http://user:pw@api.test/x", &["api.test"]), Err(HostError::UserInfo(a)) if a == "<userinfo>@api.test"));
        assert!(matches!(h1("/x", &["admin@api.test"]), Err(HostError::UserInfo(_))));
        assert!(matches!(h2("http://user@api.test/x", &[]), Err(HostError::UserInfo(_))));
        assert!(matches!(h2("/x", &["user@api.test"]), Err(HostError::UserInfo(_))));
        assert!(h1("http://api.test/x?to=a@b", &["api.test"]).is_ok(), "an @ in the query is not userinfo");
        assert!(h2("http://api.test/a@b", &[]).is_ok());
        let e = h2("http://u:secret@api.test/x", &[]).unwrap_err().to_string();
        assert!(e.contains("<userinfo>@api.test") && e.contains("RFC 9110 §4.2.4") && e.contains("host[:port]"), "{e}");
        assert!(!e.contains("secret"), "the credentials are not repeated: {e}");
        let e = h1("/x", &["a:b@c:d@api.test"]).unwrap_err().to_string();
        assert!(e.contains("(<userinfo>@api.test)") && !e.contains("b@c"), "{e}");
    }

    fn req(lines: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/");
        for (k, v) in lines {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn hop_by_hop_fields_go_and_end_to_end_ones_stay() {
        let mut r = req(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAA"),
            ("proxy-authorization", "Basic eDp5"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(r.headers_mut(), false);
        let names: Vec<_> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["te", "proxy-authorization", "x-app"], "{names:?}");
        assert_eq!(r.headers()["te"], "trailers");
    }

    #[test]
    fn each_hop_by_hop_field_alone_is_dropped_and_others_are_untouched() {
        for name in ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "http2-settings"] {
            let mut r = req(&[(name, "x"), ("x-app", "kept")]);
            strip_hop_by_hop(r.headers_mut(), false);
            let names: Vec<_> = r.headers().keys().map(|k| k.as_str()).collect();
            assert_eq!(names, ["x-app"], "{name} alone must go");
        }
        let mut r = req(&[("host", "a"), ("accept", "*/*"), ("x-app", "kept")]);
        strip_hop_by_hop(r.headers_mut(), false);
        assert_eq!(r.headers().len(), 3);
    }

    #[test]
    fn te_other_than_trailers_is_dropped() {
        let mut r = req(&[("te", "gzip")]);
        strip_hop_by_hop(r.headers_mut(), false);
        assert!(r.headers().is_empty());
    }

    #[test]
    fn upgrades_keep_their_pair() {
        let mut r = req(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")]);
        assert_eq!(tunnel_of(&r), Tunnel::Upgrade);
        strip_hop_by_hop(r.headers_mut(), true);
        assert_eq!(r.headers()["upgrade"], "websocket");
        assert_eq!(r.headers()["connection"], "upgrade");
        assert_eq!(r.headers()["sec-websocket-key"], "k");
    }

    #[test]
    fn an_http10_upgrade_is_ignored() {
        let mut r = req(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        *r.version_mut() = Version::HTTP_10;
        assert_eq!(tunnel_of(&r), Tunnel::None, "RFC 9110 §7.8");
        strip_hop_by_hop(r.headers_mut(), false);
        assert!(r.headers().is_empty());
    }

    #[test]
    fn a_transfer_encoding_takes_the_content_length_with_it() {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("3"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["content-length"], "3", "without a Transfer-Encoding it frames the body");
    }

    #[test]
    fn h2c_is_dropped_from_an_upgrade_offering_others_too() {
        let r = req(&[("connection", "Upgrade"), ("upgrade", "h2c, websocket")]);
        assert_eq!(tunnel_of(&r), Tunnel::Upgrade);
        let mut h = r.headers().clone();
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get_all(UPGRADE).iter().collect::<Vec<_>>(), ["websocket"]);
        // Only h2c, however it is written: a plain request.
        for only in [" h2c ", "H2C, h2c", "h2c,"] {
            assert_eq!(tunnel_of(&req(&[("connection", "Upgrade"), ("upgrade", only)])), Tunnel::None, "{only:?}");
        }
    }

    #[test]
    fn a_switch_must_name_an_offered_protocol() {
        let offered = offered_upgrades(&req(&[("upgrade", "websocket, IRC/6.9")]).headers().clone());
        let resp = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(UPGRADE, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        assert!(switch_was_offered(&offered, &resp(Some("websocket"))));
        assert!(switch_was_offered(&offered, &resp(Some("WebSocket"))), "case-insensitive (RFC 9110 §7.8)");
        assert!(switch_was_offered(&offered, &resp(Some("websocket/13"))), "the client offered any version");
        assert!(switch_was_offered(&offered, &resp(Some("irc"))), "the server named no version");
        assert!(switch_was_offered(&offered, &resp(Some("irc/6.9, websocket"))), "layered: every protocol was offered");
        assert!(!switch_was_offered(&offered, &resp(Some("irc/7"))), "another version than offered");
        assert!(!switch_was_offered(&offered, &resp(Some("h2c"))));
        assert!(!switch_was_offered(&offered, &resp(Some("websocket, h2c"))), "one protocol not offered");
        assert!(!switch_was_offered(&offered, &resp(None)), "a 101 must say what it switches to");
        assert!(!switch_was_offered(&offered, &resp(Some(" , "))), "an empty list names nothing");
        assert!(!switch_was_offered(&offered, &resp(Some("websocketx"))));
        // RFC 2817 §3.3: the layer on top (the current protocol) may follow.
        let tls = offered_upgrades(&req(&[("upgrade", "TLS/1.0")]).headers().clone());
        assert!(switch_was_offered(&tls, &resp(Some("TLS/1.0, HTTP/1.1"))));
        assert!(!switch_was_offered(&tls, &resp(Some("HTTP/1.1"))), "only above an offered protocol");
        assert!(!switch_was_offered(&tls, &resp(Some("HTTP/1.1, TLS/1.0"))));
    }

    #[test]
    fn the_switch_check_is_bounded_whatever_the_fields_hold() {
        let offers: Vec<String> = (0..10_000).map(|i| format!("{i:x}")).collect();
        let offered = offered_upgrades(&req(&[("upgrade", &offers.join(","))]).headers().clone());
        assert_eq!(offered.len(), MAX_UPGRADE_PROTOCOLS, "only the first offers are kept");
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_str(&vec!["0"; 10_000].join(",")).unwrap());
        assert!(!switch_was_offered(&offered, &h), "a 101 naming more protocols than are kept is refused");
        h.insert(UPGRADE, HeaderValue::from_str(&vec!["0"; MAX_UPGRADE_PROTOCOLS].join(",")).unwrap());
        assert!(switch_was_offered(&offered, &h));
    }

    #[test]
    fn h2c_upgrade_is_a_plain_request() {
        let r = req(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c"), ("http2-settings", "AAMAAABkAAQAAP__")]);
        assert_eq!(tunnel_of(&r), Tunnel::None);
        let c = Request::builder().method("CONNECT").uri("example.com:443").body(()).unwrap();
        assert_eq!(tunnel_of(&c), Tunnel::Connect);
        // Upgrade without `Connection: upgrade` is not an upgrade request.
        assert_eq!(tunnel_of(&req(&[("upgrade", "websocket")])), Tunnel::None);
    }

    #[test]
    fn authorities_are_lowercased_and_junk_is_refused() {
        assert_eq!(authority(&req(&[("host", "Web.Example:8080")])).as_deref(), Some("web.example:8080"));
        let abs = Request::builder().uri("http://API.example/x").header("host", "other").body(()).unwrap();
        assert_eq!(authority(&abs).as_deref(), Some("api.example"));
        assert_eq!(authority(&req(&[("host", "a b")])), None);
        assert_eq!(authority(&req(&[("host", &"a".repeat(300))])), None);
        assert_eq!(authority(&req(&[])), None);
        assert_eq!(authority_raw(&req(&[("host", "Web.Example")])), Some("Web.Example"), "as spelled, for the series cache");
    }

    #[test]
    fn grpc_content_types() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(http::header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            is_grpc(&m)
        };
        assert!(h("application/grpc"));
        assert!(h("application/grpc+proto"));
        assert!(h("Application/GRPC;charset=utf-8"));
        assert!(!h("application/grpc-web"));
        assert!(!h("application/json"));
    }
}
