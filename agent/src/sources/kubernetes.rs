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
//!   any namespace that has a pod on this node.
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
//! # Startup taint
//!
//! With [`KubeSettings::startup_taint`] set, the agent removes that taint from its
//! node once the sources have synced (and an optional extra gate, e.g. "programs
//! attached", is open), so the scheduler holds pods off the node until the agent
//! can serve them (stock agent issue #159).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Api, Patch, PatchParams};
use ::kube::runtime::watcher::{self, watcher, Event};
use ::kube::{Client, CustomResource, Resource, ResourceExt};
use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::model::{Association, AssumeMode, PodInfo};
use crate::sources::associations::AssociationStore;
use crate::sources::pods::PodStore;

/// The `source` name of associations from `PodIdentityAssociation` resources.
pub const CRD_SOURCE: &str = "crd";

/// Default startup taint key (`--startup-taint` is usually given this).
pub const DEFAULT_STARTUP_TAINT: &str = "pod-identity.aws-agent.io/agent-not-ready";

/// Service account annotations not copied into [`PodInfo`]: large and never read.
const DROPPED_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

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

// === custom resource ===

/// `PodIdentityAssociation`: give the service account `spec.serviceAccount` in the
/// resource's namespace the role `spec.roleArn`, as an EKS Pod Identity association
/// would. The agent assumes the role with its own credentials and session tags.
///
/// Whoever may create these in a namespace may hand any role that trusts the agent
/// to that namespace's service accounts: grant `create`/`update` on them only to
/// cluster administrators (see docs/deploy.md).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "pod-identity.aws-agent.io",
    version = "v1alpha1",
    kind = "PodIdentityAssociation",
    plural = "podidentityassociations",
    shortname = "pia",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct PodIdentityAssociationSpec {
    /// Name of the service account, in the association's namespace.
    pub service_account: String,
    /// IAM role the agent assumes for the pods.
    pub role_arn: String,
    /// Role chaining: assume `roleArn`, then this role with those credentials
    /// (cross-account; sessions are capped at one hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_role_arn: Option<String>,
    /// Do not attach the `eks-*`/`kubernetes-*` session tags.
    #[serde(default)]
    pub disable_session_tags: bool,
    /// Requested session duration in seconds (1800..=43200); default 6 h, or 59 min
    /// with a target role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_duration_secs: Option<u32>,
    /// `sts:ExternalId` sent when assuming the role the pod receives (the target
    /// role when chaining), for trust policies that require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Inline session policy (JSON) narrowing the pod's credentials; as in EKS, it
    /// requires `disableSessionTags: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

// === settings ===

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
}

impl KubeSettings {
    /// Defaults for `node_name`: infer access, CRD on, no taint, back-off 1 s to 60 s.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            access: ClusterAccess::Infer,
            crd: true,
            startup_taint: None,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
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

async fn wait_ready(status: &KubeStatus, gate: Option<watch::Receiver<bool>>) {
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

// === back-off and re-listing watches ===

#[derive(Clone, Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }
}

struct Relist<K: Resource> {
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    stream: Option<BoxStream<'static, watcher::Result<Event<K>>>>,
    backoff: Backoff,
}

/// kube's watcher, restarted from a full list after every error (see the module
/// docs). The stream never ends; each restart begins with [`Event::Init`].
fn relisting_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    backoff: Backoff,
) -> BoxStream<'static, Event<K>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let state = Relist {
        api,
        config,
        what,
        stream: None,
        backoff,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            let stream = st
                .stream
                .get_or_insert_with(|| watcher(st.api.clone(), st.config.clone()).boxed());
            match stream.next().await {
                Some(Ok(event)) => {
                    if matches!(event, Event::InitDone) {
                        st.backoff.reset();
                    }
                    return Some((event, st));
                }
                Some(Err(error)) => {
                    let delay = st.backoff.step();
                    tracing::warn!(
                        what = st.what,
                        %error,
                        retry_in = ?delay,
                        "watch failed; re-listing"
                    );
                    st.stream = None;
                    tokio::time::sleep(delay).await;
                }
                // kube's watcher does not end; if it does, start over.
                None => st.stream = None,
            }
        }
    })
    .boxed()
}

// === pods and service accounts ===

