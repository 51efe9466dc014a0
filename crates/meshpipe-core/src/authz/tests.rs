//! Tests of the inbound authorization decision.

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap()
}

fn rule(kind: &str, name: &str, networks: &[(&str, &[&str])], identities: &[&str]) -> AuthzRuleSpec {
    AuthzRuleSpec {
        kind: kind.into(),
        name: name.into(),
        networks: networks
            .iter()
            .map(|(c, e)| NetworkSpec { cidr: c.to_string(), except: e.iter().map(|s| s.to_string()).collect() })
            .collect(),
        identities: identities.iter().map(|s| s.to_string()).collect(),
    }
}

fn port(port: u16, kind: &str, name: &str, rules: Vec<AuthzRuleSpec>) -> PortAuthzSpec {
    PortAuthzSpec { port, srv_kind: kind.into(), srv_name: name.into(), rules }
}

const WEB: &str = "web.shop.serviceaccount.identity.linkerd.cluster.local";
const ADMIN: &str = "admin.ops.serviceaccount.identity.linkerd.cluster.local";

fn table() -> AuthzTable {
    AuthzTable::from_spec(&AuthzSpec {
        ports: vec![
            // db: only web, by exact identity, and only from the cluster network minus a subnet.
            port(5432, "server", "db", vec![rule("authorizationpolicy", "db-web", &[("10.0.0.0/8", &["10.9.0.0/16"])], &[WEB])]),
            // metrics: any meshed client of namespace ops, or anyone from the monitoring network.
            port(
                9090,
                "server",
                "metrics",
                vec![
                    rule("authorizationpolicy", "ops-mesh", &[], &["*.ops.serviceaccount.identity.linkerd.cluster.local"]),
                    rule("authorizationpolicy", "monitoring", &[("192.168.7.0/24", &[])], &[]),
                ],
            ),
            // A Server without AuthorizationPolicy denies everything.
            port(6379, "server", "cache", vec![]),
            // Any authenticated client.
            port(8443, "server", "api", vec![rule("authorizationpolicy", "meshed", &[], &["*"])]),
        ],
        default: port(
            0,
            "default",
            "cluster-unauthenticated",
            vec![rule("default", "cluster-unauthenticated", &[("10.0.0.0/8", &[]), ("fd00::/8", &[])], &[])],
        ),
        exposed_ports: None,
    })
    .unwrap()
}

#[test]
fn exact_identity_and_network_with_except() {
    let t = table();
    let d = t.authorize(5432, Some(&id(WEB)), ip("10.1.2.3"));
    assert_eq!(
        d,
        Decision { allow: true, srv_kind: "server", srv_name: "db", authz_kind: Some("authorizationpolicy"), authz_name: Some("db-web") }
    );
    assert!(!t.authorize(5432, Some(&id(WEB)), ip("10.9.1.1")).allow, "except carves out a subnet");
    assert!(!t.authorize(5432, Some(&id(WEB)), ip("172.16.0.1")).allow, "outside the networks");
    assert!(!t.authorize(5432, None, ip("10.1.2.3")).allow, "no mesh TLS");
    let denied = t.authorize(5432, Some(&id(ADMIN)), ip("10.1.2.3"));
    assert_eq!(denied, Decision { allow: false, srv_kind: "server", srv_name: "db", authz_kind: None, authz_name: None });
}

#[test]
fn suffixes_wildcards_and_unauthenticated_networks() {
    let t = table();
    let d = t.authorize(9090, Some(&id(ADMIN)), ip("172.16.0.1"));
    assert_eq!((d.allow, d.authz_name), (true, Some("ops-mesh")));
    assert!(!t.authorize(9090, Some(&id(WEB)), ip("172.16.0.1")).allow);
    let d = t.authorize(9090, None, ip("192.168.7.20"));
    assert_eq!((d.allow, d.authz_name), (true, Some("monitoring")), "a NetworkAuthentication alone needs no TLS");
    // The suffix must match whole labels after the star, not a bare suffix string.
    let not_ops = id("x.notops.serviceaccount.identity.linkerd.cluster.local");
    assert!(!t.authorize(9090, Some(&not_ops), ip("172.16.0.1")).allow);
    let bare = id("ops.serviceaccount.identity.linkerd.cluster.local");
    assert!(!t.authorize(9090, Some(&bare), ip("172.16.0.1")).allow, "*.suffix needs at least one more label");
    assert!(t.authorize(8443, Some(&id(WEB)), ip("203.0.113.9")).allow, "* = any authenticated client");
    assert!(!t.authorize(8443, None, ip("203.0.113.9")).allow);
}

#[test]
fn servers_without_policy_deny_and_other_ports_use_the_default() {
    let t = table();
    let d = t.authorize(6379, Some(&id(WEB)), ip("10.1.1.1"));
    assert_eq!(d, Decision { allow: false, srv_kind: "server", srv_name: "cache", authz_kind: None, authz_name: None });
    let d = t.authorize(8080, None, ip("10.1.1.1"));
    assert_eq!(
        d,
        Decision {
            allow: true,
            srv_kind: "default",
            srv_name: "cluster-unauthenticated",
            authz_kind: Some("default"),
            authz_name: Some("cluster-unauthenticated")
        }
    );
    assert!(!t.authorize(8080, None, ip("8.8.8.8")).allow);
    assert!(t.authorize(8080, None, ip("::ffff:10.2.3.4")).allow, "IPv4-mapped clients match IPv4 networks");
    assert!(t.authorize(8080, None, ip("fd00::5")).allow);
    let all = AuthzTable::allow_all();
    assert!(all.authorize(1, None, ip("8.8.8.8")).allow);
}

