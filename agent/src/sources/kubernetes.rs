//! The Kubernetes sources: this node's pods (with their service accounts'
//! annotations) into the [`PodStore`], and `PodIdentityAssociation` custom resources
//! into the [`AssociationStore`] (source `crd`).
//!
//! # What is watched
//!
//! * Pods with the field selector `spec.nodeName=<node>`: only this node's pods, so
//!   the list and the watch stay small however big the cluster is.
//! * ServiceAccounts, cluster-wide: a pod's IRSA annotation
//!   (`eks.amazonaws.com/role-arn`) lives on its service account, which can be in
//!   any namespace that has a pod on this node. Only the IRSA annotations the
//!   agent reads are kept (bounded values), and only for service accounts that
//!   carry one: anyone who may create service accounts anywhere feeds this watch.
//! * `PodIdentityAssociation` (`pod-identity.aws-agent.io/v1alpha1`), cluster-wide.
//!
//! # Never guess
//!
//! The pod directory holds exactly what the API server confirmed: a pod UID the
//! watch has not reported is unknown, and [`PodStore::lookup`]'s wait covers the
//! watch lag of a new pod (kube2iam #46, #136 handed such pods the wrong role).
//! Lists are consistent reads (no `resourceVersion=0` cache reads), and nothing is
//! published until both the pods and the service accounts have been listed once,
//! so an IRSA pod is never served as if its service account had no annotation.
//!
//! # Errors and resync
//!
//! Any watch error (a broken stream, an `ERROR` event, `410 Gone` for an expired
//! resource version, as a status or as an HTTP answer) drops the watch and starts
//! over with a full list after a back-off; the list replaces the store's content
//! wholesale, so whatever was missed while the watch was broken is repaired. kube's
//! own watcher resumes from the last resource version after most errors and would
//! retry an HTTP 410 at watch start forever; re-listing is cheap for one node's
//! pods and errors are rare, so the simpler, always-convergent rule wins.
//!
//! # Events
//!
//! With [`KubeSettings::events`] (on by default), a pod refused for a reason it can
//! fix (no association, another pod's token, the upstream's AccessDenied) gets a
//! `Warning` Event, at most one per pod and reason per window, repeats counted as
//! its series ([`event_channel`]; the request path only queues).
//!
//! # Startup taint
//!
//! With [`KubeSettings::startup_taint`] set, the agent removes that taint from its
//! node once the sources have synced (and an optional extra gate, e.g. "programs
//! attached", is open), so the scheduler holds pods off the node until the agent
//! can serve them (stock agent issue #159).

mod crd;
mod event_limiter;
mod events;
mod pod_directory;
mod relisting;
mod settings;
mod startup_taint;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ::kube::Client;
use tokio::sync::watch;

use crate::sources::associations::AssociationStore;
use crate::sources::pods::PodStore;

pub use crd::{
    crd_association, crd_associations, PodIdentityAssociation, PodIdentityAssociationSpec,
};
pub use event_limiter::{EventLimiter, SeriesUpdate, Verdict};
pub use events::{
    event_channel, note as event_note, EventPublisher, EventQueue, EventReason, EventSettings,
    EventStats, ACTION as EVENT_ACTION, REPORTING_CONTROLLER,
};
pub use pod_directory::pod_info;
pub use settings::{connect, ClusterAccess, KubeSettings};
pub use startup_taint::{remove_startup_taint, DEFAULT_STARTUP_TAINT};

use crd::run_crd;
use pod_directory::run_pod_directory;
use relisting::Backoff;
use startup_taint::{remove_taint_with_retries, wait_ready};

/// Errors of the Kubernetes sources.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// [`KubeSettings::node_name`] is empty: the pod watch would cover the whole
    /// cluster, and attribution would trust pods that are not on this node.
    #[error("no node name: pass --node-name (NODE_NAME from the downward API spec.nodeName)")]
    NoNodeName,
    /// [`ClusterAccess::Url`] is not a valid URL.
    #[error("invalid API server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Neither a kubeconfig nor the in-cluster service account could be loaded.
    #[error("no Kubernetes client configuration: {0}")]
    Infer(#[source] ::kube::config::InferConfigError),
    /// The in-cluster configuration (service account token, CA, `KUBERNETES_SERVICE_*`)
    /// could not be loaded.
    #[error("in-cluster Kubernetes configuration: {0}")]
    InCluster(#[source] ::kube::config::InClusterError),
    /// The kubeconfig file could not be loaded.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What went wrong.
        source: ::kube::config::KubeconfigError,
    },
    /// The HTTP client for the API server could not be built (TLS setup).
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] ::kube::Error),
    /// An API call failed; `what` names the call and object.
    #[error("{what}: {source}")]
    Api {
        /// The call, e.g. `patch node ip-10-0-0-1`.
        what: String,
        /// The client's error (an API `Status` for HTTP errors).
        source: ::kube::Error,
    },
}

