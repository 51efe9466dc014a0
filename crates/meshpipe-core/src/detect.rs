//! Protocol detection: a pure, incremental classifier for the first bytes a client sends.
//!
//! The proxy reads what the client sends into a buffer and hands the *whole* accumulated prefix
//! to its connection's [`Classifier`] after every read; the classifier keeps each matcher's state
//! between reads, so it only looks at the new bytes ([`classify`] is the one-shot form). It
//! answers [`Verdict::NeedMore`] only while more bytes could still change the answer, and [`Verdict::Decided`] as soon as they cannot:
//! an HTTP/2 client connection preface (RFC 9113 §3.4, which is also how gRPC starts), a strict
//! HTTP/1.0 or HTTP/1.1 request line (RFC 9112 §3), a TLS handshake record carrying a complete
//! ClientHello (RFC 8446 §4.1.2, with its SNI and ALPN), or [`Detected::NotHttp`] for anything
//! else. The verdict is a function of the bytes alone, so a request line split across any number
//! of reads is detected exactly as if it had arrived whole, and once a prefix is decided every
//! longer input starting with it gets the same verdict.
//!
//! The buffer is bounded by [`DETECT_BUFFER_CAP`] (16 KiB): the classifier never looks past it,
//! and once that many bytes are buffered it always decides. A request line or a ClientHello that
//! does not complete within the cap is `NotHttp`, which means the connection is proxied as opaque
//! TCP with every buffered byte forwarded first: an oversized greeting costs metrics, never the
//! connection. 16 KiB is one maximum-size TLS record and fits the large ClientHellos that
//! post-quantum key shares produce.
//!
//! A port's declared mode ([`Expect`]) narrows what may be concluded but is validated, not
//! trusted: on an `HTTP/2` port, bytes that are not the preface are `NotHttp`. One exception
//! to the cap: on a port declared HTTP/1, a request line (after any empty lines) that is still
//! well-formed when the cap is reached is `Http1`, so the HTTP layer serves it within its own, larger head limit (a
//! long query string is a request, and one over the limit gets its `431`).
//!
//! Layout: `detect/http.rs` matches the HTTP/2 preface and the HTTP/1 request line,
//! `detect/tls.rs` walks and reassembles TLS handshake records, and `detect/client_hello.rs`
//! parses the ClientHello body for SNI and ALPN. Each matcher is monotone on its own; this file
//! only combines them and applies the cap.

mod client_hello;
mod http;
mod tls;

/// The most bytes the classifier inspects; at or past this length it always decides.
pub const DETECT_BUFFER_CAP: usize = 16 * 1024;

/// What the port's mode lets the classifier conclude.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// `detect` ports: try HTTP/2, HTTP/1 and TLS.
    Any,
    /// `HTTP/1` ports: only a valid HTTP/1 request line is accepted.
    Http1,
    /// `HTTP/2` and `gRPC` ports: only the HTTP/2 client preface is accepted.
    Http2,
    /// `TLS` ports: only a TLS ClientHello is accepted.
    Tls,
}

/// What a TLS ClientHello revealed, for metrics. Strings are converted lossily from the wire
/// bytes and capped at [`TLS_STRING_CAP`] bytes; at most [`ALPN_CAP`] ALPN names are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The first `host_name` entry of the server_name extension (RFC 6066 §3), as sent.
    pub sni: Option<String>,
    /// The application_layer_protocol_negotiation names (RFC 7301), in the client's order.
    pub alpn: Vec<String>,
}

/// The protocol the classifier concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Tls(TlsInfo),
    /// Not a protocol this proxy understands (or not the declared one): proxied as opaque TCP.
    NotHttp,
}

/// The classifier's answer for one buffered prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    NeedMore,
    Decided(Detected),
}

/// Longest SNI host name or ALPN protocol name kept, in bytes (longer ones are truncated).
pub const TLS_STRING_CAP: usize = 255;
/// Most ALPN names kept from one ClientHello (further names are validated but dropped).
pub const ALPN_CAP: usize = 16;

/// One protocol matcher's view of a prefix. Every matcher is monotone: once it returns `Match`
/// or `NoMatch` for a prefix, it returns the same for every extension of that prefix, which is
/// what lets a matcher keep its state and only look at the bytes that arrived since.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    Match(Detected),
    NoMatch,
    Partial,
}

