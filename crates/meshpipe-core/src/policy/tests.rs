//! Tests of the policy table: lookup order (rules, exact destinations,
//! fallback rules), deltas (all or nothing, generation checks), IPv4-mapped
//! addresses, and a property test against a direct reading of the semantics.

use super::*;
use proptest::prelude::*;

fn rule(direction: Direction, net: Option<&str>, ports: (u32, u32), mode: PortMode, source: &str) -> RuleSpec {
    RuleSpec { direction, net: net.map(str::to_string), ports, mode, detect_timeout_ms: None, source: source.to_string() }
}

fn table(id: u32, ports: &[(u32, u32, PortMode)], source: &str) -> PortTableSpec {
    PortTableSpec {
        id,
        ports: ports.iter().map(|&(f, t, m)| PortSpec(f, t, m, 0)).collect(),
        sources: vec![source.to_string()],
        mesh: None,
    }
}

fn addr(ip: &str, id: u32, name: &str) -> AddressSpec {
    AddressSpec(ip.to_string(), id, name.to_string())
}

fn t(s: &str) -> TargetAddr {
    s.parse().unwrap()
}

fn cluster() -> PolicySpec {
    PolicySpec {
        generation: 7,
        rules: vec![
            rule(Direction::Inbound, None, (8000, 8100), PortMode::Http1, "server"),
            rule(Direction::Outbound, Some("192.0.2.0/24"), (1, 65535), PortMode::Opaque, "skip-subnets"),
        ],
        fallback_rules: vec![rule(Direction::Outbound, Some("10.0.0.0/8"), (3306, 3306), PortMode::Opaque, "defaults")],
        destination_detect_timeout_ms: Some(1234),
        tables: vec![
            table(1, &[(3306, 3306, PortMode::Detect), (9000, 9100, PortMode::Opaque)], "opaque-ports on {destination}"),
            table(2, &[(80, 80, PortMode::Http2)], "appProtocol"),
        ],
        addresses: vec![
            addr("10.0.0.5", 1, "Pod shop/db-0"),
            addr("fd00::5", 1, "Pod shop/db-0"),
            addr("10.96.0.1", 2, "Service shop/web"),
        ],
        ..PolicySpec::default()
    }
}

#[test]
fn rules_then_destinations_then_fallback_then_default() {
    let table = PolicyTable::compile(&cluster()).unwrap();
    assert_eq!(table.generation(), 7);
    assert_eq!(table.lookup(Direction::Outbound, t("10.0.0.5:3306")).mode, PortMode::Detect, "the destination beats the cluster default");
    assert_eq!(table.lookup(Direction::Outbound, t("10.0.0.6:3306")).mode, PortMode::Opaque, "another address gets the default");
    assert_eq!(table.lookup(Direction::Outbound, t("10.0.0.5:9050")).mode, PortMode::Opaque, "a range, never expanded");
    assert_eq!(table.lookup(Direction::Outbound, t("[fd00::5]:9100")).mode, PortMode::Opaque);
    assert_eq!(table.lookup(Direction::Outbound, t("10.0.0.5:9101")).mode, PortMode::Detect);
    assert_eq!(table.lookup(Direction::Outbound, t("192.0.2.1:3306")).mode, PortMode::Opaque, "rules come first");
    assert_eq!(table.lookup(Direction::Inbound, t("10.0.0.5:9050")).mode, PortMode::Detect, "destinations are outbound only");
    assert_eq!(table.lookup(Direction::Inbound, t("127.0.0.1:8050")).mode, PortMode::Http1);
    let http2 = table.lookup(Direction::Outbound, t("10.96.0.1:80"));
    assert_eq!(http2, PortPolicy { mode: PortMode::Http2, detect_timeout: Some(Duration::from_millis(1234)) });
    assert_eq!(table.lookup(Direction::Outbound, t("10.0.0.5:9000")).detect_timeout, None, "opaque needs no timeout");

    let why = table.explain(Direction::Outbound, "10.0.0.5".parse().unwrap(), 9000);
    assert_eq!(why.source, "opaque-ports on Pod shop/db-0");
    assert_eq!((why.matched, why.destination.as_deref()), (PolicyMatch::Destination, Some("Pod shop/db-0")));
    let fallback = table.explain(Direction::Outbound, "10.1.1.1".parse().unwrap(), 3306);
    assert_eq!((fallback.matched, fallback.index, fallback.source.as_str()), (PolicyMatch::FallbackRule, Some(0), "defaults"));
    let none = table.explain(Direction::Outbound, "203.0.113.1".parse().unwrap(), 3306);
    assert_eq!((none.mode, none.matched, none.source.as_str()), (PortMode::Detect, PolicyMatch::Default, "default"));
}

