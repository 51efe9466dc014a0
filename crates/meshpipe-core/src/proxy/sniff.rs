//! Protocol detection on a live connection, including the server-first race.
//!
//! Bytes are read from the client into a bounded buffer (at most
//! `DETECT_BUFFER_CAP`, grown on demand from 1 KiB so most connections never
//! hold more) and handed to the connection's classifier after every read
//! (it keeps its state, so each read costs only the new bytes), until it
//! decides, the detect timeout fires, or the client closes. Nothing read here
//! is lost: the buffer is returned to the pipeline, which writes it upstream
//! before splicing the rest.
//!
//! Server speaks first (beyond Linkerd): on a `detect` port, if the client
//! has sent nothing for the grace period, the upstream is dialled anyway and
//! both sides race. If the server sends first, the connection is opaque at
//! once (its bytes are left in the socket for splice to carry) and the target
//! is remembered so the next connection skips detection entirely. If the
//! client speaks first after all, detection goes on over the already-open
//! upstream connection. Inbound, the race only dials for a client the
//! port's authorization admits without an identity ([`Race`]): the
//! authorization stage comes after detection, and an application must
//! never see a connection from a client it refuses. Outbound to a meshed
//! destination nothing is dialled in plaintext: the silent client goes
//! through the tunnel as bytes, and the server's first bytes there decide
//! whether the target is learned (`forward_tls.rs`).
//!
//! Budget: detection of one connection is bounded in time (the detect
//! timeout, counted from accept, so a slowloris client cannot stretch it), in
//! bytes (`DETECT_BUFFER_CAP`) and in reads: a client still undecided after
//! `MAX_DETECT_READS` reads with data is `not_http`. How many connections of
//! a direction may detect at once is bounded too (`limits.rs`): past that, a
//! new connection does not wait for bytes. What it has already sent is
//! classified in one read (a request or ClientHello sent with the handshake
//! is detected as usual), and anything undecided skips detection
//! (`over_limit`). The one exception is inbound with a mesh identity: a
//! first byte of TLS, once it has arrived, waits briefly, holding no buffer,
//! for the rest of its first record, so a meshed peer's ClientHello split
//! over late segments is still terminated (`first_record.rs`). Every way out keeps every byte: the connection is
//! forwarded as TCP, never dropped.
//!
//! Short stalled greetings: with the grace period on, a client that has sent
//! fewer than `SHORT_GREETING` bytes the classifier cannot decide on (`ping`,
//! `HELO`) and then goes quiet for the grace period is waiting for an answer,
//! not typing a request line: every HTTP/1 request line is at least 16 bytes
//! and real HTTP clients write it in one go. It is `not_http` at once instead
//! of stalling for the whole detect timeout (Linkerd treats any read shorter
//! than 14 bytes as not HTTP). Longer undecided prefixes keep waiting: they
//! may be a long request line arriving slowly.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

use crate::addr::TargetAddr;
use crate::detect::{Classifier, Detected, Expect, Verdict, DETECT_BUFFER_CAP};
use crate::limits::DetectSlot;
use crate::proxy::first_record::{client_hello_whole, starts_with_handshake, NO_SLOT_WAIT};
use crate::proxy::server_spoke::{server_spoke, Spoke};
use crate::proxy::Context;
use crate::vocab::{DetectResult, Direction, PortMode};

/// Reads after which an undecided client is `not_http`. Real clients send a
/// request line or a ClientHello in one or a few segments (a 16 KiB
/// ClientHello is about a dozen). Classification is incremental (linear in
/// the bytes), so this bounds the wake-ups and `recv` calls a trickling
/// client can cost before it is forwarded, where each segment costs what any
/// forwarded segment costs.
const MAX_DETECT_READS: usize = 256;

/// Below this many buffered bytes, a stall of one grace period means the
/// client is not sending HTTP (Linkerd's minimum HTTP detection read).
const SHORT_GREETING: usize = 14;

