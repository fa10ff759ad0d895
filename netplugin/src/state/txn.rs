//! The named transactions: the only writes to the store in the library (networks, endpoints,
//! hosts, pools, blocks, addresses). Each states its comparisons (what must not have changed
//! since the caller read it) next to its operations.

use super::*;
use crate::store::{Compare, Op, Txn, TxnResult};

/// The compare of a reclaim: the dead host's lease key is still absent. A host that registers
/// again while it is reclaimed keeps what it holds (issue 14 §2).
fn host_gone(dead_host: Option<&str>) -> Option<Compare> {
    dead_host.map(|h| Compare::Version(host_key(h), 0))
}

impl State {
    /// Writes a new network record, claiming its VLAN (or, joining another host's network of
    /// the same subnet, checking that network still holds it) and linking a free pool to it.
    /// `pool` is the pool record and the mod_revision it was read at. `false`: the store
    /// changed meanwhile (the caller re-reads and tries again).
    pub fn create_network_txn(
        &self,
        record: &NetworkRecord,
        joining: Option<&str>,
        pool: Option<(PoolRecord, i64)>,
    ) -> StoreResult<bool> {
        let (id, vlan) = (record.id.as_str(), record.vlan);
        let mut compare = vec![Compare::Version(network_key(id), 0)];
        let mut success = vec![Op::put(network_key(id), encode(record))];
        match joining {
            // Joining: the VLAN stays with the network that holds it.
            Some(holder) => {
                compare.push(Compare::Value(vlan_key(vlan), holder.as_bytes().to_vec()))
            }
            None => {
                compare.push(Compare::Version(vlan_key(vlan), 0));
                success.push(Op::put(vlan_key(vlan), id.as_bytes().to_vec()));
            }
        }
        if let Some((mut p, rev)) = pool {
            compare.push(Compare::ModRevision(pool_key(&p.id), rev));
            p.network_id = Some(id.to_string());
            success.push(Op::put(pool_key(&p.id), encode(&p)));
        }
        Ok(self
            .store
            .txn(Txn {
                compare,
                success,
                failure: vec![],
            })?
            .succeeded)
    }

    /// Deletes a network record. The same network created by other hosts (same VLAN) inherits
    /// its VLAN and pool; otherwise the VLAN is freed.
    pub fn delete_network(&self, net: &NetworkRecord) -> StoreResult<()> {
        let mut ops = vec![Op::Delete(network_key(&net.id))];
        let heir = self
            .networks()?
            .into_iter()
            .find(|n| n.id != net.id && n.vlan == net.vlan)
            .map(|n| n.id);
        if let Some(kv) = self.store.get(&vlan_key(net.vlan))? {
            if kv.value == net.id.as_bytes() {
                ops.push(match &heir {
                    Some(h) => Op::put(vlan_key(net.vlan), h.as_bytes().to_vec()),
                    None => Op::Delete(vlan_key(net.vlan)),
                });
            }
        }
        if let Some(pool_id) = &net.pool_id {
            if let Some((mut pool, _)) = self.get::<PoolRecord>(&pool_key(pool_id))? {
                if pool.network_id.as_deref() == Some(net.id.as_str()) {
                    pool.network_id = heir.clone();
                    ops.push(Op::put(pool_key(pool_id), encode(&pool)));
                }
            }
        }
        self.store.txn(Txn {
            success: ops,
            ..Default::default()
        })?;
        Ok(())
    }

    /// Writes a new endpoint record and links the address it holds in `net`'s pool to it
    /// (and its MAC, unless the address has one). An existing record is left alone. The
    /// address record is rewritten only if unchanged since it was read (compare-and-swap on
    /// its revision) and not linked to another endpoint: a late write (after its request timed
    /// out) never takes an address another endpoint holds by now (issue 14 §2). Returns the
    /// endpoint record's revision, None if one existed already; `Err(holder)` when another
    /// endpoint holds the address.
    pub fn create_endpoint_txn(
        &self,
        net: &NetworkRecord,
        rec: &EndpointRecord,
    ) -> StoreResult<Result<Option<i64>, String>> {
        let ip = rec.address.ip;
        for _ in 0..16 {
            let mut compare = vec![Compare::Version(endpoint_key(&rec.id), 0)];
            let mut ops = vec![Op::put(endpoint_key(&rec.id), encode(rec))];
            if let Some(pool_id) = &net.pool_id {
                let key = addr_key(pool_id, ip);
                match self.get::<AddrRecord>(&key)? {
                    Some((a, _)) if a.endpoint_id.as_ref().is_some_and(|e| *e != rec.id) => {
                        return Ok(Err(format!(
                            "endpoint {} on host {}",
                            a.endpoint_id.unwrap_or_default(),
                            a.host_id
                        )));
                    }
                    Some((mut a, rev)) => {
                        a.endpoint_id = Some(rec.id.clone());
                        if a.mac.is_none() {
                            a.mac = Some(rec.mac.to_string());
                        }
                        compare.push(Compare::ModRevision(key.clone(), rev));
                        ops.push(Op::put(key, encode(&a)));
                    }
                    None => compare.push(Compare::Version(key, 0)),
                }
            }
            let done = self.store.txn(Txn {
                compare,
                success: ops,
                failure: vec![Op::Get(endpoint_key(&rec.id))],
            })?;
            if done.succeeded {
                return Ok(Ok(Some(done.revision)));
            }
            if done.reads.first().is_some_and(Option::is_some) {
                return Ok(Ok(None));
            }
            // The address record changed between the read and the write: read it again.
        }
        Err(StoreError::Contention {
            what: format!("endpoint {} and its address {ip}", rec.id),
            attempts: 16,
        })
    }

