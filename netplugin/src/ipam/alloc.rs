//! Addresses: each pool is cut into blocks with a host affinity, so a host allocates from its
//! own blocks with one compare-and-swap transaction and borrows from others only when full.

use super::*;

impl Ipam {
    pub(super) fn cache(&self, pool_id: &str) -> Arc<Mutex<PoolCache>> {
        let mut m = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(pool_id.to_string()).or_default().clone()
    }

    pub(super) fn forget(&self, pool_id: &str) {
        let mut m = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(pool_id);
    }

    /// The pool, its geometry and its create revision; block records built first if the pool
    /// predates them (an upgraded or migrated store).
    pub(super) fn pool_for_alloc(&self, pool_id: &str) -> NetResult<(PoolRecord, Ipv4Net, i64)> {
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
        let net = pool.network()?;
        if !pool.blocks {
            self.build_blocks(&pool, &net, kv.mod_revision)?;
            pool.blocks = true;
        }
        cache.lock().unwrap_or_else(|e| e.into_inner()).pool =
            Some((pool.clone(), net, kv.create_revision));
        Ok((pool, net, kv.create_revision))
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
        // Kept in the address record and shown by `pool show`: only a well-formed MAC is.
        let mac = match options.get(MAC_OPTION).filter(|m| !m.is_empty()) {
            Some(m) => Some(
                m.parse::<crate::mac::Mac>()
                    .map_err(|e| NetError::invalid(format!("option {MAC_OPTION}: {e}")))?
                    .to_string(),
            ),
            None => None,
        };
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
    pub(super) fn take_explicit(
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
        let mut dropped = 0;
        for _ in 0..CAS_ATTEMPTS {
            if let Some((holder, _)) = self.state.get::<AddrRecord>(&key)? {
                // Our own claim, landed by an earlier attempt whose answer was lost.
                if holder.claim == record.claim {
                    return Ok(None);
                }
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
            let done = match self
                .state
                .claim_address(&pool.id, crev, &key, &rec, &bkey, &block, guard)
            {
                Ok(d) => d,
                Err(e) => {
                    self.forget(&pool.id);
                    dropped += 1;
                    // Not landed (yet): the same claim again, for the same address; the
                    // compare on the address record lets at most one of them land.
                    if self.claim_landed(&pool.id, &key, &rec.claim, e, dropped)? {
                        return Ok(None);
                    }
                    continue;
                }
            };
            if done.succeeded {
                let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
                if c.loaded {
                    c.blocks.insert(idx, (block, done.revision));
                }
                return Ok(None);
            }
            // The address record, read back by the transaction, is checked at the top.
            self.after_lost_race(&pool.id, crev, done.reads)?;
        }
        Err(contention("address allocation"))
    }

    /// After a lost allocation transaction: the block and the address record as they are
    /// now (read back by the transaction itself), or an error if the pool went away meanwhile.
    pub(super) fn after_lost_race(
        &self,
        pool_id: &str,
        crev: i64,
        reads: Vec<Option<KeyValue>>,
    ) -> NetResult<(Option<KeyValue>, Option<KeyValue>)> {
        let [pool_now, block_now, addr_now] = <[Option<KeyValue>; 3]>::try_from(reads)
            .map_err(|_| NetError::Store(StoreError::Backend("txn reads missing".into())))?;
        if pool_now.map(|kv| kv.create_revision) != Some(crev) {
            return Err(self.pool_gone(pool_id));
        }
        Ok((block_now, addr_now))
    }

    pub(super) fn pool_gone(&self, pool_id: &str) -> NetError {
        self.forget(pool_id);
        NetError::NotFound(format!(
            "pool {pool_id} was released while allocating; try again"
        ))
    }

    /// A free address in [lo, hi]: from a block this host has affinity to, else a newly
    /// claimed block, else borrowed from another host's block. `None` when the range is full.
    pub(super) fn take_dynamic(
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
            let done = match self
                .state
                .claim_address(&pool.id, crev, &key, &record, &bkey, &block, guard)
            {
                Ok(d) => d,
                Err(e) => {
                    c.loaded = false;
                    if self.claim_landed(&pool.id, &key, &record.claim, e, 1)? {
                        return Ok(Some(ip));
                    }
                    // Not landed (yet): never another address while this claim may still
                    // land; the same address with the same claim, so at most one lands.
                    drop(c);
                    return match self.take_explicit(pool, crev, geo, ip, &record)? {
                        None => Ok(Some(ip)),
                        // Another writer took it: our claim can no longer land there.
                        Some(_) => self.take_dynamic(pool, crev, geo, lo, hi, record),
                    };
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
            let (block_now, addr_now) = self.after_lost_race(&pool.id, crev, done.reads)?;
            if let Some(a) = addr_now {
                // Our own claim, sent twice by a lower layer after a dropped answer: the
                // first landed, the second lost to it. Ours; picking another would leak it.
                if decode::<AddrRecord>(&a).is_ok_and(|r| r.claim == record.claim) {
                    c.loaded = false;
                    return Ok(Some(ip));
                }
            }
            match block_now {
                Some(kv) => {
                    let b: BlockRecord = decode(&kv)?;
                    if b.used & (1u64 << bit) == 0 && self.state.store.get(&key)?.is_some() {
                        // An address record without its bit (a store written without
                        // blocks): mark it so it is never picked again.
                        let mut fixed = b.clone();
                        fixed.used |= 1u64 << bit;
                        self.state
                            .update_block(&bkey, &fixed, kv.mod_revision, None)?;
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

    /// After an allocation transaction failed without an answer (attempt `dropped` of this
    /// claim): whether it landed (the address record carries our claim). `Ok(false)`: it did
    /// not land yet and may be sent again with the same claim. An error when that cannot be
    /// told, or after [`TRANSPORT_ATTEMPTS`], with an undo left for the host agent in case it
    /// lands later.
    pub(super) fn claim_landed(
        &self,
        pool_id: &str,
        key: &str,
        claim: &str,
        e: StoreError,
        dropped: usize,
    ) -> NetResult<bool> {
        match self.state.get::<AddrRecord>(key) {
            Ok(Some((r, _))) if r.claim == claim => return Ok(true),
            Ok(_) if dropped < TRANSPORT_ATTEMPTS => {
                tracing::info!(key, error = %e, "allocation: no answer from the store and the claim did not land; sending it again");
                return Ok(false);
            }
            _ => {}
        }
        self.defer(Pending::Undo {
            pool_id: pool_id.to_string(),
            key: key.to_string(),
            claim: claim.to_string(),
            since: std::time::Instant::now(),
        });
        Err(e.into())
    }

    pub(super) fn reload(&self, c: &mut PoolCache, pool_id: &str, crev: i64) -> NetResult<()> {
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
    /// gateway stays while other hosts use the pool. An address another host holds is not
    /// this host's to release: Docker only releases what it asked this host's plugin for, so
    /// such a record means this host's hold ended while it was away (`pool reclaim` after its
    /// death) and another host has taken the address since; freeing it would hand out an
    /// address in use.
    pub fn release_address(&self, pool_id: &str, address: &str) -> NetResult<()> {
        require_id("PoolID", pool_id)?;
        let ip = parse_addr(address).map_err(|e| NetError::invalid(format!("Address {e}")))?;
        let Some(kv) = self.state.store.get(&addr_key(pool_id, ip))? else {
            return Ok(());
        };
        let rec: AddrRecord = decode(&kv)?;
        if rec.kind == AddrKind::Address && rec.host_id != self.state.host_id {
            tracing::info!(
                pool = pool_id,
                address = %ip,
                holder = %rec.host_id,
                "ReleaseAddress for an address another host holds now: left as it is"
            );
            return Ok(());
        }
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

    /// Undo of an allocation that ended after its request timed out: releases `address` if
    /// this host holds it for an endpoint and no endpoint is linked to it yet. Gateways stay
    /// (shared by every host of the network). False if there was nothing to undo.
    pub fn release_unused(&self, pool_id: &str, address: &str) -> NetResult<bool> {
        let ip = parse_addr(address).map_err(|e| NetError::invalid(format!("Address {e}")))?;
        let Some(kv) = self.state.store.get(&addr_key(pool_id, ip))? else {
            return Ok(false);
        };
        let rec: AddrRecord = decode(&kv)?;
        if rec.kind != AddrKind::Address
            || rec.host_id != self.state.host_id
            || rec.endpoint_id.is_some()
        {
            return Ok(false);
        }
        self.release_held(pool_id, &kv)
    }

    /// Releases the address record `kv` (as read) with its block bit. False if it changed
    /// or went meanwhile (someone else released it: nothing to do).
    pub fn release_held(&self, pool_id: &str, kv: &KeyValue) -> NetResult<bool> {
        self.release_held_of(pool_id, kv, None)
    }

    /// [`Ipam::release_held`] for a reclaim of `dead_host`: in the same transaction, only
    /// while that host's lease key is absent; a conflict error if it registered again.
    pub fn release_held_of(
        &self,
        pool_id: &str,
        kv: &KeyValue,
        dead_host: Option<&str>,
    ) -> NetResult<bool> {
        let rec: AddrRecord = decode(kv)?;
        let Some(pool) = self.state.pool(pool_id)? else {
            return Ok(false);
        };
        let net = pool.network()?;
        let geo = Geometry::of(&net);
        let located = geo.locate(rec.address);
        let cache = self.cache(pool_id);
        for _ in 0..CAS_ATTEMPTS {
            let mut new_block = None;
            let mut block_rev = 0;
            if let Some((idx, bit)) = located {
                if let Some(bkv) = self.state.store.get(&block_key(pool_id, idx))? {
                    let mut b: BlockRecord = decode(&bkv)?;
                    b.used &= !(1u64 << bit);
                    block_rev = bkv.mod_revision;
                    new_block = Some((idx, b));
                }
            }
            let block = new_block
                .as_ref()
                .map(|(idx, b)| (block_key(pool_id, *idx), b, block_rev));
            let done = match self.state.release_address_txn(kv, block, dead_host) {
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
            if let Some(h) = dead_host {
                self.state.check_host_gone(h)?;
            }
            if self.state.store.get(&kv.key)?.map(|k| k.mod_revision) != Some(kv.mod_revision) {
                return Ok(false);
            }
        }
        Err(contention("address release"))
    }
}

/// A random number (the clock's low bits mixed with `seed` by xorshift): enough to spread
/// hosts and threads apart, nothing cryptographic.
pub(super) fn random_u32(seed: u32) -> u32 {
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

/// FNV-1a of the host id: where this host starts looking for blocks.
pub(super) fn host_hash(host: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in host.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    h
}
