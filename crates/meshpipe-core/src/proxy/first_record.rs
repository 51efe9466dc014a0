//! Waiting for a whole first TLS record without a detection slot.
//!
//! A connection that finds every detection slot of its direction taken (a
//! flood of slow clients holds them, `limits.rs`) must not hold anything
//! over time: no buffer, no TLS state. But a meshed peer whose ClientHello
//! was split over TCP segments, the second one late (a lost segment, a
//! small congestion window), must still be recognised. So the proxy waits,
//! for a short bounded time (`NO_SLOT_WAIT`), until the client's whole
//! ClientHello is in the socket's receive queue, reading only the queue's
//! length (`FIONREAD`) and, once, the record and handshake headers
//! (`MSG_PEEK`): the kernel holds the bytes, as it does for any socket
//! waiting to be served. The tunnel on the inbound port waits this way
//! before making TLS state (`inbound_mesh.rs`); detection without a slot
//! waits this way before its one read, for a connection whose first byte
//! has arrived and is a TLS handshake record (`sniff.rs`), so an SNI-routed
//! mesh TLS ClientHello is read whole and terminated; there the record may
//! be no longer than that read, which must empty the queue whatever the
//! wait's outcome.

use std::io;

use tokio::net::TcpStream;

/// The TLS record type of a handshake (RFC 8446 §5.1): what every TLS
/// connection starts with.
pub(super) const HANDSHAKE_RECORD: u8 = 0x16;

/// Whether the first byte the client sent, if any has arrived, is a TLS
/// handshake record's type. Does not wait and takes nothing from the socket.
pub(super) fn starts_with_handshake(client: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    let fd = std::os::fd::AsFd::as_fd(client);
    matches!(crate::sys::recv(fd, &mut first, libc::MSG_PEEK | libc::MSG_DONTWAIT), Ok(1)) && first[0] == HANDSHAKE_RECORD
}

/// The largest TLS record (RFC 8446 §5.1: 2^14 bytes of plaintext; a
/// ClientHello is plaintext) with its 5-byte header.
pub(super) const MAX_FIRST_RECORD: usize = 5 + (1 << 14);

/// How long a client without a detection slot may take from its first byte
/// to the end of what needs its ClientHello (for the tunnel: the
/// ClientHello, the handshake and the transport header; for an app port:
/// the ClientHello, and the handshake when it is mesh TLS to this proxy):
/// long enough for a lost segment's retransmission (RFC 6298 §2.4 rounds
/// the retransmission timeout up to 1 s) and a round trip, short enough
/// that such clients, which hold a connection but no slot, turn over
/// quickly.
pub(super) const NO_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How many wake-ups (segments, roughly) a client's first record may take
/// to arrive, as detection bounds its reads (`sniff.rs`).
const MAX_WAKEUPS: usize = 256;

