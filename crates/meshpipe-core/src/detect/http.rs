//! HTTP matchers: the HTTP/2 client connection preface and a strict HTTP/1 request line.
//!
//! HTTP/2 with prior knowledge (and so every gRPC connection) starts with the fixed 24-byte
//! client connection preface `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` (RFC 9113 §3.4): a strict prefix
//! of it may still become HTTP/2, any deviating byte rules HTTP/2 out.
//!
//! HTTP/1 is recognised by its request line alone (RFC 9112 §3):
//! `request-line = method SP request-target SP HTTP-version CRLF`, where the method is a token
//! (`1*tchar`, RFC 9110 §5.6.2, limited here to 32 bytes), the request-target is taken as
//! `1*` visible ASCII (0x21-0x7E: origin-form, absolute-form, authority-form as sent by CONNECT,
//! and asterisk-form as sent by `OPTIONS *` are all in that set) or obs-text (0x80-0xFF), and the
//! version must be exactly `HTTP/1.0` or `HTTP/1.1` (the name is case-sensitive, RFC 9112 §2.3).
//! The verdict is reached when the line ends: CRLF, or a bare LF (RFC 9112 §2.2: a recipient MAY
//! take it as a line terminator). Empty lines (CRLF or LF) before the request line are skipped,
//! any number of them (RFC 9112 §2.2 asks servers to ignore at least one). Leading whitespace, a
//! lone CR or other line noise is not HTTP. `PRI * HTTP/2.0` is not an HTTP/1 request line
//! because of its version, so the two matchers never both match.
//!
//! Why this lenient: a request line the matcher turns away is forwarded as bytes, past
//! everything the HTTP layer does to a request (inbound, removing a client's own
//! `l5d-client-id`), while one it accepts that the HTTP layer's parser (httparse, in hyper) then
//! refuses gets a 400. So it accepts what httparse accepts as a request line, with two
//! exceptions kept so other protocols are not taken for HTTP: a method longer than
//! `MAX_METHOD_LEN`, and a line (empty lines before it included) not ended within the detection
//! buffer. A plaintext client can always reach the application as bytes (docs/http.md says
//! when `l5d-client-id` can be trusted).
//!
//! Both matchers are small state machines that remember how far they have looked: each call
//! examines only the bytes that arrived since the previous one, so a client trickling a long
//! request line costs time linear in its length, not quadratic.

use super::{Detected, Probe};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(super) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest method token accepted; real methods are short, and a long token is far likelier to
/// be another protocol's bytes than an HTTP extension method.
pub(super) const MAX_METHOD_LEN: usize = 32;

/// `HTTP-version CRLF`; the minor version digit (index 7) may be `0` or `1`.
const VERSION_CRLF: &[u8; 10] = b"HTTP/1.x\r\n";
const VERSION_MINOR_AT: usize = 7;
/// Where the CR of the line end is, or a bare LF ending the line instead.
const VERSION_LF_AT: usize = 8;

/// The HTTP/2 preface matcher: how many preface bytes have matched so far.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct H2 {
    matched: u8,
    failed: bool,
}

impl H2 {
    /// Looks at the bytes of `buf` past the ones already matched.
    pub(super) fn advance(&mut self, buf: &[u8]) -> Probe {
        if self.failed {
            return Probe::NoMatch;
        }
        let n = buf.len().min(H2_PREFACE.len());
        let from = usize::from(self.matched).min(n);
        if buf[from..n] != H2_PREFACE[from..n] {
            self.failed = true;
            return Probe::NoMatch;
        }
        self.matched = n as u8;
        if n == H2_PREFACE.len() {
            Probe::Match(Detected::Http2)
        } else {
            Probe::Partial
        }
    }
}

/// Matches the HTTP/2 client connection preface (one-shot).
#[cfg(test)]
pub(super) fn probe_h2(buf: &[u8]) -> Probe {
    H2::default().advance(buf)
}

/// Where the HTTP/1 matcher is in the request line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    /// Before the request line: empty lines, or nothing yet.
    #[default]
    Start,
    Method,
    Target,
    Version,
    Matched,
    Failed,
}

/// The HTTP/1 request-line matcher: its phase, the next byte to examine and where the current
/// element (method, target or version) started. Offsets fit in `u32`: the classifier never
/// looks past `DETECT_BUFFER_CAP`.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct H1 {
    phase: Phase,
    pos: u32,
    mark: u32,
}

