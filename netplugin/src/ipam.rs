//! IPAM logic (Docker's IpamDriver) over the state store: pools with overlap checks per
//! address space, auto pools from the configured default range (never handed out twice while
//! held), addresses allocated with create-if-absent transactions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use crate::error::{NetError, NetResult};
use crate::ipnet::{parse_addr, Ipv4Net};
use crate::state::*;
use crate::store::{Compare, KeyValue, Op, StoreError, Txn};

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
    /// Per pool: the block records this host has seen (revisions included), so an
    /// allocation from an own block is one compare-and-swap transaction.
    caches: Mutex<HashMap<String, Arc<Mutex<PoolCache>>>>,
    /// Transactions whose answer was lost, to finish when the store answers again.
    pending: Mutex<Vec<Pending>>,
    /// Allocation transactions that lost a race with another writer and were retried.
    lost_races: std::sync::atomic::AtomicU64,
}

enum Pending {
    /// An allocation that may have landed after we answered Docker with an error.
    Undo {
        pool_id: String,
        key: String,
        claim: String,
        since: std::time::Instant,
    },
    /// A release that may not have landed (Docker does not retry releases).
    Release(String, KeyValue),
}

#[derive(Default)]
struct PoolCache {
    /// The pool record, its subnet and create revision.
    pool: Option<(PoolRecord, Ipv4Net, i64)>,
    /// Other hosts claim blocks of this pool at the same time: claim from this host's own
    /// starting point instead of the lowest free block.
    contended: bool,
    /// The own block allocated from last (looked at first).
    hint: Option<u32>,
    /// This host has no free block of its own and none is unclaimed: it borrows. The view of
    /// other hosts' blocks was reloaded when borrowing began (a stale view near a full pool
    /// would send it through block after block that filled since, one failed CAS each).
    borrowing: bool,
    loaded: bool,
    pool_crev: i64,
    /// Block index → record and its mod_revision.
    blocks: BTreeMap<u32, (BlockRecord, i64)>,
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
        Self {
            state,
            config,
            caches: Mutex::default(),
            pending: Mutex::default(),
            lost_races: Default::default(),
        }
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
                            let done = self.state.store.txn(Txn {
                                compare: vec![Compare::ModRevision(pool_key(&p.id), rev)],
                                success: vec![Op::put(pool_key(&p.id), encode(&joined))],
                                failure: vec![],
                            })?;
                            if done.succeeded {
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
            let ops = if users.is_empty() {
                vec![
                    Op::put(space_key(&pool.address_space), b"{}".to_vec()),
                    Op::Delete(pool_key(pool_id)),
                    Op::DeletePrefix(addr_prefix(pool_id)),
                    Op::DeletePrefix(block_prefix(pool_id)),
                ]
            } else if was_user {
                let mut left = pool.clone();
                left.hosts = users;
                vec![Op::put(pool_key(pool_id), encode(&left))]
            } else {
                return Ok(());
            };
            let done = self.state.store.txn(Txn {
                compare: vec![Compare::ModRevision(pool_key(pool_id), rev)],
                success: ops,
                failure: vec![],
            })?;
            if done.succeeded {
                self.forget(pool_id);
                return Ok(());
            }
        }
        Err(contention("pool release"))
    }

    fn cache(&self, pool_id: &str) -> Arc<Mutex<PoolCache>> {
        let mut m = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(pool_id.to_string()).or_default().clone()
    }

    fn forget(&self, pool_id: &str) {
        let mut m = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(pool_id);
    }

    /// The pool, its geometry and its create revision; block records built first if the pool
    /// predates them (an upgraded or migrated store).
    fn pool_for_alloc(&self, pool_id: &str) -> NetResult<(PoolRecord, Ipv4Net, i64)> {
        let cache = self.cache(pool_id);
        if let Some((pool, net, crev)) =
            cache.lock().unwrap_or_else(|e| e.into_inner()).pool.clone()
        {
            // Subnet and range never change; that the pool still exists is checked by every
            // allocation transaction (its create revision).
            return Ok((pool, net, crev));
        }
        let Some(kv) = self.state.store.get(&pool_key(pool_id))? else {
            return Err(NetError::NotFound(format!(
                "pool {pool_id} not found (was it released?)"
            )));
        };
        let mut pool: PoolRecord = decode(&kv)?;
        let net: Ipv4Net = pool.subnet.parse().map_err(|e| {
            NetError::Store(StoreError::Corrupt {
                key: pool_key(pool_id),
                message: e,
            })
        })?;
        if !pool.blocks {
            self.build_blocks(&pool, &net, kv.mod_revision)?;
            pool.blocks = true;
        }
        cache.lock().unwrap_or_else(|e| e.into_inner()).pool =
            Some((pool.clone(), net, kv.create_revision));
        Ok((pool, net, kv.create_revision))
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
        let ops: Vec<Op> = blocks
            .iter()
            .map(|(idx, b)| Op::put(block_key(&pool.id, *idx), encode(b)))
            .collect();
        let mut clear = vec![Op::DeletePrefix(block_prefix(&pool.id))];
        for chunk in ops.chunks(100) {
            clear.extend_from_slice(chunk);
            self.state.store.txn(Txn {
                success: std::mem::take(&mut clear),
                ..Default::default()
            })?;
        }
        if !clear.is_empty() {
            self.state.store.txn(Txn {
                success: clear,
                ..Default::default()
            })?;
        }
        let mut marked = pool.clone();
        marked.blocks = true;
        self.state.store.txn(Txn {
            compare: vec![Compare::ModRevision(pool_key(&pool.id), pool_rev)],
            success: vec![Op::put(pool_key(&pool.id), encode(&marked))],
            failure: vec![],
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
        let kind = if options.get(GATEWAY_TYPE_KEY).map(String::as_str) == Some(GATEWAY_TYPE) {
            AddrKind::Gateway
        } else {
            AddrKind::Address
        };
        let mac = options.get(MAC_OPTION).cloned();
        let ip = self.allocate(pool_id, address, kind, mac)?;
        let (_, net, _) = self.pool_for_alloc(pool_id)?;
        Ok(format!("{ip}/{}", net.prefix()))
    }

    /// Takes `address` (or a free one when empty) in the pool for `kind`.
    pub fn allocate(
        &self,
        pool_id: &str,
        address: &str,
        kind: AddrKind,
        mac: Option<String>,
    ) -> NetResult<Ipv4Addr> {
        let (pool, net, crev) = self.pool_for_alloc(pool_id)?;
        let what = match kind {
            AddrKind::Gateway => "--gateway",
            AddrKind::Reserved => "reserved address",
            AddrKind::Address => "address",
        };
        let record = AddrRecord {
            pool_id: pool_id.to_string(),
            address: Ipv4Addr::UNSPECIFIED,
            kind,
            endpoint_id: None,
            mac,
            host_id: self.state.host_id.clone(),
            created_at: now(),
            lease: self.state.lease(),
            claim: random_id(8),
        };
        let geo = Geometry::of(&net);
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
            return match self.take_explicit(&pool, crev, &geo, ip, &record)? {
                None => Ok(ip),
                // Every host creating the same network asks for its gateway: it is shared.
                Some(holder) if kind == AddrKind::Gateway && holder.kind == AddrKind::Gateway => {
                    Ok(ip)
                }
                Some(holder) => Err(NetError::conflict(format!(
                    "{what} {ip} is already in use in {} ({})",
                    describe_pool(&pool),
                    describe_holder(&holder)
                ))),
            };
        }
        let (nlo, nhi) = net.hosts();
        if kind == AddrKind::Gateway {
            // The first host address, shared by every host of the network; if an endpoint
            // holds it already, the lowest free one.
            let ip = Ipv4Addr::from(nlo);
            match self.take_explicit(&pool, crev, &geo, ip, &record)? {
                None => return Ok(ip),
                Some(h) if h.kind == AddrKind::Gateway => return Ok(ip),
                Some(_) => {}
            }
        }
        let range: Ipv4Net = match (&pool.sub_pool, kind) {
            (Some(s), AddrKind::Address) => s.parse().unwrap_or(net),
            _ => net,
        };
        let (lo, hi) = range.hosts();
        let (lo, hi) = (lo.max(nlo), hi.min(nhi));
        self.take_dynamic(&pool, crev, &geo, lo, hi, record)
            .and_then(|ip| {
                ip.ok_or_else(|| {
                    let held = self.state.addresses(pool_id).map(|a| a.len()).unwrap_or(0);
                    NetError::conflict(format!(
                        "no free address left in {range} ({}): {held} addresses held",
                        describe_pool(&pool)
                    ))
                })
            })
    }

    /// One named address, wherever its block's affinity is. `Some(holder)` if it is taken.
    fn take_explicit(
        &self,
        pool: &PoolRecord,
        crev: i64,
        geo: &Geometry,
        ip: Ipv4Addr,
        record: &AddrRecord,
    ) -> NetResult<Option<AddrRecord>> {
        let key = addr_key(&pool.id, ip);
        let (idx, bit) = geo.locate(ip).ok_or_else(|| {
            NetError::invalid(format!("address {ip} is outside the pool {}", pool.subnet))
        })?;
        let bkey = block_key(&pool.id, idx);
        let cache = self.cache(&pool.id);
        for _ in 0..CAS_ATTEMPTS {
            if let Some((holder, _)) = self.state.get::<AddrRecord>(&key)? {
                return Ok(Some(holder));
            }
            let (mut block, guard) = match self.state.store.get(&bkey)? {
                Some(kv) => (
                    decode::<BlockRecord>(&kv)?,
                    Compare::ModRevision(bkey.clone(), kv.mod_revision),
                ),
                None => (BlockRecord::default(), Compare::Version(bkey.clone(), 0)),
            };
            block.used |= 1u64 << bit;
            let mut rec = record.clone();
            rec.address = ip;
            let done = match self.state.store.txn(allocation_txn(
                &pool.id, crev, &key, &rec, &bkey, &block, guard,
            )) {
                Ok(d) => d,
                Err(e) => {
                    self.forget(&pool.id);
                    self.outcome(&pool.id, &key, &rec.claim, e)?;
                    return Ok(None);
                }
            };
            if done.succeeded {
                let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
                if c.loaded {
                    c.blocks.insert(idx, (block, done.revision));
                }
                return Ok(None);
            }
            self.after_lost_race(&pool.id, crev, done.reads)?;
        }
        Err(contention("address allocation"))
    }

    /// After a lost allocation transaction: the block as it is now (read back by the
    /// transaction itself), or an error if the pool went away meanwhile.
    fn after_lost_race(
        &self,
        pool_id: &str,
        crev: i64,
        reads: Vec<Option<KeyValue>>,
    ) -> NetResult<Option<KeyValue>> {
        let [pool_now, block_now] = <[Option<KeyValue>; 2]>::try_from(reads)
            .map_err(|_| NetError::Store(StoreError::Backend("txn reads missing".into())))?;
        if pool_now.map(|kv| kv.create_revision) != Some(crev) {
            return Err(self.pool_gone(pool_id));
        }
        Ok(block_now)
    }

    fn pool_gone(&self, pool_id: &str) -> NetError {
        self.forget(pool_id);
        NetError::NotFound(format!(
            "pool {pool_id} was released while allocating; try again"
        ))
    }

    /// A free address in [lo, hi]: from a block this host has affinity to, else a newly
    /// claimed block, else borrowed from another host's block. `None` when the range is full.
    fn take_dynamic(
        &self,
        pool: &PoolRecord,
        crev: i64,
        geo: &Geometry,
        lo: u32,
        hi: u32,
        mut record: AddrRecord,
    ) -> NetResult<Option<Ipv4Addr>> {
        if lo > hi {
            return Ok(None);
        }
        let me = self.state.host_id.clone();
        let cache = self.cache(&pool.id);
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut fresh = false;
        if !c.loaded || c.pool_crev != crev {
            self.reload(&mut c, &pool.id, crev)?;
            fresh = true;
        }
        let (ilo, ihi) = (geo.index_of(lo), geo.index_of(hi));
        let mut lost_borrows = 0u32;
        for _ in 0..CAS_ATTEMPTS * 4 {
            let free_in = |idx: u32, b: &BlockRecord| geo.mask(idx, lo, hi) & !b.used;
            // The block used last, then any other of ours.
            let hinted = c.hint.and_then(|i| {
                let (b, r) = c.blocks.get(&i)?;
                (i >= ilo
                    && i <= ihi
                    && b.host.as_deref() == Some(me.as_str())
                    && free_in(i, b) != 0)
                    .then(|| (i, Some((b.clone(), *r)), false))
            });
            let own = hinted.or_else(|| {
                c.blocks
                    .range(ilo..=ihi)
                    .find(|(i, (b, _))| {
                        b.host.as_deref() == Some(me.as_str()) && free_in(**i, b) != 0
                    })
                    .map(|(i, (b, r))| (*i, Some((b.clone(), *r)), false))
            });
            let span = ihi - ilo + 1;
            // A fresh random starting point for each attempt: hosts walking from fixed points
            // end up trailing each other and racing for every next block.
            let random_from = ilo + random_u32(host_hash(&me)) % span;
            let order = |from: u32| (0..span).map(move |k| ilo + (from - ilo + k) % span);
            let claim_from = if c.contended { random_from } else { ilo };
            let mine = own.or_else(|| {
                // Claim: the lowest block nobody has (or, when hosts race for blocks, the
                // next one from a random point), or an unowned one.
                order(claim_from).find_map(|i| match c.blocks.get(&i) {
                    None => Some((i, None, true)),
                    Some((b, r)) if b.host.is_none() && free_in(i, b) != 0 => {
                        Some((i, Some((b.clone(), *r)), true))
                    }
                    Some(_) => None,
                })
            });
            if mine.is_none() && !c.borrowing && !fresh {
                self.reload(&mut c, &pool.id, crev)?;
                c.borrowing = true;
                fresh = true;
                continue;
            }
            c.borrowing = mine.is_none();
            let pick = mine.or_else(|| {
                // Borrow from another host's block, starting from a random point.
                order(random_from).find_map(|i| {
                    let (b, r) = c.blocks.get(&i)?;
                    (free_in(i, b) != 0).then(|| (i, Some((b.clone(), *r)), false))
                })
            });
            let Some((idx, existing, claim)) = pick else {
                if fresh {
                    return Ok(None);
                }
                self.reload(&mut c, &pool.id, crev)?;
                fresh = true;
                continue;
            };
            let bkey = block_key(&pool.id, idx);
            let (mut block, guard) = match existing {
                Some((b, rev)) => (b, Compare::ModRevision(bkey.clone(), rev)),
                None => (BlockRecord::default(), Compare::Version(bkey.clone(), 0)),
            };
            let bit = (geo.mask(idx, lo, hi) & !block.used).trailing_zeros();
            let ip = geo.addr(idx, bit);
            if claim {
                block.host = Some(me.clone());
            }
            block.used |= 1u64 << bit;
            record.address = ip;
            let key = addr_key(&pool.id, ip);
            let done = match self.state.store.txn(allocation_txn(
                &pool.id, crev, &key, &record, &bkey, &block, guard,
            )) {
                Ok(d) => d,
                Err(e) => {
                    c.loaded = false;
                    self.outcome(&pool.id, &key, &record.claim, e)?;
                    return Ok(Some(ip));
                }
            };
            if done.succeeded {
                if block.host.as_deref() == Some(me.as_str()) {
                    c.hint = Some(idx);
                }
                c.blocks.insert(idx, (block, done.revision));
                return Ok(Some(ip));
            }
            // Someone else wrote the block (or the address): refresh it and pick again.
            self.lost_races
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            fresh = false;
            match self.after_lost_race(&pool.id, crev, done.reads)? {
                Some(kv) => {
                    let b: BlockRecord = decode(&kv)?;
                    if b.used & (1u64 << bit) == 0 && self.state.store.get(&key)?.is_some() {
                        // An address record without its bit (a store written without
                        // blocks): mark it so it is never picked again.
                        let mut fixed = b.clone();
                        fixed.used |= 1u64 << bit;
                        self.state.store.txn(Txn {
                            compare: vec![Compare::ModRevision(bkey.clone(), kv.mod_revision)],
                            success: vec![Op::put(bkey.clone(), encode(&fixed))],
                            failure: vec![],
                        })?;
                        c.blocks.remove(&idx);
                        continue;
                    }
                    c.blocks.insert(idx, (b, kv.mod_revision));
                }
                None => {
                    c.blocks.remove(&idx);
                }
            }
            if claim {
                // Lost a claim race: other hosts are claiming too; see all of them at once.
                self.reload(&mut c, &pool.id, crev)?;
                c.contended = true;
                fresh = true;
            } else if c.borrowing {
                // Borrowers of a nearly full pool race each other and the blocks' owners for
                // the same few block records: back off a random while before trying again.
                lost_borrows += 1;
                let cap_us = lost_borrows.min(8) * 1000;
                let pause = random_u32(host_hash(&me)) % cap_us;
                std::thread::sleep(std::time::Duration::from_micros(u64::from(pause)));
            }
        }
        Err(contention("address allocation"))
    }

    /// After an allocation transaction failed without an answer: Ok if it landed after all
    /// (the address is ours), else the error, with an undo left for the host agent in case
    /// it lands later or cannot be checked now.
    fn outcome(&self, pool_id: &str, key: &str, claim: &str, e: StoreError) -> NetResult<()> {
        if let Ok(Some((r, _))) = self.state.get::<AddrRecord>(key) {
            if r.claim == claim {
                return Ok(());
            }
        }
        self.defer(Pending::Undo {
            pool_id: pool_id.to_string(),
            key: key.to_string(),
            claim: claim.to_string(),
            since: std::time::Instant::now(),
        });
        Err(e.into())
    }

    /// Entries left for [`Ipam::finish_pending`].
    /// Allocation transactions lost to another writer (each was retried).
    pub fn lost_races(&self) -> u64 {
        self.lost_races.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn pending_count(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn defer(&self, p: Pending) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p);
    }

    /// Work left by transactions whose outcome was unknown; the host agent calls this while
    /// the store answers. Returns how many entries are still pending.
    pub fn finish_pending(&self) -> usize {
        let todo: Vec<Pending> =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut left = Vec::new();
        for p in todo {
            let done = match &p {
                Pending::Undo {
                    pool_id,
                    key,
                    claim,
                    since,
                } => {
                    if since.elapsed() < std::time::Duration::from_secs(5) {
                        false
                    } else {
                        match self.state.store.get(key) {
                            Ok(Some(kv)) => match decode::<AddrRecord>(&kv) {
                                Ok(r) if r.claim == *claim => {
                                    self.release_held(pool_id, &kv).is_ok()
                                }
                                _ => true,
                            },
                            Ok(None) => true,
                            Err(_) => false,
                        }
                    }
                }
                Pending::Release(pool_id, kv) => self.release_held(pool_id, kv).is_ok(),
            };
            if !done {
                left.push(p);
            }
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend(left);
        pending.len()
    }

    fn reload(&self, c: &mut PoolCache, pool_id: &str, crev: i64) -> NetResult<()> {
        c.blocks.clear();
        for kv in self.state.store.range(&block_prefix(pool_id))? {
            let Some(idx) = kv
                .key
                .rsplit('/')
                .next()
                .and_then(|h| u32::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            c.blocks.insert(idx, (decode(&kv)?, kv.mod_revision));
        }
        c.loaded = true;
        c.pool_crev = crev;
        Ok(())
    }

    /// IpamDriver.ReleaseAddress; unknown pools and addresses are fine. A shared network's
    /// gateway stays while other hosts use the pool.
    pub fn release_address(&self, pool_id: &str, address: &str) -> NetResult<()> {
        require_id("PoolID", pool_id)?;
        let ip = parse_addr(address).map_err(|e| NetError::invalid(format!("Address {e}")))?;
        let Some(kv) = self.state.store.get(&addr_key(pool_id, ip))? else {
            return Ok(());
        };
        let rec: AddrRecord = decode(&kv)?;
        if rec.kind == AddrKind::Gateway {
            if let Some(pool) = self.state.pool(pool_id)? {
                let users = pool.users();
                if users.iter().any(|h| *h != self.state.host_id) {
                    return Ok(());
                }
            }
        }
        self.release_held(pool_id, &kv)?;
        Ok(())
    }

    /// Releases the address record `kv` (as read) with its block bit. False if it changed
    /// or went meanwhile (someone else released it: nothing to do).
    pub fn release_held(&self, pool_id: &str, kv: &KeyValue) -> NetResult<bool> {
        let rec: AddrRecord = decode(kv)?;
        let Some(pool) = self.state.pool(pool_id)? else {
            return Ok(false);
        };
        let net: Ipv4Net = pool.subnet.parse().map_err(|e| {
            NetError::Store(StoreError::Corrupt {
                key: pool_key(pool_id),
                message: e,
            })
        })?;
        let geo = Geometry::of(&net);
        let located = geo.locate(rec.address);
        let cache = self.cache(pool_id);
        for _ in 0..CAS_ATTEMPTS {
            let mut compare = vec![Compare::ModRevision(kv.key.clone(), kv.mod_revision)];
            let mut success = vec![Op::Delete(kv.key.clone())];
            let mut new_block = None;
            if let Some((idx, bit)) = located {
                let bkey = block_key(pool_id, idx);
                if let Some(bkv) = self.state.store.get(&bkey)? {
                    let mut b: BlockRecord = decode(&bkv)?;
                    b.used &= !(1u64 << bit);
                    compare.push(Compare::ModRevision(bkey.clone(), bkv.mod_revision));
                    success.push(Op::put(bkey, encode(&b)));
                    new_block = Some((idx, b));
                }
            }
            let done = match self.state.store.txn(Txn {
                compare,
                success,
                failure: vec![],
            }) {
                Ok(d) => d,
                Err(e) => {
                    self.forget(pool_id);
                    // Did it land? If it cannot be told now, the host agent finishes it.
                    return match self.state.store.get(&kv.key) {
                        Ok(Some(now)) if now.mod_revision == kv.mod_revision => {
                            self.defer(Pending::Release(pool_id.to_string(), kv.clone()));
                            Err(e.into())
                        }
                        Ok(_) => Ok(true),
                        Err(_) => {
                            self.defer(Pending::Release(pool_id.to_string(), kv.clone()));
                            Err(e.into())
                        }
                    };
                }
            };
            if done.succeeded {
                if let Some((idx, b)) = new_block {
                    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
                    if c.loaded {
                        c.blocks.insert(idx, (b, done.revision));
                    }
                }
                return Ok(true);
            }
            if self.state.store.get(&kv.key)?.map(|k| k.mod_revision) != Some(kv.mod_revision) {
                return Ok(false);
            }
        }
        Err(contention("address release"))
    }
}

/// FNV-1a of the host id: where this host starts looking for blocks.
/// The one transaction of an allocation: the address record and the block's bitmap together,
/// guarded by compare-and-swap on both and on the pool. A lost race reads the pool and the
/// block back in the same round trip (see `Ipam::after_lost_race`).
fn allocation_txn(
    pool_id: &str,
    crev: i64,
    key: &str,
    record: &AddrRecord,
    bkey: &str,
    block: &BlockRecord,
    block_guard: Compare,
) -> Txn {
    Txn {
        compare: vec![
            Compare::Version(key.to_string(), 0),
            block_guard,
            Compare::CreateRevision(pool_key(pool_id), crev),
        ],
        success: vec![Op::put(key, encode(record)), Op::put(bkey, encode(block))],
        failure: vec![Op::Get(pool_key(pool_id)), Op::Get(bkey.to_string())],
    }
}

/// A random number (the clock's low bits mixed with `seed` by xorshift): enough to spread
/// hosts and threads apart, nothing cryptographic.
fn random_u32(seed: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut x = (nanos ^ seed) | 1;
    for _ in 0..2 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
    }
    x
}

fn host_hash(host: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in host.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    h
}

/// How a pool is cut into blocks: 2^bits addresses each (4 to 64; 16 blocks or more when the
/// pool is large enough), so a /24 has 16 blocks of 16 and a /16 1024 blocks of 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    first: u32,
    last: u32,
    bits: u32,
    nlo: u32,
    nhi: u32,
}

