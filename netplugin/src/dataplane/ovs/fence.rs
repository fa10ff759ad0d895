//! Fencing (issue 14 §2): drop flows on access ports of a host cut off from the store, under
//! a cookie of their own. Ports, veths and the other flows stay as they are, so lifting the
//! fence is one flow deletion and traffic resumes at once.

use super::*;

/// Our fence flows (kept apart from the base, ARP and rate-limit cookies).
pub const COOKIE_FENCE: u64 = 0xbe27_0000_0000_00f0;
/// Above every other flow of ours: a fenced port's packets go nowhere.
const FENCE_PRIORITY: u16 = 65000;

impl OvsDataplane {
    /// One drop flow per fenced port (by its OpenFlow port number): what the container sends
    /// is dropped on entry, ARP included, so nothing it answers reaches the network.
    pub(super) fn fence_flows(&self, host_ifs: &BTreeSet<String>) -> Vec<Flow> {
        host_ifs
            .iter()
            .filter_map(|name| self.ofport(name))
            .map(|ofport| {
                Flow::new(0, FENCE_PRIORITY)
                    .cookie(COOKIE_FENCE)
                    .matching(Match::new().in_port(ofport))
            })
            .collect()
    }

    pub(super) async fn sync_fence(&self, host_ifs: &BTreeSet<String>) -> DpResult<usize> {
        let flows = self.fence_flows(host_ifs);
        let n = flows.len();
        self.sync_flows_counted(COOKIE_FENCE, flows)
            .await
            .map_err(|e| {
                DataplaneError::ovs(format!("fence flows on bridge {}", self.cfg.bridge), e)
            })?;
        Ok(n)
    }
}
