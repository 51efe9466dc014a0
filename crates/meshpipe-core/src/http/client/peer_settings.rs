//! What an HTTP/2 upstream's first SETTINGS frame says about extended
//! CONNECT, read as its bytes pass on their way to h2.
//!
//! RFC 8441 §3: a client may send a request with `:protocol` (a WebSocket
//! over HTTP/2) only once it has *received* the server's
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL` (0x8) with the value 1. hyper's client
//! sends whatever request it is given as soon as its own preface is out,
//! and the setting it learned lives on the connection future, which the
//! connection's task owns. So the upstream's connection preface, a SETTINGS
//! frame that RFC 9113 §3.4 requires to be the server's first frame, is
//! read here as it is read from the socket ([`SettingsWatch`], an I/O
//! wrapper under h2 that copies nothing), and an extended CONNECT waits for
//! it ([`PeerSettings::preface`]): sent when the upstream enabled it,
//! answered by the proxy otherwise, and never before the upstream spoke.
//! A connection that ended before its preface is one the request was
//! never sent on, and is retried like any other.
//!
//! Only that first frame is read. A server announces what it supports in
//! its preface; one that turns extended CONNECT on only in a later SETTINGS
//! frame is taken as not supporting it (a 502 naming why, never a request
//! the server may reset), and RFC 8441 §3 forbids turning it off again once
//! on.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// `SETTINGS_ENABLE_CONNECT_PROTOCOL` (RFC 8441 §3).
const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
/// The SETTINGS frame type (RFC 9113 §6.5).
const SETTINGS: u8 = 0x4;
/// The ACK flag of a SETTINGS frame.
const ACK: u8 = 0x1;

/// What the first frame said, once it was read whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preface {
    /// A SETTINGS frame whose last `ENABLE_CONNECT_PROTOCOL` entry is 1.
    ExtendedConnect,
    /// A SETTINGS frame without it (or with 0).
    Plain,
    /// Not a valid server preface (another frame type first, an ACK, a
    /// stream id, a length no multiple of 6, a setting value RFC 8441
    /// forbids). The upstream broke RFC 9113 §3.4; h2 may carry on with it,
    /// but nothing that depends on its settings is sent.
    Invalid,
    /// The connection ended (or failed) before its first frame was read
    /// whole: the upstream never said. Only [`SettingsWatch`] reports it,
    /// never [`FirstFrame`].
    Ended,
}

/// Reads the first HTTP/2 frame from bytes fed in any pieces, holding no
/// more than one 9-byte header and one 6-byte setting.
#[derive(Debug, Default)]
pub struct FirstFrame {
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes still to come (known once the header is read).
    remaining: usize,
    entry: [u8; 6],
    entry_len: usize,
    enabled: bool,
    invalid: bool,
    done: Option<Preface>,
}

impl FirstFrame {
    /// Feeds the next bytes read; returns the verdict once the frame was
    /// read whole (and then forever after), `None` while more is needed.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Option<Preface> {
        if self.done.is_some() {
            return self.done;
        }
        if self.header_len < 9 {
            let n = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len < 9 {
                return None;
            }
            let h = self.header;
            let length = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            if h[3] != SETTINGS || h[4] & ACK != 0 || stream != 0 || !length.is_multiple_of(6) {
                // RFC 9113 §3.4, §6.5: the preface is a SETTINGS frame on
                // stream 0, no ACK, whole 6-byte entries.
                return self.finish(Preface::Invalid);
            }
            self.remaining = length;
        }
        while self.remaining > 0 && !bytes.is_empty() {
            let n = (6 - self.entry_len).min(bytes.len()).min(self.remaining);
            self.entry[self.entry_len..self.entry_len + n].copy_from_slice(&bytes[..n]);
            self.entry_len += n;
            self.remaining -= n;
            bytes = &bytes[n..];
            if self.entry_len == 6 {
                self.entry_len = 0;
                let e = self.entry;
                if u16::from_be_bytes([e[0], e[1]]) == ENABLE_CONNECT_PROTOCOL {
                    // The last value of a setting in a frame wins (RFC 9113
                    // §6.5.3); anything but 0 or 1 is a connection error
                    // (RFC 8441 §3).
                    match u32::from_be_bytes([e[2], e[3], e[4], e[5]]) {
                        0 => self.enabled = false,
                        1 => self.enabled = true,
                        _ => self.invalid = true,
                    }
                }
            }
        }
        if self.remaining > 0 {
            return None;
        }
        let verdict = match (self.invalid, self.enabled) {
            (true, _) => Preface::Invalid,
            (false, true) => Preface::ExtendedConnect,
            (false, false) => Preface::Plain,
        };
        self.finish(verdict)
    }

    fn finish(&mut self, verdict: Preface) -> Option<Preface> {
        self.done = Some(verdict);
        self.done
    }
}

/// The upstream's preface verdict, shared by the connection's I/O (which
/// sets it) and the requests that wait for it.
#[derive(Debug, Default)]
pub struct PeerSettings {
    /// 0: not read yet; 1 to 4: the [`Preface`].
    state: AtomicU8,
    notify: Notify,
}

impl PeerSettings {
    fn set(&self, p: Preface) {
        let v = match p {
            Preface::ExtendedConnect => 1,
            Preface::Plain => 2,
            Preface::Invalid => 3,
            Preface::Ended => 4,
        };
        // The first verdict stays: a later one (the connection's end) changes nothing.
        let _ = self.state.compare_exchange(0, v, Ordering::Release, Ordering::Relaxed);
        self.notify.notify_waiters();
    }

    fn get(&self) -> Option<Preface> {
        match self.state.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Preface::ExtendedConnect),
            2 => Some(Preface::Plain),
            3 => Some(Preface::Invalid),
            _ => Some(Preface::Ended),
        }
    }

    /// The upstream's preface, once it was read whole or the connection
    /// ended without one. The caller bounds the wait (the response timeout
    /// covers it).
    pub async fn preface(&self) -> Preface {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(p) = self.get() {
                return p;
            }
            notified.await;
        }
    }
}

/// An upstream stream whose first frame is read on the way through into
/// [`PeerSettings`]; reads and writes pass unchanged.
pub struct SettingsWatch<T> {
    inner: T,
    frame: Option<FirstFrame>,
    settings: Arc<PeerSettings>,
}

impl<T> SettingsWatch<T> {
    pub fn new(inner: T, settings: Arc<PeerSettings>) -> SettingsWatch<T> {
        SettingsWatch { inner, frame: Some(FirstFrame::default()), settings }
    }
}

impl<T> Drop for SettingsWatch<T> {
    fn drop(&mut self) {
        // The connection ended before its preface was read whole.
        if self.frame.is_some() {
            self.settings.set(Preface::Ended);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SettingsWatch<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Poll::Ready(res), Some(frame)) = (&r, self.frame.as_mut()) {
            let read = &buf.filled()[before..];
            let verdict = match res {
                // End of stream or an error before the frame ended.
                Ok(()) if read.is_empty() && room => Some(Preface::Ended),
                Ok(()) if read.is_empty() => None,
                Ok(()) => frame.feed(read),
                Err(_) => Some(Preface::Ended),
            };
            if let Some(v) = verdict {
                self.frame = None;
                self.settings.set(v);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SettingsWatch<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn setting(id: u16, value: u32) -> Vec<u8> {
        let mut s = id.to_be_bytes().to_vec();
        s.extend_from_slice(&value.to_be_bytes());
        s
    }

    fn whole(bytes: &[u8]) -> Option<Preface> {
        FirstFrame::default().feed(bytes)
    }

    #[test]
    fn the_last_enable_connect_protocol_entry_decides() {
        let on = [setting(0x3, 100), setting(0x8, 1)].concat();
        assert_eq!(whole(&frame(4, 0, 0, &on)), Some(Preface::ExtendedConnect));
        let off_again = [setting(0x8, 1), setting(0x8, 0)].concat();
        assert_eq!(whole(&frame(4, 0, 0, &off_again)), Some(Preface::Plain));
        assert_eq!(whole(&frame(4, 0, 0, &setting(0x4, 65535))), Some(Preface::Plain));
        assert_eq!(whole(&frame(4, 0, 0, &[])), Some(Preface::Plain), "an empty SETTINGS is a valid preface");
        assert_eq!(whole(&frame(4, 0, 0, &setting(0x8, 2))), Some(Preface::Invalid));
    }

    #[test]
    fn anything_but_a_settings_preface_is_invalid() {
        assert_eq!(whole(&frame(0, 0, 1, b"data!!")), Some(Preface::Invalid));
        assert_eq!(whole(&frame(4, ACK, 0, &[])), Some(Preface::Invalid));
        assert_eq!(whole(&frame(4, 0, 3, &setting(0x8, 1))), Some(Preface::Invalid));
        assert_eq!(whole(&frame(4, 0, 0, b"12345")), Some(Preface::Invalid));
        // An HTTP/1 server answering a prior-knowledge preface.
        assert_eq!(whole(b"HTTP/1.1 400 Bad Request\r\n\r\n"), Some(Preface::Invalid));
    }

    #[test]
    fn any_split_gives_the_same_verdict_exactly_when_the_frame_ends() {
        let f = frame(4, 0, 0, &[setting(0x1, 4096), setting(0x8, 1), setting(0x4, 1 << 20)].concat());
        for cut in 0..=f.len() {
            let mut r = FirstFrame::default();
            assert_eq!(r.feed(&f[..cut]), if cut == f.len() { Some(Preface::ExtendedConnect) } else { None }, "cut at {cut}");
            assert_eq!(r.feed(&f[cut..]), Some(Preface::ExtendedConnect), "cut at {cut}");
        }
        let mut bytewise = FirstFrame::default();
        for (i, b) in f.iter().enumerate() {
            assert_eq!(bytewise.feed(&[*b]).is_some(), i + 1 == f.len(), "byte {i}");
        }
        // Bytes after the frame (the next frames) change nothing.
        assert_eq!(whole(&[f.clone(), frame(4, ACK, 0, &[])].concat()), Some(Preface::ExtendedConnect));
    }

    #[tokio::test]
    async fn waiters_get_the_verdict_and_a_connection_ended_first_says_no() {
        let s = Arc::new(PeerSettings::default());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.preface().await }
        });
        tokio::task::yield_now().await;
        s.set(Preface::ExtendedConnect);
        assert_eq!(waiter.await.unwrap(), Preface::ExtendedConnect);
        s.set(Preface::Ended);
        assert_eq!(s.preface().await, Preface::ExtendedConnect, "the first verdict stays");

        let (a, mut b) = tokio::io::duplex(64);
        let ended = Arc::new(PeerSettings::default());
        let mut watched = SettingsWatch::new(a, ended.clone());
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        b.write_all(&frame(4, 0, 0, &[])[..5]).await.unwrap();
        drop(b);
        let mut sink = Vec::new();
        watched.read_to_end(&mut sink).await.unwrap();
        assert_eq!(sink.len(), 5, "the bytes pass unchanged");
        assert_eq!(ended.preface().await, Preface::Ended, "the connection ended before its preface did");
    }
}