impl Geometry {
    pub fn of(net: &Ipv4Net) -> Self {
        let host_bits = 32 - u32::from(net.prefix());
        let bits = host_bits.saturating_sub(4).clamp(2, 6).min(host_bits);
        let (nlo, nhi) = net.hosts();
        Self {
            first: net.first(),
            last: net.last(),
            bits,
            nlo,
            nhi,
        }
    }

    pub fn block_size(&self) -> u32 {
        1 << self.bits
    }

    pub fn blocks(&self) -> u32 {
        ((u64::from(self.last - self.first) + 1) >> self.bits) as u32
    }

    fn index_of(&self, a: u32) -> u32 {
        (a - self.first) >> self.bits
    }

    /// Block index and bit of an address of the pool.
    pub fn locate(&self, ip: Ipv4Addr) -> Option<(u32, u32)> {
        let a = u32::from(ip);
        (self.first..=self.last).contains(&a).then(|| {
            let off = a - self.first;
            (off >> self.bits, off & (self.block_size() - 1))
        })
    }

    pub fn addr(&self, idx: u32, bit: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.first + (idx << self.bits) + bit)
    }

    /// Bits of block `idx` for usable addresses within [lo, hi].
    pub fn mask(&self, idx: u32, lo: u32, hi: u32) -> u64 {
        let start = self.first + (idx << self.bits);
        let end = start + (self.block_size() - 1);
        let a = lo.max(self.nlo).max(start);
        let b = hi.min(self.nhi).min(end);
        if a > b {
            return 0;
        }
        let (from, to) = (a - start, b - start);
        let upto = if to >= 63 {
            u64::MAX
        } else {
            (1u64 << (to + 1)) - 1
        };
        upto & !((1u64 << from) - 1)
    }
}

