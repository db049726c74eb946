//! Snapshot mode: answering requests from per-type resource sets, the way
//! go-control-plane's snapshot cache does.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as XdsResource,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::mpsc;
use tonic::Status;

use super::State;

/// The resources of one type at one version.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    version: String,
    /// name → (version at which it last changed, body).
    resources: BTreeMap<String, (String, Any)>,
}

/// One open SotW stream.
pub(super) struct SotwStream {
    pub(super) tx: mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>,
    /// type URL → (names requested, version last sent).
    sent: HashMap<String, (Vec<String>, String)>,
}

/// One open delta stream.
pub(super) struct DeltaStream {
    pub(super) tx: mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>,
    subs: HashMap<String, DeltaSubs>,
}

/// What a delta client subscribed to and holds, as the server tracks it.
#[derive(Default)]
struct DeltaSubs {
    wildcard: bool,
    names: BTreeSet<String>,
    /// name → version the client has.
    known: HashMap<String, String>,
}

// === impl SotwStream ===

impl SotwStream {
    pub(super) fn new(tx: mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>) -> Self {
        SotwStream {
            tx,
            sent: HashMap::new(),
        }
    }
}

// === impl DeltaStream ===

impl DeltaStream {
    pub(super) fn new(tx: mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>) -> Self {
        DeltaStream {
            tx,
            subs: HashMap::new(),
        }
    }
}

// === impl DeltaSubs ===

impl DeltaSubs {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

// === impl State ===

impl State {
    /// Replaces the resources of `type_url` and pushes the change to every stream that
    /// asked for that type.
    pub(super) fn set_resources(
        &mut self,
        type_url: &str,
        version: &str,
        resources: Vec<(String, Any)>,
    ) {
        let snap = self.snapshots.entry(type_url.to_string()).or_default();
        let mut next = BTreeMap::new();
        for (name, body) in resources {
            let rv = match snap.resources.get(&name) {
                Some((rv, old)) if *old == body => rv.clone(),
                _ => version.to_string(),
            };
            next.insert(name, (rv, body));
        }
        snap.version = version.to_string();
        snap.resources = next;

        let ids: Vec<u64> = self.sotw.keys().copied().collect();
        for id in ids {
            let names = match self.sotw.get(&id).and_then(|s| s.sent.get(type_url)) {
                Some((names, _)) => names.clone(),
                None => continue,
            };
            self.send_sotw(id, type_url, names);
        }
        let ids: Vec<u64> = self.delta.keys().copied().collect();
        for id in ids {
            self.send_delta(id, type_url);
        }
    }

    pub(super) fn on_sotw_request(&mut self, stream: u64, req: &DiscoveryRequest) {
        let Some(snap) = self.snapshots.get(&req.type_url) else {
            return;
        };
        let Some(s) = self.sotw.get_mut(&stream) else {
            return;
        };
        let up_to_date = match s.sent.get(&req.type_url) {
            // ACK, NACK, or a request that changes nothing: only new names need an answer.
            Some((names, version)) => *names == req.resource_names && *version == snap.version,
            // First request on this stream: the client may already hold this version.
            None => !req.version_info.is_empty() && req.version_info == snap.version,
        };
        if up_to_date {
            let entry = (req.resource_names.clone(), snap.version.clone());
            s.sent.insert(req.type_url.clone(), entry);
            return;
        }
        self.send_sotw(stream, &req.type_url, req.resource_names.clone());
    }

    fn send_sotw(&mut self, stream: u64, type_url: &str, names: Vec<String>) {
        let nonce = self.nonce();
        let (Some(snap), Some(s)) = (self.snapshots.get(type_url), self.sotw.get_mut(&stream))
        else {
            return;
        };
        let resources = snap
            .resources
            .iter()
            .filter(|(n, _)| names.is_empty() || names.contains(n))
            .map(|(_, (_, body))| body.clone())
            .collect();
        let response = DiscoveryResponse {
            version_info: snap.version.clone(),
            resources,
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        };
        s.sent
            .insert(type_url.to_string(), (names, snap.version.clone()));
        let _ = s.tx.send(Ok(response));
    }

    pub(super) fn on_delta_request(&mut self, stream: u64, req: &DeltaDiscoveryRequest) {
        let Some(s) = self.delta.get_mut(&stream) else {
            return;
        };
        let first = !s.subs.contains_key(&req.type_url);
        let subs = s.subs.entry(req.type_url.clone()).or_default();
        if first {
            subs.wildcard = req.resource_names_subscribe.is_empty();
            subs.known = req.initial_resource_versions.clone();
        }
        for n in &req.resource_names_subscribe {
            if n == "*" {
                subs.wildcard = true;
            } else {
                subs.names.insert(n.clone());
            }
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                subs.wildcard = false;
            } else {
                subs.names.remove(n);
            }
            subs.known.remove(n);
        }
        subs.known
            .retain(|n, _| subs.wildcard || subs.names.contains(n));
        let changed = first || !req.resource_names_subscribe.is_empty();
        if changed {
            self.send_delta(stream, &req.type_url);
        }
    }

    fn send_delta(&mut self, stream: u64, type_url: &str) {
        let nonce = self.nonce();
        let (Some(snap), Some(s)) = (self.snapshots.get(type_url), self.delta.get_mut(&stream))
        else {
            return;
        };
        let Some(subs) = s.subs.get_mut(type_url) else {
            return;
        };
        let mut resources = Vec::new();
        for (name, (rv, body)) in &snap.resources {
            if subs.wants(name) && subs.known.get(name) != Some(rv) {
                subs.known.insert(name.clone(), rv.clone());
                resources.push(XdsResource {
                    name: name.clone(),
                    version: rv.clone(),
                    resource: Some(body.clone()),
                    ..Default::default()
                });
            }
        }
        let removed: Vec<String> = subs
            .known
            .keys()
            .filter(|n| !snap.resources.contains_key(*n))
            .cloned()
            .collect();
        for n in &removed {
            subs.known.remove(n);
        }
        if resources.is_empty() && removed.is_empty() {
            return;
        }
        let response = DeltaDiscoveryResponse {
            system_version_info: snap.version.clone(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        };
        let _ = s.tx.send(Ok(response));
    }
}