/// The [`PodInfo`] of `pod`, if it is a pod on `node` with the identifying fields.
/// Service account annotations are left empty (they come from the SA watch).
pub fn pod_info(pod: &Pod, node: &str) -> Option<PodInfo> {
    let spec = pod.spec.as_ref()?;
    if spec.node_name.as_deref() != Some(node) {
        // The field selector already filters; an API server (or proxy) that ignored
        // it must not make other nodes' pods attributable here.
        return None;
    }
    let uid = pod.metadata.uid.clone().filter(|u| !u.is_empty())?;
    let namespace = pod.metadata.namespace.clone().filter(|n| !n.is_empty())?;
    let name = pod.metadata.name.clone().filter(|n| !n.is_empty())?;
    // Admission always sets serviceAccountName; `serviceAccount` is its deprecated
    // alias, and "default" is what admission would have filled in.
    let service_account = spec
        .service_account_name
        .clone()
        .or_else(|| spec.service_account.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    Some(PodInfo {
        uid,
        namespace,
        name,
        service_account,
        service_account_annotations: BTreeMap::new(),
        host_network: spec.host_network.unwrap_or(false),
    })
}

type SaKey = (String, String);

fn sa_key(sa: &ServiceAccount) -> Option<SaKey> {
    Some((sa.metadata.namespace.clone()?, sa.metadata.name.clone()?))
}

fn sa_annotations(sa: &ServiceAccount) -> BTreeMap<String, String> {
    let mut annotations = sa.metadata.annotations.clone().unwrap_or_default();
    for key in DROPPED_ANNOTATIONS {
        annotations.remove(*key);
    }
    annotations
}

/// What the pod and SA watches have confirmed, and what has been published.
struct PodDirectory {
    node: String,
    store: PodStore,
    status: KubeStatus,
    /// Pods by UID, without annotations.
    pods: HashMap<String, PodInfo>,
    sas: HashMap<SaKey, BTreeMap<String, String>>,
    pod_buf: Option<HashMap<String, PodInfo>>,
    sa_buf: Option<HashMap<SaKey, BTreeMap<String, String>>>,
    pods_listed: bool,
    sas_listed: bool,
}

enum DirEvent {
    // Boxed: the objects are large, and of very different sizes.
    Pod(Box<Event<Pod>>),
    Sa(Box<Event<ServiceAccount>>),
}

impl PodDirectory {
    fn published(&self) -> bool {
        self.pods_listed && self.sas_listed
    }

    fn full(&self, pod: &PodInfo) -> PodInfo {
        let mut pod = pod.clone();
        if let Some(a) = self
            .sas
            .get(&(pod.namespace.clone(), pod.service_account.clone()))
        {
            pod.service_account_annotations = a.clone();
        }
        pod
    }

    fn publish_all(&mut self) {
        if !self.published() {
            return;
        }
        let all: Vec<PodInfo> = self.pods.values().map(|p| self.full(p)).collect();
        tracing::info!(
            node = %self.node,
            pods = all.len(),
            service_accounts = self.sas.len(),
            "pod directory listed"
        );
        self.store.replace_all(all);
        if !self.status.inner.pods.swap(true, Ordering::AcqRel) {
            self.store.mark_synced();
        }
    }

    fn republish_sa(&self, key: &SaKey) {
        if !self.published() {
            return;
        }
        for pod in self
            .pods
            .values()
            .filter(|p| p.namespace == key.0 && p.service_account == key.1)
        {
            self.store.upsert(self.full(pod));
        }
    }

    fn handle(&mut self, event: DirEvent) {
        match event {
            DirEvent::Pod(event) => self.handle_pod(*event),
            DirEvent::Sa(event) => self.handle_sa(*event),
        }
    }

    fn handle_pod(&mut self, event: Event<Pod>) {
        match event {
            Event::Init => self.pod_buf = Some(HashMap::new()),
            Event::InitApply(pod) => {
                if let (Some(buf), Some(info)) = (self.pod_buf.as_mut(), pod_info(&pod, &self.node))
                {
                    buf.insert(info.uid.clone(), info);
                }
            }
            Event::InitDone => {
                self.pods = self.pod_buf.take().unwrap_or_default();
                self.pods_listed = true;
                self.publish_all();
            }
            Event::Apply(pod) => match pod_info(&pod, &self.node) {
                Some(info) => {
                    tracing::debug!(uid = %info.uid, namespace = %info.namespace, pod = %info.name, "pod seen");
                    if self.published() {
                        self.store.upsert(self.full(&info));
                    }
                    self.pods.insert(info.uid.clone(), info);
                }
                None => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        self.forget_pod(uid);
                    }
                }
            },
            Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    self.forget_pod(uid);
                }
            }
        }
    }

    fn handle_sa(&mut self, event: Event<ServiceAccount>) {
        match event {
            Event::Init => self.sa_buf = Some(HashMap::new()),
            Event::InitApply(sa) => {
                if let (Some(buf), Some(key)) = (self.sa_buf.as_mut(), sa_key(&sa)) {
                    buf.insert(key, sa_annotations(&sa));
                }
            }
            Event::InitDone => {
                self.sas = self.sa_buf.take().unwrap_or_default();
                self.sas_listed = true;
                self.publish_all();
            }
            Event::Apply(sa) => {
                if let Some(key) = sa_key(&sa) {
                    let annotations = sa_annotations(&sa);
                    if self.sas.get(&key) != Some(&annotations) {
                        self.sas.insert(key.clone(), annotations);
                        self.republish_sa(&key);
                    }
                }
            }
            Event::Delete(sa) => {
                if let Some(key) = sa_key(&sa) {
                    if self.sas.remove(&key).is_some() {
                        self.republish_sa(&key);
                    }
                }
            }
        }
    }

    fn forget_pod(&mut self, uid: &str) {
        // The store canonicalises UIDs; the API's are canonical already.
        self.pods.remove(uid);
        if self.published() {
            self.store.remove(uid);
        }
    }
}

