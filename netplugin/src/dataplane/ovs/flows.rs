//! Our OpenFlow state beyond the base flow: the ARP proxy (answered by OVS itself) and the
//! rate limits (meters, and the flows that send packets through them), each kept exactly in
//! step with the endpoints under its own cookie.

use super::*;
use std::collections::HashMap;

/// The ARP proxy's table: requests arrive there tagged with their port's VLAN.
const ARP_TABLE: u8 = 2;
/// Where a rate-limited sender's packets go next, for the receiver's meter.
const QOS_TABLE: u8 = 3;

/// How long an ARP update waits for a new local port's number (the port is there: its
/// endpoint's creation, which holds the same lock, has finished).
const OFPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a reconcile pass compares every ARP proxy flow with OVS's even when nothing
/// changed and OVS still counts as many: the repair of a flow changed in place behind our back.
/// A missing or extra flow (ovs-ofctl del-flows, an ovs-vswitchd restart) changes the count and
/// is repaired at the next pass.
pub(super) const ARP_FULL_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// The ARP proxy flows as last installed, by key: the baseline of [`Dataplane::update_arp`].
#[derive(Default)]
pub(super) struct ArpFlows {
    /// Whether this is what OVS has (set by a full sync; cleared when a change failed).
    pub(super) synced: bool,
    by_key: HashMap<ArpKey, Vec<Flow>>,
    /// Keys with a local port's flows, by VLAN: a VLAN's fallback flow is there while it has one.
    local_vlans: BTreeMap<u16, usize>,
    /// When OVS's flows were last dumped and compared, and the OVSDB connection and bridge
    /// generation then: a new connection or a re-created bridge means a full sync.
    pub(super) checked: Option<(std::time::Instant, u64, u64)>,
}

impl ArpFlows {
    /// Whether `other` installs exactly the same flows.
    pub(super) fn same_flows(&self, other: &ArpFlows) -> bool {
        self.by_key == other.by_key && self.local_vlans == other.local_vlans
    }

    /// How many flows under the ARP cookie this is (the VLANs' fallbacks included).
    pub(super) fn flow_count(&self) -> usize {
        self.by_key.values().map(Vec::len).sum::<usize>() + self.local_vlans.len()
    }

    fn insert(&mut self, key: ArpKey, flows: Vec<Flow>) {
        if flows.len() > 1 {
            *self.local_vlans.entry(key.0).or_default() += 1;
        }
        self.by_key.insert(key, flows);
    }

    fn remove(&mut self, key: ArpKey) -> Vec<Flow> {
        let old = self.by_key.remove(&key).unwrap_or_default();
        if old.len() > 1 {
            if let Some(n) = self.local_vlans.get_mut(&key.0) {
                *n -= 1;
                if *n == 0 {
                    self.local_vlans.remove(&key.0);
                }
            }
        }
        old
    }
}

/// One key's flows: the answer, and for a local port (with its number) the tagging of its
/// requests and the hand-off of its own address to NORMAL.
fn arp_key_flows(e: &ArpEntry, ofport: Option<u32>) -> Vec<Flow> {
    let mut flows = vec![Flow::new(ARP_TABLE, 100)
        .cookie(COOKIE_ARP)
        .matching(Match::new().vlan_vid(e.vlan).arp().arp_op(1).arp_tpa(e.ip))
        .actions(
            [
                Action::arp_reply(Mac(e.mac), e.ip),
                vec![Action::PopVlan, Action::Output(Port::InPort)],
            ]
            .concat(),
        )];
    if let Some(ofport) = ofport {
        flows.push(
            Flow::new(CLASSIFY_TABLE, 100)
                .cookie(COOKIE_ARP)
                .matching(Match::new().in_port(ofport).arp().arp_op(1))
                .actions(vec![
                    Action::PushVlan(0x8100),
                    Action::SetField(SetField::VlanVid(e.vlan)),
                ])
                .goto_table(ARP_TABLE),
        );
        flows.push(
            Flow::new(ARP_TABLE, 110)
                .cookie(COOKIE_ARP)
                .matching(
                    Match::new()
                        .in_port(ofport)
                        .vlan_vid(e.vlan)
                        .arp()
                        .arp_op(1)
                        .arp_tpa(e.ip),
                )
                .actions(vec![Action::PopVlan, Action::Output(Port::Normal)]),
        );
    }
    flows
}

/// Unknown addresses on a VLAN with a local port: back to NORMAL untagged (pop_vlan needs a
/// VLAN match, hence one flow per VLAN).
fn arp_vlan_flow(vlan: u16) -> Flow {
    Flow::new(ARP_TABLE, 0)
        .cookie(COOKIE_ARP)
        .matching(Match::new().vlan_vid(vlan))
        .actions(vec![Action::PopVlan, Action::Output(Port::Normal)])
}

fn delete_strict(f: &Flow) -> FlowMod {
    FlowMod::DeleteStrict {
        table: f.table,
        priority: f.priority,
        matches: f.matches.clone(),
    }
}