#[test]
fn bad_tables_are_refused() {
    let bad = |ports: Vec<PortAuthzSpec>| {
        AuthzTable::from_spec(&AuthzSpec { ports, default: PortAuthzSpec::default(), exposed_ports: None }).unwrap_err()
    };
    assert_eq!(bad(vec![port(80, "server", "a", vec![]), port(80, "server", "b", vec![])]), AuthzError::Duplicate(80));
    let e = bad(vec![port(80, "server", "a", vec![rule("authorizationpolicy", "p", &[("10.0.0.0/40", &[])], &[])])]).to_string();
    assert!(e.contains("port 80") && e.contains("10.0.0.0/40"), "{e}");
    let e = bad(vec![port(80, "server", "a", vec![rule("authorizationpolicy", "p", &[], &["*.Bad Suffix"])])]).to_string();
    assert!(e.contains("identity pattern"), "{e}");
    let e = bad(vec![port(0, "server", "a", vec![])]).to_string();
    assert!(e.contains("1-65535"), "{e}");
}

#[test]
fn the_spec_is_json_camel_case() {
    let json = r#"{"ports":[{"port":80,"srvKind":"server","srvName":"web","rules":[
        {"kind":"authorizationpolicy","name":"p","networks":[{"cidr":"10.0.0.0/8","except":[]}],"identities":["*"]}]}],
        "default":{"port":0,"srvKind":"default","srvName":"deny","rules":[]}}"#;
    let spec: AuthzSpec = serde_json::from_str(json).unwrap();
    let t = AuthzTable::from_spec(&spec).unwrap();
    assert!(!t.authorize(81, None, ip("10.0.0.1")).allow, "deny default");
    assert!(
        serde_json::from_str::<AuthzSpec>(r#"{"ports":[],"default":{"port":0,"srvKind":"x","srvName":"y","rules":[],"extra":1}}"#).is_err()
    );
}

#[test]
fn exposed_ports_bound_the_tunnel_and_labels_are_shared() {
    let spec: AuthzSpec = serde_json::from_str(
        r#"{"ports":[],"default":{"port":0,"srvKind":"default","srvName":"all-unauthenticated",
        "rules":[{"kind":"default","name":"all-unauthenticated","networks":[],"identities":[]}]},"exposedPorts":[8080]}"#,
    )
    .unwrap();
    let t = AuthzTable::from_spec(&spec).unwrap();
    assert!(t.exposes(8080) && !t.exposes(8081));
    assert!(AuthzTable::allow_all().exposes(8081), "unknown ports: not restricted");
    let a = t.decide(8080, None, ip("10.0.0.1"));
    let b = t.decide(8080, None, ip("10.0.0.2"));
    assert!(a.allow && std::sync::Arc::ptr_eq(&a.srv_name, &b.srv_name), "labels are shared, not copied");
    assert_eq!(a.authz_name.as_deref(), Some("all-unauthenticated"));
    let zero = serde_json::from_str::<AuthzSpec>(&serde_json::to_string(&AuthzSpec { exposed_ports: Some(vec![0]), ..spec }).unwrap());
    assert!(AuthzTable::from_spec(&zero.unwrap()).is_err());
}

#[test]
fn describe_reads_the_compiled_rules_back() {
    let t = table();
    let metrics = t.describe(9090);
    assert_eq!((metrics.port, metrics.srv_kind.as_str(), metrics.srv_name.as_str()), (9090, "server", "metrics"));
    let names: Vec<_> = metrics.rules.iter().map(|r| (r.name.as_str(), r.identities.clone(), r.networks.len())).collect();
    assert_eq!(
        names,
        vec![("ops-mesh", vec!["*.ops.serviceaccount.identity.linkerd.cluster.local".to_string()], 0), ("monitoring", vec![], 1)]
    );
    let db = t.describe(5432);
    assert_eq!(db.rules[0].networks[0].except, vec!["10.9.0.0/16".to_string()]);
    assert_eq!(db.rules[0].identities, vec![WEB.to_string()]);
    assert!(t.describe(6379).rules.is_empty(), "a Server without policy: nobody");
    let other = t.describe(1234);
    assert_eq!((other.port, other.srv_kind.as_str(), other.srv_name.as_str()), (0, "default", "cluster-unauthenticated"));
    // The description compiles back to the same decisions.
    let again = AuthzTable::from_spec(&AuthzSpec { ports: vec![db.clone(), metrics], default: other, exposed_ports: None }).unwrap();
    for (port, client, addr) in
        [(5432, Some(WEB), "10.1.2.3"), (5432, Some(WEB), "10.9.0.1"), (9090, None, "192.168.7.9"), (1234, None, "8.8.8.8")]
    {
        let c = client.map(id);
        assert_eq!(again.authorize(port, c.as_ref(), ip(addr)), t.authorize(port, c.as_ref(), ip(addr)), "{port} {addr}");
    }
}
