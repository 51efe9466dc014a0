//! Property-based tests of the name and address parsers (`identity`, `addr`),
//! the properties the `identity` and `addr` fuzz targets check, run in CI on
//! stable Rust beside the fuzz targets (fuzz/guided.sh).
//!
//! - An identity that parses, parses again to itself and matches its own SAN.
//! - An identity that passes `check_dialable` has a TLS server name rustls
//!   sends (RFC 6066 §3): the property the fuzzer broke on `9.aam0.0x`, whose
//!   hex last label rustls refuses. Names are drawn from a small alphabet of
//!   lowercase letters, digits, `x`, `-`, `_` and `.`, in labels up to 70
//!   bytes, so the edges (hex-looking labels, long labels, empty labels,
//!   hyphens and underscores at label edges) come up often.
//! - A CIDR prints as text that parses back to the same network and contains
//!   the address it was written with. This property found that
//!   `::ffff:0.0.0.0/0` (a mapped address with an IPv4 prefix length) was read
//!   as an IPv6 network holding no IPv4 address, not even its own: mapped
//!   addresses are matched as IPv4. Such a network is now refused.

use std::net::IpAddr;
use std::str::FromStr;

use meshpipe_core::addr::Cidr;
use meshpipe_core::identity::Identity;
use proptest::prelude::*;
use rustls_pki_types::ServerName;

/// A label from the edge-heavy alphabet: short ones mostly, some near 63 bytes.
fn label() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-z0-9x_.-]{0,6}", 1 => "[a0x-]{60,70}", 1 => "0x[0-9a-f]{0,4}", 1 => "[0-9]{1,3}"]
}

/// A dotted name of 1-6 labels.
fn dotted() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..6).prop_map(|l| l.join("."))
}

/// DNS names, SPIFFE IDs (some with long service accounts) and Linkerd's form.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        dotted(),
        (dotted(), label(), dotted()).prop_map(|(td, ns, sa)| format!("spiffe://{td}/ns/{ns}/sa/{sa}")),
        (label(), label(), dotted()).prop_map(|(sa, ns, td)| format!("{sa}.{ns}.serviceaccount.identity.linkerd.{td}")),
        (dotted(), "[a-z]{1,63}", prop::collection::vec("[a-z]{1,63}", 1..5))
            .prop_map(|(td, ns, sa)| format!("spiffe://{td}/ns/{ns}/sa/{}", sa.join("."))),
    ]
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
fn is_mapped(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn a_parsed_identity_is_stable_and_a_dialable_one_can_be_sent_as_sni(text in name()) {
        if let Ok(id) = Identity::parse(&text) {
            prop_assert_eq!(id.as_str(), text.as_str());
            prop_assert_eq!(Identity::parse(id.as_str()).expect("parses again"), id.clone());
            prop_assert!(id.matches_san(id.kind(), &text));
            let dialable = Identity::parse_dialable(&text);
            prop_assert_eq!(dialable.is_ok(), id.check_dialable().is_ok());
            if dialable.is_ok() {
                let sni = id.server_name();
                prop_assert!(ServerName::try_from(sni.clone()).is_ok(), "{:?} passed check_dialable; rustls refuses {:?}", text, sni);
                prop_assert!(!sni.ends_with('.'), "{:?}: a trailing dot", text);
            }
        } else {
            prop_assert!(Identity::parse_dialable(&text).is_err());
        }
    }

    #[test]
    fn a_cidr_prints_as_text_that_parses_back(ip in any::<IpAddr>(), prefix in 0u8..=140, mapped in any::<bool>()) {
        let ip = match (ip, mapped) {
            (IpAddr::V4(v4), true) => IpAddr::V6(v4.to_ipv6_mapped()),
            _ => ip,
        };
        let text = format!("{ip}/{prefix}");
        match Cidr::from_str(&text) {
            Ok(cidr) => {
                let (net, p) = cidr.parts();
                let width = if net.is_ipv4() { 32 } else { 128 };
                prop_assert!(p <= width, "{}: prefix {} of {}", text, p, width);
                prop_assert_eq!(Cidr::from_str(&cidr.to_string()).expect("a printed CIDR parses"), cidr);
                prop_assert!(!is_mapped(net), "{} kept as a mapped IPv6 network", text);
                prop_assert!(cidr.contains(net), "{} does not contain its own address", text);
                prop_assert!(cidr.contains(ip), "{} does not contain the address it was written with", text);
            }
            Err(_) => {
                // Too long a prefix, or a mapped address with less than /96
                // (which would hold no IPv4 address, not even its own).
                let width = if ip.is_ipv4() { 32 } else { 128 };
                prop_assert!(prefix > width || (is_mapped(ip) && prefix < 96), "{} refused", text);
            }
        }
    }
}
