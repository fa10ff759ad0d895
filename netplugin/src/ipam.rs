//! IPAM logic (Docker's IpamDriver) over the state store: pools with overlap checks per
//! address space, auto pools from the configured default range (never handed out twice while
//! held), addresses allocated with create-if-absent transactions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::error::{NetError, NetResult};
use crate::ipnet::{parse_addr, Ipv4Net};
use crate::state::*;
use crate::store::{Compare, Op, StoreError, Txn};

pub const LOCAL_SPACE: &str = "berth-local";
pub const GLOBAL_SPACE: &str = "berth-global";
pub const GATEWAY_TYPE_KEY: &str = "RequestAddressType";
pub const GATEWAY_TYPE: &str = "com.docker.network.gateway";
pub const MAC_OPTION: &str = "com.docker.network.endpoint.macaddress";

/// How often an allocation is retried when another writer got in between.
const CAS_ATTEMPTS: usize = 64;

#[derive(Debug, Clone)]
pub struct IpamConfig {
    /// Where pools without `--subnet` come from.
    pub default_pools: Vec<Ipv4Net>,
    /// Prefix length of those pools.
    pub default_prefix: u8,
}

impl Default for IpamConfig {
    fn default() -> Self {
        Self {
            default_pools: vec!["10.224.0.0/12".parse().expect("valid")],
            default_prefix: 24,
        }
    }
}

pub struct Ipam {
    pub state: State,
    pub config: IpamConfig,
}

fn contention(what: &str) -> NetError {
    NetError::Store(StoreError::Contention {
        what: what.to_string(),
        attempts: CAS_ATTEMPTS,
    })
}

/// Who holds a pool, for error messages.
pub fn describe_pool(p: &PoolRecord) -> String {
    match &p.network_id {
        Some(n) => format!("{} of network {}", p.subnet, short(n)),
        None => format!("{} (pool {}, no network yet)", p.subnet, p.id),
    }
}

impl Ipam {
    pub fn new(state: State, config: IpamConfig) -> Self {
        Self { state, config }
    }

    /// IpamDriver.RequestPool. Returns (pool id, CIDR).
    pub fn request_pool(
        &self,
        space: &str,
        pool: &str,
        sub_pool: &str,
        v6: bool,
    ) -> NetResult<(String, String)> {
        if v6 {
            return Err(NetError::invalid(
                "IPv6 is not supported by berth-net yet: create the network without --ipv6",
            ));
        }
        let space = if space.is_empty() { LOCAL_SPACE } else { space };
        if space.len() > 64 || space.contains('/') {
            return Err(NetError::invalid(format!(
                "AddressSpace {space:?}: must be at most 64 characters without '/'"
            )));
        }
        let explicit = if pool.is_empty() {
            if !sub_pool.is_empty() {
                return Err(NetError::invalid(
                    "--ip-range needs --subnet: an IP range is only valid inside an explicit subnet",
                ));
            }
            None
        } else {
            let net: Ipv4Net = pool
                .parse()
                .map_err(|e| NetError::invalid(format!("--subnet {e}")))?;
            if net.prefix() > 30 {
                return Err(NetError::invalid(format!(
                    "--subnet {net}: must be /30 or larger (a gateway and at least one container)"
                )));
            }
            let sub = if sub_pool.is_empty() {
                None
            } else {
                let s: Ipv4Net = sub_pool
                    .parse()
                    .map_err(|e| NetError::invalid(format!("--ip-range {e}")))?;
                if !net.covers(&s) {
                    return Err(NetError::invalid(format!(
                        "--ip-range {s} is not inside --subnet {net}"
                    )));
                }
                Some(s)
            };
            Some((net, sub))
        };
        for _ in 0..CAS_ATTEMPTS {
            let guard = self
                .state
                .store
                .get(&space_key(space))?
                .map(|kv| kv.mod_revision)
                .unwrap_or(0);
            let existing: Vec<PoolRecord> = self
                .state
                .pools()?
                .into_iter()
                .filter(|p| p.address_space == space)
                .collect();
            let held: Vec<(Ipv4Net, &PoolRecord)> = existing
                .iter()
                .filter_map(|p| p.subnet.parse().ok().map(|n| (n, p)))
                .collect();
            let (net, sub, auto) = match explicit {
                Some((net, sub)) => {
                    if let Some((_, p)) = held.iter().find(|(n, _)| n.overlaps(&net)) {
                        return Err(NetError::conflict(format!(
                            "--subnet {net} overlaps {} in address space {space}",
                            describe_pool(p)
                        )));
                    }
                    (net, sub, false)
                }
                None => (self.free_auto_subnet(&held)?, None, true),
            };
            let id = format!("p-{}", random_id(8));
            let record = PoolRecord {
                id: id.clone(),
                address_space: space.to_string(),
                subnet: net.to_string(),
                sub_pool: sub.map(|s| s.to_string()),
                auto,
                network_id: None,
                host_id: self.state.host_id.clone(),
                created_at: now(),
            };
            let done = self.state.store.txn(Txn {
                compare: vec![Compare::ModRevision(space_key(space), guard)],
                success: vec![
                    Op::put(space_key(space), b"{}".to_vec()),
                    Op::put(pool_key(&id), encode(&record)),
                ],
                failure: vec![],
            })?;
            if done.succeeded {
                return Ok((id, net.to_string()));
            }
        }
        Err(contention("pool allocation"))
    }