/// Why a client without a detection slot is not handed to rustls.
#[derive(Debug)]
pub(super) enum FirstRecord {
    /// The client shut down (or reset) before its ClientHello was whole.
    Closed,
    /// The first record is no TLS handshake record of a valid length that
    /// starts with a ClientHello it holds whole.
    Malformed(&'static str),
    Io(io::Error),
}

/// Waits, until `deadline` at most, for the client's whole ClientHello to
/// be in the socket's receive queue, in its first TLS record. Without a
/// detection slot no TLS state is made before that, and nothing is
/// buffered in the proxy: each wake-up reads the queue's length
/// (`FIONREAD`), never its bytes, except the record and handshake headers
/// once. rustls would reassemble a ClientHello fragmented over many records
/// (up to 64 KiB), so a client without a slot must send it in one record,
/// as every TLS stack does for a ClientHello that fits one (RFC 8446 §5.1
/// allows fragmenting, no client needs it below 16 KiB). A ClientHello
/// split over late TCP segments thus goes on when its last segment arrives,
/// while a stalled one costs only its socket until the deadline.
/// A first record longer than `max_record` bytes (with its header) is not
/// waited for (`Malformed`): the tunnel allows what TLS allows
/// ([`MAX_FIRST_RECORD`]); detection without a slot allows what its one
/// read takes, so that after a wait that timed out that read still empties
/// the queue (the wait cleared the socket's readiness, and bytes left
/// behind would wait for the client's next segment). A client trickling
/// its record over more than [`MAX_WAKEUPS`] segments is `Malformed` too.
/// `Ok(Some(n))`: the first record, `n` bytes with its header, is whole in
/// the queue; `Ok(None)`: the deadline passed (fewer than `max_record` bytes
/// are queued).
pub(super) async fn client_hello_whole(
    client: &TcpStream,
    deadline: tokio::time::Instant,
    max_record: usize,
) -> Result<Option<usize>, FirstRecord> {
    /// The record header (5 bytes) and the handshake header (4, RFC 8446 §4).
    const HEADERS: usize = 9;
    const CLIENT_HELLO: u8 = 1;
    let fd = std::os::fd::AsFd::as_fd(client);
    let mut need: Option<usize> = None;
    let mut closed = false;
    let mut malformed = None;
    let mut wakeups = 0usize;
    let mut check = || -> io::Result<()> {
        wakeups += 1;
        if wakeups > MAX_WAKEUPS {
            malformed = Some("the first TLS record trickled in over too many segments");
            return Ok(());
        }
        let queued = crate::sys::queued_bytes(fd)?;
        if need.is_none() && queued >= HEADERS {
            let mut head = [0u8; HEADERS];
            if crate::sys::recv(fd, &mut head, libc::MSG_PEEK | libc::MSG_DONTWAIT)? == HEADERS {
                let record = usize::from(u16::from_be_bytes([head[3], head[4]]));
                let hello = 4 + (usize::from(head[6]) << 16 | usize::from(head[7]) << 8 | usize::from(head[8]));
                malformed = if head[0] != HANDSHAKE_RECORD {
                    Some("the first record is no TLS handshake record")
                } else if 5 + record > MAX_FIRST_RECORD {
                    Some("the first TLS record is longer than 2^14 bytes (RFC 8446 §5.1)")
                } else if 5 + record > max_record {
                    Some("the first TLS record is longer than a connection without a detection slot may send at once")
                } else if head[5] != CLIENT_HELLO {
                    Some("the first handshake message is no ClientHello")
                } else if hello > record {
                    Some("the ClientHello does not fit its first record (no detection slot)")
                } else {
                    None
                };
                if malformed.is_some() {
                    return Ok(());
                }
                need = Some(5 + record);
            }
        }
        if need.is_some_and(|n| queued >= n) {
            return Ok(());
        }
        if crate::sys::peer_closed(fd) {
            closed = true;
            return Ok(());
        }
        // Cleared readiness: the next wake-up is the next segment (or FIN).
        Err(io::ErrorKind::WouldBlock.into())
    };
    // Most clients' ClientHello is whole already: no wait, no timer.
    let now = match check() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        other => Some(other),
    };
    let r = match now {
        Some(r) => r,
        None => match tokio::time::timeout_at(deadline, client.async_io(tokio::io::Interest::READABLE, check)).await {
            Ok(r) => r,
            Err(_) => return Ok(None),
        },
    };
    match (r, malformed) {
        (Ok(()), Some(why)) => Err(FirstRecord::Malformed(why)),
        (Ok(()), None) if closed => Err(FirstRecord::Closed),
        (Ok(()), None) => Ok(need),
        (Err(e), _) => Err(FirstRecord::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use tokio::time::{Duration, Instant};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    /// A first record of `len` bytes after its header, holding a
    /// ClientHello of `len - 4` bytes.
    fn hello(len: usize) -> Vec<u8> {
        let body = len - 4;
        let mut r = vec![HANDSHAKE_RECORD, 3, 1, (len >> 8) as u8, len as u8, 1, 0, (body >> 8) as u8, body as u8];
        r.resize(5 + len, 0xab);
        r
    }

    #[tokio::test]
    async fn a_split_first_record_is_whole_once_its_last_segment_arrives() {
        let (mut c, s) = pair().await;
        assert!(!starts_with_handshake(&s), "nothing has arrived");
        let record = hello(600);
        c.write_all(&record[..100]).await.unwrap();
        let far = Instant::now() + Duration::from_secs(30);
        let wait = client_hello_whole(&s, far, MAX_FIRST_RECORD);
        let late = async {
            // The waiter has seen the first part and is pending.
            tokio::task::yield_now().await;
            c.write_all(&record[100..]).await.unwrap();
        };
        let (whole, ()) = tokio::join!(wait, late);
        assert_eq!(whole.unwrap(), Some(605));
        assert!(starts_with_handshake(&s));
        assert_eq!(crate::sys::queued_bytes(std::os::fd::AsFd::as_fd(&s)).unwrap(), 605, "nothing was taken from the socket");
    }

    #[tokio::test]
    async fn an_incomplete_record_times_out_and_a_close_is_seen() {
        let (mut c, s) = pair().await;
        c.write_all(&hello(600)[..50]).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(matches!(client_hello_whole(&s, soon, MAX_FIRST_RECORD).await, Ok(None)));
        c.shutdown().await.unwrap();
        let far = Instant::now() + Duration::from_secs(30);
        assert!(matches!(client_hello_whole(&s, far, MAX_FIRST_RECORD).await, Err(FirstRecord::Closed)));
    }

    #[tokio::test]
    async fn malformed_first_records_are_refused_without_waiting() {
        let oversized = [HANDSHAKE_RECORD, 3, 1, 0x40, 0x01, 1, 0, 0x40, 0x00];
        let not_hello = [HANDSHAKE_RECORD, 3, 1, 0, 10, 2, 0, 0, 6];
        let fragmented = [HANDSHAKE_RECORD, 3, 1, 0, 10, 1, 0, 1, 0];
        let not_handshake = [0x17, 3, 3, 0, 10, 1, 0, 0, 6];
        for bad in [&oversized, &not_hello, &fragmented, &not_handshake] {
            let (mut c, s) = pair().await;
            c.write_all(bad).await.unwrap();
            let far = Instant::now() + Duration::from_secs(30);
            let r = tokio::time::timeout(Duration::from_secs(10), client_hello_whole(&s, far, MAX_FIRST_RECORD))
                .await
                .expect("decided without the deadline");
            assert!(matches!(r, Err(FirstRecord::Malformed(_))), "{bad:?}: {r:?}");
        }
        // Within TLS's limit but over the caller's: not waited for.
        let (mut c, s) = pair().await;
        c.write_all(&hello(4096)[..9]).await.unwrap();
        let far = Instant::now() + Duration::from_secs(30);
        let r = tokio::time::timeout(Duration::from_secs(10), client_hello_whole(&s, far, 4096)).await.expect("decided at once");
        assert!(matches!(r, Err(FirstRecord::Malformed(_))), "{r:?}");
        let (mut c, s) = pair().await;
        c.write_all(&hello(4091)).await.unwrap();
        assert_eq!(client_hello_whole(&s, far, 4096).await.unwrap(), Some(4096), "a record of exactly the limit is waited for");
    }
}