/// One connection's classification, kept between reads.
///
/// Call [`Classifier::update`] with the whole accumulated prefix after every read: each
/// matcher remembers how far it has looked and examines only the bytes that arrived since, so a
/// client trickling its first bytes costs time linear in what it sent (the HTTP/1 matcher used
/// to rescan the whole request line after every read: quadratic). The verdict is exactly the
/// one-shot [`classify`] of the same prefix, however the bytes were split across calls.
#[derive(Clone, Copy, Debug)]
pub struct Classifier {
    expect: Expect,
    h2: http::H2,
    h1: http::H1,
    tls: tls::Tls,
    /// The length of the prefix seen by the previous call.
    seen: u32,
    /// A request line still well-formed at the cap is HTTP/1: the port is declared HTTP/1.
    declared_http1: bool,
    /// The last update left the HTTP/1 matcher undecided (a request line so far).
    h1_pending: bool,
}

impl Classifier {
    pub fn new(expect: Expect) -> Classifier {
        Classifier {
            expect,
            h2: Default::default(),
            h1: Default::default(),
            tls: Default::default(),
            seen: 0,
            declared_http1: expect == Expect::Http1,
            h1_pending: false,
        }
    }

    /// On a port declared HTTP/1, whether the bytes so far are the start of a well-formed
    /// request line: when detection must end undecided (too many reads, the detect timeout),
    /// the connection is then still HTTP/1, for the HTTP layer and its head timeout to serve,
    /// rather than bytes that would bypass it.
    pub fn declared_request_pending(&self) -> bool {
        self.declared_http1 && self.h1_pending
    }

    /// Marks the port as declared HTTP/1 when the classifier looks for more than HTTP/1
    /// (a declared port that may also receive this proxy's mesh TLS): a request line still
    /// well-formed at the cap is then `Http1`, as with [`Expect::Http1`].
    pub fn declared_http1(mut self, declared: bool) -> Classifier {
        self.declared_http1 = declared;
        self
    }

    /// Classifies the bytes a client sent so far. `buf` must start with the bytes of the
    /// previous call (the proxy only ever appends to its buffer); a shorter `buf` starts over.
    ///
    /// Returns `NeedMore` for an empty buffer and never for one of `DETECT_BUFFER_CAP` bytes or
    /// more. Bytes past the cap are ignored. Once decided, the caller should stop calling.
    pub fn update(&mut self, buf: &[u8]) -> Verdict {
        if buf.len() < self.seen as usize {
            *self = Classifier::new(self.expect).declared_http1(self.declared_http1);
        }
        if buf.is_empty() {
            return Verdict::NeedMore;
        }
        let capped = &buf[..buf.len().min(DETECT_BUFFER_CAP)];
        self.seen = capped.len() as u32;
        let mut partial = false;
        let mut h1_partial = false;
        let order: &[Matcher] = match self.expect {
            Expect::Any => &[Matcher::H2, Matcher::H1, Matcher::Tls],
            Expect::Http1 => &[Matcher::H1],
            Expect::Http2 => &[Matcher::H2],
            Expect::Tls => &[Matcher::Tls],
        };
        for matcher in order {
            let probe = match matcher {
                Matcher::H2 => self.h2.advance(capped),
                Matcher::H1 => self.h1.advance(capped),
                Matcher::Tls => self.tls.advance(capped),
            };
            match probe {
                // Matchers are mutually exclusive on any one prefix, so the first match is the match.
                Probe::Match(detected) => {
                    self.h1_pending = false;
                    return Verdict::Decided(detected);
                }
                Probe::Partial => {
                    partial = true;
                    h1_partial |= matches!(matcher, Matcher::H1);
                }
                Probe::NoMatch => {}
            }
        }
        let undecided = partial && buf.len() < DETECT_BUFFER_CAP;
        self.h1_pending = h1_partial && undecided;
        if undecided {
            Verdict::NeedMore
        } else if h1_partial && self.declared_http1 {
            Verdict::Decided(Detected::Http1)
        } else {
            Verdict::Decided(Detected::NotHttp)
        }
    }
}

#[derive(Clone, Copy)]
enum Matcher {
    H2,
    H1,
    Tls,
}

/// Classifies a whole prefix at once: the verdict a [`Classifier`] gives for the same bytes
/// however they arrived.
pub fn classify(buf: &[u8], expect: Expect) -> Verdict {
    Classifier::new(expect).update(buf)
}

