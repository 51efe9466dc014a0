//! The engine's master copy of the policy: the writable state that whole
//! tables and deltas are applied to, and from which each new immutable
//! [`PolicyTable`] snapshot is taken.
//!
//! Only the control path touches it (behind a mutex in [`super::Policy`]);
//! connections read snapshots. An update is validated completely before
//! anything changes, so a rejected one leaves the current table exactly as it
//! was. A one-address change costs O(1) in the number of destinations
//! (exact.rs copies one shard); nothing here is proportional to the cluster
//! except a whole-table load.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::exact::{Destination, ExactBuilder};
use super::ports::{Interner, PortTable};
use super::rules::RuleSet;
use super::spec::{AddressSpec, PolicyDelta, PolicyFrameSpec, PolicySpec, PortTableSpec, RuleSpec};
use super::{PolicyError, PolicyTable};
use crate::addr::normalise;
use crate::authz::{AuthzSpec, AuthzTable};
use crate::destinations::{DestinationSpec, DestinationTable};

/// The ordered rules around the exact destinations, and this workload's
/// mesh parts: its inbound authorization and the static meshed destinations.
#[derive(Debug)]
pub struct Frame {
    pub rules: RuleSet,
    pub fallback: RuleSet,
    pub destination_timeout: Option<Duration>,
    pub authz: AuthzTable,
    pub mesh: DestinationTable,
}

impl Default for Frame {
    fn default() -> Self {
        Frame {
            rules: RuleSet::default(),
            fallback: RuleSet::default(),
            destination_timeout: None,
            authz: AuthzTable::allow_all(),
            mesh: DestinationTable::default(),
        }
    }
}

impl Frame {
    fn compile(
        rules: &[RuleSpec],
        fallback: &[RuleSpec],
        timeout_ms: Option<u64>,
        authz: Option<&AuthzSpec>,
        mesh: &[DestinationSpec],
    ) -> Result<Frame, PolicyError> {
        Ok(Frame {
            rules: RuleSet::compile("rules", rules)?,
            fallback: RuleSet::compile("fallbackRules", fallback)?,
            destination_timeout: timeout_ms.map(Duration::from_millis),
            authz: authz.map_or_else(|| Ok(AuthzTable::allow_all()), AuthzTable::from_spec)?,
            mesh: DestinationTable::from_entries(mesh)?,
        })
    }
}

/// The writable policy state.
#[derive(Debug, Default)]
pub struct PolicyStore {
    generation: u64,
    frame: Arc<Frame>,
    tables: HashMap<u32, Arc<PortTable>>,
    exact: ExactBuilder,
    interner: Interner,
}

fn parse_ip(text: &str) -> Result<IpAddr, PolicyError> {
    IpAddr::from_str(text.trim()).map(normalise).map_err(|_| PolicyError::Address { address: text.to_string() })
}

impl PolicyStore {
    /// Validates and compiles a whole table.
    pub fn compile(spec: &PolicySpec) -> Result<PolicyStore, PolicyError> {
        let mut store = PolicyStore {
            generation: spec.generation,
            frame: Arc::new(Frame::compile(
                &spec.rules,
                &spec.fallback_rules,
                spec.destination_detect_timeout_ms,
                spec.authz.as_ref(),
                &spec.mesh_destinations,
            )?),
            ..PolicyStore::default()
        };
        let tables = store.compile_tables(&spec.tables)?;
        store.tables.extend(tables);
        let addresses = store.resolve_addresses(&spec.addresses, &HashMap::new())?;
        for (ip, destination) in addresses {
            store.exact.insert(ip, destination);
        }
        Ok(store)
    }

    fn compile_tables(&mut self, specs: &[PortTableSpec]) -> Result<HashMap<u32, Arc<PortTable>>, PolicyError> {
        let mut out = HashMap::with_capacity(specs.len());
        for t in specs {
            if self.tables.contains_key(&t.id) || out.contains_key(&t.id) {
                return Err(PolicyError::DuplicateTable { id: t.id });
            }
            out.insert(t.id, Arc::new(PortTable::compile(t, &mut self.interner)?));
        }
        Ok(out)
    }

    fn resolve_addresses(
        &self,
        specs: &[AddressSpec],
        new_tables: &HashMap<u32, Arc<PortTable>>,
    ) -> Result<Vec<(IpAddr, Destination)>, PolicyError> {
        let mut out = Vec::with_capacity(specs.len());
        // Names repeat (a dual-stack pod has two addresses): share them.
        let mut last_name: Option<Arc<str>> = None;
        for a in specs {
            let ip = parse_ip(&a.0)?;
            let table = new_tables
                .get(&a.1)
                .or_else(|| self.tables.get(&a.1))
                .ok_or_else(|| PolicyError::UnknownTable { address: a.0.clone(), id: a.1 })?
                .clone();
            let name = match &last_name {
                Some(n) if **n == *a.2 => n.clone(),
                _ => Arc::from(a.2.as_str()),
            };
            last_name = Some(name.clone());
            out.push((ip, Destination { table, name }));
        }
        Ok(out)
    }

    /// Applies a delta, all or nothing.
    pub fn apply(&mut self, delta: &PolicyDelta) -> Result<(), PolicyError> {
        if delta.base != self.generation {
            return Err(PolicyError::Base { base: delta.base, current: self.generation });
        }
        // Validate everything first.
        let frame = match &delta.frame {
            Some(PolicyFrameSpec { rules, fallback_rules, destination_detect_timeout_ms, authz, mesh_destinations }) => {
                Some(Arc::new(Frame::compile(rules, fallback_rules, *destination_detect_timeout_ms, authz.as_ref(), mesh_destinations)?))
            }
            None => None,
        };
        let new_tables = self.compile_tables(&delta.tables)?;
        let addresses = self.resolve_addresses(&delta.addresses, &new_tables)?;
        let mut removals = Vec::with_capacity(delta.remove_addresses.len());
        for text in &delta.remove_addresses {
            let ip = parse_ip(text)?;
            let set_here = addresses.iter().any(|(a, _)| *a == ip);
            if !set_here && !self.exact.contains(&ip) {
                return Err(PolicyError::NotInTable { address: text.clone() });
            }
            removals.push(ip);
        }
        for id in &delta.drop_tables {
            if !self.tables.contains_key(id) && !new_tables.contains_key(id) {
                return Err(PolicyError::DropUnknown { id: *id });
            }
        }
        // Then change.
        if let Some(frame) = frame {
            self.frame = frame;
        }
        self.tables.extend(new_tables);
        for (ip, destination) in addresses {
            self.exact.insert(ip, destination);
        }
        for ip in &removals {
            self.exact.remove(ip);
        }
        for id in &delta.drop_tables {
            self.tables.remove(id);
        }
        self.generation = delta.generation;
        Ok(())
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// An immutable snapshot for connections.
    pub fn table(&self) -> PolicyTable {
        PolicyTable {
            generation: self.generation,
            frame: self.frame.clone(),
            exact: self.exact.snapshot(),
            tables: self.tables.len(),
            sources: self.interner.len(),
        }
    }
}