async fn run_pod_directory(
    client: Client,
    node: String,
    store: PodStore,
    status: KubeStatus,
    backoff: Backoff,
) {
    let pods = relisting_watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        "pods",
        backoff.clone(),
    );
    let sas = relisting_watcher(
        Api::<ServiceAccount>::all(client),
        watcher::Config::default(),
        "serviceaccounts",
        backoff,
    );
    let mut events = futures::stream::select(
        pods.map(|e| DirEvent::Pod(Box::new(e))),
        sas.map(|e| DirEvent::Sa(Box::new(e))),
    );
    let mut dir = PodDirectory {
        node,
        store,
        status,
        pods: HashMap::new(),
        sas: HashMap::new(),
        pod_buf: None,
        sa_buf: None,
        pods_listed: false,
        sas_listed: false,
    };
    while let Some(event) = events.next().await {
        dir.handle(event);
    }
}

// === associations from the CRD ===

/// One `PodIdentityAssociation` as an [`Association`] (source `crd`), without
/// validation.
pub fn crd_association(pia: &PodIdentityAssociation) -> Option<Association> {
    Some(Association {
        namespace: pia.metadata.namespace.clone()?,
        service_account: pia.spec.service_account.clone(),
        role_arn: pia.spec.role_arn.clone(),
        target_role_arn: pia.spec.target_role_arn.clone().filter(|t| !t.is_empty()),
        disable_session_tags: pia.spec.disable_session_tags,
        session_duration_secs: pia.spec.session_duration_secs,
        mode: AssumeMode::PodIdentity,
        source: CRD_SOURCE.to_owned(),
        association_id: None,
        external_id: pia.spec.external_id.clone().filter(|x| !x.is_empty()),
        policy: pia.spec.policy.clone().filter(|p| !p.trim().is_empty()),
    })
}

