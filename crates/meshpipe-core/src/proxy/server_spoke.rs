//! What a server's first bytes to a silent client say: the evidence the
//! server-first race (`sniff.rs` on plaintext, `inbound_http.rs` inside mesh
//! TLS) and outbound mesh origination (`forward_tls.rs`, the server's bytes
//! through the tunnel) learn a target from.
//!
//! Learning is shared by every client of the target: once learned, none of
//! them is detected for the cache's lifetime (no HTTP metrics, no routing,
//! and inbound no `l5d-client-id` rewrite). So only bytes that show a
//! server-first protocol count, never bytes a client-first server sends to
//! a client that said nothing:
//! - an HTTP/2 server's SETTINGS frame, its connection preface, which it
//!   sends before reading anything (RFC 9113 §3.4);
//! - an HTTP/1 response (`HTTP/1.1 408 Request Timeout` to an idle
//!   connection, RFC 9110 §15.5.9).
//!
//! The first bytes may arrive split: while what has come could still be
//! the start of either, the check waits a little for the rest.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// An HTTP/2 frame header: 24-bit length, type, flags, stream (RFC 9113 §4.1).
const H2_FRAME_HEADER: usize = 9;

/// How long the rest of a split first segment is waited for.
const SPLIT_WAIT: Duration = Duration::from_millis(50);

/// What the server did first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Spoke {
    /// It closed (or failed) without a byte, or sent none by the deadline.
    Closed,
    /// It sent bytes a client-first server sends (an HTTP/2 preface, an
    /// HTTP/1 response): not evidence; the client's bytes still decide.
    NotFirst,
    /// It spoke first: a server-first protocol.
    First,
}

/// Reads (without taking) the server's first bytes on `upstream`, which
/// is readable, and says what they show. Waits at most [`SPLIT_WAIT`] (and
/// never past `deadline`) for the rest of a frame header that has arrived
/// in part.
pub(super) async fn server_spoke(upstream: &TcpStream, deadline: Instant) -> Spoke {
    let wait_until = (Instant::now() + SPLIT_WAIT).min(deadline);
    let mut probe = [0u8; H2_FRAME_HEADER];
    loop {
        // Bounded too: readiness without a byte to peek must not hold the
        // connection past its detect deadline.
        let n = match tokio::time::timeout_at(deadline, upstream.peek(&mut probe)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Spoke::Closed,
        };
        match evidence(&probe[..n]) {
            Some(spoke) => return spoke,
            // A peek returns at once while bytes are queued: a short pause
            // between looks, bounded, and only for a prefix of a preface.
            None if Instant::now() < wait_until => tokio::time::sleep(Duration::from_millis(1)).await,
            None => return Spoke::First,
        }
    }
}

