//! Property-based tests of the HTTP layer's header rules
//! (`meshpipe_core::http::headers`), the properties the `http_headers` fuzz
//! target checks, run in CI on stable Rust beside the fuzz target (fuzz/guided.sh).
//!
//! Messages are drawn as lists of fields whose names come mostly from the
//! hop-by-hop set (RFC 9110 §7.6.1) and a few end-to-end ones, with
//! `Connection` values that name any of them; for each:
//! - after `strip_hop_by_hop`, nothing hop-by-hop or named by `Connection`
//!   is left (`TE` only as `trailers`; an upgrade keeps `Upgrade` and
//!   `Connection: upgrade`), every other field keeps its values in order,
//!   and stripping again changes nothing;
//! - a `Keep-Alive: timeout=N` hint is at most six digits of seconds.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, TE, UPGRADE};
use meshpipe_core::http::headers::{keep_alive_timeout, strip_hop_by_hop};
use proptest::prelude::*;

const NAMES: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "http2-settings",
    "x-a",
    "x-b",
    "content-type",
    "authorization",
    "l5d-dst-override",
];
const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "http2-settings"];

/// A field value: tokens (names from `NAMES`, `close`, `trailers`), a timeout hint, or junk.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(
            prop::sample::select(NAMES.iter().copied().chain(["close", "trailers", "TRAILERS", " x-a "]).collect::<Vec<_>>()),
            1..4
        )
        .prop_map(|t| t.join(",")),
        "[0-9]{1,8}".prop_map(|n| format!("timeout={n}, max=5")),
        "[ -~]{0,12}",
    ]
}

fn message() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    prop::collection::vec((prop::sample::select(NAMES), value()), 0..10)
}

fn build(fields: &[(&'static str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in fields {
        if let Ok(v) = HeaderValue::from_str(value) {
            map.append(HeaderName::from_static(name), v);
        }
    }
    map
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5_000, ..ProptestConfig::default() })]

    #[test]
    fn nothing_hop_by_hop_survives_and_everything_else_does(fields in message(), upgrade in any::<bool>()) {
        let original = build(&fields);
        if let Some(hint) = keep_alive_timeout(&original) {
            prop_assert!(hint.as_secs() <= 999_999, "a hint of {:?}", hint);
        }
        let named: Vec<HeaderName> = original
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        let mut stripped = original.clone();
        strip_hop_by_hop(&mut stripped, upgrade);
        for name in ["keep-alive", "proxy-connection", "transfer-encoding", "http2-settings"] {
            prop_assert!(!stripped.contains_key(name), "{} survived", name);
        }
        prop_assert!(stripped.get_all(TE).iter().all(|v| v == "trailers") && stripped.get_all(TE).iter().count() <= 1);
        let connection: Vec<_> = stripped.get_all(CONNECTION).iter().collect();
        if upgrade {
            prop_assert_eq!(connection, vec!["upgrade"]);
        } else {
            prop_assert!(connection.is_empty() && !stripped.contains_key(UPGRADE));
        }
        for name in &named {
            if *name != TE && *name != CONNECTION && !(upgrade && *name == UPGRADE) {
                prop_assert!(!stripped.contains_key(name), "{} was named by Connection and survived", name);
            }
        }
        for name in original.keys() {
            if HOP_BY_HOP.contains(&name.as_str()) || named.contains(name) {
                continue;
            }
            let before: Vec<_> = original.get_all(name).iter().collect();
            let after: Vec<_> = stripped.get_all(name).iter().collect();
            prop_assert_eq!(before, after, "end-to-end field {} changed", name);
        }
        let mut again = stripped.clone();
        strip_hop_by_hop(&mut again, upgrade);
        prop_assert_eq!(again, stripped);
    }
}