#[test]
fn ipv4_mapped_addresses_are_their_ipv4_form() {
    let mut spec = cluster();
    spec.addresses.push(addr("::ffff:10.9.9.9", 2, "Service odd/mapped"));
    spec.rules.push(rule(Direction::Outbound, Some("::ffff:198.51.100.0/120"), (1, 65535), PortMode::Opaque, "mapped net"));
    let table = PolicyTable::compile(&spec).unwrap();
    assert_eq!(table.lookup(Direction::Outbound, t("10.9.9.9:80")).mode, PortMode::Http2);
    assert_eq!(table.lookup(Direction::Outbound, t("[::ffff:10.9.9.9]:80")).mode, PortMode::Http2);
    assert_eq!(table.lookup(Direction::Outbound, t("[::ffff:10.0.0.5]:9000")).mode, PortMode::Opaque);
    assert_eq!(table.lookup(Direction::Outbound, t("198.51.100.7:1")).mode, PortMode::Opaque);
    let host = PolicySpec {
        rules: vec![rule(Direction::Outbound, Some("::ffff:10.0.0.1/128"), (1, 9), PortMode::Tls, "h")],
        ..Default::default()
    };
    assert_eq!(PolicyTable::compile(&host).unwrap().lookup(Direction::Outbound, t("10.0.0.1:5")).mode, PortMode::Tls);
}

#[test]
fn a_bad_entry_rejects_the_whole_table() {
    let mut spec = cluster();
    spec.rules.push(rule(Direction::Inbound, None, (7000, 6000), PortMode::Opaque, "annotation"));
    let err = PolicyTable::compile(&spec).unwrap_err().to_string();
    assert!(err.contains("annotation") && err.contains("7000"), "{err}");
    let mut spec = cluster();
    spec.addresses.push(addr("10.0.0.0/24", 1, "Pod x/y"));
    let err = PolicyTable::compile(&spec).unwrap_err().to_string();
    assert!(err.contains("10.0.0.0/24") && err.contains("not an IP address"), "{err}");
    let mut spec = cluster();
    spec.addresses.push(addr("10.0.0.9", 99, "Pod x/y"));
    assert!(PolicyTable::compile(&spec).unwrap_err().to_string().contains("port table 99 is not defined"));
}

const DB_ID: &str = "db.shop.serviceaccount.identity.linkerd.cluster.local";
const LEGACY_ID: &str = "legacy.ext.serviceaccount.identity.linkerd.cluster.local";

fn peer(identity: &str, tunnel_port: u16) -> Option<crate::destinations::MeshPeerSpec> {
    Some(crate::destinations::MeshPeerSpec { identity: identity.into(), tunnel_port, source: "inject on {destination}".into() })
}

fn fixed(net: &str, identity: &str) -> DestinationSpec {
    DestinationSpec { net: net.into(), identity: identity.into(), tunnel_port: 4143, source: format!("file {net}") }
}