    fn free_auto_subnet(&self, held: &[(Ipv4Net, &PoolRecord)]) -> NetResult<Ipv4Net> {
        let prefix = self.config.default_prefix;
        for range in &self.config.default_pools {
            let count = range.subnet_count(prefix);
            let mut i = 0;
            while i < count {
                let Some(candidate) = range.subnet(prefix, i) else {
                    break;
                };
                match held.iter().find(|(n, _)| n.overlaps(&candidate)) {
                    None => return Ok(candidate),
                    Some((n, _)) => {
                        // Skip past the held pool in one step (a held /16 covers many /24s).
                        let next = u64::from(n.last().max(candidate.last())) + 1;
                        let step = candidate.size();
                        let skip =
                            (next.saturating_sub(u64::from(candidate.first()))).div_ceil(step);
                        i += skip.max(1);
                    }
                }
            }
        }
        let ranges: Vec<String> = self
            .config
            .default_pools
            .iter()
            .map(|r| r.to_string())
            .collect();
        Err(NetError::conflict(format!(
            "no free /{prefix} left in the default pool range {} (--default-pools): pass --subnet",
            ranges.join(", ")
        )))
    }

    /// IpamDriver.ReleasePool: the pool and every address in it; unknown pools are fine.
    pub fn release_pool(&self, pool_id: &str) -> NetResult<()> {
        require_id("PoolID", pool_id)?;
        let Some(pool) = self.state.pool(pool_id)? else {
            return Ok(());
        };
        self.state.store.txn(Txn {
            success: vec![
                Op::put(space_key(&pool.address_space), b"{}".to_vec()),
                Op::Delete(pool_key(pool_id)),
                Op::DeletePrefix(addr_prefix(pool_id)),
            ],
            ..Default::default()
        })?;
        Ok(())
    }

