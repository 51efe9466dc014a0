//! The policy as it crosses from TypeScript: a whole table (`PolicySpec`) or
//! a change to the engine's current one (`PolicyDelta`).
//!
//! A table has three parts, checked in this order by a lookup (the first
//! match wins, nothing matching means `detect`):
//! 1. `rules`: a small ordered list of (direction, network, port range) rules
//!    (the workload's inbound decisions, the caller's skip ports and subnets,
//!    the `--opaque-ports` flag);
//! 2. `addresses`: exact outbound destinations (pod IPs, Service clusterIPs),
//!    each pointing at a port table (sorted port ranges with a mode and a
//!    source). Many addresses share one table (every pod of a Deployment has
//!    the same ports), so tables cross once and are referred to by id;
//! 3. `fallbackRules`: ordered rules checked when no exact destination covers
//!    the port (the cluster defaults, the detect-timeout catch-alls).
//!
//! The mesh rides in the same table, so one lookup per connection answers
//! both questions and one delta path keeps both current: a port table may
//! carry the meshed peer of the addresses that point at it (`mesh`: the
//! identity a meshed pod must prove and its tunnel port; every replica of a
//! workload shares it), and the frame carries this workload's inbound
//! authorization (`authz`) and the static meshed destinations
//! (`meshDestinations`, from `--destinations FILE`).
//!
//! A delta names the generation it applies to (`base`): the engine refuses a
//! delta for any other generation, so a lost or reordered update can never
//! leave a silently wrong table behind (the sender answers with a whole table).
//! Everything is validated before anything changes: a bad entry rejects the
//! whole update, since a half-applied policy would silently widen or narrow
//! what is detected.

use serde::Deserialize;

pub use crate::authz::AuthzSpec;
pub use crate::destinations::{DestinationSpec, MeshPeerSpec};
pub use crate::vocab::{Direction, PortMode};

/// One ordered rule.
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    pub direction: Direction,
    /// A CIDR; `null` matches any address.
    pub net: Option<String>,
    pub ports: (u32, u32),
    pub mode: PortMode,
    /// Overrides the direction's detect timeout (`null` keeps it).
    pub detect_timeout_ms: Option<u64>,
    #[serde(default)]
    pub source: String,
}

/// One entry of a port table: `[from, to, mode, source]`, where `source`
/// indexes the table's `sources`. Entries are in precedence order and may
/// overlap: the first one covering a port wins.
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct PortSpec(pub u32, pub u32, pub PortMode, pub u32);

/// A port table shared by every address that points at its `id`.
/// A source may contain `{destination}`, replaced by the address's name when
/// a decision is explained (so one table serves every pod of a workload).
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTableSpec {
    pub id: u32,
    pub ports: Vec<PortSpec>,
    pub sources: Vec<String>,
    /// The meshed peer behind the addresses using this table (`null`: not meshed).
    #[serde(default)]
    pub mesh: Option<MeshPeerSpec>,
}

/// An exact destination: `[address, table id, name]` (the name, e.g.
/// `Pod shop/web-1`, is for explanations only).
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct AddressSpec(pub String, pub u32, pub String);

/// A whole policy table.
#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default)]
    pub generation: u64,
    /// Checked first, in order.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Checked last, in order, when no exact destination covers the port.
    #[serde(default)]
    pub fallback_rules: Vec<RuleSpec>,
    /// The detect timeout of exact destinations' detecting entries (`null`
    /// keeps the direction's).
    #[serde(default)]
    pub destination_detect_timeout_ms: Option<u64>,
    #[serde(default)]
    pub tables: Vec<PortTableSpec>,
    #[serde(default)]
    pub addresses: Vec<AddressSpec>,
    /// This workload's inbound authorization (`null`: everyone is allowed,
    /// Linkerd's `all-unauthenticated`).
    #[serde(default)]
    pub authz: Option<AuthzSpec>,
    /// Static meshed addresses and networks (`--destinations FILE`).
    #[serde(default)]
    pub mesh_destinations: Vec<DestinationSpec>,
}

/// The ordered rules of a table, replaced as a whole by a delta.
#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyFrameSpec {
    pub rules: Vec<RuleSpec>,
    pub fallback_rules: Vec<RuleSpec>,
    pub destination_detect_timeout_ms: Option<u64>,
    #[serde(default)]
    pub authz: Option<AuthzSpec>,
    #[serde(default)]
    pub mesh_destinations: Vec<DestinationSpec>,
}

/// A change to the engine's current table. Applied in this order: `frame`,
/// new `tables`, `addresses` (set or replaced), `removeAddresses`,
/// `dropTables` (ids no address may use any more).
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyDelta {
    pub generation: u64,
    /// The generation this delta applies to; any other is refused.
    pub base: u64,
    #[serde(default)]
    pub frame: Option<PolicyFrameSpec>,
    #[serde(default)]
    pub tables: Vec<PortTableSpec>,
    #[serde(default)]
    pub drop_tables: Vec<u32>,
    #[serde(default)]
    pub addresses: Vec<AddressSpec>,
    #[serde(default)]
    pub remove_addresses: Vec<String>,
}