    /// Deletes an endpoint's record; a missing one is fine (every delete is idempotent).
    pub fn delete_endpoint(&self, id: &str) -> StoreResult<()> {
        self.store.txn(Txn {
            success: vec![Op::Delete(endpoint_key(id))],
            ..Default::default()
        })?;
        Ok(())
    }

    /// Deletes an endpoint's record unless it changed since it was read at `mod_revision`
    /// or, with `dead_host`, that host is registered (reclaiming a dead host's endpoints
    /// races with nothing but a returning host).
    pub fn delete_endpoint_at(
        &self,
        id: &str,
        mod_revision: i64,
        dead_host: Option<&str>,
    ) -> StoreResult<bool> {
        let mut compare = vec![Compare::ModRevision(endpoint_key(id), mod_revision)];
        compare.extend(host_gone(dead_host));
        Ok(self
            .store
            .txn(Txn {
                compare,
                success: vec![Op::Delete(endpoint_key(id))],
                failure: vec![],
            })?
            .succeeded)
    }

    /// Puts this host's record under `lease`, so it vanishes when the lease expires.
    pub fn register_host(&self, record: &HostRecord, lease: i64) -> StoreResult<()> {
        self.store.txn(Txn {
            success: vec![Op::Put {
                key: host_key(&record.host_id),
                value: encode(record),
                lease,
            }],
            ..Default::default()
        })?;
        Ok(())
    }

    /// Creates a pool unless the address space changed since its guard was read at
    /// `space_guard` (every pool create and release bumps it: overlap checks stay valid).
    pub fn create_pool_txn(&self, record: &PoolRecord, space_guard: i64) -> StoreResult<bool> {
        let space = &record.address_space;
        Ok(self
            .store
            .txn(Txn {
                compare: vec![Compare::ModRevision(space_key(space), space_guard)],
                success: vec![
                    Op::put(space_key(space), b"{}".to_vec()),
                    Op::put(pool_key(&record.id), encode(record)),
                ],
                failure: vec![],
            })?
            .succeeded)
    }

    /// Rewrites a network or endpoint record (`key`) unless it changed since it was read at
    /// `mod_revision` (live limit changes).
    pub fn update_record<T: serde::Serialize>(
        &self,
        key: &str,
        record: &T,
        mod_revision: i64,
    ) -> StoreResult<bool> {
        Ok(self
            .store
            .txn(Txn {
                compare: vec![Compare::ModRevision(key.to_string(), mod_revision)],
                success: vec![Op::put(key, encode(record))],
                failure: vec![],
            })?
            .succeeded)
    }

    /// Rewrites a pool record (its users, network, blocks flag) unless it changed since it
    /// was read at `mod_revision`.
    pub fn update_pool(&self, record: &PoolRecord, mod_revision: i64) -> StoreResult<bool> {
        Ok(self
            .store
            .txn(Txn {
                compare: vec![Compare::ModRevision(pool_key(&record.id), mod_revision)],
                success: vec![Op::put(pool_key(&record.id), encode(record))],
                failure: vec![],
            })?
            .succeeded)
    }

    /// Deletes a pool with every address and block record in it, unless it changed since
    /// it was read at `mod_revision`; bumps its address space's guard.
    pub fn delete_pool(&self, pool: &PoolRecord, mod_revision: i64) -> StoreResult<bool> {
        Ok(self
            .store
            .txn(Txn {
                compare: vec![Compare::ModRevision(pool_key(&pool.id), mod_revision)],
                success: vec![
                    Op::put(space_key(&pool.address_space), b"{}".to_vec()),
                    Op::Delete(pool_key(&pool.id)),
                    Op::DeletePrefix(addr_prefix(&pool.id)),
                    Op::DeletePrefix(block_prefix(&pool.id)),
                ],
                failure: vec![],
            })?
            .succeeded)
    }