    /// IpamDriver.RequestAddress. Returns `ip/len`.
    pub fn request_address(
        &self,
        pool_id: &str,
        address: &str,
        options: &BTreeMap<String, String>,
    ) -> NetResult<String> {
        require_id("PoolID", pool_id)?;
        let Some((pool, pool_rev)) = self.state.get::<PoolRecord>(&pool_key(pool_id))? else {
            return Err(NetError::NotFound(format!(
                "pool {pool_id} not found (was it released?)"
            )));
        };
        let net: Ipv4Net = pool.subnet.parse().map_err(|e| {
            NetError::Store(StoreError::Corrupt {
                key: pool_key(pool_id),
                message: e,
            })
        })?;
        let kind = if options.get(GATEWAY_TYPE_KEY).map(String::as_str) == Some(GATEWAY_TYPE) {
            AddrKind::Gateway
        } else {
            AddrKind::Address
        };
        let mac = options.get(MAC_OPTION).cloned();
        let what = if kind == AddrKind::Gateway {
            "--gateway"
        } else {
            "address"
        };
        let mut record = AddrRecord {
            pool_id: pool_id.to_string(),
            address: Ipv4Addr::UNSPECIFIED,
            kind,
            endpoint_id: None,
            mac,
            host_id: self.state.host_id.clone(),
            created_at: now(),
        };
        if !address.is_empty() {
            let ip = parse_addr(address).map_err(|e| NetError::invalid(format!("{what} {e}")))?;
            if !net.contains(ip) {
                return Err(NetError::invalid(format!(
                    "{what} {ip} is outside the network's subnet {net}"
                )));
            }
            if !net.is_host(ip) {
                return Err(NetError::invalid(format!(
                    "{what} {ip} is the network or broadcast address of {net}"
                )));
            }
            record.address = ip;
            let key = addr_key(pool_id, ip);
            let done = self.state.store.txn(Txn {
                compare: vec![
                    Compare::Version(key.clone(), 0),
                    Compare::ModRevision(pool_key(pool_id), pool_rev),
                ],
                success: vec![Op::put(key.clone(), encode(&record))],
                failure: vec![],
            })?;
            if !done.succeeded {
                return match self.state.get::<AddrRecord>(&key)? {
                    Some((holder, _)) => Err(NetError::conflict(format!(
                        "{what} {ip} is already in use in {} ({})",
                        describe_pool(&pool),
                        describe_holder(&holder)
                    ))),
                    None => Err(contention("address allocation")),
                };
            }
            return Ok(format!("{ip}/{}", net.prefix()));
        }
        // Dynamic: the gateway is the first host address; others the lowest free one.
        let range: Ipv4Net = match (&pool.sub_pool, kind) {
            (Some(s), AddrKind::Address) => s.parse().unwrap_or(net),
            _ => net,
        };
        for _ in 0..CAS_ATTEMPTS {
            let held: BTreeSet<Ipv4Addr> = self
                .state
                .addresses(pool_id)?
                .into_iter()
                .map(|a| a.address)
                .collect();
            let (lo, hi) = range.hosts();
            let (nlo, nhi) = net.hosts();
            let free = (lo.max(nlo)..=hi.min(nhi))
                .map(Ipv4Addr::from)
                .find(|ip| !held.contains(ip));
            let Some(ip) = free else {
                return Err(NetError::conflict(format!(
                    "no free address left in {range} ({}): {} addresses held",
                    describe_pool(&pool),
                    held.len()
                )));
            };
            record.address = ip;
            let key = addr_key(pool_id, ip);
            let done = self.state.store.txn(Txn {
                compare: vec![
                    Compare::Version(key.clone(), 0),
                    Compare::ModRevision(pool_key(pool_id), pool_rev),
                ],
                success: vec![Op::put(key, encode(&record))],
                failure: vec![],
            })?;
            if done.succeeded {
                return Ok(format!("{ip}/{}", net.prefix()));
            }
            if self
                .state
                .store
                .get(&pool_key(pool_id))?
                .map(|kv| kv.mod_revision)
                != Some(pool_rev)
            {
                return Err(NetError::NotFound(format!(
                    "pool {pool_id} changed or was released while allocating; try again"
                )));
            }
        }
        Err(contention("address allocation"))
    }

