//! Incremental ADS (`DeltaAggregatedResources`).
//!
//! Responses carry only changes: added/updated resources with their own versions and
//! explicit `removed_resources`. Envoy's `DeltaSubscriptionState` is the reference.
use std::collections::HashSet;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::config::{Interest, UnknownTypePolicy};
use super::engine::{nack_message, AdsGrpc, Engine, Protocol};
use super::sink::{Resource, ResourceUpdate};
use super::stats::TypeStats;

/// Marker for the delta variant.
pub(crate) struct Delta;

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn initial(engine: &mut Engine, idx: usize) -> DeltaDiscoveryRequest {
        let node = engine.node();
        let t = &engine.types[idx];
        DeltaDiscoveryRequest {
            node,
            type_url: t.type_url.clone(),
            // Wildcard: an empty first subscribe list (Envoy's "legacy wildcard"), which
            // every control plane understands; explicit names otherwise.
            resource_names_subscribe: match &t.interest {
                Interest::Wildcard => Vec::new(),
                Interest::Names(n) => n.iter().cloned().collect(),
            },
            // Empty on the very first stream; afterwards, what we hold, so the server can
            // skip resending unchanged resources.
            initial_resource_versions: t
                .versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Default::default()
        }
    }

    fn interest_changed(
        engine: &mut Engine,
        idx: usize,
        old: &Interest,
    ) -> Option<DeltaDiscoveryRequest> {
        let t = &engine.types[idx];
        let (old, new) = (old.delta_set(), t.interest.delta_set());
        let subscribe: Vec<String> = new.difference(&old).cloned().collect();
        let unsubscribe: Vec<String> = old.difference(&new).cloned().collect();
        if subscribe.is_empty() && unsubscribe.is_empty() {
            return None;
        }
        let type_url = t.type_url.clone();
        Some(DeltaDiscoveryRequest {
            node: engine.node(),
            type_url,
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            ..Default::default()
        })
    }

    fn response(
        engine: &mut Engine,
        response: DeltaDiscoveryResponse,
    ) -> Vec<DeltaDiscoveryRequest> {
        handle_response(engine, response)
    }

    async fn open(
        mut grpc: AdsGrpc,
        requests: mpsc::Receiver<DeltaDiscoveryRequest>,
    ) -> Result<Streaming<DeltaDiscoveryResponse>, tonic::Status> {
        grpc.delta_aggregated_resources(ReceiverStream::new(requests))
            .await
            .map(tonic::Response::into_inner)
    }
}

fn ack(
    engine: &mut Engine,
    idx: usize,
    nonce: String,
    error_detail: Option<RpcStatus>,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: engine.node(),
        type_url: engine.types[idx].type_url.clone(),
        response_nonce: nonce,
        error_detail,
        ..Default::default()
    }
}

/// Envoy's structural checks (`DeltaSubscriptionState::handleGoodResponse`): these reject
/// the response before anything is applied.
fn structural_error(response: &DeltaDiscoveryResponse) -> Option<String> {
    let mut names = HashSet::new();
    for r in &response.resources {
        if !names.insert(r.name.as_str()) {
            return Some(format!(
                "duplicate name {} found among added/updated resources",
                r.name
            ));
        }
        if let Some(body) = &r.resource {
            if body.type_url != response.type_url {
                return Some(format!(
                    "type URL {} embedded in an individual Any does not match the message-wide \
                     type URL {} in DeltaDiscoveryResponse",
                    body.type_url, response.type_url
                ));
            }
        }
    }
    for name in &response.removed_resources {
        if !names.insert(name.as_str()) {
            return Some(format!(
                "duplicate name {name} found in the union of added+removed resources"
            ));
        }
    }
    None
}

fn handle_response(
    engine: &mut Engine,
    response: DeltaDiscoveryResponse,
) -> Vec<DeltaDiscoveryRequest> {
    let Some(idx) = engine.index(&response.type_url) else {
        return unknown_type(engine, response);
    };
    engine.note_response(idx);
    if let Some(message) = structural_error(&response) {
        return finish(engine, idx, response.nonce, Err(message), |_| {});
    }

    let t = &engine.types[idx];
    let mut resources = Vec::new();
    for r in response.resources {
        // A resource without a body is a heartbeat (same version, TTL refresh) or an
        // unresolved alias; neither changes anything.
        let Some(body) = r.resource else { continue };
        if !t.interest.contains(&r.name) {
            // Not subscribed (e.g. sent before the server saw our unsubscribe).
            continue;
        }
        resources.push(Resource {
            name: r.name,
            version: r.version,
            body,
        });
    }
    let removed: Vec<String> = response
        .removed_resources
        .into_iter()
        .filter(|n| t.interest.contains(n) || t.versions.contains_key(n))
        .collect();

    let mut rejections = Vec::new();
    if !resources.is_empty() || !removed.is_empty() {
        rejections = engine.sink.apply(ResourceUpdate {
            type_url: &response.type_url,
            version_info: &response.system_version_info,
            resources: &resources,
            removed: &removed,
            state_of_the_world: false,
        });
    }
    let result = if rejections.is_empty() {
        Ok(())
    } else {
        Err(nack_message(&response.type_url, &rejections))
    };
    let system_version = response.system_version_info;
    finish(engine, idx, response.nonce, result, |t| {
        // Only a clean update advances what we report in `initial_resource_versions`
        // (Envoy records versions after the callbacks succeed); the valid resources of a
        // NACKed response stay applied, and the server resends them after a reconnect.
        for r in resources {
            t.versions.insert(r.name, r.version);
        }
        for n in &removed {
            t.versions.remove(n);
        }
        t.version_info = system_version;
    })
}

/// Sends what the sink queued during `apply`, then the ACK (running `on_ack` first) or NACK.
fn finish(
    engine: &mut Engine,
    idx: usize,
    nonce: String,
    result: Result<(), String>,
    on_ack: impl FnOnce(&mut super::engine::TypeState),
) -> Vec<DeltaDiscoveryRequest> {
    let mut out = engine.drain_commands::<Delta>();
    let detail = match result {
        Ok(()) => {
            let t = &mut engine.types[idx];
            TypeStats::inc(&t.stats.update_success);
            on_ack(t);
            tracing::debug!(type_url = %t.type_url, version = %t.version_info, "ACK");
            None
        }
        Err(message) => {
            let t = &engine.types[idx];
            TypeStats::inc(&t.stats.update_rejected);
            tracing::warn!(type_url = %t.type_url, %message, "NACK");
            Some(engine.nack_status(message))
        }
    };
    out.push(ack(engine, idx, nonce, detail));
    out
}

fn unknown_type(
    engine: &mut Engine,
    response: DeltaDiscoveryResponse,
) -> Vec<DeltaDiscoveryRequest> {
    tracing::warn!(type_url = %response.type_url, "delta response for a type URL that was not requested");
    if engine.unknown_type == UnknownTypePolicy::Ignore
        || (response.resources.is_empty() && response.removed_resources.is_empty())
    {
        return Vec::new();
    }
    let detail = engine.nack_status(format!(
        "unknown type URL {}: no subscription for it",
        response.type_url
    ));
    vec![DeltaDiscoveryRequest {
        node: engine.node(),
        type_url: response.type_url,
        response_nonce: response.nonce,
        error_detail: Some(detail),
        ..Default::default()
    }]
}