#[test]
fn the_mesh_rides_in_the_table() {
    let mut spec = cluster();
    spec.tables[0].mesh = peer(DB_ID, 14143);
    spec.tables.push(PortTableSpec { id: 3, ports: vec![], sources: vec![], mesh: peer(DB_ID, 4143) });
    spec.addresses.push(addr("10.0.0.9", 3, "Pod shop/db-9"));
    spec.mesh_destinations = vec![fixed("10.0.0.9", LEGACY_ID), fixed("10.0.0.0/16", LEGACY_ID)];
    let table = PolicyTable::compile(&spec).unwrap();
    let route = |target: &str| table.route(Direction::Outbound, t(target));
    let (policy, pod) = route("10.0.0.5:3306");
    assert_eq!(policy, table.lookup(Direction::Outbound, t("10.0.0.5:3306")), "the same port decision");
    let pod = pod.expect("a meshed pod");
    assert_eq!((pod.identity.as_str(), pod.tunnel_port.get()), (DB_ID, 14143), "the pod's own peer beats a static network");
    assert_eq!(route("[fd00::5]:1").1.unwrap().tunnel_port.get(), 14143, "every address of the pod");
    assert_eq!(route("10.0.0.9:80").1.unwrap().identity.as_str(), LEGACY_ID, "a static single address wins over the pod");
    assert_eq!(route("10.0.7.7:80").1.unwrap().identity.as_str(), LEGACY_ID, "a static network covers the rest");
    assert!(route("10.96.0.1:80").1.is_none(), "a Service address is not meshed");
    assert!(route("10.1.0.1:80").1.is_none(), "not meshed");
    assert!(table.route(Direction::Inbound, t("10.0.0.5:3306")).1.is_none(), "inbound has no peer");
    assert_eq!(table.mesh_peer("::ffff:10.0.0.5".parse().unwrap()).unwrap().tunnel_port.get(), 14143, "IPv4-mapped");
    assert_eq!(table.meshed(), 3 + 2, "three pod addresses, two static entries");
    let explained = table.explain(Direction::Outbound, "10.0.0.5".parse().unwrap(), 1);
    let mesh = explained.mesh.unwrap();
    assert_eq!((mesh.identity.as_str(), mesh.source.as_str()), (DB_ID, "inject on Pod shop/db-0"));
    assert!(table.explain(Direction::Inbound, "10.0.0.5".parse().unwrap(), 1).authz.unwrap().srv_name == "all-unauthenticated");
}

#[test]
fn meshed_pods_come_and_go_with_deltas() {
    let policy = Policy::new(PolicyStore::compile(&cluster()).unwrap());
    let meshed = PortTableSpec { id: 5, ports: vec![], sources: vec![], mesh: peer(DB_ID, 4143) };
    let delta = PolicyDelta {
        generation: 8,
        base: 7,
        frame: None,
        tables: vec![meshed.clone()],
        drop_tables: vec![],
        addresses: vec![addr("10.0.3.1", 5, "Pod shop/db-1")],
        remove_addresses: vec![],
    };
    policy.update(&delta).unwrap();
    assert_eq!(policy.load().mesh_peer("10.0.3.1".parse().unwrap()).unwrap().identity.as_str(), DB_ID);
    assert_eq!(policy.snapshot().meshed, 1);
    // A bad peer refuses the whole delta.
    let bad = PortTableSpec { id: 6, mesh: peer("Not An Identity", 4143), ..meshed };
    let refused = PolicyDelta { generation: 9, base: 8, tables: vec![bad], addresses: vec![addr("10.0.3.2", 6, "Pod shop/x")], ..delta };
    let err = policy.update(&refused).unwrap_err().to_string();
    assert!(err.contains("port table 6") && err.contains("meshed peer"), "{err}");
    assert!(policy.load().mesh_peer("10.0.3.2".parse().unwrap()).is_none());
    // The pod goes: so does its peer.
    let gone = PolicyDelta {
        generation: 9,
        base: 8,
        frame: None,
        tables: vec![],
        drop_tables: vec![5],
        addresses: vec![],
        remove_addresses: vec!["10.0.3.1".into()],
    };
    policy.update(&gone).unwrap();
    assert!(policy.load().mesh_peer("10.0.3.1".parse().unwrap()).is_none());
    assert_eq!(policy.snapshot().meshed, 0);
}