/// What a connection without a detection slot reads before it is decided
/// or forwarded: a request head or a ClientHello as real clients send them
/// (a post-quantum key share makes a ClientHello about 1.5 KiB).
const INSTANT_READ: usize = 4096;

/// The upstream connection as detection leaves it.
pub enum Upstream {
    /// Not dialled yet: the pipeline's connect stage dials it.
    None,
    /// Opened by the server-first race.
    Open(TcpStream),
    /// The race's dial failed: the pipeline reports it as a connect failure
    /// instead of dialling again.
    Failed(io::Error),
}

/// What detection found, and everything it holds that the pipeline needs.
pub struct Sniffed<'a> {
    pub result: DetectResult,
    /// Every byte read from the client so far, in order.
    pub buffered: Vec<u8>,
    pub upstream: Upstream,
    /// The SNI of a detected TLS ClientHello.
    pub sni: Option<Arc<str>>,
    /// The client half-closed after sending `buffered`.
    pub client_eof: bool,
    /// The detection slot detection held, when it ran: the pipeline gives
    /// it back once the connection's TLS decision is made, or keeps it
    /// through an inbound mesh TLS handshake and the detection on the
    /// decrypted bytes after it (`proxy/inbound_http.rs`).
    pub slot: Option<DetectSlot<'a>>,
    /// A meshed destination's race ([`Race::Learn`]) that ended with the
    /// client silent: the target is learned only if, through the tunnel,
    /// the server's first bytes come before the client's and by this
    /// instant (the detect deadline), and show a server-first protocol
    /// (`forward_tls.rs`).
    pub learn_by: Option<Instant>,
}

impl Sniffed<'_> {
    fn new(result: DetectResult) -> Self {
        Sniffed { result, buffered: Vec::new(), upstream: Upstream::None, sni: None, client_eof: false, slot: None, learn_by: None }
    }
}

/// What a client still silent after the grace period leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Race {
    /// The upstream is dialled and both sides race (a plaintext
    /// destination the client is allowed to reach).
    Dial,
    /// A meshed destination: its upstream is mesh TLS, which the race must
    /// not dial in plaintext. Detection ends as `server_first` without
    /// dialling: the connection goes through the tunnel as bytes, and the
    /// target is learned only on the server's evidence there
    /// ([`Sniffed::learn_by`]), never on the client's silence alone (a
    /// pooled HTTP client that connects ahead of its first request must not
    /// turn detection off for every client of the target).
    Learn,
    /// Inbound, where the port's authorization refuses a client without an
    /// identity: nothing is dialled for it (a denied connection is reset
    /// before anything is dialled, and the app never sees it) and nothing
    /// is learned (it must not decide how other clients are detected). The
    /// client may still send a ClientHello to be terminated, until the
    /// detect timeout.
    Off,
}

/// Runs detection for one connection according to its port mode; `race`
/// says what a client still silent after the grace period leads to.
/// `mesh_name` is this proxy's mesh identity, inbound with one installed: a
/// meshed peer's ClientHello naming it is told apart on every port whose
/// bytes are inspected, as Linkerd detects TLS first on every inbound port
/// but an opaque one (whose meshed clients use the tunnel): on a port
/// declared HTTP, and on a learned server-first target whose client has
/// already sent a TLS record.
#[allow(clippy::too_many_arguments)]
pub async fn sniff<'a>(
    ctx: &'a Context,
    client: &TcpStream,
    source: std::net::IpAddr,
    direction: Direction,
    target: TargetAddr,
    mode: PortMode,
    timeout: Duration,
    race: Race,
    mesh_name: Option<&str>,
) -> Sniffed<'a> {
    if mode == PortMode::Opaque {
        return Sniffed::new(DetectResult::OpaquePort);
    }
    if mode == PortMode::Detect && ctx.server_first.is_server_first(target) && !(mesh_name.is_some() && starts_with_handshake(client)) {
        return Sniffed::new(DetectResult::ServerFirst);
    }
    let declared_http = matches!(mode, PortMode::Http1 | PortMode::Http2 | PortMode::Grpc);
    if mesh_name.is_some() && declared_http {
        let mut out = detect(ctx, client, source, direction, target, mode, Expect::Any, timeout, race).await;
        narrow_to_declared(&mut out, mode, mesh_name);
        return out;
    }
    detect(ctx, client, source, direction, target, mode, mode.expect(), timeout, race).await
}