    /// Replaces a pool's block records with `blocks`, in transactions of at most 100 writes
    /// (etcd's limit is 128 operations per transaction).
    pub fn replace_blocks(
        &self,
        pool_id: &str,
        blocks: &std::collections::BTreeMap<u32, BlockRecord>,
    ) -> StoreResult<()> {
        let ops: Vec<Op> = blocks
            .iter()
            .map(|(idx, b)| Op::put(block_key(pool_id, *idx), encode(b)))
            .collect();
        let mut clear = vec![Op::DeletePrefix(block_prefix(pool_id))];
        for chunk in ops.chunks(100) {
            clear.extend_from_slice(chunk);
            self.store.txn(Txn {
                success: std::mem::take(&mut clear),
                ..Default::default()
            })?;
        }
        if !clear.is_empty() {
            self.store.txn(Txn {
                success: clear,
                ..Default::default()
            })?;
        }
        Ok(())
    }

    /// Rewrites one block record (stored under `key`) unless it changed since it was read at
    /// `mod_revision` or, with `dead_host`, that host is registered (a reclaim).
    pub fn update_block(
        &self,
        key: &str,
        block: &BlockRecord,
        mod_revision: i64,
        dead_host: Option<&str>,
    ) -> StoreResult<bool> {
        let mut compare = vec![Compare::ModRevision(key.to_string(), mod_revision)];
        compare.extend(host_gone(dead_host));
        Ok(self
            .store
            .txn(Txn {
                compare,
                success: vec![Op::put(key, encode(block))],
                failure: vec![],
            })?
            .succeeded)
    }

    /// The one transaction of an allocation: the address record (at `key`) and its block's
    /// bitmap (at `bkey`, guarded by `block_guard`) together, while the pool is the one created
    /// at `pool_crev`. A lost race reads the pool, the block and the address back in the same
    /// round trip (`reads`: pool, block, address): a claim sent twice finds its own record.
    #[allow(clippy::too_many_arguments)]
    pub fn claim_address(
        &self,
        pool_id: &str,
        pool_crev: i64,
        key: &str,
        record: &AddrRecord,
        bkey: &str,
        block: &BlockRecord,
        block_guard: Compare,
    ) -> StoreResult<TxnResult> {
        self.store.txn(Txn {
            compare: vec![
                Compare::Version(key.to_string(), 0),
                block_guard,
                Compare::CreateRevision(pool_key(pool_id), pool_crev),
            ],
            success: vec![Op::put(key, encode(record)), Op::put(bkey, encode(block))],
            failure: vec![
                Op::Get(pool_key(pool_id)),
                Op::Get(bkey.to_string()),
                Op::Get(key.to_string()),
            ],
        })
    }

    /// Deletes the address record `held` (as read) and, when given, writes its block (key,
    /// record with the bit cleared, revision it was read at); both only if unchanged, and
    /// with `dead_host` only while that host is not registered (a reclaim).
    pub fn release_address_txn(
        &self,
        held: &KeyValue,
        block: Option<(String, &BlockRecord, i64)>,
        dead_host: Option<&str>,
    ) -> StoreResult<TxnResult> {
        let mut compare = vec![Compare::ModRevision(held.key.clone(), held.mod_revision)];
        compare.extend(host_gone(dead_host));
        let mut success = vec![Op::Delete(held.key.clone())];
        if let Some((bkey, b, rev)) = block {
            compare.push(Compare::ModRevision(bkey.clone(), rev));
            success.push(Op::put(bkey, encode(b)));
        }
        self.store.txn(Txn {
            compare,
            success,
            failure: vec![],
        })
    }

    /// Writes records copied unchanged from another store (`store migrate`), each only if
    /// its key is absent here. `false`: another writer created one of them meanwhile, and
    /// nothing was written.
    pub fn import_records(&self, records: &[&KeyValue]) -> StoreResult<bool> {
        Ok(self
            .store
            .txn(Txn {
                compare: records
                    .iter()
                    .map(|kv| Compare::Version(kv.key.clone(), 0))
                    .collect(),
                success: records
                    .iter()
                    .map(|kv| Op::put(kv.key.clone(), kv.value.clone()))
                    .collect(),
                failure: vec![],
            })?
            .succeeded)
    }
}
