//! Anti-spoofing: an access port admits only its endpoint's own identity. Table 0 is the
//! guard: a guarded port's frames with the endpoint's MAC that are IPv4 from its address or
//! ARP whose sender is its address and MAC go on to the classifier; everything else from the
//! port meets a drop flow, whose packet counter is the metric. Unguarded ports pass by a flow
//! of their own, the uplink by the guard's base flow. Every flow that lets a port's packets on
//! writes the port's VLAN into [`VLAN_REG`] (an access port's packets carry no VLAN in
//! OpenFlow), so later tables can tell two endpoints with the same MAC on different VLANs
//! apart. All under [`COOKIE_SPOOF`].

use super::*;

/// Above the guard's drop flow, which is above the base flow (priority 0).
const PASS_PRIORITY: u16 = 200;
const DROP_PRIORITY: u16 = 100;
/// An unguarded port's pass: above the base flow only.
const MARK_PRIORITY: u16 = 1;

/// The guard flows of one port: two passes and the drop under them.
pub(super) fn spoof_flows(
    ofport: u32,
    mac: [u8; 6],
    ip: std::net::Ipv4Addr,
    vlan: u16,
) -> Vec<Flow> {
    let own = || Match::new().in_port(ofport).eth_src(Mac(mac));
    vec![
        Flow::new(GUARD_TABLE, PASS_PRIORITY)
            .cookie(COOKIE_SPOOF)
            .matching(own().ipv4().ipv4_src(ip, 32))
            .actions(vec![mark_vlan(vlan)])
            .goto_table(CLASSIFY_TABLE),
        Flow::new(GUARD_TABLE, PASS_PRIORITY)
            .cookie(COOKIE_SPOOF)
            .matching(own().arp().arp_spa(ip).arp_sha(Mac(mac)))
            .actions(vec![mark_vlan(vlan)])
            .goto_table(CLASSIFY_TABLE),
        spoof_drop_flow(ofport),
    ]
}

/// An unguarded port's pass: everything, with its VLAN marked.
pub(super) fn vlan_mark_flow(ofport: u32, vlan: u16) -> Flow {
    Flow::new(GUARD_TABLE, MARK_PRIORITY)
        .cookie(COOKIE_SPOOF)
        .matching(Match::new().in_port(ofport))
        .actions(vec![mark_vlan(vlan)])
        .goto_table(CLASSIFY_TABLE)
}

fn mark_vlan(vlan: u16) -> Action {
    Action::SetField(SetField::Reg(VLAN_REG, u32::from(vlan)))
}

/// A port's flows in the guard table: the guard, or for an unguarded port its pass.
pub(super) fn port_flows(plan: &EndpointPlan, ofport: u32) -> Vec<Flow> {
    if plan.anti_spoof {
        spoof_flows(ofport, plan.mac, plan.ip, plan.vlan)
    } else {
        vec![vlan_mark_flow(ofport, plan.vlan)]
    }
}

/// No instructions: drop, counted.
fn spoof_drop_flow(ofport: u32) -> Flow {
    Flow::new(GUARD_TABLE, DROP_PRIORITY)
        .cookie(COOKIE_SPOOF)
        .matching(Match::new().in_port(ofport))
}

impl OvsDataplane {
    /// The guard table's flows of every endpoint whose port has its number.
    pub(super) fn spoof_plan(&self, plans: &[EndpointPlan]) -> Vec<Flow> {
        plans
            .iter()
            .filter_map(|p| Some(port_flows(p, self.ofport(&p.host_if)?)))
            .flatten()
            .collect()
    }

    /// Installs one new port's guard, or its pass (before its container can send).
    pub(super) async fn add_spoof_flows(&self, plan: &EndpointPlan, ofport: u32) -> DpResult<()> {
        let mods: Vec<FlowMod> = port_flows(plan, ofport)
            .into_iter()
            .map(FlowMod::Add)
            .collect();
        self.of
            .flow_mods(&mods)
            .await
            .map_err(|e| DataplaneError::ovs(format!("anti-spoofing flows of {}", plan.host_if), e))
    }

    /// Brings the guard flows to `plans` exactly (a restarted ovs-vswitchd gets them back,
    /// leftovers of gone ports go); returns how many flows it added and removed. Reads the
    /// drop counters for the metrics on the way.
    pub(super) async fn sync_spoof(&self, plans: &[EndpointPlan]) -> DpResult<usize> {
        let err = |e: ovs_ffi::Error| {
            DataplaneError::ovs(
                format!("anti-spoofing flows on bridge {}", self.cfg.bridge),
                e,
            )
        };
        let (added, removed) = self
            .sync_flows_counted(COOKIE_SPOOF, self.spoof_plan(plans))
            .await
            .map_err(err)?;
        self.record_spoof_drops(plans).await;
        Ok(added + removed)
    }

    /// Reads the drop flows' counters (a failure only leaves the metrics stale).
    pub(super) async fn record_spoof_drops(&self, plans: &[EndpointPlan]) {
        let Ok(stats) = self
            .of
            .dump_flows(&FlowFilter {
                table: Some(GUARD_TABLE),
                cookie: COOKIE_SPOOF,
                cookie_mask: u64::MAX,
                ..Default::default()
            })
            .await
        else {
            return;
        };
        let mut drops = Vec::new();
        for plan in plans.iter().filter(|p| p.anti_spoof) {
            let Some(ofport) = self.ofport(&plan.host_if) else {
                continue;
            };
            let want = spoof_drop_flow(ofport);
            if let Some(st) = stats
                .iter()
                .find(|st| st.flow.priority == want.priority && st.flow.matches == want.matches)
            {
                drops.push(SpoofDrops {
                    endpoint_id: plan.endpoint_id.clone(),
                    packets: st.packet_count,
                });
            }
        }
        *self.spoof_drops.lock().unwrap_or_else(|e| e.into_inner()) = drops;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_admits_only_the_endpoint_identity() {
        let ip = "10.1.2.3".parse().unwrap();
        let mac = [2, 0xb7, 10, 1, 2, 3];
        let text: Vec<String> = spoof_flows(7, mac, ip, 3001)
            .iter()
            .map(Flow::to_ofctl)
            .collect();
        assert_eq!(
            text,
            [
                "cookie=0xbe27000000000005, priority=200,ip,in_port=7,dl_src=02:b7:0a:01:02:03,nw_src=10.1.2.3 actions=set_field:0xbb9->reg0,goto_table:1",
                "cookie=0xbe27000000000005, priority=200,arp,in_port=7,dl_src=02:b7:0a:01:02:03,arp_spa=10.1.2.3,arp_sha=02:b7:0a:01:02:03 actions=set_field:0xbb9->reg0,goto_table:1",
                "cookie=0xbe27000000000005, priority=100,in_port=7 actions=drop",
            ]
        );
        assert_eq!(
            vlan_mark_flow(8, 3001).to_ofctl(),
            "cookie=0xbe27000000000005, priority=1,in_port=8 actions=set_field:0xbb9->reg0,goto_table:1"
        );
    }
}
