//! Linkerd's opaque-transport header, the first bytes a client proxy sends
//! inside a mesh TLS connection to a peer's tunnel port (4143) once ALPN
//! `transport.l5d.io/v1` was negotiated. It tells the peer which local port
//! the connection is for, and whether it carries HTTP.
//!
//! Wire format: the 23-byte preface `transport.l5d.io/v1\r\n\r\n`, a 4-byte
//! big-endian length, then a protobuf message (proto3):
//!
//! ```text
//! message Header { int32 port = 1; string name = 2; SessionProtocol session_protocol = 3; }
//! message SessionProtocol { oneof kind { Http1 http1 = 1; Http2 http2 = 2; } }
//! ```
//!
//! No session protocol means opaque TCP. The protobuf is hand-written (three
//! fields do not justify a code generator and a build script); decoding
//! follows the protobuf encoding rules: fields in any order, the last value
//! of a scalar wins, embedded messages merge, unknown fields are skipped,
//! and wire-type mismatches, overlong varints, groups and invalid UTF-8 are
//! errors. The decoder is incremental ([`decode`] is called on a growing
//! buffer and says when it needs more), rejects a bad preface or an
//! oversized length as soon as those bytes arrive, and is bounded at
//! [`MAX_HEADER_LEN`] bytes, so no peer can make it buffer more.

use std::io;
use std::num::NonZeroU16;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The ALPN protocol id of the tunnel.
pub const ALPN: &[u8] = b"transport.l5d.io/v1";
/// What a header starts with.
pub const PREFACE: &[u8] = b"transport.l5d.io/v1\r\n\r\n";
/// Preface plus the length field.
const FIXED: usize = PREFACE.len() + 4;
/// The whole header (preface, length and message) is at most this long.
pub const MAX_HEADER_LEN: usize = 64 * 1024;

/// The protocol the tunnelled connection carries, when the client knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionProtocol {
    Http1,
    Http2,
}

/// A decoded header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportHeader {
    /// The port on the peer's workload the connection is for (1-65535).
    pub port: NonZeroU16,
    /// The logical name of the target, when known (gateways use it).
    pub name: Option<String>,
    /// None: opaque TCP.
    pub protocol: Option<SessionProtocol>,
}

/// Why a header was refused. `reason()` gives the metric label.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("the stream does not start with the transport header preface \"transport.l5d.io/v1\\r\\n\\r\\n\"")]
    Preface,
    #[error("the transport header declares {len} bytes; at most {max} are accepted")]
    Oversized { len: usize, max: usize },
    #[error("the stream ended after {have} bytes, inside the transport header")]
    Truncated { have: usize },
    #[error("the transport header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the transport header names port {0}: expected 1-65535")]
    Port(i64),
    #[error("the transport header's name {0:?} is not a DNS name")]
    Name(String),
    #[error("no complete transport header within {0:?}")]
    Timeout(Duration),
    #[error("reading the transport header: {0}")]
    Io(#[from] io::Error),
}

impl HeaderError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            HeaderError::Preface => "preface",
            HeaderError::Oversized { .. } => "oversized",
            HeaderError::Truncated { .. } => "truncated",
            HeaderError::Malformed(_) | HeaderError::Name(_) => "malformed",
            HeaderError::Port(_) => "port",
            HeaderError::Timeout(_) => "timeout",
            HeaderError::Io(_) => "io",
        }
    }
}

impl TransportHeader {
    /// An opaque header for `port`.
    pub fn opaque(port: NonZeroU16) -> TransportHeader {
        TransportHeader { port, name: None, protocol: None }
    }

    /// The full header: preface, length, message.
    pub fn encode(&self) -> Vec<u8> {
        let mut msg = Vec::with_capacity(16);
        put_key(&mut msg, 1, 0);
        put_varint(&mut msg, self.port.get() as u64);
        if let Some(name) = self.name.as_deref().filter(|n| !n.is_empty()) {
            put_key(&mut msg, 2, 2);
            put_varint(&mut msg, name.len() as u64);
            msg.extend_from_slice(name.as_bytes());
        }
        if let Some(p) = self.protocol {
            // SessionProtocol { http1 = 1 | http2 = 2 }, each an empty message.
            let field = match p {
                SessionProtocol::Http1 => 1,
                SessionProtocol::Http2 => 2,
            };
            put_key(&mut msg, 3, 2);
            put_varint(&mut msg, 2);
            put_key(&mut msg, field, 2);
            put_varint(&mut msg, 0);
        }
        let mut out = Vec::with_capacity(FIXED + msg.len());
        out.extend_from_slice(PREFACE);
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(&msg);
        out
    }
}

/// Decodes a header from the start of `buf`. `Ok(None)`: so far so good,
/// more bytes are needed ([`needed`] says how many at least). `Ok(Some((h,
/// n)))`: the header took the first `n` bytes; the rest belongs to the
/// tunnelled stream.
pub fn decode(buf: &[u8]) -> Result<Option<(TransportHeader, usize)>, HeaderError> {
    let pre = buf.len().min(PREFACE.len());
    if buf[..pre] != PREFACE[..pre] {
        return Err(HeaderError::Preface);
    }
    if buf.len() < FIXED {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[23], buf[24], buf[25], buf[26]]) as usize;
    if len > MAX_HEADER_LEN - FIXED {
        return Err(HeaderError::Oversized { len: FIXED + len, max: MAX_HEADER_LEN });
    }
    if buf.len() < FIXED + len {
        return Ok(None);
    }
    let header = decode_message(&buf[FIXED..FIXED + len])?;
    Ok(Some((header, FIXED + len)))
}