#[test]
fn the_frame_carries_the_authorization() {
    let mut spec = cluster();
    let rule = crate::authz::AuthzRuleSpec {
        kind: "authorizationpolicy".into(),
        name: "db-web".into(),
        networks: vec![],
        identities: vec![DB_ID.into()],
    };
    spec.authz = Some(AuthzSpec {
        ports: vec![crate::authz::PortAuthzSpec { port: 5432, srv_kind: "server".into(), srv_name: "db".into(), rules: vec![rule] }],
        default: crate::authz::PortAuthzSpec { port: 0, srv_kind: "default".into(), srv_name: "deny".into(), rules: vec![] },
        exposed_ports: Some(vec![5432]),
    });
    let table = PolicyTable::compile(&spec).unwrap();
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let db = Identity::parse(DB_ID).unwrap();
    assert!(table.authorize(5432, Some(&db), ip).allow);
    assert!(!table.authorize(5432, None, ip).allow, "plaintext is not the identity");
    assert_eq!(table.authorize(80, Some(&db), ip).srv_name, "deny");
    assert!(table.authz().exposes(5432) && !table.authz().exposes(80));
    let described = table.explain(Direction::Inbound, ip, 5432).authz.unwrap();
    assert_eq!((described.srv_name.as_str(), described.rules[0].identities[0].as_str()), ("db", DB_ID));
    // A frame without authz (an older sender): everyone allowed, as before the mesh.
    assert!(PolicyTable::compile(&cluster()).unwrap().authorize(5432, None, ip).allow);
    // A bad authorization table refuses the whole update.
    let mut bad = spec.clone();
    bad.authz.as_mut().unwrap().ports[0].rules[0].identities = vec!["Not An Identity".into()];
    assert!(PolicyTable::compile(&bad).unwrap_err().to_string().contains("policy authz"));
}

#[test]
fn deltas_apply_all_or_nothing_to_their_base_generation() {
    let policy = Policy::new(PolicyStore::compile(&cluster()).unwrap());
    let delta = |generation, base| PolicyDelta {
        generation,
        base,
        frame: None,
        tables: vec![],
        drop_tables: vec![],
        addresses: vec![],
        remove_addresses: vec![],
    };
    // A pod moves to another table; another disappears; a new table comes and an old one goes.
    let mut d = delta(8, 7);
    d.tables.push(table(3, &[(5432, 5432, PortMode::Opaque)], "new"));
    d.addresses.push(addr("10.0.0.5", 3, "Pod shop/db-0"));
    d.remove_addresses.push("fd00::5".into());
    assert_eq!(policy.update(&d).unwrap(), 8);
    let now = policy.load();
    assert_eq!(now.lookup(Direction::Outbound, t("10.0.0.5:5432")).mode, PortMode::Opaque);
    assert_eq!(now.lookup(Direction::Outbound, t("[fd00::5]:9000")).mode, PortMode::Detect);
    assert_eq!(now.addresses(), 2);

    // A delta for another generation is refused and changes nothing.
    let err = policy.update(&delta(9, 7)).unwrap_err().to_string();
    assert!(err.contains("generation 7") && err.contains("generation 8"), "{err}");
    // One bad entry among good ones: nothing applies.
    let mut bad = delta(9, 8);
    bad.addresses.push(addr("10.0.0.77", 2, "Service a/b"));
    bad.remove_addresses.push("10.200.0.1".into());
    assert!(policy.update(&bad).unwrap_err().to_string().contains("10.200.0.1"));
    let unchanged = policy.load();
    assert_eq!(unchanged.generation(), 8);
    assert_eq!(unchanged.lookup(Direction::Outbound, t("10.0.0.77:80")).mode, PortMode::Detect);
    let snap = policy.snapshot();
    assert_eq!((snap.updates_applied, snap.updates_rejected, snap.generation), (1, 2, 8));
    assert!(snap.last_rejection.unwrap().message.contains("10.200.0.1"));

    // Dropped tables cannot be used again; the frame can be replaced alone.
    let mut d = delta(9, 8);
    d.drop_tables.push(1);
    d.frame = Some(PolicyFrameSpec::default());
    policy.update(&d).unwrap();
    let mut reuse = delta(10, 9);
    reuse.addresses.push(addr("10.0.0.8", 1, "Pod shop/db-1"));
    assert!(policy.update(&reuse).unwrap_err().to_string().contains("port table 1 is not defined"));
    let now = policy.load();
    assert_eq!(now.lookup(Direction::Outbound, t("192.0.2.1:3306")).mode, PortMode::Detect, "the old rules are gone");
    assert_eq!(now.lookup(Direction::Outbound, t("10.96.0.1:80")), PortPolicy { mode: PortMode::Http2, detect_timeout: None });
    assert!(policy.snapshot().last_rejection.is_some());
    policy.replace(&cluster()).unwrap();
    assert!(policy.snapshot().last_rejection.is_none(), "an accepted update clears the last rejection");
}

