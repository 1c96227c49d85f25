//! The node-scoped pod directory: this node's pods joined with their service
//! accounts' annotations, published into the [`PodStore`] once both are listed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use ::kube::api::Api;
use ::kube::runtime::watcher::{self, Event};
use ::kube::Client;
use futures::stream::StreamExt;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};

use super::relisting::{relisting_watcher, Backoff};
use super::{KubeStatus, SaKey};
use crate::model::PodInfo;
use crate::sources::pods::PodStore;

/// Service account annotations not copied into [`PodInfo`]: large and never read.
const DROPPED_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

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

pub(super) async fn run_pod_directory(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