/// The same verdict for a stream whose bytes can only be taken, not
/// peeked (the server's side of a mesh TLS tunnel): `first` holds what the
/// server sent first (at least a byte); while that could still be the start
/// of a preface, more is read into it, for at most [`SPLIT_WAIT`] and never
/// past `deadline`. Every byte read stays in `first`, to be passed on.
pub(super) async fn server_spoke_read<S: AsyncRead + Unpin>(server: &mut S, first: &mut Vec<u8>, deadline: Instant) -> io::Result<Spoke> {
    let wait_until = (Instant::now() + SPLIT_WAIT).min(deadline);
    loop {
        if let Some(spoke) = evidence(&first[..first.len().min(H2_FRAME_HEADER)]) {
            return Ok(spoke);
        }
        match tokio::time::timeout_at(wait_until, server.read_buf(first)).await {
            Ok(Ok(n)) if n > 0 => {}
            // A prefix of a preface, then the end of the stream or no more
            // by the wait: what the peek-based check says past its wait.
            Ok(Ok(_)) | Err(_) => return Ok(Spoke::First),
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// The verdict on `first` (at most a frame header), or `None` while it
/// could still be the start of an HTTP/2 SETTINGS frame or of an HTTP/1
/// response.
fn evidence(first: &[u8]) -> Option<Spoke> {
    if is_h2_settings(first) || first.starts_with(b"HTTP/") {
        return Some(Spoke::NotFirst);
    }
    let short = first.len() < H2_FRAME_HEADER;
    if short && (settings_prefix(first) || b"HTTP/".starts_with(first)) {
        return None;
    }
    Some(Spoke::First)
}

/// Whether `first` is the start of an HTTP/2 SETTINGS frame, the server
/// preface (RFC 9113 §3.4): type 0x4 on stream 0, flags none or ACK, a
/// length that is a whole number of 6-byte settings (§6.5).
fn is_h2_settings(first: &[u8]) -> bool {
    let Some(h) = first.get(..H2_FRAME_HEADER) else { return false };
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
    h[3] == 0x4 && h[4] & !0x1 == 0 && h[5..9] == [0, 0, 0, 0] && len.is_multiple_of(6)
}

/// Whether `first` (shorter than a frame header) may begin a SETTINGS
/// frame: a length under 2^16 (the preface's is a few settings), then the
/// type, flags and stream as far as they came.
fn settings_prefix(first: &[u8]) -> bool {
    first.iter().enumerate().all(|(i, b)| match i {
        0 => *b == 0,
        3 => *b == 0x4,
        4 => b & !0x1 == 0,
        5..=8 => *b == 0,
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_preface_and_an_http1_response_are_not_server_first() {
        // SETTINGS with two settings (12 bytes), as h2 and grpc-go send it.
        assert_eq!(evidence(&[0, 0, 12, 4, 0, 0, 0, 0, 0]), Some(Spoke::NotFirst));
        assert_eq!(evidence(&[0, 0, 0, 4, 1, 0, 0, 0, 0]), Some(Spoke::NotFirst), "an empty SETTINGS ACK");
        assert_eq!(evidence(b"HTTP/1.1 4"), Some(Spoke::NotFirst), "a 408 to an idle connection");
        assert_eq!(evidence(b"HTTP/1.0 "), Some(Spoke::NotFirst));
    }

    #[test]
    fn a_prefix_of_either_waits_for_more() {
        assert_eq!(evidence(&[0, 0, 12, 4]), None, "a split frame header");
        assert_eq!(evidence(&[0]), None);
        assert_eq!(evidence(b"HT"), None);
        assert_eq!(evidence(b"H"), None);
    }

    #[test]
    fn banners_are_server_first() {
        assert_eq!(evidence(b"220 smtp ready\r\n"), Some(Spoke::First));
        assert_eq!(evidence(b"+OK\r\n"), Some(Spoke::First), "shorter than a frame header");
        assert_eq!(evidence(b"\x4a\x00\x00\x00\x0a8.0.3"), Some(Spoke::First), "a MySQL greeting");
        assert_eq!(evidence(&[0, 0, 7, 4, 0, 0, 0, 0, 0]), Some(Spoke::First), "not whole settings");
        assert_eq!(evidence(&[0, 0, 6, 4, 0, 0, 0, 0, 1]), Some(Spoke::First), "not stream 0");
        assert_eq!(evidence(&[0, 0, 6, 1, 4, 0, 0, 0, 0]), Some(Spoke::First), "HEADERS");
        assert_eq!(evidence(b"HELO"), Some(Spoke::First));
    }

    #[tokio::test(start_paused = true)]
    async fn a_split_preface_is_read_whole_from_a_stream() {
        use tokio::io::AsyncWriteExt;
        let (mut server, mut proxy) = tokio::io::duplex(64);
        server.write_all(&[0, 0, 6]).await.unwrap();
        let mut first = Vec::with_capacity(64);
        proxy.read_buf(&mut first).await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            server.write_all(&[4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]).await.unwrap();
            server
        });
        let spoke = server_spoke_read(&mut proxy, &mut first, Instant::now() + Duration::from_secs(30)).await.unwrap();
        assert_eq!(spoke, Spoke::NotFirst, "a SETTINGS frame split after three bytes");
        assert_eq!(first, [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100], "every byte read is kept, in order");
        drop(writer.await.unwrap());

        // A banner decides at once, and a prefix the server never finishes
        // is server-first once the wait is over.
        let (mut server, mut proxy) = tokio::io::duplex(64);
        let mut first = b"220 ready\r\n".to_vec();
        assert_eq!(server_spoke_read(&mut proxy, &mut first, Instant::now()).await.unwrap(), Spoke::First);
        server.write_all(b"H").await.unwrap();
        let mut first = Vec::with_capacity(64);
        proxy.read_buf(&mut first).await.unwrap();
        let start = Instant::now();
        assert_eq!(server_spoke_read(&mut proxy, &mut first, start + Duration::from_secs(30)).await.unwrap(), Spoke::First);
        assert!(start.elapsed() >= SPLIT_WAIT, "the rest was waited for");
        assert_eq!(first, b"H");
    }

    #[tokio::test]
    async fn a_split_preface_is_waited_for() {
        use std::future::Future;
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        server.write_all(&[0, 0, 6, 4]).await.unwrap();
        client.readable().await.unwrap();
        let spoke = server_spoke(&client, Instant::now() + Duration::from_secs(30));
        tokio::pin!(spoke);
        // The first four bytes alone decide nothing...
        let pending = std::future::poll_fn(|cx| std::task::Poll::Ready(spoke.as_mut().poll(cx).is_pending())).await;
        assert!(pending, "decided on a split frame header");
        // ...the rest of the header makes it an HTTP/2 preface.
        server.write_all(&[0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]).await.unwrap();
        assert_eq!(spoke.await, Spoke::NotFirst);
        let mut all = [0u8; 15];
        assert_eq!(client.peek(&mut all).await.unwrap(), 15, "nothing was taken from the socket");
    }
}
