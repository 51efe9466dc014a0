//! Fuzzes the opaque-transport header decoder: arbitrary bytes (with and
//! without the preface) must never panic, never claim more bytes than they
//! have or than the 64 KiB bound, and whatever decodes must re-encode to a
//! header that decodes to the same value. A decode must also be the same
//! whichever prefix of the input it is given first (incremental use).
use meshpipe_core::transport_header::{decode, needed, MAX_HEADER_LEN, PREFACE};

/// Checks one input; panics (an assertion) when an invariant above is broken.
pub fn check(data: &[u8]) {
    for input in [data.to_vec(), [PREFACE, data].concat()] {
        match decode(&input) {
            Ok(Some((header, used))) => {
                assert!(used <= input.len() && used <= MAX_HEADER_LEN);
                let again = header.encode();
                let (back, n) = decode(&again).expect("re-encoded header decodes").expect("complete");
                assert_eq!(back, header);
                assert_eq!(n, again.len());
                // Every shorter prefix is either incomplete or the same early refusal.
                for cut in [0, 1, 23, 26, 27, used.saturating_sub(1)] {
                    if cut < used {
                        assert!(matches!(decode(&input[..cut]), Ok(None)), "prefix {cut} of a good header");
                    }
                }
            }
            Ok(None) => assert!(needed(&input) > 0),
            Err(_) => {
                // Refusals are final: more bytes never turn them into a header.
                let mut longer = input.clone();
                longer.extend_from_slice(&[0u8; 8]);
                assert!(decode(&longer).is_err());
            }
        }
    }
}