/// How many more bytes `decode` needs at least, given what it has seen
/// (0 when it can decide now).
pub fn needed(buf: &[u8]) -> usize {
    if buf.len() < FIXED {
        return FIXED - buf.len();
    }
    let len = u32::from_be_bytes([buf[23], buf[24], buf[25], buf[26]]) as usize;
    (FIXED + len.min(MAX_HEADER_LEN)).saturating_sub(buf.len())
}

/// Reads a header from `io` within `timeout`, never reading past its end
/// (so what follows stays in `io` for the forwarder). Buffers at most
/// [`MAX_HEADER_LEN`] bytes.
pub async fn read_header<R: AsyncRead + Unpin>(io: &mut R, timeout: Duration) -> Result<TransportHeader, HeaderError> {
    let read = async {
        let mut buf = Vec::with_capacity(64);
        loop {
            let want = needed(&buf);
            let start = buf.len();
            buf.resize(start + want, 0);
            let n = io.read(&mut buf[start..]).await?;
            buf.truncate(start + n);
            if n == 0 {
                return Err(HeaderError::Truncated { have: buf.len() });
            }
            if let Some((h, used)) = decode(&buf)? {
                debug_assert_eq!(used, buf.len());
                return Ok(h);
            }
        }
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| HeaderError::Timeout(timeout))?
}

fn decode_message(mut msg: &[u8]) -> Result<TransportHeader, HeaderError> {
    let mut port: i32 = 0;
    let mut name = String::new();
    let mut protocol = None;
    while !msg.is_empty() {
        let (field, wire) = key(&mut msg)?;
        match (field, wire) {
            (1, 0) => port = varint(&mut msg)? as i32, // int32: the low 32 bits (protobuf encoding guide)
            (1, _) => return Err(HeaderError::Malformed("field 1 (port) must be a varint")),
            (2, 2) => {
                let bytes = delimited(&mut msg)?;
                name = std::str::from_utf8(bytes).map_err(|_| HeaderError::Malformed("field 2 (name) is not UTF-8"))?.to_string();
            }
            (2, _) => return Err(HeaderError::Malformed("field 2 (name) must be length-delimited")),
            (3, 2) => {
                let mut inner = delimited(&mut msg)?;
                while !inner.is_empty() {
                    match key(&mut inner)? {
                        (1, 2) => {
                            delimited(&mut inner)?;
                            protocol = Some(SessionProtocol::Http1);
                        }
                        (2, 2) => {
                            delimited(&mut inner)?;
                            protocol = Some(SessionProtocol::Http2);
                        }
                        (1 | 2, _) => return Err(HeaderError::Malformed("session protocol http1/http2 must be messages")),
                        (_, w) => skip(&mut inner, w)?,
                    }
                }
                // An empty SessionProtocol (no kind) is opaque, as in Linkerd.
            }
            (3, _) => return Err(HeaderError::Malformed("field 3 (session_protocol) must be a message")),
            (_, w) => skip(&mut msg, w)?,
        }
    }
    if !(1..=65535).contains(&port) {
        return Err(HeaderError::Port(port as i64));
    }
    let name = if name.is_empty() {
        None
    } else {
        rustls::pki_types::DnsName::try_from(name.as_str()).map_err(|_| HeaderError::Name(name.clone()))?;
        Some(name)
    };
    let port = NonZeroU16::new(port as u16).ok_or(HeaderError::Port(port as i64))?;
    Ok(TransportHeader { port, name, protocol })
}

fn key(buf: &mut &[u8]) -> Result<(u64, u8), HeaderError> {
    let k = varint(buf)?;
    let field = k >> 3;
    if field == 0 || field > (1 << 29) - 1 {
        return Err(HeaderError::Malformed("field number out of range"));
    }
    Ok((field, (k & 7) as u8))
}

/// A base-128 varint of at most 10 bytes (the 10th may only carry bit 63).
fn varint(buf: &mut &[u8]) -> Result<u64, HeaderError> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            return Err(HeaderError::Malformed("a varint runs past the end of the message"));
        };
        *buf = rest;
        if i == 9 && b > 1 {
            return Err(HeaderError::Malformed("a varint is longer than 64 bits"));
        }
        value |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(HeaderError::Malformed("a varint is longer than 10 bytes"))
}

fn delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], HeaderError> {
    let len = varint(buf)?;
    if len > buf.len() as u64 {
        return Err(HeaderError::Malformed("a length-delimited field runs past the end of the message"));
    }
    let (field, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(field)
}

fn skip(buf: &mut &[u8], wire: u8) -> Result<(), HeaderError> {
    let fixed = |buf: &mut &[u8], n: usize| {
        if buf.len() < n {
            return Err(HeaderError::Malformed("a fixed-width field runs past the end of the message"));
        }
        *buf = &buf[n..];
        Ok(())
    };
    match wire {
        0 => varint(buf).map(|_| ()),
        1 => fixed(buf, 8),
        2 => delimited(buf).map(|_| ()),
        5 => fixed(buf, 4),
        _ => Err(HeaderError::Malformed("groups and unknown wire types are not accepted")),
    }
}

fn put_key(out: &mut Vec<u8>, field: u64, wire: u8) {
    put_varint(out, (field << 3) | wire as u64);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests;
