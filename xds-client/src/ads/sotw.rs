//! State-of-the-world ADS (`StreamAggregatedResources`).
//!
//! Every response carries the complete set the control plane has for the request: all
//! resources of a wildcard type, or the requested names of a named type. Envoy's
//! `GrpcMuxImpl` is the reference.
use std::collections::HashSet;

use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse, Resource as XdsResource,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::config::{Interest, UnknownTypePolicy};
use super::engine::{nack_message, resource_name, AdsGrpc, Engine, Protocol};
use super::sink::{Rejection, Resource, ResourceUpdate};
use super::stats::TypeStats;
use super::type_url;

/// Marker for the SotW variant.
pub(crate) struct Sotw;

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn initial(engine: &mut Engine, idx: usize) -> DiscoveryRequest {
        request(engine, idx, None)
    }

    fn interest_changed(
        engine: &mut Engine,
        idx: usize,
        _old: &Interest,
    ) -> Option<DiscoveryRequest> {
        // Envoy re-sends the full list with the current version and nonce; an empty list
        // after a non-empty one tells the server we want nothing of this type any more.
        Some(request(engine, idx, None))
    }

    fn response(engine: &mut Engine, response: DiscoveryResponse) -> Vec<DiscoveryRequest> {
        handle_response(engine, response)
    }

    async fn open(
        mut grpc: AdsGrpc,
        requests: mpsc::Receiver<DiscoveryRequest>,
    ) -> Result<Streaming<DiscoveryResponse>, tonic::Status> {
        grpc.stream_aggregated_resources(ReceiverStream::new(requests))
            .await
            .map(tonic::Response::into_inner)
    }
}

fn request(engine: &mut Engine, idx: usize, error_detail: Option<RpcStatus>) -> DiscoveryRequest {
    let node = engine.node();
    let t = &engine.types[idx];
    DiscoveryRequest {
        version_info: t.version_info.clone(),
        node,
        resource_names: t.interest.sotw_names(),
        type_url: t.type_url.clone(),
        response_nonce: t.nonce.clone(),
        error_detail,
        ..Default::default()
    }
}

fn handle_response(engine: &mut Engine, response: DiscoveryResponse) -> Vec<DiscoveryRequest> {
    let Some(idx) = engine.index(&response.type_url) else {
        return unknown_type(engine, response);
    };
    engine.note_response(idx);
    engine.types[idx].nonce = response.nonce.clone();
    let version = response.version_info;

    // Unwrap envelopes and name every resource. A resource of the wrong type makes the
    // whole response invalid (Envoy throws before applying anything).
    let interest = engine.types[idx].interest.clone();
    let mut rejections = Vec::new();
    let mut seen = HashSet::new();
    let mut resources = Vec::new();
    for (i, any) in response.resources.into_iter().enumerate() {
        let (name, body) = match unwrap_resource(any) {
            Ok(nb) => nb,
            Err(Unwrapped::Skip) => continue,
            Err(Unwrapped::Reject(reason)) => {
                rejections.push(Rejection::new(format!("resources[{i}]"), reason));
                continue;
            }
        };
        if body.type_url != response.type_url {
            let msg = format!(
                "{} does not match the message-wide type URL {} in DiscoveryResponse",
                body.type_url, response.type_url
            );
            return finish(engine, idx, &version, Vec::new(), Some(msg));
        }
        if !interest.contains(&name) {
            // Not asked for (Envoy delivers only watched names); neither applied nor refused.
            continue;
        }
        if !seen.insert(name.clone()) {
            rejections.push(Rejection::new(
                name.clone(),
                format!("duplicate resource {name} found"),
            ));
            continue;
        }
        resources.push(Resource {
            name,
            version: version.clone(),
            body,
        });
    }

    let wildcard = interest == Interest::Wildcard;
    let removed: Vec<String> = if wildcard {
        let t = &engine.types[idx];
        t.known
            .iter()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    // Named types are only told about what arrived (Envoy skips watches with nothing new);
    // a wildcard type always gets the update, since an empty one removes everything.
    if wildcard || !resources.is_empty() {
        let refused = engine.sink.apply(ResourceUpdate {
            type_url: &response.type_url,
            version_info: &version,
            resources: &resources,
            removed: &removed,
            state_of_the_world: wildcard,
        });
        if wildcard {
            let refused_names: HashSet<&str> = refused.iter().map(|r| r.name.as_str()).collect();
            let t = &mut engine.types[idx];
            for n in &removed {
                t.known.remove(n);
            }
            // A refused resource the sink already had keeps its old version, so it stays known.
            for r in &resources {
                if !refused_names.contains(r.name.as_str()) {
                    t.known.insert(r.name.clone());
                }
            }
        }
        rejections.extend(refused);
    }
    let message = (!rejections.is_empty()).then(|| nack_message(&response.type_url, &rejections));
    finish(engine, idx, &version, Vec::new(), message)
}

/// Sends what the sink queued during `apply`, then the ACK (`message == None`) or NACK.
fn finish(
    engine: &mut Engine,
    idx: usize,
    version: &str,
    mut out: Vec<DiscoveryRequest>,
    message: Option<String>,
) -> Vec<DiscoveryRequest> {
    out.extend(engine.drain_commands::<Sotw>());
    let t = &engine.types[idx];
    let detail = match message {
        None => {
            TypeStats::inc(&t.stats.update_success);
            tracing::debug!(type_url = %t.type_url, version, "ACK");
            engine.types[idx].version_info = version.to_string();
            None
        }
        Some(message) => {
            TypeStats::inc(&t.stats.update_rejected);
            tracing::warn!(type_url = %t.type_url, version, %message, "NACK");
            Some(engine.nack_status(message))
        }
    };
    out.push(request(engine, idx, detail));
    engine.mark_sent(idx);
    out
}

enum Unwrapped {
    /// An envelope with no resource (e.g. an unresolved alias): nothing to do.
    Skip,
    Reject(String),
}

/// The name and body of one entry of `DiscoveryResponse.resources`, which is either the
/// resource itself or a `Resource` envelope around it.
fn unwrap_resource(any: Any) -> Result<(String, Any), Unwrapped> {
    if any.type_url == type_url::RESOURCE_WRAPPER {
        let env = XdsResource::decode(any.value.as_slice())
            .map_err(|e| Unwrapped::Reject(format!("cannot decode Resource envelope: {e}")))?;
        let body = env.resource.ok_or(Unwrapped::Skip)?;
        let name = if env.name.is_empty() {
            resource_name(&body.value).map_err(|e| Unwrapped::Reject(e.to_string()))?
        } else {
            env.name
        };
        return Ok((name, body));
    }
    let name = resource_name(&any.value).map_err(|e| Unwrapped::Reject(e.to_string()))?;
    Ok((name, any))
}

fn unknown_type(engine: &mut Engine, response: DiscoveryResponse) -> Vec<DiscoveryRequest> {
    tracing::warn!(type_url = %response.type_url, "response for a type URL that was not requested");
    if engine.unknown_type == UnknownTypePolicy::Ignore || response.resources.is_empty() {
        return Vec::new();
    }
    let detail = engine.nack_status(format!(
        "unknown type URL {}: no subscription for it",
        response.type_url
    ));
    vec![DiscoveryRequest {
        node: engine.node(),
        type_url: response.type_url,
        response_nonce: response.nonce,
        error_detail: Some(detail),
        ..Default::default()
    }]
}
