//! The client connection as the HTTP server reads it: the bytes protocol
//! detection already took from the stream come first, in order, then the
//! stream itself (nothing read during detection is lost), and every byte is
//! counted into the connection's and the target's counters as the TCP path
//! counts them (`tcp_read_bytes_total` / `tcp_write_bytes_total`, the
//! `/connections` view, and the idle sweep's activity measure). Upstream
//! sockets (`CountedIo`) count as open `dst` connections.
//!
//! The stream is a plain socket (a redirected plaintext connection), or the
//! decrypted side of inbound mesh TLS (the tunnel, SNI termination): the
//! type is generic, so the plain path is monomorphised on `TcpStream` and
//! pays no indirection or boxing for the TLS one. Bytes are counted as the
//! application sees them (plaintext), as the TLS-generic copy counts them.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::conn::ConnInfo;
use crate::copy::stream::Transport;
use crate::http::head_timer::HeadTimer;
use crate::metrics::TcpSeries;

/// A client stream (a socket, or TLS over one) with a replayed prefix and
/// byte counters.
pub struct ClientIo<S = TcpStream> {
    prefix: Vec<u8>,
    /// How much of `prefix` was read already.
    pos: usize,
    stream: S,
    info: Arc<ConnInfo>,
    series: Arc<TcpSeries>,
    /// HTTP/1: the request-head timer (`head_timer.rs`).
    head: Option<HeadTimer>,
}

impl<S: Transport> ClientIo<S> {
    /// With `sweepable`, the socket (underneath TLS, if any) is published
    /// to the idle sweep (`ConnInfo::publish_fd`) until this is dropped.
    pub fn new(stream: S, prefix: Vec<u8>, info: Arc<ConnInfo>, series: Arc<TcpSeries>, sweepable: bool) -> ClientIo<S> {
        if sweepable {
            info.publish_fd(stream.tcp());
        }
        ClientIo { prefix, pos: 0, stream, info, series, head: None }
    }

    /// Times request heads (HTTP/1): a read fails with `HeadTimeout` once a
    /// head took longer than the timer allows.
    pub fn set_head_timer(&mut self, timer: HeadTimer) {
        self.head = Some(timer);
    }

    /// The socket (for the idle sweep and socket options).
    pub fn stream(&self) -> &TcpStream {
        self.stream.tcp()
    }
}

impl<S> Drop for ClientIo<S> {
    fn drop(&mut self) {
        // Before the socket closes (fields drop after this): the sweep must
        // never shut down a descriptor number that was reused.
        self.info.withdraw();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            // Detection only buffered these: they are counted here, once,
            // as the TCP path counts them when it writes them upstream.
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                // Give the detection buffer back as soon as it is replayed.
                this.prefix = Vec::new();
                this.pos = 0;
            }
            this.count_in(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if let Poll::Ready(Ok(())) = r {
            this.count_in(n);
        }
        match &mut this.head {
            Some(timer) => timer.watch(cx, r, &buf.filled()[before..]),
            None => r,
        }
    }
}

impl<S> ClientIo<S> {
    fn count_in(&self, n: usize) {
        self.info.bytes_in.fetch_add(n as u64, Relaxed);
        self.series.bytes_client_to_server.fetch_add(n as u64, Relaxed);
    }
    fn count_out(&self, n: usize) {
        self.info.bytes_out.fetch_add(n as u64, Relaxed);
        self.series.bytes_server_to_client.fetch_add(n as u64, Relaxed);
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            this.count_out(n);
        }
        r
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.count_out(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// An upstream socket counted as a `peer="dst"` connection of the endpoint's
/// TCP series while it is open. Its bytes are not added to the series: a
/// series has one counter per direction, which for an HTTP connection holds
/// the client side's bytes (for a TCP-forwarded connection both sides carry
/// the same bytes, so that counter serves both peers).
pub struct CountedIo<T> {
    inner: T,
    series: Arc<TcpSeries>,
}

impl<T> CountedIo<T> {
    pub fn new(inner: T, series: Arc<TcpSeries>) -> CountedIo<T> {
        series.opened(crate::metrics::Peer::Dst);
        CountedIo { inner, series }
    }
}

impl<T> Drop for CountedIo<T> {
    fn drop(&mut self) {
        self.series.closed(crate::metrics::Peer::Dst, 0);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountedIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefix_is_replayed_before_the_socket_and_counted() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        let reg = crate::conn::ConnRegistry::default();
        let r = reg.register(Arc::from("t"), crate::vocab::Direction::Inbound, peer);
        let series = Arc::new(TcpSeries::default());
        let mut io = ClientIo::new(s, b"GET / HTTP/1.1\r\n".to_vec(), r.info.clone(), series.clone(), false);
        c.write_all(b"Host: a\r\n\r\n").await.unwrap();
        c.shutdown().await.unwrap();
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        io.write_all(b"ok").await.unwrap();
        assert_eq!(r.info.bytes_in.load(Relaxed), all.len() as u64);
        assert_eq!(series.bytes_client_to_server.load(Relaxed), all.len() as u64);
        assert_eq!(series.bytes_server_to_client.load(Relaxed), 2);
    }
}
