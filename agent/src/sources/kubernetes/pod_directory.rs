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
use crate::model::{PodInfo, PodUid, IRSA_ROLE_ANNOTATION};
use crate::sources::pods::PodStore;

/// The service account annotations kept; every other one is dropped as the object
/// arrives. The service account watch is cluster-wide, so anyone who may create
/// service accounts in any namespace feeds every agent's memory: only what the
/// agent reads is held. [`IRSA_ROLE_ANNOTATION`] selects the role
/// (`sources::associations`); `sts-regional-endpoints` is the documented IRSA
/// companion annotation, kept so the pod directory shows it (small, bounded).
/// Other IRSA annotations (`audience`, `token-expiration`) configure the pod's
/// projected token, which the agent does not mint, and are not kept.
pub const KEPT_ANNOTATIONS: &[&str] = &[
    IRSA_ROLE_ANNOTATION,
    "eks.amazonaws.com/sts-regional-endpoints",
];

/// Longest annotation value kept (IAM's limit for an ARN). A longer value is
/// dropped, never cut: a shortened ARN could name another role. Without its role
/// annotation the service account has no IRSA role, so its pods fail closed.
pub const MAX_ANNOTATION_VALUE_BYTES: usize = 2048;

/// The [`PodInfo`] of `pod`, if it is a pod on `node` with the identifying fields
/// (a UID that is not a UUID identifies nothing: no cgroup path can name it).
/// Service account annotations are left empty (they come from the SA watch).
pub fn pod_info(pod: &Pod, node: &str) -> Option<PodInfo> {
    let spec = pod.spec.as_ref()?;
    if spec.node_name.as_deref() != Some(node) {
        // The field selector already filters; an API server (or proxy) that ignored
        // it must not make other nodes' pods attributable here.
        return None;
    }
    let uid = pod_uid(pod)?;
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

/// The pod's UID, if it has one that is a UUID.
fn pod_uid(pod: &Pod) -> Option<PodUid> {
    let raw = pod.metadata.uid.as_deref().filter(|u| !u.is_empty())?;
    PodUid::parse(raw)
        .inspect_err(|error| {
            tracing::warn!(
                namespace = pod.metadata.namespace.as_deref().unwrap_or(""),
                pod = pod.metadata.name.as_deref().unwrap_or(""),
                %error,
                "pod ignored"
            );
        })
        .ok()
}

fn sa_key(sa: &ServiceAccount) -> Option<SaKey> {
    Some((sa.metadata.namespace.clone()?, sa.metadata.name.clone()?))
}

/// The [`KEPT_ANNOTATIONS`] of `sa`, values at most [`MAX_ANNOTATION_VALUE_BYTES`];
/// nothing else of the object is copied.
fn sa_annotations(sa: &ServiceAccount) -> BTreeMap<String, String> {
    let Some(all) = sa.metadata.annotations.as_ref() else {
        return BTreeMap::new();
    };
    KEPT_ANNOTATIONS
        .iter()
        .filter_map(|key| {
            let value = all.get(*key)?;
            if value.len() > MAX_ANNOTATION_VALUE_BYTES {
                tracing::warn!(
                    namespace = sa.metadata.namespace.as_deref().unwrap_or(""),
                    service_account = sa.metadata.name.as_deref().unwrap_or(""),
                    annotation = *key,
                    bytes = value.len(),
                    "service account annotation longer than {MAX_ANNOTATION_VALUE_BYTES} bytes ignored"
                );
                return None;
            }
            Some(((*key).to_owned(), value.clone()))
        })
        .collect()
}

/// What the pod and SA watches have confirmed, and what has been published.
struct PodDirectory {
    node: String,
    store: PodStore,
    status: KubeStatus,
    /// Pods by UID, without annotations.
    pods: HashMap<PodUid, PodInfo>,
    /// Service accounts with at least one kept annotation (absent = none).
    sas: HashMap<SaKey, BTreeMap<String, String>>,
    pod_buf: Option<HashMap<PodUid, PodInfo>>,
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
    /// Nothing listed yet, nothing published.
    fn new(node: String, store: PodStore, status: KubeStatus) -> Self {
        PodDirectory {
            node,
            store,
            status,
            pods: HashMap::new(),
            sas: HashMap::new(),
            pod_buf: None,
            sa_buf: None,
            pods_listed: false,
            sas_listed: false,
        }
    }

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
                    if let Some(uid) = pod_uid(&pod) {
                        self.forget_pod(&uid);
                    }
                }
            },
            Event::Delete(pod) => {
                if let Some(uid) = pod_uid(&pod) {
                    self.forget_pod(&uid);
                }
            }
        }
    }

    fn handle_sa(&mut self, event: Event<ServiceAccount>) {
        match event {
            Event::Init => self.sa_buf = Some(HashMap::new()),
            Event::InitApply(sa) => {
                if let (Some(buf), Some(key)) = (self.sa_buf.as_mut(), sa_key(&sa)) {
                    let annotations = sa_annotations(&sa);
                    if !annotations.is_empty() {
                        buf.insert(key, annotations);
                    }
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
                    let changed = if annotations.is_empty() {
                        self.sas.remove(&key).is_some()
                    } else if self.sas.get(&key) != Some(&annotations) {
                        self.sas.insert(key.clone(), annotations);
                        true
                    } else {
                        false
                    };
                    if changed {
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

    fn forget_pod(&mut self, uid: &PodUid) {
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
    let mut dir = PodDirectory::new(node, store, status);
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
        // a uid that is not a UUID: no cgroup path can name it either
        let mut v = pod_json("node-a");
        v["metadata"]["uid"] = "not-a-uuid".into();
        assert!(pod_info(&serde_json::from_value(v).unwrap(), "node-a").is_none());
    }

    /// Bytes of annotation keys and values the directory holds: its service
    /// accounts (listed, and being listed) and the pods it published.
    fn retained_bytes(dir: &PodDirectory) -> usize {
        let annotations = |a: &BTreeMap<String, String>| -> usize {
            a.iter().map(|(k, v)| k.len() + v.len()).sum()
        };
        let sas = |m: &HashMap<SaKey, BTreeMap<String, String>>| -> usize {
            m.iter()
                .map(|((ns, name), a)| ns.len() + name.len() + annotations(a))
                .sum()
        };
        let pods: usize = dir
            .store
            .subscribe()
            .borrow()
            .values()
            .map(|p| annotations(&p.service_account_annotations))
            .sum();
        sas(&dir.sas) + dir.sa_buf.as_ref().map_or(0, sas) + pods
    }

    /// A service account with `junk` bytes of annotations besides `extra`.
    fn big_sa(ns: &str, name: &str, junk: usize, extra: serde_json::Value) -> ServiceAccount {
        let mut annotations = extra.as_object().cloned().unwrap_or_default();
        let piece = junk / 4;
        for i in 0..4 {
            annotations.insert(format!("example.com/junk-{i}"), "x".repeat(piece).into());
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name, "annotations": annotations}
        }))
        .unwrap()
    }

    /// Any tenant who can create service accounts feeds every agent's directory
    /// (the SA watch is cluster-wide): only the annotations the agent reads are
    /// kept, with bounded values, whatever else the objects carry.
    #[test]
    fn service_account_annotations_are_filtered_at_ingestion() {
        const ROLE: &str = "arn:aws:iam::123456789012:role/web";
        let mut dir = PodDirectory::new("node-a".into(), PodStore::new(), KubeStatus::default());
        let pod: Pod = serde_json::from_value(pod_json("node-a")).unwrap();
        let uid = pod_uid(&pod).unwrap();
        dir.handle(DirEvent::Pod(Box::new(Event::Init)));
        dir.handle(DirEvent::Pod(Box::new(Event::InitApply(pod))));
        dir.handle(DirEvent::Pod(Box::new(Event::InitDone)));

        const JUNK: usize = 256 * 1024;
        let huge = "y".repeat(JUNK);
        dir.handle(DirEvent::Sa(Box::new(Event::Init)));
        for i in 0..1000 {
            let extra = match i {
                // The pod's service account: IRSA, as documented.
                0 => serde_json::json!({
                    "eks.amazonaws.com/role-arn": ROLE,
                    "eks.amazonaws.com/sts-regional-endpoints": "true",
                }),
                // Known keys with absurd values are not kept either.
                1..=9 => serde_json::json!({
                    "eks.amazonaws.com/role-arn": huge,
                    "eks.amazonaws.com/sts-regional-endpoints": huge,
                }),
                _ => serde_json::json!({}),
            };
            let (ns, name) = if i == 0 {
                ("shop".to_owned(), "web".to_owned())
            } else {
                (format!("tenant-{i}"), format!("sa-{i}"))
            };
            let sa = big_sa(&ns, &name, JUNK, extra);
            dir.handle(DirEvent::Sa(Box::new(Event::InitApply(sa))));
        }
        dir.handle(DirEvent::Sa(Box::new(Event::InitDone)));
        // Updates after the list go through the same filter.
        for i in 1000..1100 {
            let sa = big_sa(&format!("tenant-{i}"), "sa", JUNK, serde_json::json!({}));
            dir.handle(DirEvent::Sa(Box::new(Event::Apply(sa))));
        }

        let retained = retained_bytes(&dir);
        assert!(
            retained < 1 << 20,
            "the directory keeps {retained} bytes of service account annotations \
             (1,100 accounts × 256 KiB fed); expected < 1 MiB"
        );
        let web = dir.store.get(&uid).expect("the pod is published");
        assert_eq!(
            web.service_account_annotations
                .get(crate::model::IRSA_ROLE_ANNOTATION)
                .map(String::as_str),
            Some(ROLE)
        );
        let assoc = crate::sources::associations::AssociationStore::new()
            .resolve(&web)
            .unwrap();
        assert_eq!(assoc.role_arn, ROLE);
        assert_eq!(assoc.mode, crate::model::AssumeMode::WebIdentity);
    }
}