/// Meter ids follow the port's ofport: stable while the port exists, nothing to allocate.
pub(super) fn egress_meter(ofport: u32) -> u32 {
    ofport * 2
}
pub(super) fn ingress_meter(ofport: u32) -> u32 {
    ofport * 2 + 1
}

impl OvsDataplane {
    /// The ARP proxy. An access port's packets carry no VLAN in OpenFlow (the tag is NORMAL's
    /// business), so table 0 tags this host's ARP requests with their port's VLAN and sends them
    /// to table 1, which answers known (VLAN, address) pairs back out of the port and hands the
    /// rest, untagged again, to NORMAL. A port's own address goes to NORMAL too (gratuitous ARP).
    /// Returns the flows, and the same by key for [`ArpFlows`].
    pub(super) fn arp_flows(&self, entries: &[ArpEntry]) -> (Vec<Flow>, ArpFlows) {
        let mut installed = ArpFlows {
            synced: true,
            ..Default::default()
        };
        for e in entries {
            // Two networks never share a VLAN, so a (VLAN, address) pair has one owner.
            if installed.by_key.contains_key(&e.key()) {
                continue;
            }
            let ofport = e.local_port.as_deref().and_then(|p| self.ofport(p));
            installed.insert(e.key(), arp_key_flows(e, ofport));
        }
        let mut flows: Vec<Flow> = installed.by_key.values().flatten().cloned().collect();
        flows.extend(installed.local_vlans.keys().map(|v| arp_vlan_flow(*v)));
        (flows, installed)
    }

    /// [`Dataplane::update_arp`] on OVS: the flows of each changed key against [`ArpFlows`],
    /// then the VLAN's fallback flow when its first local port came or its last went.
    pub(super) async fn update_arp_flows(
        &self,
        changes: &[ArpChange],
    ) -> Result<Option<(usize, usize)>, ovs_ffi::Error> {
        let mut want = Vec::with_capacity(changes.len());
        for (key, entry) in changes {
            let ofport = match entry.as_ref().and_then(|e| e.local_port.as_deref()) {
                // A port created a moment ago may not have its number yet.
                Some(port) => match self.ofport(port) {
                    Some(p) => Some(p),
                    None => self.db.wait_ofport(port, OFPORT_WAIT).await.ok(),
                },
                None => None,
            };
            want.push((*key, entry.as_ref().map(|e| arp_key_flows(e, ofport))));
        }
        let mut installed = self.arp.lock().await;
        if !installed.synced {
            return Ok(None);
        }
        let vlans_before: BTreeSet<u16> = installed.local_vlans.keys().copied().collect();
        let mut mods = Vec::new();
        let mut added = 0;
        for (key, flows) in want {
            let old = installed.remove(key);
            for f in &old {
                if !flows.as_ref().is_some_and(|n| n.contains(f)) {
                    mods.push(delete_strict(f));
                }
            }
            if let Some(flows) = flows {
                for f in &flows {
                    if !old.contains(f) {
                        mods.push(FlowMod::Add(f.clone()));
                        added += 1;
                    }
                }
                installed.insert(key, flows);
            }
        }
        let vlans_after: BTreeSet<u16> = installed.local_vlans.keys().copied().collect();
        for v in vlans_after.difference(&vlans_before) {
            mods.push(FlowMod::Add(arp_vlan_flow(*v)));
            added += 1;
        }
        for v in vlans_before.difference(&vlans_after) {
            mods.push(delete_strict(&arp_vlan_flow(*v)));
        }
        let removed = mods.len() - added;
        if !mods.is_empty() {
            if let Err(e) = self.of.flow_mods(&mods).await {
                // What landed is unknown: the next full sync starts from a dump.
                installed.synced = false;
                return Err(e);
            }
        }
        Ok(Some((added, removed)))
    }

    /// Rate limits as meters and flows. One flow can use one meter, so a limited sender's
    /// packets are metered in table 0 and go on to table 2, where the receiver's meter applies;
    /// packets from unlimited senders meet the receiver's meter in table 0. Only unicast to
    /// the container's MAC counts as its ingress.
    pub(super) fn qos_plan(&self, plans: &[EndpointPlan]) -> (Vec<Flow>, Vec<Meter>) {
        let (mut flows, mut meters) = (Vec::new(), Vec::new());
        for plan in plans {
            let limits = plan.limits;
            if limits.is_unlimited() {
                continue;
            }
            let Some(ofport) = self.ofport(&plan.host_if) else {
                continue;
            };
            if let Some(rate) = limits.egress_kbps {
                let id = egress_meter(ofport);
                meters.push(Meter::drop_kbps(id, rate, Some(limits.burst_for(rate))));
                flows.push(
                    Flow::new(CLASSIFY_TABLE, 50)
                        .cookie(COOKIE_QOS)
                        .matching(Match::new().in_port(ofport))
                        .meter(id)
                        .goto_table(QOS_TABLE),
                );
            }
            if let Some(rate) = limits.ingress_kbps {
                let id = ingress_meter(ofport);
                meters.push(Meter::drop_kbps(id, rate, Some(limits.burst_for(rate))));
                // Its MAC on its VLAN only: Docker lets two networks' endpoints share a MAC
                // (--mac-address). From this host's access ports the VLAN is what the guard
                // table marked; from the uplink it is the frame's tag.
                let on_its_vlan = [
                    Match::new().reg(VLAN_REG, u32::from(plan.vlan)),
                    Match::new().vlan_vid(plan.vlan),
                ];
                for (table, priority) in [(CLASSIFY_TABLE, 40), (QOS_TABLE, 50)] {
                    for m in &on_its_vlan {
                        flows.push(
                            Flow::new(table, priority)
                                .cookie(COOKIE_QOS)
                                .matching(m.clone().eth_dst(Mac(plan.mac)))
                                .meter(id)
                                .actions(vec![Action::Output(Port::Normal)]),
                        );
                    }
                }
            }
        }
        if !flows.is_empty() {
            flows.push(
                Flow::new(QOS_TABLE, 0)
                    .cookie(COOKIE_QOS)
                    .actions(vec![Action::Output(Port::Normal)]),
            );
        }
        (flows, meters)
    }

