//! Pools: RequestPool with overlap checks per address space, auto pools from the default
//! range, ReleasePool, and block records for pools written before blocks existed.

use super::*;

impl Ipam {
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
        plugin_transport::input::check_id("AddressSpace", space).map_err(NetError::invalid)?;
        if space.len() > 64 {
            return Err(NetError::invalid(format!(
                "AddressSpace {}: longer than 64 characters",
                plugin_transport::input::quoted(space)
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
                        // The same network created on another host: share its pool.
                        let same = p.subnet == net.to_string()
                            && p.sub_pool == sub.map(|s| s.to_string())
                            && !p.auto;
                        let mut users = p.users();
                        if same && users.insert(self.state.host_id.clone()) {
                            let mut joined = (*p).clone();
                            joined.hosts = users;
                            let rev = self
                                .state
                                .store
                                .get(&pool_key(&p.id))?
                                .map(|kv| kv.mod_revision)
                                .unwrap_or(0);
                            if self.state.update_pool(&joined, rev)? {
                                return Ok((p.id.clone(), net.to_string()));
                            }
                            continue;
                        }
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
                hosts: BTreeSet::from([self.state.host_id.clone()]),
                blocks: true,
            };
            if self.state.create_pool_txn(&record, guard)? {
                return Ok((id, net.to_string()));
            }
        }
        Err(contention("pool allocation"))
    }

    pub(super) fn free_auto_subnet(&self, held: &[(Ipv4Net, &PoolRecord)]) -> NetResult<Ipv4Net> {
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

    /// IpamDriver.ReleasePool: this host stops using the pool; the last user's release takes
    /// the pool and every address in it. Unknown pools are fine.
    pub fn release_pool(&self, pool_id: &str) -> NetResult<()> {
        require_id("PoolID", pool_id)?;
        for _ in 0..CAS_ATTEMPTS {
            let Some((pool, rev)) = self.state.get::<PoolRecord>(&pool_key(pool_id))? else {
                self.forget(pool_id);
                return Ok(());
            };
            let mut users = pool.users();
            let was_user = users.remove(&self.state.host_id);
            let done = if users.is_empty() {
                self.state.delete_pool(&pool, rev)?
            } else if was_user {
                let mut left = pool.clone();
                left.hosts = users;
                self.state.update_pool(&left, rev)?
            } else {
                return Ok(());
            };
            if done {
                self.forget(pool_id);
                return Ok(());
            }
        }
        Err(contention("pool release"))
    }

    /// Writes the block records of a pool from its address records (pools from a release
    /// without blocks, or migrated from one), then marks the pool.
    pub fn build_blocks(&self, pool: &PoolRecord, net: &Ipv4Net, pool_rev: i64) -> NetResult<()> {
        let geo = Geometry::of(net);
        let mut blocks: BTreeMap<u32, BlockRecord> = BTreeMap::new();
        for a in self.state.addresses(&pool.id)? {
            if let Some((idx, bit)) = geo.locate(a.address) {
                blocks.entry(idx).or_default().used |= 1u64 << bit;
            }
        }
        self.state.replace_blocks(&pool.id, &blocks)?;
        let mut marked = pool.clone();
        marked.blocks = true;
        self.state.update_pool(&marked, pool_rev)?;
        Ok(())
    }
}
