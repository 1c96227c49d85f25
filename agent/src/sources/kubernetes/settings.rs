//! Settings of the Kubernetes sources, and how to reach the API server.

use std::path::PathBuf;
use std::time::Duration;

use ::kube::Client;

use super::{EventSettings, KubeError};

/// How to reach the API server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ClusterAccess {
    /// `KUBECONFIG` or `~/.kube/config` if present, else in-cluster (kube's `infer`).
    #[default]
    Infer,
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, token, CA) only.
    InCluster,
    /// This kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    /// Plain URL without credentials; for tests against a local stand-in.
    Url(String),
}

/// Settings of the Kubernetes sources; build by value
/// (`KubeSettings { crd: false, ..KubeSettings::new("node-1") }`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeSettings {
    /// This node's name (`spec.nodeName` of the agent's pod, via the downward API).
    pub node_name: String,
    /// How to reach the API server.
    pub access: ClusterAccess,
    /// Watch `PodIdentityAssociation` resources (needs the CRD installed).
    pub crd: bool,
    /// Remove this taint from the node once ready.
    pub startup_taint: Option<String>,
    /// First delay before re-listing after a watch error; doubles up to
    /// `max_backoff`, back to this after a successful list.
    pub min_backoff: Duration,
    /// Longest delay between attempts.
    pub max_backoff: Duration,
    /// Post Kubernetes Events on refused pods (None: off).
    pub events: Option<EventSettings>,
}

impl KubeSettings {
    /// Defaults for `node_name`: infer access, CRD on, no taint, back-off 1 s to 60 s,
    /// Events on (one per pod and reason per 5 minutes).
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            access: ClusterAccess::Infer,
            crd: true,
            startup_taint: None,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            events: Some(EventSettings::default()),
        }
    }
}

/// A client for `access`.
pub async fn connect(access: &ClusterAccess) -> Result<Client, KubeError> {
    let config = match access {
        ClusterAccess::Infer => ::kube::Config::infer().await.map_err(KubeError::Infer)?,
        ClusterAccess::InCluster => ::kube::Config::incluster().map_err(KubeError::InCluster)?,
        ClusterAccess::Kubeconfig(path) => {
            let kubeconfig = ::kube::config::Kubeconfig::read_from(path).map_err(|source| {
                KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                }
            })?;
            ::kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        ClusterAccess::Url(url) => {
            let uri: hyper::Uri =
                url.parse()
                    .map_err(|e: hyper::http::uri::InvalidUri| KubeError::InvalidUrl {
                        url: url.clone(),
                        reason: e.to_string(),
                    })?;
            ::kube::Config::new(uri)
        }
    };
    Client::try_from(config).map_err(KubeError::Client)
}
