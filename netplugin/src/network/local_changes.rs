//! This host's endpoint changes in flight or just made, for the reconcile pass.
//!
//! A pass runs beside endpoint calls (no global lock: one slow call must not stall every
//! container of the host) and works from the watch-fed view, which can lag the store by a
//! moment. Its whole-bridge syncs (ports, anti-spoofing flows, meters, pruning) must neither
//! remove what a CreateEndpoint is building nor bring back what a DeleteEndpoint removed. Each
//! change is noted before the datapath is touched; the pass lays the notes over the view's
//! plans; a note is forgotten once the view agrees with it, or [`NOTE_KEPT`] after it finished
//! (a record another host deleted meanwhile must not be kept alive by a note).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use plugin_transport::sync::lock;

use crate::dataplane::EndpointPlan;

/// How long a finished change outweighs the view: far longer than the watch lags.
pub const NOTE_KEPT: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct LocalChanges {
    notes: Mutex<HashMap<String, Note>>,
}

struct Note {
    /// What the endpoint is once the change is done: `None` when it goes (or its creation
    /// failed).
    plan: Option<EndpointPlan>,
    finished: Option<Instant>,
}

impl LocalChanges {
    /// Before a CreateEndpoint touches the datapath.
    pub fn creating(&self, plan: &EndpointPlan) {
        self.note(&plan.endpoint_id, Some(plan.clone()), None);
    }

    /// Before a DeleteEndpoint or a release touches the datapath.
    pub fn deleting(&self, endpoint_id: &str) {
        self.note(endpoint_id, None, None);
    }

    /// When the change is done: what the endpoint is now (`None`: gone or never made).
    pub fn finished(&self, endpoint_id: &str, plan: Option<EndpointPlan>) {
        self.note(endpoint_id, plan, Some(Instant::now()));
    }

    fn note(&self, endpoint_id: &str, plan: Option<EndpointPlan>, finished: Option<Instant>) {
        lock(&self.notes).insert(endpoint_id.to_string(), Note { plan, finished });
    }

    /// Lays the notes over `plans` (this host's endpoints as the view has them): an endpoint
    /// being created or just created is in, with the view's plan if the view has it (it may
    /// carry newer limits); one being deleted or just deleted is out. Forgets the notes the
    /// view agrees with.
    pub fn overlay(&self, plans: &mut Vec<EndpointPlan>) {
        let mut notes = lock(&self.notes);
        notes.retain(|id, note| {
            let in_view = plans.iter().position(|p| &p.endpoint_id == id);
            let agrees = match (&note.plan, in_view) {
                (Some(_), Some(_)) => true,
                (Some(plan), None) => {
                    plans.push(plan.clone());
                    false
                }
                (None, Some(i)) => {
                    plans.remove(i);
                    false
                }
                (None, None) => true,
            };
            match note.finished {
                None => true,
                Some(at) => !agrees && at.elapsed() < NOTE_KEPT,
            }
        });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.notes).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(id: &str) -> EndpointPlan {
        EndpointPlan {
            endpoint_id: id.into(),
            network_id: "n".into(),
            host_id: "h".into(),
            host_if: format!("if-{id}"),
            container_if: format!("c-{id}"),
            vlan: 10,
            mtu: 1500,
            mac: [2, 0, 0, 0, 0, 1],
            limits: Default::default(),
            ip: std::net::Ipv4Addr::new(10, 0, 0, 1),
            anti_spoof: true,
        }
    }

    fn ids(plans: &[EndpointPlan]) -> Vec<&str> {
        plans.iter().map(|p| p.endpoint_id.as_str()).collect()
    }

    #[test]
    fn changes_in_flight_outweigh_the_view_until_it_agrees() {
        let changes = LocalChanges::default();
        changes.creating(&plan("new"));
        changes.deleting("old");
        let mut plans = vec![plan("old"), plan("kept")];
        changes.overlay(&mut plans);
        assert_eq!(ids(&plans), ["kept", "new"]);
        assert_eq!(changes.len(), 2, "in flight: never forgotten");

        changes.finished("new", Some(plan("new")));
        changes.finished("old", None);
        // The view still lags: the notes hold.
        let mut plans = vec![plan("old"), plan("kept")];
        changes.overlay(&mut plans);
        assert_eq!(ids(&plans), ["kept", "new"]);
        assert_eq!(changes.len(), 2);
        // The view caught up: nothing changes, and the notes go.
        let mut limited = plan("new");
        limited.limits.egress_kbps = Some(1000);
        let mut plans = vec![plan("kept"), limited.clone()];
        changes.overlay(&mut plans);
        assert_eq!(plans, vec![plan("kept"), limited], "the view's plan wins");
        assert_eq!(changes.len(), 0);
    }

    #[test]
    fn a_failed_creation_is_out_and_forgotten() {
        let changes = LocalChanges::default();
        changes.creating(&plan("e"));
        changes.finished("e", None);
        let mut plans = vec![];
        changes.overlay(&mut plans);
        assert!(plans.is_empty());
        assert_eq!(changes.len(), 0);
    }
}