/// A service account's (namespace, name); also the key of a namespaced resource.
type SaKey = (String, String);

// === status ===

#[derive(Debug, Default)]
struct StatusInner {
    pods: AtomicBool,
    associations: AtomicBool,
    crd_enabled: AtomicBool,
    taint_removed: AtomicBool,
}

/// Readiness of the Kubernetes sources, for `/readyz`; clones share it.
#[derive(Clone, Debug, Default)]
pub struct KubeStatus {
    inner: Arc<StatusInner>,
}

impl KubeStatus {
    /// Pods and service accounts have been listed once and published.
    pub fn pods_synced(&self) -> bool {
        self.inner.pods.load(Ordering::Acquire)
    }

    /// The `PodIdentityAssociation`s have been listed once (true if disabled).
    pub fn associations_synced(&self) -> bool {
        !self.inner.crd_enabled.load(Ordering::Acquire)
            || self.inner.associations.load(Ordering::Acquire)
    }

    /// The startup taint has been removed (or was not there).
    pub fn taint_removed(&self) -> bool {
        self.inner.taint_removed.load(Ordering::Acquire)
    }

    /// Every enabled source has synced.
    pub fn is_ready(&self) -> bool {
        self.pods_synced() && self.associations_synced()
    }
}

// === entry points ===

/// The Kubernetes sources, ready to run.
pub struct KubeSources {
    client: Client,
    settings: KubeSettings,
    pods: PodStore,
    assocs: AssociationStore,
    status: KubeStatus,
    gate: Option<watch::Receiver<bool>>,
}

impl std::fmt::Debug for KubeSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSources")
            .field("settings", &self.settings)
            .field("status", &self.status)
            .finish()
    }
}

impl KubeSources {
    /// Connect as `settings.access` says.
    pub async fn connect(
        settings: KubeSettings,
        pods: PodStore,
        assocs: AssociationStore,
    ) -> Result<Self, KubeError> {
        let client = connect(&settings.access).await?;
        Self::with_client(client, settings, pods, assocs)
    }

    /// Use an existing client (`settings.access` is ignored).
    pub fn with_client(
        client: Client,
        settings: KubeSettings,
        pods: PodStore,
        assocs: AssociationStore,
    ) -> Result<Self, KubeError> {
        if settings.node_name.trim().is_empty() {
            return Err(KubeError::NoNodeName);
        }
        let status = KubeStatus::default();
        status
            .inner
            .crd_enabled
            .store(settings.crd, Ordering::Release);
        Ok(Self {
            client,
            settings,
            pods,
            assocs,
            status,
            gate: None,
        })
    }

    /// Hold the startup taint until `gate` is also true (e.g. programs attached,
    /// EKS associations polled once).
    pub fn with_ready_gate(mut self, gate: watch::Receiver<bool>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The readiness handle.
    pub fn status(&self) -> KubeStatus {
        self.status.clone()
    }

    /// The client, e.g. for [`remove_startup_taint`].
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Watch until the future is dropped; never returns. Watch errors are logged
    /// and retried with a re-list. A startup taint that cannot be removed (RBAC
    /// forbids it, no such node) is logged and left in place: the pod directory and
    /// associations keep being served.
    pub async fn run(self) {
        let Self {
            client,
            settings,
            pods,
            assocs,
            status,
            gate,
        } = self;
        let backoff = Backoff::new(settings.min_backoff, settings.max_backoff);
        let pod_task = run_pod_directory(
            client.clone(),
            settings.node_name.clone(),
            pods,
            status.clone(),
            backoff.clone(),
        );
        let crd_task = async {
            if settings.crd {
                run_crd(client.clone(), assocs, status.clone(), backoff.clone()).await;
            }
        };
        let taint_task = async {
            if let Some(key) = &settings.startup_taint {
                wait_ready(&status, gate).await;
                match remove_taint_with_retries(&client, &settings.node_name, key, &backoff).await {
                    Ok(()) => status.inner.taint_removed.store(true, Ordering::Release),
                    Err(error) => tracing::error!(
                        %error,
                        taint = %key,
                        "cannot remove the startup taint; it stays (check the startup-taint RBAC and --node-name)"
                    ),
                }
            }
        };
        // The watch loops never end; the taint task may, and must not end the rest.
        tokio::join!(pod_task, crd_task, taint_task);
    }
}
