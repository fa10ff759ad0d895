//! Docker's IpamDriver calls. Pools and addresses live in [`crate::ipam::Ipam`]; this puts
//! each call on a blocking worker with the store's deadline. Works without OVS.

use std::time::Instant;

use super::Service;
use crate::error::NetResult;
use crate::protocol::{RequestAddressRequest, RequestPoolRequest};
use crate::state::{store_op, store_op_or_undo, STORE_TIMEOUT};

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
        let started = Instant::now();
        let address = request_address_within(self.ipam.clone(), req, STORE_TIMEOUT).await?;
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

/// RequestAddress bounded by `deadline`. An allocation that lands after it (Docker saw an
/// error and will never release it) is released again, unless an endpoint uses it by then.
pub(crate) async fn request_address_within(
    ipam: std::sync::Arc<crate::ipam::Ipam>,
    req: RequestAddressRequest,
    deadline: std::time::Duration,
) -> NetResult<String> {
    let late = ipam.clone();
    let pool_id = req.pool_id.clone();
    let undo = move |cidr: String| {
        let ip = cidr.split('/').next().unwrap_or_default().to_string();
        match late.release_unused(&pool_id, &ip) {
            Ok(true) => {
                tracing::info!(pool = %pool_id, address = %ip, "address allocated after its request timed out: released")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(pool = %pool_id, address = %ip, error = %e, "releasing an address allocated after its request timed out")
            }
        }
    };
    store_op_or_undo(
        "request address",
        deadline,
        move || ipam.request_address(&req.pool_id, &req.address, &req.options),
        undo,
    )
    .await
}