/// Converts wire bytes to a `String` for metrics: invalid UTF-8 becomes U+FFFD and the result
/// is cut to at most [`TLS_STRING_CAP`] bytes on a character boundary.
fn lossy_capped(bytes: &[u8]) -> String {
    // Every input byte yields at least one output byte, so the first CAP bytes are enough,
    // plus 3 so that a character straddling the cap is decoded whole rather than as U+FFFD.
    let head = &bytes[..bytes.len().min(TLS_STRING_CAP + 3)];
    let mut s = String::from_utf8_lossy(head).into_owned();
    if s.len() > TLS_STRING_CAP {
        let mut end = TLS_STRING_CAP;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn decided(d: Detected) -> Verdict {
        Verdict::Decided(d)
    }

    #[test]
    fn empty_buffer_needs_more_in_every_mode() {
        for expect in [Expect::Any, Expect::Http1, Expect::Http2, Expect::Tls] {
            assert_eq!(classify(b"", expect), Verdict::NeedMore);
        }
    }

    #[test]
    fn first_byte_that_starts_nothing_decides_at_once() {
        for b in [0x00u8, 0x01, b' ', b'\t', b'(', b'@', 0x7f, 0x80, 0xff, 0x17] {
            assert_eq!(classify(&[b], Expect::Any), decided(Detected::NotHttp), "byte {b:#04x}");
        }
        // Candidates of each kind keep the door open (CR and LF: empty
        // lines before a request line).
        for b in [b'G', b'P', b'\r', b'\n', 0x16, b'~'] {
            assert_eq!(classify(&[b], Expect::Any), Verdict::NeedMore, "byte {b:#04x}");
        }
    }

    #[test]
    fn any_mode_recognises_each_protocol() {
        assert_eq!(classify(PREFACE, Expect::Any), decided(Detected::Http2));
        assert_eq!(classify(b"GET / HTTP/1.1\r\n", Expect::Any), decided(Detected::Http1));
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n", Expect::Any), decided(Detected::Http1));
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n", Expect::Any), decided(Detected::NotHttp));
    }

    #[test]
    fn declared_mode_is_validated_not_trusted() {
        let h1 = b"GET / HTTP/1.1\r\n";
        assert_eq!(classify(h1, Expect::Http1), decided(Detected::Http1));
        assert_eq!(classify(h1, Expect::Http2), decided(Detected::NotHttp));
        assert_eq!(classify(h1, Expect::Tls), decided(Detected::NotHttp));
        assert_eq!(classify(PREFACE, Expect::Http2), decided(Detected::Http2));
        assert_eq!(classify(PREFACE, Expect::Http1), decided(Detected::NotHttp));
        assert_eq!(classify(PREFACE, Expect::Tls), decided(Detected::NotHttp));
        // The first byte already rules the declared protocol out.
        assert_eq!(classify(b"G", Expect::Http2), decided(Detected::NotHttp));
        assert_eq!(classify(b"G", Expect::Tls), decided(Detected::NotHttp));
        assert_eq!(classify(&[0x16], Expect::Http1), decided(Detected::NotHttp));
    }

    #[test]
    fn cap_forces_a_decision_and_bytes_past_it_are_ignored() {
        let mut line = b"GET /".to_vec();
        line.resize(DETECT_BUFFER_CAP - 1, b'a');
        assert_eq!(classify(&line, Expect::Any), Verdict::NeedMore);
        line.push(b'a');
        assert_eq!(classify(&line, Expect::Any), decided(Detected::NotHttp));
        // A request line that would complete just past the cap is still opaque on a detect port;
        // on a port declared HTTP/1 it is HTTP/1, so the HTTP layer serves it within its own
        // head limit (or answers 431).
        line.extend_from_slice(b" HTTP/1.1\r\n");
        assert_eq!(classify(&line, Expect::Any), decided(Detected::NotHttp));
        assert_eq!(classify(&line, Expect::Http1), decided(Detected::Http1));
        assert_eq!(Classifier::new(Expect::Any).declared_http1(true).update(&line), decided(Detected::Http1));
        assert_eq!(classify(&line, Expect::Http2), decided(Detected::NotHttp));
        // Only a request line still well-formed at the cap: a bad byte before it is not HTTP.
        let mut bad = b"GET /".to_vec();
        bad.resize(DETECT_BUFFER_CAP - 1, b'a');
        bad[100] = b'\x01';
        bad.push(b'a');
        assert_eq!(classify(&bad, Expect::Http1), decided(Detected::NotHttp));
        // Below the cap the declared port still waits for the line's end; a request line so
        // far is pending (HTTP/1 if detection must end now), anything else is not.
        assert_eq!(classify(&line[..DETECT_BUFFER_CAP - 1], Expect::Http1), Verdict::NeedMore);
        let mut c = Classifier::new(Expect::Http1);
        assert_eq!(c.update(b"GET /x"), Verdict::NeedMore);
        assert!(c.declared_request_pending());
        assert_eq!(c.update(b"GET /x HTTP/1.1\r\n"), decided(Detected::Http1));
        assert!(!c.declared_request_pending(), "decided: nothing pending");
        let mut c = Classifier::new(Expect::Any);
        assert_eq!(c.update(b"GET /x"), Verdict::NeedMore);
        assert!(!c.declared_request_pending(), "a detect port has nothing declared");
        let mut c = Classifier::new(Expect::Any).declared_http1(true);
        assert_eq!(c.update(&[0x16, 0x03, 0x01]), Verdict::NeedMore);
        assert!(!c.declared_request_pending(), "a ClientHello so far is not a request line");
    }

    #[test]
    fn request_line_ending_exactly_at_the_cap_is_http1() {
        let tail = b" HTTP/1.1\r\n";
        let mut line = b"GET /".to_vec();
        line.resize(DETECT_BUFFER_CAP - tail.len(), b'a');
        line.extend_from_slice(tail);
        assert_eq!(line.len(), DETECT_BUFFER_CAP);
        assert_eq!(classify(&line, Expect::Any), decided(Detected::Http1));
        assert_eq!(classify(&line[..line.len() - 1], Expect::Any), Verdict::NeedMore);
    }

    #[test]
    fn lossy_capped_converts_and_truncates_on_char_boundaries() {
        assert_eq!(lossy_capped(b"h2"), "h2");
        assert_eq!(lossy_capped(b"a\xffb"), "a\u{fffd}b");
        let long = vec![b'x'; 300];
        assert_eq!(lossy_capped(&long).len(), TLS_STRING_CAP);
        // 255 invalid bytes become 255 three-byte replacement characters: cut to 85 of them.
        let bad = vec![0xffu8; 255];
        let s = lossy_capped(&bad);
        assert_eq!(s.len(), 255);
        assert_eq!(s.chars().count(), 85);
        // A two-byte character straddling the cap is dropped whole.
        let mut mixed = vec![b'a'; 254];
        mixed.extend_from_slice("é".as_bytes());
        assert_eq!(lossy_capped(&mixed), "a".repeat(254));
        // A four-byte character straddling the cap is dropped whole, not replaced by U+FFFD.
        let mut emoji = vec![b'a'; 252];
        emoji.extend_from_slice("😀".as_bytes());
        assert_eq!(lossy_capped(&emoji), "a".repeat(252));
    }

    /// Fastest of `rounds` timings of `f`, in nanoseconds.
    fn fastest(rounds: usize, mut f: impl FnMut() -> Verdict) -> u128 {
        (0..rounds)
            .map(|_| {
                let t = std::time::Instant::now();
                std::hint::black_box(f());
                t.elapsed().as_nanos()
            })
            .min()
            .unwrap_or(0)
    }

    #[test]
    fn a_trickle_costs_about_one_pass_over_its_bytes() {
        // `GET /` and then a request-target that never ends, in 256 reads of 64 bytes: every
        // matcher state survives each read. Rescanning the prefix after every read (the cost
        // before the classifier kept state) is about 128 passes over the 16 KiB.
        let mut input = b"GET /".to_vec();
        input.resize(DETECT_BUFFER_CAP, b'a');
        let trickle = || {
            let mut c = Classifier::new(Expect::Any);
            let mut v = Verdict::NeedMore;
            for end in (64..=input.len()).step_by(64) {
                v = c.update(std::hint::black_box(&input[..end]));
            }
            v
        };
        let once = || classify(std::hint::black_box(&input), Expect::Any);
        assert_eq!(trickle(), decided(Detected::NotHttp));
        let (t, o) = (fastest(200, trickle), fastest(200, once));
        // Generous: a linear classifier measures about 1-2x here, a rescanning one about 100x.
        assert!(t < 8 * o.max(1), "256 incremental reads took {t} ns, one pass over the same 16 KiB {o} ns");
    }
}
