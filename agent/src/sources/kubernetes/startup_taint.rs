//! The startup taint: removed from this node once the sources have synced (and
//! the optional ready gate is open), so the scheduler holds pods off the node until
//! the agent can serve them.

use std::time::Duration;

use ::kube::api::{Api, Patch, PatchParams};
use ::kube::Client;
use k8s_openapi::api::core::v1::Node;
use tokio::sync::watch;

use super::relisting::Backoff;
use super::{KubeError, KubeStatus};

/// Default startup taint key (`--startup-taint` is usually given this).
pub const DEFAULT_STARTUP_TAINT: &str = "pod-identity.aws-agent.io/agent-not-ready";

pub(super) async fn wait_ready(status: &KubeStatus, gate: Option<watch::Receiver<bool>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !status.is_ready() {
        tick.tick().await;
    }
    if let Some(mut gate) = gate {
        // A closed gate (sender dropped) never opens: keep the taint.
        if gate.wait_for(|open| *open).await.is_err() {
            futures::future::pending::<()>().await;
        }
    }
}

/// Remove the taint `taint_key` (any effect) from node `node_name`. Returns whether
/// a taint was removed.
///
/// The patch carries the node's `resourceVersion`, so a concurrent change of the
/// node's taints makes it fail with a conflict rather than overwrite the other
/// writer's taints; [`KubeSources::run`](super::KubeSources::run) retries such failures.
pub async fn remove_startup_taint(
    client: &Client,
    node_name: &str,
    taint_key: &str,
) -> Result<bool, KubeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes
        .get(node_name)
        .await
        .map_err(|source| KubeError::Api {
            what: format!("get node {node_name}"),
            source,
        })?;
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let remaining: Vec<_> = taints.iter().filter(|t| t.key != taint_key).collect();
    if remaining.len() == taints.len() {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": node.metadata.resource_version },
        "spec": { "taints": remaining },
    });
    nodes
        .patch(node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| KubeError::Api {
            what: format!("patch node {node_name} (remove taint {taint_key})"),
            source,
        })?;
    Ok(true)
}

pub(super) async fn remove_taint_with_retries(
    client: &Client,
    node: &str,
    key: &str,
    backoff: &Backoff,
) -> Result<(), KubeError> {
    let mut backoff = backoff.clone();
    loop {
        match remove_startup_taint(client, node, key).await {
            Ok(removed) => {
                tracing::info!(node, taint = key, removed, "startup taint handled");
                return Ok(());
            }
            // Forbidden or not found will not heal by retrying: the RBAC rule or
            // the node name is wrong. Say so and stop (the caller decides).
            Err(KubeError::Api {
                source: ::kube::Error::Api(status),
                what,
            }) if status.code == 403 || status.code == 404 => {
                return Err(KubeError::Api {
                    what,
                    source: ::kube::Error::Api(status),
                });
            }
            Err(error) => {
                let delay = backoff.step();
                tracing::warn!(%error, retry_in = ?delay, "removing the startup taint failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