/// On a port declared HTTP, detection also looked for TLS (`sniff`): any
/// outcome but this proxy's mesh TLS and the declared protocol is
/// `not_http`, as the declared port's own classifier would have said.
fn narrow_to_declared(out: &mut Sniffed<'_>, mode: PortMode, mesh_name: Option<&str>) {
    let keep = match out.result {
        DetectResult::Tls => out.sni.as_deref().is_some_and(|sni| Some(sni) == mesh_name),
        DetectResult::Http1 => mode == PortMode::Http1,
        DetectResult::Http2 => mode != PortMode::Http1,
        _ => true,
    };
    if !keep {
        out.result = DetectResult::NotHttp;
        out.sni = None;
    }
}

/// Detection proper, with the classifier expecting `expect`.
#[allow(clippy::too_many_arguments)]
async fn detect<'a>(
    ctx: &'a Context,
    client: &TcpStream,
    source: std::net::IpAddr,
    direction: Direction,
    target: TargetAddr,
    mode: PortMode,
    expect: Expect,
    timeout: Duration,
    race: Race,
) -> Sniffed<'a> {
    // Held until detection ends (returned in `Sniffed::slot`). Without one
    // (too many connections of this direction are detecting), the
    // connection never waits here: what it has already sent decides, or it
    // is forwarded at once.
    let Some(slot) = ctx.limits.detect_slot(direction, source) else {
        // Inbound, a first byte of TLS may be a meshed peer's ClientHello to
        // terminate (on a port whose classifier can say TLS): worth a short
        // wait for the rest of its first record.
        let tls_possible = matches!(expect, Expect::Any | Expect::Tls);
        let hello_wait = (direction == Direction::Inbound && tls_possible && ctx.mesh.tls().is_some()).then(|| timeout.min(NO_SLOT_WAIT));
        return without_slot(client, expect, hello_wait).await;
    };
    // A declared HTTP/1 port that also looks for mesh TLS classifies with
    // `Expect::Any`: it still takes a long request line for HTTP/1.
    let mut classifier = Classifier::new(expect).declared_http1(mode == PortMode::Http1);
    let start = Instant::now();
    let deadline = start + timeout;
    // Only undeclared ports race: a declared HTTP/TLS port is client-first.
    let grace = if mode == PortMode::Detect { ctx.detect.server_first_grace } else { None };
    let grace_at = grace.map(|g| start + g);

    let mut out = Sniffed::new(DetectResult::ReadTimeout);
    out.slot = Some(slot);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut last_bytes = start;
    // The race runs once: an app that did not speak first (it closed, or
    // answered as a client-first server) leaves the rest to the client.
    let mut raced = false;
    // Most clients have sent their first bytes by the time their connection
    // is served, but tokio has not seen the new socket readable yet. One
    // direct read usually decides at once: no timer is armed and no event
    // loop turn is waited for.
    let first = recv_now(client, &mut buf);
    let mut reads = usize::from(matches!(first, Ok(n) if n > 0));
    if absorb(first, &buf, &mut out, &mut last_bytes, &mut classifier) {
        out.buffered = buf;
        return out;
    }
    loop {
        let race_now = race != Race::Off && !raced && grace_at.is_some() && matches!(out.upstream, Upstream::None) && buf.is_empty();
        let short_stall = match grace {
            Some(g) if !buf.is_empty() && buf.len() < SHORT_GREETING => Some(last_bytes + g),
            _ => None,
        };
        tokio::select! {
            biased;
            r = client.readable() => {
                if let Err(_e) = r {
                    out.result = DetectResult::Error;
                    break;
                }
                if buf.capacity() == buf.len() {
                    let grow = if buf.capacity() == 0 { 1024 } else { buf.capacity() };
                    buf.reserve_exact(grow.min(DETECT_BUFFER_CAP - buf.len()));
                }
                let read = client.try_read_buf(&mut buf);
                let got = matches!(read, Ok(n) if n > 0);
                if absorb(read, &buf, &mut out, &mut last_bytes, &mut classifier) {
                    break;
                }
                reads += usize::from(got);
                if reads >= MAX_DETECT_READS {
                    // Still undecided after this many pieces: a trickle. Every
                    // byte is forwarded (on a port declared HTTP/1, a request
                    // line so far is served as HTTP: its head timeout rules).
                    out.result = if classifier.declared_request_pending() { DetectResult::Http1 } else { DetectResult::NotHttp };
                    break;
                }
            }
            r = server_readable(&out.upstream), if matches!(out.upstream, Upstream::Open(_)) => {
                // The server spoke (or closed) before the client finished.
                let _ = r;
                let spoke = match &out.upstream {
                    Upstream::Open(s) => server_spoke(s, deadline).await,
                    _ => Spoke::Closed,
                };
                match spoke {
                    Spoke::First if buf.is_empty() => {
                        out.result = DetectResult::ServerFirst;
                        if ctx.server_first.learn(target) {
                            ctx.events.push(crate::EngineEvent::ServerFirstLearned { target: target.to_string() });
                        }
                    }
                    // The client's bytes had begun: this connection goes
                    // on as bytes, nothing is learned.
                    Spoke::First => out.result = DetectResult::NotHttp,
                    // Closed or reset without a byte: not a server-first
                    // protocol, nothing to learn; the close is relayed.
                    Spoke::Closed => out.result = DetectResult::NotHttp,
                    Spoke::NotFirst => {
                        // An answer a client-first server gives a silent
                        // client (an HTTP/2 preface, an HTTP/1 408:
                        // `server_spoke.rs`). Not server-first: the race's
                        // connection is closed and the client's bytes
                        // decide, within the detect timeout. (Passed on as
                        // bytes, a client that waited would get past HTTP
                        // detection, and so past the `l5d-client-id`
                        // rewrite, by waiting for the grace period.)
                        tracing::debug!(?spoke, "the server did not speak first: the client's bytes decide");
                        out.upstream = Upstream::None;
                        raced = true;
                        continue;
                    }
                }
                break;
            }
            _ = sleep_until(grace_at.unwrap_or(deadline)), if race_now => {
                if race == Race::Learn {
                    // A meshed destination: its upstream is opened through
                    // the tunnel once detection ends, and this connection is
                    // carried as bytes. Whether the target is learned is for
                    // the server to show through the tunnel: who speaks
                    // first there, by the detect deadline.
                    out.result = DetectResult::ServerFirst;
                    out.learn_by = Some(deadline);
                    break;
                }
                // The same dial as after detection: the connect timeout (not
                // the detect deadline) bounds it, and running out of
                // descriptors backs off instead of failing.
                match crate::proxy::connect(target.0, ctx.connect_timeout).await {
                    Ok(s) => out.upstream = Upstream::Open(s),
                    Err(e) => {
                        // Reported by the pipeline as a connect failure.
                        out.upstream = Upstream::Failed(e);
                        out.result = DetectResult::NotHttp;
                        break;
                    }
                }
            }
            _ = sleep_until(short_stall.unwrap_or(deadline)), if short_stall.is_some() => {
                out.result = DetectResult::NotHttp;
                break;
            }
            _ = sleep_until(deadline) => {
                out.result = if classifier.declared_request_pending() { DetectResult::Http1 } else { DetectResult::ReadTimeout };
                break;
            }
        }
    }
    out.buffered = buf;
    out
}