    /// Brings meters and rate-limit flows to `plans`; returns how many changes it made.
    pub(super) async fn sync_qos(&self, plans: &[EndpointPlan]) -> DpResult<usize> {
        let err = |e: ovs_ffi::Error| {
            DataplaneError::ovs(format!("rate limits on bridge {}", self.cfg.bridge), e)
        };
        let (flows, meters) = self.qos_plan(plans);
        let have_meters = self.of.meter_configs(None).await.map_err(err)?;
        let mut changes = 0;
        for m in &meters {
            match have_meters.iter().find(|h| h.id == m.id) {
                Some(h) if h == m => {}
                Some(_) => {
                    self.of.modify_meter(m).await.map_err(err)?;
                    changes += 1;
                }
                None => {
                    self.of.add_meter(m).await.map_err(err)?;
                    changes += 1;
                }
            }
        }
        let (added, removed) = self
            .sync_flows_counted(COOKIE_QOS, flows)
            .await
            .map_err(err)?;
        changes += added + removed;
        self.record_drops(plans).await;
        // The bridge is ours (ensure_bridge refuses one without our label), so every meter
        // on it is: those no port needs go.
        for h in have_meters
            .iter()
            .filter(|h| !meters.iter().any(|m| m.id == h.id))
        {
            self.of.delete_meter(h.id).await.map_err(err)?;
            changes += 1;
        }
        Ok(changes)
    }

    /// Reads the meters' drop counters for the metrics (a failure only leaves them stale).
    pub(super) async fn record_drops(&self, plans: &[EndpointPlan]) {
        let Ok(stats) = self.of.meter_stats(None).await else {
            return;
        };
        let mut drops = Vec::new();
        for plan in plans {
            let Some(ofport) = self.ofport(&plan.host_if) else {
                continue;
            };
            for (direction, id, rate) in [
                ("egress", egress_meter(ofport), plan.limits.egress_kbps),
                ("ingress", ingress_meter(ofport), plan.limits.ingress_kbps),
            ] {
                if let (Some(st), Some(rate_kbps)) = (stats.iter().find(|st| st.id == id), rate) {
                    drops.push(RateLimitDrops {
                        endpoint_id: plan.endpoint_id.clone(),
                        direction,
                        packets: st.bands.iter().map(|(packets, _)| packets).sum(),
                        rate_kbps,
                    });
                }
            }
        }
        *self.drops.lock().unwrap_or_else(|e| e.into_inner()) = drops;
    }

    /// Makes the flows with `cookie` exactly `want`: one dump, then only the differences.
    /// Returns (added, removed).
    pub(super) async fn sync_flows_counted(
        &self,
        cookie: u64,
        want: Vec<Flow>,
    ) -> Result<(usize, usize), ovs_ffi::Error> {
        let want: BTreeMap<String, Flow> = want.into_iter().map(|f| (f.to_ofctl(), f)).collect();
        let have = self
            .of
            .dump_flows(&FlowFilter {
                cookie,
                cookie_mask: u64::MAX,
                ..Default::default()
            })
            .await?;
        let have_text: BTreeSet<String> = have.iter().map(|f| f.flow.to_ofctl()).collect();
        let mut mods: Vec<FlowMod> = have
            .iter()
            .filter(|f| !want.contains_key(&f.flow.to_ofctl()))
            .map(|f| FlowMod::DeleteStrict {
                table: f.flow.table,
                priority: f.flow.priority,
                matches: f.flow.matches.clone(),
            })
            .collect();
        let removed = mods.len();
        mods.extend(
            want.iter()
                .filter(|(text, _)| !have_text.contains(*text))
                .map(|(_, f)| FlowMod::Add(f.clone())),
        );
        let added = mods.len() - removed;
        if !mods.is_empty() {
            self.of.flow_mods(&mods).await?;
        }
        Ok((added, removed))
    }
}