/// `tchar` from RFC 9110 §5.6.2: the characters a method token may contain.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl H1 {
    /// Looks at the bytes of `buf` past the ones already examined.
    pub(super) fn advance(&mut self, buf: &[u8]) -> Probe {
        let mut i = (self.pos as usize).min(buf.len());
        let mut mark = self.mark as usize;
        let probe = loop {
            match self.phase {
                Phase::Matched => break Probe::Match(Detected::Http1),
                Phase::Failed => break Probe::NoMatch,
                // Empty lines before the request line (RFC 9112 §2.2), CRLF or bare LF.
                Phase::Start => match buf.get(i..).unwrap_or_default() {
                    [] | [b'\r'] => break Probe::Partial,
                    [b'\r', b'\n', ..] => i += 2,
                    [b'\n', ..] => i += 1,
                    [b'\r', ..] => self.phase = Phase::Failed,
                    _ => (self.phase, mark) = (Phase::Method, i),
                },
                // method = token
                Phase::Method => {
                    while i < buf.len() && is_tchar(buf[i]) {
                        i += 1;
                        if i - mark > MAX_METHOD_LEN {
                            self.phase = Phase::Failed;
                            break;
                        }
                    }
                    if self.phase == Phase::Failed {
                        continue;
                    }
                    if i == buf.len() {
                        break Probe::Partial;
                    }
                    if i == mark || buf[i] != b' ' {
                        self.phase = Phase::Failed;
                        continue;
                    }
                    i += 1;
                    (self.phase, mark) = (Phase::Target, i);
                }
                // request-target: one or more visible ASCII or obs-text bytes, up to the next SP.
                Phase::Target => {
                    while i < buf.len() && matches!(buf[i], 0x21..=0x7e | 0x80..=0xff) {
                        i += 1;
                    }
                    if i == buf.len() {
                        break Probe::Partial;
                    }
                    if i == mark || buf[i] != b' ' {
                        self.phase = Phase::Failed;
                        continue;
                    }
                    i += 1;
                    (self.phase, mark) = (Phase::Version, i);
                }
                // HTTP-version CRLF (or bare LF), byte by byte so a split anywhere inside is still
                // a prefix.
                Phase::Version => {
                    while i < buf.len() && i - mark < VERSION_CRLF.len() {
                        let k = i - mark;
                        if k == VERSION_LF_AT && buf[i] == b'\n' {
                            // A bare LF ends the line one byte early.
                            i += 1;
                            self.phase = Phase::Matched;
                            break;
                        }
                        let ok = if k == VERSION_MINOR_AT { matches!(buf[i], b'0' | b'1') } else { buf[i] == VERSION_CRLF[k] };
                        if !ok {
                            self.phase = Phase::Failed;
                            break;
                        }
                        i += 1;
                    }
                    if matches!(self.phase, Phase::Failed | Phase::Matched) {
                        continue;
                    }
                    if i - mark < VERSION_CRLF.len() {
                        break Probe::Partial;
                    }
                    self.phase = Phase::Matched;
                }
            }
        };
        // Offsets stay below DETECT_BUFFER_CAP (the classifier caps the buffer it passes).
        (self.pos, self.mark) = (i as u32, mark as u32);
        probe
    }
}