/// The associations the `crd` source contributes, from all resources.
///
/// Every node must decide the same way, and one bad resource must not disable the
/// others (the store takes a source's set all or nothing): invalid resources are
/// left out (logged), and when resources disagree about one service account the
/// oldest (creation time, then name) wins, as Kubernetes conflict rules usually go.
pub fn crd_associations<'a>(
    resources: impl IntoIterator<Item = &'a PodIdentityAssociation>,
) -> Vec<Association> {
    let mut candidates: Vec<(&PodIdentityAssociation, Association)> = Vec::new();
    for pia in resources {
        let name = format!("{}/{}", pia.namespace().unwrap_or_default(), pia.name_any());
        let Some(assoc) = crd_association(pia) else {
            tracing::warn!(resource = %name, "PodIdentityAssociation without a namespace; ignored");
            continue;
        };
        // The store's own validation, on a scratch store: the same rules as every
        // other source, naming this resource when it fails.
        if let Err(error) = AssociationStore::new().replace_source(CRD_SOURCE, vec![assoc.clone()])
        {
            tracing::warn!(resource = %name, %error, "invalid PodIdentityAssociation; ignored");
            continue;
        }
        candidates.push((pia, assoc));
    }
    candidates.sort_by(|(a, _), (b, _)| {
        let key = |p: &PodIdentityAssociation| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.name_any(),
            )
        };
        key(a).cmp(&key(b))
    });
    let mut chosen: HashMap<SaKey, (String, Association)> = HashMap::new();
    for (pia, assoc) in candidates {
        let key = (assoc.namespace.clone(), assoc.service_account.clone());
        match chosen.get(&key) {
            None => {
                chosen.insert(key, (pia.name_any(), assoc));
            }
            Some((winner, kept)) => {
                if *kept != assoc {
                    tracing::warn!(
                        namespace = %key.0,
                        service_account = %key.1,
                        kept = %winner,
                        ignored = %pia.name_any(),
                        "two PodIdentityAssociations for one service account; the older one applies"
                    );
                }
            }
        }
    }
    let mut out: Vec<Association> = chosen.into_values().map(|(_, a)| a).collect();
    out.sort_by(|a, b| (&a.namespace, &a.service_account).cmp(&(&b.namespace, &b.service_account)));
    out
}

async fn run_crd(client: Client, assocs: AssociationStore, status: KubeStatus, backoff: Backoff) {
    let mut events = relisting_watcher(
        Api::<PodIdentityAssociation>::all(client),
        watcher::Config::default(),
        "podidentityassociations",
        backoff,
    );
    let key = |p: &PodIdentityAssociation| (p.namespace().unwrap_or_default(), p.name_any());
    let mut current: HashMap<SaKey, PodIdentityAssociation> = HashMap::new();
    let mut buf: Option<HashMap<SaKey, PodIdentityAssociation>> = None;
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Event::Init => {
                buf = Some(HashMap::new());
                continue;
            }
            Event::InitApply(p) => {
                if let Some(b) = buf.as_mut() {
                    b.insert(key(&p), p);
                }
                continue;
            }
            Event::InitDone => {
                current = buf.take().unwrap_or_default();
                listed = true;
            }
            Event::Apply(p) => {
                current.insert(key(&p), p);
            }
            Event::Delete(p) => {
                current.remove(&key(&p));
            }
        }
        if !listed {
            continue;
        }
        let set = crd_associations(current.values());
        let count = set.len();
        match assocs.replace_source(CRD_SOURCE, set) {
            Ok(()) => {
                tracing::info!(associations = count, "PodIdentityAssociations applied");
                status.inner.associations.store(true, Ordering::Release);
            }
            // Cannot happen after crd_associations' filtering; keep the old set.
            Err(error) => tracing::error!(%error, "PodIdentityAssociations not applied"),
        }
    }
}

// === startup taint ===

/// Remove the taint `taint_key` (any effect) from node `node_name`. Returns whether
/// a taint was removed.
///
/// The patch carries the node's `resourceVersion`, so a concurrent change of the
/// node's taints makes it fail with a conflict rather than overwrite the other
/// writer's taints; [`KubeSources::run`] retries such failures.
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