/// Detection for a connection that found every slot of its direction taken
/// (a flood of slow clients holds them). It holds nothing over time: one
/// `recv` of what the client has already sent (bounded at `INSTANT_READ`
/// bytes) is classified. A client that sent its request or ClientHello with
/// the handshake (real clients do, and one that waited in the backlog
/// certainly has) is detected as usual: its HTTP still gets the HTTP layer,
/// and a meshed peer's TLS to an app port is still terminated. Anything
/// else is `over_limit`: forwarded as TCP at once, the bytes read here
/// first.
///
/// The one wait: with `hello_wait` (inbound, with a mesh identity, on a
/// port where TLS can be detected), a client whose first byte has arrived
/// and is a TLS handshake record gets up to that long for the rest of its
/// first record (up to `INSTANT_READ` bytes), holding no buffer meanwhile
/// (`first_record.rs`), and the read then takes the whole record. A meshed
/// peer's ClientHello split over late segments is still terminated; a
/// first record that never completes is read and forwarded as bytes, only
/// later. A client none of whose bytes has arrived when it is served is
/// not waited for (a server-first client would be delayed): it is
/// forwarded at once.
async fn without_slot<'a>(client: &TcpStream, expect: Expect, hello_wait: Option<Duration>) -> Sniffed<'a> {
    let mut out = Sniffed::new(DetectResult::OverLimit);
    if let Some(wait) = hello_wait.filter(|_| starts_with_handshake(client)) {
        // Whatever the outcome, the read below takes the whole record, or
        // everything queued when the wait timed out (a record longer than
        // the read is not waited for): nothing is left behind the readiness
        // the wait cleared.
        let _ = client_hello_whole(client, Instant::now() + wait, INSTANT_READ).await;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(INSTANT_READ);
    let mut classifier = Classifier::new(expect);
    let mut last_bytes = Instant::now();
    let read = recv_now(client, &mut buf);
    if !absorb(read, &buf, &mut out, &mut last_bytes, &mut classifier) {
        out.result = DetectResult::OverLimit;
    }
    out.buffered = buf;
    out
}

/// Takes one read's outcome into the buffer and classifies. Returns true
/// when detection is over (`out.result` says how).
fn absorb(read: io::Result<usize>, buf: &[u8], out: &mut Sniffed<'_>, last_bytes: &mut Instant, classifier: &mut Classifier) -> bool {
    match read {
        Ok(0) => {
            if buf.is_empty() {
                // Closed, or only half-closed (a client that reads a banner
                // after `shutdown(SHUT_WR)`): the two look the same here, so
                // the FIN is carried upstream and the server's answer
                // relayed; a fully closed client just makes that short.
                out.result = DetectResult::ClientClosed;
            } else {
                // A short message then a half-close: not HTTP, but every
                // byte still goes upstream.
                out.result = DetectResult::NotHttp;
            }
            out.client_eof = true;
            true
        }
        Ok(_) => {
            *last_bytes = Instant::now();
            match classifier.update(buf) {
                Verdict::Decided(d) => {
                    out.result = DetectResult::of(&d);
                    if let Detected::Tls(info) = d {
                        out.sni = info.sni.map(Arc::from);
                    }
                    true
                }
                Verdict::NeedMore if buf.len() >= DETECT_BUFFER_CAP => {
                    out.result = DetectResult::NotHttp;
                    true
                }
                Verdict::NeedMore => false,
            }
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => {
            out.result = if buf.is_empty() { DetectResult::Error } else { DetectResult::NotHttp };
            true
        }
    }
}

/// One `recv` into the buffer's spare capacity, without consulting tokio's
/// readiness (see the first read in `sniff`).
fn recv_now(client: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    crate::sys::recv_spare(std::os::fd::AsFd::as_fd(client), buf)
}

async fn server_readable(s: &Upstream) -> io::Result<()> {
    match s {
        Upstream::Open(s) => s.readable().await,
        _ => std::future::pending().await,
    }
}