/// Matches a strict HTTP/1.0 or HTTP/1.1 request line, after at most one leading CRLF (one-shot).
#[cfg(test)]
pub(super) fn probe_h1(buf: &[u8]) -> Probe {
    H1::default().advance(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h1(buf: &[u8]) -> Probe {
        probe_h1(buf)
    }

    /// Asserts that every strict prefix of `line` is `Partial` and the whole line is `want`.
    fn assert_prefixes_partial_then(line: &[u8], want: Probe) {
        for end in 1..line.len() {
            assert_eq!(h1(&line[..end]), Probe::Partial, "prefix {:?}", String::from_utf8_lossy(&line[..end]));
        }
        assert_eq!(h1(line), want, "line {:?}", String::from_utf8_lossy(line));
    }

    #[test]
    fn real_request_lines_are_http1_once_the_crlf_arrives() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"GET /index.html?q=1&r=%20x HTTP/1.0\r\n",
            b"POST /api/v1/items HTTP/1.1\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"GET http://example.com/path HTTP/1.1\r\n",
            b"M-SEARCH * HTTP/1.1\r\n",
            b"PRI * HTTP/1.1\r\n",
        ] {
            assert_prefixes_partial_then(line, Probe::Match(Detected::Http1));
        }
    }

    #[test]
    fn bytes_after_the_request_line_do_not_matter() {
        assert_eq!(h1(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff"), Probe::Match(Detected::Http1));
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        assert_prefixes_partial_then(b"\r\nGET / HTTP/1.1\r\n", Probe::Match(Detected::Http1));
        assert_prefixes_partial_then(b"\r\n\r\n\nGET / HTTP/1.1\r\n", Probe::Match(Detected::Http1));
        assert_prefixes_partial_then(b"\nGET / HTTP/1.1\n", Probe::Match(Detected::Http1));
        assert_eq!(h1(b"\r\n\r"), Probe::Partial);
        assert_eq!(h1(b"\r\n\rx"), Probe::NoMatch);
        assert_eq!(h1(b"\r\r\n"), Probe::NoMatch);
    }

    #[test]
    fn a_bare_lf_ends_the_request_line() {
        assert_prefixes_partial_then(b"GET / HTTP/1.1\n", Probe::Match(Detected::Http1));
        assert_prefixes_partial_then(b"POST /x HTTP/1.0\n", Probe::Match(Detected::Http1));
        assert_eq!(h1(b"GET / HTTP/1.1\nHost: a\n\n"), Probe::Match(Detected::Http1));
    }

    #[test]
    fn whitespace_and_line_noise_are_not_http() {
        for noise in [
            &b" GET / HTTP/1.1\r\n"[..],
            b"\tGET / HTTP/1.1\r\n",
            b"\r\n \r\n",
            b"\r\n\t",
            b"\r\r\r\r",
            b"\n\n\n\n ",
            b"GET  / HTTP/1.1\r\n",
            b"GET /  HTTP/1.1\r\n",
            b"GET\t/ HTTP/1.1\r\n",
            b"GET / HTTP/1.1 \r\n",
            b"GET / HTTP/1.1\r\r",
            b"GET / HTTP/1.1\rX",
            b"GET HTTP/1.1\r\n",
            b"GET /\r\n",
            b" ",
        ] {
            assert_eq!(h1(noise), Probe::NoMatch, "{:?}", String::from_utf8_lossy(noise));
        }
    }

    #[test]
    fn only_http_1_0_and_1_1_in_exact_case_are_accepted() {
        for bad in [
            &b"GET / http/1.1\r\n"[..],
            b"GET / HTTP/1.2\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET / HTTP/1.10\r\n",
            b"GET / HTTP/1\r\n",
            b"GET / HTTPS/1.1\r\n",
            b"GET / HTTP/0.9\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(h1(bad), Probe::NoMatch, "{:?}", String::from_utf8_lossy(bad));
        }
        // The bad byte alone decides: no need to wait for the CRLF.
        assert_eq!(h1(b"GET / h"), Probe::NoMatch);
        assert_eq!(h1(b"GET / HTTP/1.2"), Probe::NoMatch);
    }

    #[test]
    fn method_is_limited_to_32_token_bytes() {
        let ok = format!("{} / HTTP/1.1\r\n", "A".repeat(MAX_METHOD_LEN));
        assert_eq!(h1(ok.as_bytes()), Probe::Match(Detected::Http1));
        let long = "A".repeat(MAX_METHOD_LEN + 1);
        assert_eq!(h1(long.as_bytes()), Probe::NoMatch);
        assert_eq!(h1(&long.as_bytes()[..MAX_METHOD_LEN]), Probe::Partial);
        assert_eq!(h1(b"GE(T / HTTP/1.1\r\n"), Probe::NoMatch);
        assert_eq!(h1(b"G\x00T / HTTP/1.1\r\n"), Probe::NoMatch);
    }

    #[test]
    fn request_target_must_be_visible_ascii_or_obs_text() {
        assert_eq!(h1(b"GET /a\x7fb HTTP/1.1\r\n"), Probe::NoMatch);
        assert_eq!(h1(b"GET /\xc3\xa9 HTTP/1.1\r\n"), Probe::Match(Detected::Http1));
        assert_eq!(h1(b"GET /a\x00 HTTP/1.1\r\n"), Probe::NoMatch);
        assert_eq!(h1(b"GET /a\tb HTTP/1.1\r\n"), Probe::NoMatch);
    }

    #[test]
    fn preface_split_at_every_byte() {
        for end in 1..H2_PREFACE.len() {
            assert_eq!(probe_h2(&H2_PREFACE[..end]), Probe::Partial, "prefix length {end}");
        }
        assert_eq!(probe_h2(H2_PREFACE), Probe::Match(Detected::Http2));
        let mut with_frames = H2_PREFACE.to_vec();
        with_frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(probe_h2(&with_frames), Probe::Match(Detected::Http2));
    }

    #[test]
    fn any_deviation_from_the_preface_rules_http2_out() {
        for i in 0..H2_PREFACE.len() {
            let mut bad = H2_PREFACE.to_vec();
            bad[i] ^= 0x20;
            assert_eq!(probe_h2(&bad), Probe::NoMatch, "flipped byte {i}");
            assert_eq!(probe_h2(&bad[..=i]), Probe::NoMatch, "flipped byte {i}, cut after it");
        }
        assert_eq!(probe_h2(b"PRI * HTTP/2.0\r\n\r\n\r\n"), Probe::NoMatch);
        assert_eq!(probe_h2(b"POST"), Probe::NoMatch);
    }
}
