//! Fuzzes the reader of an HTTP/2 upstream's first frame
//! (`meshpipe_core::http::client::peer_settings::FirstFrame`), which decides
//! whether an extended CONNECT (RFC 8441) may go upstream. Any bytes, in
//! any pieces, must never panic, and:
//! - the verdict is the same however the bytes are split;
//! - it comes exactly when the first frame is complete (9 header bytes,
//!   then the length they declare), or at the header for one that is no
//!   SETTINGS preface;
//! - it is the one a plain reading of the whole frame gives: extended
//!   CONNECT only when the last `ENABLE_CONNECT_PROTOCOL` entry is 1, and
//!   invalid for another frame type, an ACK, a stream id, a length no
//!   multiple of 6 or a value other than 0 or 1.
use meshpipe_core::http::client::peer_settings::{FirstFrame, Preface};

/// The verdict by reading `data` whole, written as plainly as possible;
/// `None` while the frame is incomplete.
fn reference(data: &[u8]) -> Option<Preface> {
    let head = data.get(..9)?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    if head[3] != 4 || head[4] & 1 != 0 || stream != 0 || !len.is_multiple_of(6) {
        return Some(Preface::Invalid);
    }
    let payload = data.get(9..9 + len)?;
    let mut enabled = false;
    for e in payload.chunks_exact(6) {
        if u16::from_be_bytes([e[0], e[1]]) == 8 {
            match u32::from_be_bytes([e[2], e[3], e[4], e[5]]) {
                0 => enabled = false,
                1 => enabled = true,
                _ => return Some(Preface::Invalid),
            }
        }
    }
    Some(if enabled { Preface::ExtendedConnect } else { Preface::Plain })
}

/// Checks one input; panics (an assertion) when an invariant above is broken.
/// The first byte picks the piece size of the split reading.
pub fn check(data: &[u8]) {
    let Some((&piece, data)) = data.split_first() else { return };
    let want = reference(data);
    assert_eq!(FirstFrame::default().feed(data), want, "whole");
    // Fed in pieces: no verdict before the frame ends, the same one at its end.
    let piece = usize::from(piece % 17) + 1;
    let mut r = FirstFrame::default();
    let mut fed = 0;
    for chunk in data.chunks(piece) {
        let before = reference(&data[..fed]);
        let got = r.feed(chunk);
        fed += chunk.len();
        if before.is_some() {
            assert_eq!(got, before, "a verdict stays");
        } else {
            assert_eq!(got, reference(&data[..fed]), "after {fed} bytes");
        }
    }
    assert_eq!(r.feed(&[]), want, "at the end");
}