    /// IpamDriver.ReleaseAddress; unknown pools and addresses are fine.
    pub fn release_address(&self, pool_id: &str, address: &str) -> NetResult<()> {
        require_id("PoolID", pool_id)?;
        let ip = parse_addr(address).map_err(|e| NetError::invalid(format!("Address {e}")))?;
        self.state.store.txn(Txn {
            success: vec![Op::Delete(addr_key(pool_id, ip))],
            ..Default::default()
        })?;
        Ok(())
    }
}

pub fn describe_holder(a: &AddrRecord) -> String {
    match (&a.kind, &a.endpoint_id) {
        (AddrKind::Gateway, _) => "the network's gateway".to_string(),
        (_, Some(ep)) => format!("endpoint {}", short(ep)),
        (_, None) => "reserved: aux address or an endpoint being created".to_string(),
    }
}

pub fn require_id(field: &str, value: &str) -> NetResult<()> {
    if value.is_empty() {
        return Err(NetError::invalid(format!(
            "{field} is empty (a retried request from Docker can lose its body); nothing was done"
        )));
    }
    if value.len() > 128 || value.chars().any(|c| c.is_control() || c == '/') {
        return Err(NetError::invalid(format!(
            "{field} {value:?}: at most 128 characters, no '/' or control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemStore;
    use std::sync::Arc;

    fn ipam() -> Ipam {
        Ipam::new(
            State::new(Arc::new(MemStore::new()), "h1"),
            IpamConfig {
                default_pools: vec!["10.240.0.0/22".parse().unwrap()],
                default_prefix: 24,
            },
        )
    }

    fn gw() -> BTreeMap<String, String> {
        BTreeMap::from([(GATEWAY_TYPE_KEY.to_string(), GATEWAY_TYPE.to_string())])
    }

    #[test]
    fn explicit_pool_gateway_and_addresses() {
        let i = ipam();
        let (id, cidr) = i.request_pool("", "10.231.1.0/24", "", false).unwrap();
        assert_eq!(cidr, "10.231.1.0/24");
        assert_eq!(i.request_address(&id, "", &gw()).unwrap(), "10.231.1.1/24");
        let none = BTreeMap::new();
        assert_eq!(i.request_address(&id, "", &none).unwrap(), "10.231.1.2/24");
        assert_eq!(
            i.request_address(&id, "10.231.1.50", &none).unwrap(),
            "10.231.1.50/24"
        );
        let e = i.request_address(&id, "10.231.1.50", &none).unwrap_err();
        assert!(e.to_string().contains("already in use"), "{e}");
        let e = i.request_address(&id, "10.231.2.5", &none).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        let e = i.request_address(&id, "10.231.1.255", &none).unwrap_err();
        assert!(e.to_string().contains("broadcast"), "{e}");
        let e = i.request_address(&id, "10.231.1.1", &none).unwrap_err();
        assert!(e.to_string().contains("gateway"), "{e}");
        // Released addresses come back; release is idempotent.
        i.release_address(&id, "10.231.1.2").unwrap();
        i.release_address(&id, "10.231.1.2").unwrap();
        assert_eq!(i.request_address(&id, "", &none).unwrap(), "10.231.1.2/24");
        // Overlap with a clear message; another address space is separate.
        let e = i.request_pool("", "10.231.0.0/16", "", false).unwrap_err();
        assert!(e.to_string().contains("overlaps 10.231.1.0/24"), "{e}");
        i.request_pool("other", "10.231.0.0/16", "", false).unwrap();
        i.release_pool(&id).unwrap();
        i.release_pool(&id).unwrap();
        assert!(i.state.addresses(&id).unwrap().is_empty());
        i.request_pool("", "10.231.1.0/24", "", false).unwrap();
    }

    #[test]
    fn ip_range_and_bad_input() {
        let i = ipam();
        let (id, _) = i
            .request_pool("", "10.231.2.0/24", "10.231.2.128/25", false)
            .unwrap();
        assert_eq!(i.request_address(&id, "", &gw()).unwrap(), "10.231.2.1/24");
        let none = BTreeMap::new();
        assert_eq!(
            i.request_address(&id, "", &none).unwrap(),
            "10.231.2.129/24"
        );
        // Aux addresses outside the range but inside the subnet are accepted.
        assert_eq!(
            i.request_address(&id, "10.231.2.5", &none).unwrap(),
            "10.231.2.5/24"
        );
        for (pool, sub, v6, needle) in [
            ("", "10.1.0.0/24", false, "needs --subnet"),
            ("10.1.0.1/24", "", false, "host bits"),
            ("banana", "", false, "CIDR"),
            ("10.1.0.0/31", "", false, "/30"),
            ("10.1.0.0/24", "10.2.0.0/25", false, "not inside"),
            ("", "", true, "IPv6"),
        ] {
            let e = i.request_pool("", pool, sub, v6).unwrap_err();
            assert!(e.to_string().contains(needle), "{pool} {sub}: {e}");
        }
        assert!(i.request_address("", "", &none).is_err());
        assert!(i
            .request_address("p-none", "", &none)
            .unwrap_err()
            .to_string()
            .contains("not found"));
    }

    #[test]
    fn auto_pools_never_twice_and_exhaustion() {
        let i = ipam();
        let mut seen = BTreeSet::new();
        // A held explicit pool inside the default range is skipped too.
        i.request_pool("", "10.240.1.0/24", "", false).unwrap();
        for _ in 0..3 {
            let (_, cidr) = i.request_pool("", "", "", false).unwrap();
            assert!(cidr != "10.240.1.0/24");
            assert!(seen.insert(cidr));
        }
        let e = i.request_pool("", "", "", false).unwrap_err();
        assert!(e.to_string().contains("no free /24"), "{e}");
    }

    #[test]
    fn exhaustion_of_addresses() {
        let i = ipam();
        let (id, _) = i.request_pool("", "10.231.3.0/30", "", false).unwrap();
        let none = BTreeMap::new();
        i.request_address(&id, "", &gw()).unwrap();
        i.request_address(&id, "", &none).unwrap();
        let e = i.request_address(&id, "", &none).unwrap_err();
        assert!(e.to_string().contains("no free address"), "{e}");
    }

    /// Property-style: random interleavings of allocate/release over many rounds, checked
    /// against a model: never a duplicate, nothing leaked, everything inside the subnet.
    #[test]
    fn allocator_no_duplicates_no_leaks() {
        let i = Arc::new(ipam());
        let (id, _) = i.request_pool("", "10.231.4.0/26", "", false).unwrap();
        let mut rng = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let none = BTreeMap::new();
        let mut model: BTreeSet<String> = BTreeSet::new();
        for _ in 0..3000 {
            if next() % 3 != 0 {
                match i.request_address(&id, "", &none) {
                    Ok(a) => assert!(model.insert(a.clone()), "duplicate {a}"),
                    Err(e) => {
                        assert_eq!(model.len(), 62, "only full pools refuse: {e}");
                    }
                }
            } else if !model.is_empty() {
                let n = (next() as usize) % model.len();
                let a = model.iter().nth(n).unwrap().clone();
                i.release_address(&id, &a).unwrap();
                model.remove(&a);
            }
            let held: BTreeSet<String> = i
                .state
                .addresses(&id)
                .unwrap()
                .iter()
                .map(|r| format!("{}/26", r.address))
                .collect();
            assert_eq!(held, model, "store and model agree (no leaks)");
        }
        // Concurrent allocation from several threads: still no duplicates.
        for a in &model {
            i.release_address(&id, a).unwrap();
        }
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let i = i.clone();
                let id = id.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Ok(a) = i.request_address(&id, "", &BTreeMap::new()) {
                        got.push(a);
                    }
                    got
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().unwrap());
        }
        let unique: BTreeSet<&String> = all.iter().collect();
        assert_eq!(unique.len(), all.len(), "no duplicates across threads");
        assert_eq!(all.len(), 62);
    }
}