async fn remove_taint_with_retries(
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

#[cfg(test)]
mod tests {
    use super::*;
    use ::kube::CustomResourceExt;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    const ROLE_A: &str = "arn:aws:iam::111122223333:role/a";
    const ROLE_B: &str = "arn:aws:iam::111122223333:role/b";

    fn pod_json(node: &str) -> serde_json::Value {
        serde_json::json!({
            "metadata": {
                "name": "web-0", "namespace": "shop",
                "uid": "7d2c4b10-3f0e-4a55-9c57-0c5d1b7c9a11",
                "resourceVersion": "42"
            },
            "spec": {
                "nodeName": node,
                "serviceAccountName": "web",
                "serviceAccount": "web",
                "containers": [{"name": "app", "image": "app"}]
            }
        })
    }

    #[test]
    fn pod_info_from_pod() {
        let pod: Pod = serde_json::from_value(pod_json("node-a")).unwrap();
        let info = pod_info(&pod, "node-a").unwrap();
        assert_eq!(
            (
                info.uid.as_str(),
                info.namespace.as_str(),
                info.name.as_str(),
                info.service_account.as_str()
            ),
            (
                "7d2c4b10-3f0e-4a55-9c57-0c5d1b7c9a11",
                "shop",
                "web-0",
                "web"
            )
        );
        assert!(!info.host_network);
        // another node's pod is not ours, whatever the server sent
        assert!(pod_info(&pod, "node-b").is_none());
        // no service account name: admission's default
        let mut v = pod_json("node-a");
        v["spec"]
            .as_object_mut()
            .unwrap()
            .remove("serviceAccountName");
        v["spec"].as_object_mut().unwrap().remove("serviceAccount");
        v["spec"]["hostNetwork"] = true.into();
        let info = pod_info(&serde_json::from_value(v).unwrap(), "node-a").unwrap();
        assert_eq!(info.service_account, "default");
        assert!(info.host_network);
        // no uid: not attributable
        let mut v = pod_json("node-a");
        v["metadata"].as_object_mut().unwrap().remove("uid");
        assert!(pod_info(&serde_json::from_value(v).unwrap(), "node-a").is_none());
    }

    fn pia(ns: &str, name: &str, created: i64, sa: &str, role: &str) -> PodIdentityAssociation {
        let mut p = PodIdentityAssociation::new(
            name,
            PodIdentityAssociationSpec {
                service_account: sa.to_owned(),
                role_arn: role.to_owned(),
                target_role_arn: None,
                disable_session_tags: false,
                session_duration_secs: None,
                external_id: None,
                policy: None,
            },
        );
        p.metadata = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            creation_timestamp: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + created).unwrap(),
            )),
            ..ObjectMeta::default()
        };
        p
    }

    #[test]
    fn crd_conflicts_and_invalid_resources() {
        let newer = pia("ns", "newer", 10, "sa", ROLE_B);
        let older = pia("ns", "older", 5, "sa", ROLE_A);
        let same_again = pia("ns", "dup", 20, "sa", ROLE_A);
        let invalid = pia("ns", "bad", 1, "other", "arn:aws:iam::1:role/x");
        let mut long = pia("ns", "long", 2, "long", ROLE_B);
        long.spec.session_duration_secs = Some(99_999);
        let fine = pia("other-ns", "fine", 30, "sa", ROLE_B);
        let got = crd_associations([&newer, &invalid, &older, &same_again, &long, &fine]);
        let summary: Vec<_> = got
            .iter()
            .map(|a| {
                (
                    a.namespace.as_str(),
                    a.service_account.as_str(),
                    a.role_arn.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [("ns", "sa", ROLE_A), ("other-ns", "sa", ROLE_B)],
            "oldest wins, invalid ones are dropped"
        );
        assert!(got.iter().all(|a| a.source == CRD_SOURCE));
        // and the result is accepted by the store as one set
        AssociationStore::new()
            .replace_source(CRD_SOURCE, got)
            .unwrap();
    }

    /// deploy/crd.yaml must describe the same resource as the Rust type.
    #[test]
    fn crd_manifest_matches_the_type() {
        let yaml = include_str!("../../../deploy/crd.yaml");
        let crd = PodIdentityAssociation::crd();
        let names = &crd.spec.names;
        for needle in [
            format!("name: {}", crd.metadata.name.as_deref().unwrap()),
            format!("group: {}", crd.spec.group),
            format!("kind: {}", names.kind),
            format!("plural: {}", names.plural),
            format!("singular: {}", names.singular.as_deref().unwrap()),
            format!("scope: {}", crd.spec.scope),
            format!("- name: {}", crd.spec.versions[0].name),
        ] {
            assert!(yaml.contains(&needle), "deploy/crd.yaml lacks {needle:?}");
        }
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let props = schema["properties"]["spec"]["properties"]
            .as_object()
            .unwrap();
        for field in props.keys() {
            assert!(
                yaml.contains(&format!("{field}:")),
                "deploy/crd.yaml lacks spec field {field}"
            );
        }
        assert_eq!(props.len(), 7);
    }

    #[test]
    fn backoff_doubles_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let steps: Vec<_> = (0..4).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.step().as_millis(), 100);
    }
}