pub fn describe_holder(a: &AddrRecord) -> String {
    match (&a.kind, &a.endpoint_id) {
        (AddrKind::Gateway, _) => "the network's gateway".to_string(),
        (AddrKind::Reserved, _) => format!("reserved by an admin on host {}", a.host_id),
        (_, Some(ep)) => format!("endpoint {} on host {}", short(ep), a.host_id),
        (_, None) => format!(
            "host {} (an aux address, or an endpoint being created)",
            a.host_id
        ),
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

    /// Property test: several hosts (each its own `Ipam`, cache and host id) share one store
    /// and one /24 pool of 16 blocks, allocating (dynamic and explicit) and releasing at
    /// random, concurrently; for several seeds. Never two holders of one address (checked
    /// live against a model), nothing lost or leaked at the end, blocks in step with
    /// addresses, borrowing once the blocks are all claimed.
    #[test]
    fn concurrent_hosts_property() {
        use crate::fleet::audit;
        for seed in [0x9e3779b97f4a7c15u64, 0xdeadbeef12345678, 42] {
            let store: Arc<dyn crate::store::Store> = Arc::new(MemStore::new());
            let hosts: Vec<Arc<Ipam>> = (0..6)
                .map(|h| {
                    Arc::new(Ipam::new(
                        State::new(store.clone(), format!("h{h}")),
                        IpamConfig::default(),
                    ))
                })
                .collect();
            let mut pool = String::new();
            for h in &hosts {
                let (id, _) = h.request_pool("", "10.231.9.0/24", "", false).unwrap();
                assert!(pool.is_empty() || pool == id, "one shared pool");
                pool = id;
                assert_eq!(
                    h.request_address(&pool, "", &gw()).unwrap(),
                    "10.231.9.1/24",
                    "the gateway is shared"
                );
            }
            let model: Arc<std::sync::Mutex<BTreeMap<Ipv4Addr, String>>> = Arc::default();
            let threads: Vec<_> = hosts
                .iter()
                .enumerate()
                .map(|(n, h)| {
                    let h = h.clone();
                    let pool = pool.clone();
                    let model = model.clone();
                    std::thread::spawn(move || {
                        let mut rng = seed ^ (n as u64 + 1).wrapping_mul(0x2545f4914f6cdd1d);
                        let mut next = move || {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            rng
                        };
                        let mut mine: Vec<Ipv4Addr> = Vec::new();
                        let none = BTreeMap::new();
                        for _ in 0..400 {
                            let r = next() % 10;
                            let got = if r < 6 {
                                Some(h.request_address(&pool, "", &none))
                            } else if r < 7 {
                                let ip = format!("10.231.9.{}", 2 + next() % 253);
                                Some(h.request_address(&pool, &ip, &none))
                            } else if !mine.is_empty() {
                                let ip = mine.swap_remove((next() as usize) % mine.len());
                                model.lock().unwrap().remove(&ip);
                                h.release_address(&pool, &ip.to_string()).unwrap();
                                None
                            } else {
                                None
                            };
                            match got {
                                Some(Ok(a)) => {
                                    let ip: Ipv4Addr =
                                        a.split('/').next().unwrap().parse().unwrap();
                                    let prev = model.lock().unwrap().insert(ip, format!("h{n}"));
                                    assert!(
                                        prev.is_none(),
                                        "{ip} handed to h{n} while {prev:?} holds it"
                                    );
                                    mine.push(ip);
                                }
                                Some(Err(e)) => {
                                    let m = e.to_string();
                                    assert!(
                                        m.contains("no free address")
                                            || m.contains("already in use"),
                                        "h{n}: {m}"
                                    );
                                }
                                None => {}
                            }
                        }
                        mine
                    })
                })
                .collect();
            let mut held: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
            for (n, t) in threads.into_iter().enumerate() {
                for ip in t.join().unwrap() {
                    assert!(held.insert(ip, n).is_none(), "{ip} held twice");
                }
            }
            let stored: BTreeSet<Ipv4Addr> = hosts[0]
                .state
                .addresses(&pool)
                .unwrap()
                .iter()
                .filter(|a| a.kind == AddrKind::Address)
                .map(|a| a.address)
                .collect();
            let expected: BTreeSet<Ipv4Addr> = held.keys().copied().collect();
            assert_eq!(
                stored, expected,
                "store and holders agree: nothing lost or leaked"
            );
            let a = audit(&hosts[0].state).unwrap();
            assert!(a.problems.is_empty(), "{:?}", a.problems);
            // Every block was claimed, some by each host (affinity), and borrowing happened
            // if a host holds addresses in another host's block.
            let blocks = store.range(&block_prefix(&pool)).unwrap();
            assert_eq!(blocks.len(), 16);
            // The range is full after a final fill from one host: 253 endpoints + gateway.
            let none = BTreeMap::new();
            while hosts[0].request_address(&pool, "", &none).is_ok() {}
            assert_eq!(hosts[0].state.addresses(&pool).unwrap().len(), 254);
            for a in hosts[0].state.addresses(&pool).unwrap() {
                if a.kind == AddrKind::Address {
                    hosts[1]
                        .release_address(&pool, &a.address.to_string())
                        .unwrap();
                }
            }
            let a = audit(&hosts[0].state).unwrap();
            assert!(a.problems.is_empty(), "{:?}", a.problems);
            assert_eq!(a.addresses, 1, "only the gateway is left");
            // The pool goes with its last user only.
            for h in &hosts[..5] {
                h.release_pool(&pool).unwrap();
                assert!(h.state.pool(&pool).unwrap().is_some());
            }
            hosts[5].release_pool(&pool).unwrap();
            assert!(hosts[5].state.pool(&pool).unwrap().is_none());
            assert!(store.range("blocks/").unwrap().is_empty());
            assert!(store.range("addrs/").unwrap().is_empty());
        }
    }

    /// Old pools (no block records) get them on first use; Geometry cuts pools as documented.
    #[test]
    fn blocks_built_for_old_pools_and_geometry() {
        let g = Geometry::of(&"10.0.0.0/16".parse().unwrap());
        assert_eq!((g.block_size(), g.blocks()), (64, 1024));
        let g = Geometry::of(&"10.0.0.0/24".parse().unwrap());
        assert_eq!((g.block_size(), g.blocks()), (16, 16));
        let g = Geometry::of(&"10.0.0.0/30".parse().unwrap());
        assert_eq!((g.block_size(), g.blocks()), (4, 1));
        assert_eq!(
            g.mask(0, 0, u32::MAX),
            0b0110,
            "network and broadcast excluded"
        );
        let g = Geometry::of(&"10.0.0.0/16".parse().unwrap());
        let (lo, hi) = (
            u32::from(Ipv4Addr::new(10, 0, 0, 0)),
            u32::from(Ipv4Addr::new(10, 0, 255, 255)),
        );
        assert_eq!(g.mask(0, lo, hi), u64::MAX - 1);
        assert_eq!(g.mask(5, lo, hi), u64::MAX);
        assert_eq!(g.mask(1023, lo, hi), u64::MAX >> 1);
        let r = u32::from(Ipv4Addr::new(10, 0, 0, 70));
        assert_eq!(g.mask(1, r, r + 2), 0b111 << 6);
        assert_eq!(g.mask(2, r, r + 2), 0);
        let i = ipam();
        let (id, _) = i.request_pool("", "10.231.5.0/24", "", false).unwrap();
        let none = BTreeMap::new();
        i.request_address(&id, "10.231.5.7", &none).unwrap();
        // Make it look like a pool from before blocks.
        let (mut p, _) = i.state.get::<PoolRecord>(&pool_key(&id)).unwrap().unwrap();
        p.blocks = false;
        i.state
            .store
            .txn(Txn {
                success: vec![
                    Op::put(pool_key(&id), encode(&p)),
                    Op::DeletePrefix(block_prefix(&id)),
                ],
                ..Default::default()
            })
            .unwrap();
        let fresh = Ipam::new(i.state.clone(), IpamConfig::default());
        for _ in 0..20 {
            let a = fresh.request_address(&id, "", &none).unwrap();
            assert_ne!(a, "10.231.5.7/24");
        }
        assert!(crate::fleet::audit(&i.state).unwrap().problems.is_empty());
    }
}