#[test]
fn modes_parse_from_json() {
    let spec: PolicySpec = serde_json::from_str(
        r#"{"generation":2,"rules":[{"direction":"inbound","net":null,"ports":[1,2],"mode":"grpc","detectTimeoutMs":5,"source":"x"}],
            "tables":[{"id":4,"ports":[[1,9,"opaque",0]],"sources":["s"]}],"addresses":[["10.0.0.1",4,"Pod a/b"]]}"#,
    )
    .unwrap();
    assert_eq!(spec.rules[0].mode, PortMode::Grpc);
    assert_eq!(spec.tables[0].ports[0].2, PortMode::Opaque);
    assert!(serde_json::from_str::<PolicySpec>(r#"{"rules":[{"direction":"sideways","ports":[1,1],"mode":"opaque"}]}"#).is_err());
    assert!(serde_json::from_str::<PolicyDelta>(r#"{"generation":2,"base":1,"bogus":[]}"#).is_err(), "unknown fields are refused");
}

#[test]
fn a_one_address_change_in_a_large_table_keeps_the_rest() {
    let mut spec = PolicySpec { tables: vec![table(1, &[(8080, 8082, PortMode::Http1)], "pod")], ..Default::default() };
    for i in 0..50_000u32 {
        spec.addresses.push(addr(&std::net::Ipv4Addr::from(0x0af4_0000 + i).to_string(), 1, "Pod a/b"));
    }
    let policy = Policy::new(PolicyStore::compile(&spec).unwrap());
    let before = policy.load_full();
    let mut d = PolicyDelta {
        generation: 1,
        base: 0,
        frame: None,
        tables: vec![],
        drop_tables: vec![],
        addresses: vec![],
        remove_addresses: vec![],
    };
    d.remove_addresses.push("10.244.0.1".into());
    policy.update(&d).unwrap();
    assert_eq!(before.addresses(), 50_000);
    assert_eq!(policy.load().addresses(), 49_999);
    assert_eq!(before.lookup(Direction::Outbound, t("10.244.0.1:8080")).mode, PortMode::Http1, "readers keep their snapshot");
    assert_eq!(policy.load().lookup(Direction::Outbound, t("10.244.0.1:8080")).mode, PortMode::Detect);
}

/// The semantics read directly: rules in order, then the destination's
/// entries in order, then fallback rules in order.
fn reference(spec: &PolicySpec, direction: Direction, ip: IpAddr, port: u16) -> PortMode {
    let ip = normalise(ip);
    let p = u32::from(port);
    let hit = |rules: &[RuleSpec]| -> Option<PortMode> {
        rules
            .iter()
            .find(|r| {
                r.direction == direction
                    && p >= r.ports.0
                    && p <= r.ports.1
                    && r.net.as_ref().is_none_or(|n| n.parse::<crate::addr::Cidr>().unwrap().contains(ip))
            })
            .map(|r| r.mode)
    };
    if let Some(mode) = hit(&spec.rules) {
        return mode;
    }
    if direction == Direction::Outbound {
        // The last entry for an address wins (later entries replace earlier ones).
        if let Some(a) = spec.addresses.iter().rev().find(|a| normalise(a.0.parse().unwrap()) == ip) {
            let t = spec.tables.iter().find(|t| t.id == a.1).unwrap();
            if let Some(e) = t.ports.iter().find(|e| p >= e.0 && p <= e.1) {
                return e.2;
            }
        }
    }
    hit(&spec.fallback_rules).unwrap_or(PortMode::Detect)
}

fn mode_of(i: u8) -> PortMode {
    [PortMode::Detect, PortMode::Opaque, PortMode::Http1, PortMode::Http2, PortMode::Grpc, PortMode::Tls][i as usize % 6]
}

proptest! {
    #[test]
    fn lookup_equals_the_reference(
        rules in proptest::collection::vec((any::<bool>(), 0u8..4, 1u32..60, 0u32..20, 0u8..6), 0..12),
        fallback in proptest::collection::vec((any::<bool>(), 0u8..4, 1u32..60, 0u32..20, 0u8..6), 0..12),
        tables in proptest::collection::vec(proptest::collection::vec((1u32..60, 0u32..20, 0u8..6), 0..6), 1..4),
        addresses in proptest::collection::vec((0u8..6, 0u8..4), 0..10),
        probes in proptest::collection::vec((any::<bool>(), 0u8..7, 1u16..90), 1..40),
    ) {
        let nets = ["10.0.0.0/8", "10.0.0.0/24", "::ffff:10.0.0.0/120", "fd00::/8"];
        let ips = ["10.0.0.1", "10.0.0.2", "10.1.0.1", "fd00::1", "::ffff:10.0.0.2", "192.0.2.1", "fd00::2"];
        let mk = |v: &Vec<(bool, u8, u32, u32, u8)>| -> Vec<RuleSpec> {
            v.iter().map(|(inb, net, from, len, mode)| {
                let dir = if *inb { Direction::Inbound } else { Direction::Outbound };
                let net = if *net == 0 { None } else { Some(nets[*net as usize % nets.len()]) };
                rule(dir, net, (*from, (*from + *len).min(65535)), mode_of(*mode), "r")
            }).collect()
        };
        let spec = PolicySpec {
            generation: 1,
            rules: mk(&rules),
            fallback_rules: mk(&fallback),
            destination_detect_timeout_ms: None,
            tables: tables.iter().enumerate().map(|(id, entries)| PortTableSpec {
                id: id as u32,
                ports: entries.iter().map(|(f, len, m)| PortSpec(*f, (*f + *len).min(65535), mode_of(*m), 0)).collect(),
                sources: vec!["s".into()],
                mesh: None,
            }).collect(),
            addresses: addresses.iter().map(|(ip, tid)| addr(ips[*ip as usize % ips.len()], u32::from(*tid) % tables.len() as u32, "d")).collect(),
            ..PolicySpec::default()
        };
        let table = PolicyTable::compile(&spec).unwrap();
        for (inb, ip, port) in probes {
            let dir = if inb { Direction::Inbound } else { Direction::Outbound };
            let ip: IpAddr = ips[ip as usize].parse().unwrap();
            let target = TargetAddr(std::net::SocketAddr::new(ip, port));
            prop_assert_eq!(table.lookup(dir, target).mode, reference(&spec, dir, ip, port));
            prop_assert_eq!(table.explain(dir, ip, port).mode, reference(&spec, dir, ip, port));
        }
    }
}
