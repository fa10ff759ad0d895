//! Docker's IpamDriver calls. Pools and addresses live in [`crate::ipam::Ipam`]; this puts
//! each call on a blocking worker with the store's deadline. Works without OVS.

use std::time::Instant;

use super::Service;
use crate::error::NetResult;
use crate::protocol::{RequestAddressRequest, RequestPoolRequest};
use crate::state::store_op;

impl Service {
    /// RequestPool: (pool id, CIDR).
    pub async fn request_pool(&self, req: RequestPoolRequest) -> NetResult<(String, String)> {
        let ipam = self.ipam.clone();
        store_op("request pool", move || {
            ipam.request_pool(&req.address_space, &req.pool, &req.sub_pool, req.v6)
        })
        .await
    }

    pub async fn release_pool(&self, pool_id: String) -> NetResult<()> {
        let ipam = self.ipam.clone();
        store_op("release pool", move || ipam.release_pool(&pool_id)).await
    }

    /// RequestAddress: the address in CIDR form.
    pub async fn request_address(&self, req: RequestAddressRequest) -> NetResult<String> {
        let ipam = self.ipam.clone();
        let started = Instant::now();
        let address = store_op("request address", move || {
            ipam.request_address(&req.pool_id, &req.address, &req.options)
        })
        .await?;
        self.latencies.record("request_address", started.elapsed());
        Ok(address)
    }

    pub async fn release_address(&self, pool_id: String, address: String) -> NetResult<()> {
        let ipam = self.ipam.clone();
        store_op("release address", move || {
            ipam.release_address(&pool_id, &address)
        })
        .await
    }
}
