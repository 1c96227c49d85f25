//! The Kubernetes sources (`pod_identity_agent::sources::kubernetes`) against an in-process
//! stand-in of the Kubernetes API server.
//!
//! There is no API server to install on this machine (no kind, no kubelet, no
//! etcd), so these tests serve the API's HTTP contract from a hyper server on
//! 127.0.0.1, with payloads shaped like real API server answers:
//!
//! * lists: `{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"N"},
//!   "items":[…]}`; items of built-in kinds carry no `kind`/`apiVersion` (as the
//!   API server sends them), custom resources do;
//! * watches (`?watch=true&resourceVersion=N`): newline-delimited
//!   `{"type":"ADDED|MODIFIED|DELETED|ERROR","object":{…}}` over a chunked response,
//!   replaying what happened after `N`, then live events;
//! * an expired resource version: an `ERROR` event carrying a `Status` with code
//!   410 / reason `Expired` ("too old resource version"), or an HTTP 410 answer;
//! * field selectors on pods (`spec.nodeName=…`), applied as the server would;
//! * nodes: `GET` and merge `PATCH` with `resourceVersion` preconditions (409).
//!
//! Object bodies are modelled on `kubectl get -o json` output from an EKS 1.33
//! cluster (pods with the Pod Identity webhook's env and projected token volume).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pod_identity_agent::model::AssumeMode;
use pod_identity_agent::model::Source;
use pod_identity_agent::sources::associations::AssociationStore;
use pod_identity_agent::sources::kubernetes::{
    ClusterAccess, KubeSettings, KubeSources, KubeStatus,
};
use pod_identity_agent::sources::pods::PodStore;
use serde_json::{json, Value};
use tokio::sync::broadcast;

const NODE: &str = "ip-192-168-12-34.eu-west-1.compute.internal";
const OTHER_NODE: &str = "ip-192-168-56-78.eu-west-1.compute.internal";
const TAINT: &str = "pod-identity.aws-agent.io/agent-not-ready";
const ROLE_READER: &str = "arn:aws:iam::111122223333:role/s3-reader";
const ROLE_WRITER: &str = "arn:aws:iam::111122223333:role/s3-writer";
const ROLE_TARGET: &str = "arn:aws:iam::444455556666:role/cross-account";

const UID_WEB: &str = "5f3c2a1e-8b7d-4c6e-9a0f-1b2c3d4e5f60";
const UID_OTHER_NODE: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const UID_HOSTNET: &str = "c7d8e9f0-a1b2-4c3d-8e4f-5a6b7c8d9e0f";
const UID_LATE: &str = "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b";

// === the stand-in ===

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Res {
    Pods,
    ServiceAccounts,
    Pias,
}

impl Res {
    const ALL: [Res; 3] = [Res::Pods, Res::ServiceAccounts, Res::Pias];

    fn path(self) -> &'static str {
        match self {
            Res::Pods => "/api/v1/pods",
            Res::ServiceAccounts => "/api/v1/serviceaccounts",
            Res::Pias => "/apis/pod-identity.aws-agent.io/v1alpha1/podidentityassociations",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Res::Pods => "Pod",
            Res::ServiceAccounts => "ServiceAccount",
            Res::Pias => "PodIdentityAssociation",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Res::Pias => "pod-identity.aws-agent.io/v1alpha1",
            _ => "v1",
        }
    }

    /// Built-in kinds' list items carry no kind/apiVersion; custom resources' do.
    fn builtin(self) -> bool {
        self != Res::Pias
    }
}

#[derive(Clone, Debug)]
enum Live {
    Event { object: Value, line: Bytes },
    Error(Bytes),
    Close,
}

struct Collection {
    objects: BTreeMap<String, Value>,
    /// (resourceVersion, watch line, object) of every change.
    history: Vec<(u64, Bytes, Value)>,
    live: broadcast::Sender<Live>,
}

#[derive(Clone, Debug)]
struct Logged {
    method: Method,
    path: String,
    query: HashMap<String, String>,
}

impl Logged {
    fn is_watch(&self) -> bool {
        self.query.get("watch").map(String::as_str) == Some("true")
    }
}

struct State {
    rv: u64,
    /// Watches from a resource version below this get "410 Expired".
    compacted: u64,
    /// While set, changes are recorded but not sent to open watches (a stalled
    /// watch connection).
    paused: bool,
    collections: HashMap<Res, Collection>,
    requests: Vec<Logged>,
    /// Next watch requests of a resource answered with HTTP 410.
    gone_watches: HashMap<Res, usize>,
    /// Next list requests of a resource answered with HTTP 500.
    failing_lists: HashMap<Res, usize>,
    nodes: BTreeMap<String, Value>,
    node_patches: Vec<Value>,
    conflict_next_patch: bool,
}

#[derive(Clone)]
struct ApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn key_of(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or(""),
        object["metadata"]["name"].as_str().unwrap()
    )
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code
    })
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = serde_json::to_string(&json!({"type": kind, "object": object})).unwrap();
    s.push('\n');
    Bytes::from(s)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `spec.nodeName=X` (the only field selector these tests use), as the server
/// applies it.
fn selected(selector: Option<&String>, object: &Value) -> bool {
    match selector {
        None => true,
        Some(sel) => {
            let (field, want) = sel.split_once('=').expect("field selector a=b");
            assert_eq!(field, "spec.nodeName", "unsupported field selector {sel}");
            object["spec"]["nodeName"].as_str() == Some(want)
        }
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())).boxed_unsync())
        .unwrap()
}

impl ApiServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collections = Res::ALL
            .into_iter()
            .map(|r| {
                (
                    r,
                    Collection {
                        objects: BTreeMap::new(),
                        history: Vec::new(),
                        live: broadcast::channel(1024).0,
                    },
                )
            })
            .collect();
        let server = ApiServer {
            addr,
            state: Arc::new(Mutex::new(State {
                rv: 1000,
                compacted: 0,
                paused: false,
                collections,
                requests: Vec::new(),
                gone_watches: HashMap::new(),
                failing_lists: HashMap::new(),
                nodes: BTreeMap::new(),
                node_patches: Vec::new(),
                conflict_next_patch: false,
            })),
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        server
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    // --- what tests do to the "cluster" ---

    /// Create or update an object (ADDED / MODIFIED).
    fn apply(&self, res: Res, mut object: Value) {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let paused = st.paused;
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        let mut event_object = object.clone();
        event_object["kind"] = res.kind().into();
        event_object["apiVersion"] = res.api_version().into();
        let coll = st.collections.get_mut(&res).unwrap();
        let key = key_of(&object);
        let kind = if coll.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let l = line(kind, &event_object);
        coll.objects.insert(key, object);
        coll.history.push((rv, l.clone(), event_object.clone()));
        if !paused {
            let _ = coll.live.send(Live::Event {
                object: event_object,
                line: l,
            });
        }
    }

    /// Delete an object (DELETED, carrying its last state).
    fn delete(&self, res: Res, namespace: &str, name: &str) {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let paused = st.paused;
        let coll = st.collections.get_mut(&res).unwrap();
        let mut object = coll
            .objects
            .remove(&format!("{namespace}/{name}"))
            .expect("object to delete");
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        object["metadata"]["deletionTimestamp"] = "2025-06-02T10:15:00Z".into();
        object["kind"] = res.kind().into();
        object["apiVersion"] = res.api_version().into();
        let l = line("DELETED", &object);
        coll.history.push((rv, l.clone(), object.clone()));
        if !paused {
            let _ = coll.live.send(Live::Event { object, line: l });
        }
    }

    /// Stop delivering events to open watches (they stay connected).
    fn pause_watches(&self) {
        self.lock().paused = true;
    }

    /// What etcd compaction plus a watch-cache reset look like to a client: every
    /// open watch gets `ERROR` 410 Expired and ends; resuming from an old
    /// resource version gets the same. Only a new list helps.
    fn expire_watches(&self) {
        let mut st = self.lock();
        // Everything before the current revision is gone; a fresh list's
        // resourceVersion (the current one) can be watched from.
        st.compacted = st.rv;
        st.paused = false;
        let message = format!("too old resource version: {} ({})", st.rv, st.compacted);
        for coll in st.collections.values() {
            let event = line("ERROR", &status(410, "Expired", &message));
            let _ = coll.live.send(Live::Error(event));
        }
    }

    /// End every open watch normally (as the server's timeoutSeconds does).
    fn close_watches(&self) {
        let mut st = self.lock();
        st.paused = false;
        for coll in st.collections.values() {
            let _ = coll.live.send(Live::Close);
        }
    }

    fn gone_next_watches(&self, res: Res, n: usize) {
        self.lock().gone_watches.insert(res, n);
    }

    fn fail_next_lists(&self, res: Res, n: usize) {
        self.lock().failing_lists.insert(res, n);
    }

    fn requests(&self, res: Res) -> Vec<Logged> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path == res.path())
            .cloned()
            .collect()
    }

    fn lists(&self, res: Res) -> usize {
        self.requests(res).iter().filter(|r| !r.is_watch()).count()
    }

    // --- HTTP ---

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = parse_query(req.uri().query());
        self.lock().requests.push(Logged {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
        });
        if let Some(node) = path.strip_prefix("/api/v1/nodes/") {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            return self.node(method, node, &body);
        }
        let Some(res) = Res::ALL.into_iter().find(|r| r.path() == path) else {
            return json_response(
                StatusCode::NOT_FOUND,
                &status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        };
        assert_eq!(method, Method::GET, "{path}");
        if query.get("watch").map(String::as_str) == Some("true") {
            self.watch(res, &query)
        } else {
            self.list(res, &query)
        }
    }

    fn list(&self, res: Res, query: &HashMap<String, String>) -> Response<Body> {
        let mut st = self.lock();
        if let Some(n) = st.failing_lists.get_mut(&res).filter(|n| **n > 0) {
            *n -= 1;
            return json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &status(500, "InternalError", "etcdserver: request timed out"),
            );
        }
        let selector = query.get("fieldSelector");
        let items: Vec<Value> = st.collections[&res]
            .objects
            .values()
            .filter(|o| selected(selector, o))
            .map(|o| {
                let mut o = o.clone();
                if !res.builtin() {
                    o["kind"] = res.kind().into();
                    o["apiVersion"] = res.api_version().into();
                }
                o
            })
            .collect();
        let body = json!({
            "kind": format!("{}List", res.kind()),
            "apiVersion": res.api_version(),
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        });
        drop(st);
        json_response(StatusCode::OK, &body)
    }

    fn watch(&self, res: Res, query: &HashMap<String, String>) -> Response<Body> {
        let mut st = self.lock();
        if let Some(n) = st.gone_watches.get_mut(&res).filter(|n| **n > 0) {
            *n -= 1;
            return json_response(
                StatusCode::GONE,
                &status(410, "Gone", "too old resource version"),
            );
        }
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let selector = query.get("fieldSelector").cloned();
        let mut backlog = VecDeque::new();
        let mut ended = false;
        if from < st.compacted {
            backlog.push_back(line(
                "ERROR",
                &status(
                    410,
                    "Expired",
                    &format!("too old resource version: {from} ({})", st.compacted),
                ),
            ));
            ended = true;
        } else if !st.paused {
            for (rv, l, object) in &st.collections[&res].history {
                if *rv > from && selected(selector.as_ref(), object) {
                    backlog.push_back(l.clone());
                }
            }
        }
        // Subscribed under the lock: nothing falls between backlog and live.
        let rx = st.collections[&res].live.subscribe();
        drop(st);
        struct W {
            backlog: VecDeque<Bytes>,
            rx: broadcast::Receiver<Live>,
            selector: Option<String>,
            ended: bool,
        }
        let w = W {
            backlog,
            rx,
            selector,
            ended,
        };
        let stream = futures::stream::unfold(w, |mut w| async move {
            if let Some(l) = w.backlog.pop_front() {
                return Some((l, w));
            }
            if w.ended {
                return None;
            }
            loop {
                match w.rx.recv().await {
                    Ok(Live::Event { object, line }) => {
                        if selected(w.selector.as_ref(), &object) {
                            return Some((line, w));
                        }
                    }
                    Ok(Live::Error(l)) => {
                        w.ended = true;
                        return Some((l, w));
                    }
                    Ok(Live::Close) | Err(_) => return None,
                }
            }
        })
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed_unsync())
            .unwrap()
    }

    fn node(&self, method: Method, name: &str, body: &[u8]) -> Response<Body> {
        let mut st = self.lock();
        let Some(node) = st.nodes.get(name).cloned() else {
            return json_response(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", &format!("nodes \"{name}\" not found")),
            );
        };
        match method {
            Method::GET => json_response(StatusCode::OK, &node),
            Method::PATCH => {
                let patch: Value = serde_json::from_slice(body).unwrap();
                st.node_patches.push(patch.clone());
                let precondition = patch["metadata"]["resourceVersion"].as_str();
                if std::mem::take(&mut st.conflict_next_patch)
                    || precondition
                        .is_some_and(|rv| Some(rv) != node["metadata"]["resourceVersion"].as_str())
                {
                    return json_response(
                        StatusCode::CONFLICT,
                        &status(
                            409,
                            "Conflict",
                            &format!("Operation cannot be fulfilled on nodes \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
                        ),
                    );
                }
                st.rv += 1;
                let rv = st.rv;
                let node = st.nodes.get_mut(name).unwrap();
                node["spec"]["taints"] = patch["spec"]["taints"].clone();
                node["metadata"]["resourceVersion"] = rv.to_string().into();
                json_response(StatusCode::OK, node)
            }
            _ => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &status(405, "MethodNotAllowed", "method not allowed"),
            ),
        }
    }
}

// === fixtures (shapes of real API objects) ===

/// A pod as the API server returns it, after the EKS Pod Identity webhook.
fn pod(namespace: &str, name: &str, uid: &str, node: &str, sa: &str, host_network: bool) -> Value {
    let mut spec = json!({
        "containers": [{
            "name": "app",
            "image": "public.ecr.aws/aws-cli/aws-cli:2.17.0",
            "command": ["sleep", "infinity"],
            "env": [
                {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"},
                {"name": "AWS_DEFAULT_REGION", "value": "eu-west-1"},
                {"name": "AWS_REGION", "value": "eu-west-1"},
                {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"},
                {"name": "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "value": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token"}
            ],
            "resources": {},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
            "volumeMounts": [
                {"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
                {"name": "eks-pod-identity-token", "readOnly": true, "mountPath": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"}
            ]
        }],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": sa,
        "serviceAccount": sa,
        "nodeName": node,
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ],
        "priority": 0,
        "enableServiceLinks": true,
        "preemptionPolicy": "PreemptLowerPriority",
        "volumes": [
            {"name": "eks-pod-identity-token", "projected": {"sources": [{"serviceAccountToken": {"audience": "pods.eks.amazonaws.com", "expirationSeconds": 86400, "path": "eks-pod-identity-token"}}], "defaultMode": 420}},
            {"name": "kube-api-access-x7k2p", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ], "defaultMode": 420}}
        ]
    });
    if host_network {
        spec["hostNetwork"] = true.into();
        spec["dnsPolicy"] = "ClusterFirstWithHostNet".into();
    }
    json!({
        "metadata": {
            "name": name,
            "generateName": format!("{}-", name.rsplit_once('-').map_or(name, |(a, _)| a)),
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": "0",
            "creationTimestamp": "2025-06-02T09:41:07Z",
            "labels": {"app": name, "pod-template-hash": "7c9d8f6b5"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-7c9d8f6b5"),
                "uid": "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7", "controller": true, "blockOwnerDeletion": true
            }],
            "managedFields": [{
                "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                "time": "2025-06-02T09:41:07Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}}}}
            }]
        },
        "spec": spec,
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2025-06-02T09:41:09Z"},
                {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2025-06-02T09:41:07Z"},
                {"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2025-06-02T09:41:10Z"},
                {"type": "ContainersReady", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2025-06-02T09:41:10Z"},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2025-06-02T09:41:07Z"}
            ],
            "hostIP": "192.168.12.34",
            "hostIPs": [{"ip": "192.168.12.34"}],
            "podIP": if host_network { "192.168.12.34" } else { "192.168.15.201" },
            "podIPs": [{"ip": if host_network { "192.168.12.34" } else { "192.168.15.201" }}],
            "startTime": "2025-06-02T09:41:07Z",
            "containerStatuses": [{
                "name": "app", "state": {"running": {"startedAt": "2025-06-02T09:41:09Z"}},
                "lastState": {}, "ready": true, "restartCount": 0,
                "image": "public.ecr.aws/aws-cli/aws-cli:2.17.0",
                "imageID": "public.ecr.aws/aws-cli/aws-cli@sha256:6e2ea1f5b1d0a0d2f8c3b5c4d7e9f1a2b3c4d5e6f708192a3b4c5d6e7f809112",
                "containerID": "containerd://4f9b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
                "started": true
            }],
            "qosClass": "BestEffort"
        }
    })
}

fn service_account(namespace: &str, name: &str, annotations: Value) -> Value {
    json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": format!("9f8e7d6c-5b4a-4392-8170-{:012x}", name.len() * 7919 + namespace.len()),
            "resourceVersion": "0",
            "creationTimestamp": "2025-05-30T14:02:11Z",
            "annotations": annotations
        }
    })
}

fn pia(namespace: &str, name: &str, created: &str, spec: Value) -> Value {
    json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": format!("1d2e3f4a-5b6c-4d7e-8f9a-{:012x}", name.len() * 104729),
            "resourceVersion": "0",
            "generation": 1,
            "creationTimestamp": created
        },
        "spec": spec
    })
}

fn node(name: &str, taints: Value) -> Value {
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": "8c7b6a59-4837-4261-9504-a3b2c1d0e9f8",
            "resourceVersion": "777",
            "creationTimestamp": "2025-06-02T09:30:00Z",
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "topology.kubernetes.io/zone": "eu-west-1a"
            }
        },
        "spec": {
            "providerID": "aws:///eu-west-1a/i-0123456789abcdef0",
            "taints": taints
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "192.168.12.34"},
                {"type": "Hostname", "address": name}
            ]
        }
    })
}

// === harness ===

struct Agent {
    pods: PodStore,
    assocs: AssociationStore,
    status: KubeStatus,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_agent(api: &ApiServer, edit: impl FnOnce(&mut KubeSettings)) -> Agent {
    let mut settings = KubeSettings {
        access: ClusterAccess::Url(api.url()),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..KubeSettings::new(NODE)
    };
    edit(&mut settings);
    let pods = PodStore::new();
    let assocs = AssociationStore::new();
    let sources = KubeSources::connect(settings, pods.clone(), assocs.clone())
        .await
        .expect("client for the stand-in");
    let status = sources.status();
    let task = tokio::spawn(sources.run());
    Agent {
        pods,
        assocs,
        status,
        task,
    }
}

/// Wait (up to 10 s) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn seed(api: &ApiServer) {
    api.apply(
        Res::ServiceAccounts,
        service_account(
            "shop",
            "web",
            json!({
                "eks.amazonaws.com/role-arn": ROLE_READER,
                "eks.amazonaws.com/sts-regional-endpoints": "true",
                "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\",\"kind\":\"ServiceAccount\"}\n"
            }),
        ),
    );
    api.apply(
        Res::ServiceAccounts,
        service_account("kube-system", "default", json!({})),
    );
    api.apply(
        Res::Pods,
        pod("shop", "web-6d5f8", UID_WEB, NODE, "web", false),
    );
    api.apply(
        Res::Pods,
        pod(
            "shop",
            "web-k2j4n",
            UID_OTHER_NODE,
            OTHER_NODE,
            "web",
            false,
        ),
    );
    api.apply(
        Res::Pods,
        pod(
            "kube-system",
            "node-exporter-q8z7x",
            UID_HOSTNET,
            NODE,
            "default",
            true,
        ),
    );
}

// === tests ===

#[tokio::test]
async fn pods_of_this_node_land_in_the_store_and_follow_the_watch() {
    let api = ApiServer::start().await;
    seed(&api);
    let agent = start_agent(&api, |s| s.crd = false).await;
    eventually("pods synced", || agent.pods.is_synced()).await;
    assert!(agent.status.is_ready());

    let web = agent.pods.get(UID_WEB).expect("pod on this node");
    assert_eq!(
        (
            web.namespace.as_str(),
            web.name.as_str(),
            web.service_account.as_str()
        ),
        ("shop", "web-6d5f8", "web")
    );
    assert!(!web.host_network);
    assert_eq!(
        web.service_account_annotations
            .get("eks.amazonaws.com/role-arn")
            .map(String::as_str),
        Some(ROLE_READER)
    );
    assert_eq!(
        web.service_account_annotations
            .get("eks.amazonaws.com/sts-regional-endpoints")
            .map(String::as_str),
        Some("true")
    );
    assert!(
        !web.service_account_annotations
            .contains_key("kubectl.kubernetes.io/last-applied-configuration"),
        "large, unused annotation dropped"
    );
    let hostnet = agent.pods.get(UID_HOSTNET).expect("hostNetwork pod");
    assert!(hostnet.host_network);
    assert!(hostnet.service_account_annotations.is_empty());
    assert!(agent.pods.get(UID_OTHER_NODE).is_none(), "other node's pod");
    assert_eq!(agent.pods.len(), 2);

    // The IRSA annotation resolves (no explicit association exists).
    let assoc = agent.assocs.resolve(&web).unwrap();
    assert_eq!(
        (assoc.mode, assoc.role_arn.as_str()),
        (AssumeMode::WebIdentity, ROLE_READER)
    );

    // Every pod request was a read carrying the node's field selector; SA
    // requests had none.
    let pod_requests = api.requests(Res::Pods);
    assert!(pod_requests.iter().all(|r| r.method == Method::GET));
    assert!(
        pod_requests.iter().any(|r| r.is_watch()),
        "a pod watch was opened"
    );
    for r in &pod_requests {
        assert_eq!(
            r.query.get("fieldSelector").map(String::as_str),
            Some(format!("spec.nodeName={NODE}").as_str()),
            "{r:?}"
        );
    }
    assert!(api
        .requests(Res::ServiceAccounts)
        .iter()
        .all(|r| !r.query.contains_key("fieldSelector")));

    // A new pod: unknown until the watch reports it; lookup's wait covers the lag.
    let lookup = {
        let pods = agent.pods.clone();
        tokio::spawn(async move { pods.lookup(UID_LATE, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    api.apply(
        Res::Pods,
        pod("shop", "web-late1", UID_LATE, NODE, "web", false),
    );
    let late = lookup.await.unwrap().expect("pod reported by the watch");
    assert_eq!(late.name, "web-late1");
    assert_eq!(
        late.service_account_annotations
            .get("eks.amazonaws.com/role-arn")
            .map(String::as_str),
        Some(ROLE_READER)
    );

    // A changed service account annotation reaches its pods.
    api.apply(
        Res::ServiceAccounts,
        service_account(
            "shop",
            "web",
            json!({"eks.amazonaws.com/role-arn": ROLE_WRITER}),
        ),
    );
    eventually("new annotation on both pods", || {
        [UID_WEB, UID_LATE].iter().all(|uid| {
            agent.pods.get(uid).and_then(|p| {
                p.service_account_annotations
                    .get("eks.amazonaws.com/role-arn")
                    .cloned()
            }) == Some(ROLE_WRITER.to_owned())
        })
    })
    .await;

    // A deleted pod disappears.
    api.delete(Res::Pods, "shop", "web-6d5f8");
    eventually("deleted pod gone", || agent.pods.get(UID_WEB).is_none()).await;
    assert!(agent.pods.get(UID_LATE).is_some());
    // One list each: the watch carried everything since.
    assert_eq!(api.lists(Res::Pods), 1);
}

#[tokio::test]
async fn watch_error_event_forces_a_relist() {
    let api = ApiServer::start().await;
    seed(&api);
    let agent = start_agent(&api, |s| s.crd = false).await;
    eventually("pods synced", || agent.pods.is_synced()).await;
    assert_eq!(api.lists(Res::Pods), 1);

    // The watch stalls; meanwhile a pod goes and another comes.
    api.pause_watches();
    api.delete(Res::Pods, "shop", "web-6d5f8");
    api.apply(
        Res::Pods,
        pod("shop", "web-late1", UID_LATE, NODE, "web", false),
    );
    // Not confirmed by the watch: not in the store, however long we wait. Never a guess.
    let err = agent
        .pods
        .lookup(UID_LATE, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(UID_LATE), "{err}");
    assert!(agent.pods.get(UID_WEB).is_some(), "old state until resync");

    // The server expires the watch (ERROR 410 Expired event); the agent re-lists.
    api.expire_watches();
    eventually("re-listed pods", || {
        agent.pods.get(UID_LATE).is_some() && agent.pods.get(UID_WEB).is_none()
    })
    .await;
    assert!(agent.pods.get(UID_HOSTNET).is_some());
    // One re-list, then a watch from its resourceVersion holds: no list loop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.lists(Res::Pods), 2);

    // And the new watch delivers events again.
    api.delete(Res::Pods, "kube-system", "node-exporter-q8z7x");
    eventually("deleted after resync", || {
        agent.pods.get(UID_HOSTNET).is_none()
    })
    .await;
}

#[tokio::test]
async fn http_410_at_watch_start_forces_a_relist() {
    let api = ApiServer::start().await;
    seed(&api);
    let agent = start_agent(&api, |s| s.crd = false).await;
    eventually("pods synced", || agent.pods.is_synced()).await;

    // A change the watch does not deliver, then the watch ends and re-watching
    // from the old resource version is answered "410 Gone".
    api.pause_watches();
    api.apply(
        Res::Pods,
        pod("shop", "web-late1", UID_LATE, NODE, "web", false),
    );
    api.gone_next_watches(Res::Pods, 1);
    api.close_watches();
    eventually("re-listed after HTTP 410", || {
        agent.pods.get(UID_LATE).is_some()
    })
    .await;
    assert!(api.lists(Res::Pods) >= 2);
    let gone_then_list = api
        .requests(Res::Pods)
        .windows(2)
        .any(|w| w[0].is_watch() && !w[1].is_watch());
    assert!(gone_then_list, "a list followed the refused watch");
}

#[tokio::test]
async fn nothing_is_published_until_service_accounts_are_listed() {
    let api = ApiServer::start().await;
    seed(&api);
    api.fail_next_lists(Res::ServiceAccounts, 3);
    let agent = start_agent(&api, |s| s.crd = false).await;
    // Pods are listed at once, but without the SAs an IRSA pod would look
    // annotation-less: hold everything back.
    eventually("pods listed", || api.lists(Res::Pods) >= 1).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    // Read the store first: if it was synced, the SA list had succeeded before.
    let (synced, empty) = (agent.pods.is_synced(), agent.pods.is_empty());
    if api.lists(Res::ServiceAccounts) < 4 {
        assert!(!synced && empty, "published before the SAs were listed");
    }
    eventually("synced after SA list recovered", || agent.pods.is_synced()).await;
    assert!(api.lists(Res::ServiceAccounts) >= 4);
    let web = agent.pods.get(UID_WEB).unwrap();
    assert_eq!(
        web.service_account_annotations
            .get("eks.amazonaws.com/role-arn")
            .map(String::as_str),
        Some(ROLE_READER)
    );
}

#[tokio::test]
async fn crd_associations_land_in_the_store() {
    let api = ApiServer::start().await;
    seed(&api);
    api.apply(
        Res::Pias,
        pia(
            "shop",
            "web",
            "2025-06-01T08:00:00Z",
            json!({"serviceAccount": "web", "roleArn": ROLE_WRITER}),
        ),
    );
    api.apply(
        Res::Pias,
        pia(
            "kube-system",
            "node-exporter",
            "2025-06-01T08:00:00Z",
            json!({
                "serviceAccount": "default",
                "roleArn": ROLE_READER,
                "targetRoleArn": ROLE_TARGET,
                "disableSessionTags": true,
                "sessionDurationSecs": 3600
            }),
        ),
    );
    let agent = start_agent(&api, |_| {}).await;
    eventually("ready", || agent.status.is_ready()).await;
    assert!(agent.status.associations_synced());
    assert_eq!(agent.assocs.source_len(Source::Crd), 2);

    let web = agent.pods.get(UID_WEB).unwrap();
    let a = agent.assocs.resolve(&web).unwrap();
    // The explicit association beats the SA's IRSA annotation.
    assert_eq!(
        (a.source.as_str(), a.mode, a.role_arn.as_str()),
        ("crd", AssumeMode::PodIdentity, ROLE_WRITER)
    );
    let exporter = agent.pods.get(UID_HOSTNET).unwrap();
    let a = agent.assocs.resolve(&exporter).unwrap();
    assert_eq!(a.target_role_arn.as_deref(), Some(ROLE_TARGET));
    assert!(a.disable_session_tags);
    assert_eq!(a.session_duration_secs, Some(3600));

    // A newer resource for the same service account does not take over.
    api.apply(
        Res::Pias,
        pia(
            "shop",
            "web-2",
            "2025-06-02T08:00:00Z",
            json!({"serviceAccount": "web", "roleArn": ROLE_READER}),
        ),
    );
    // An update does.
    api.apply(
        Res::Pias,
        pia(
            "shop",
            "web",
            "2025-06-01T08:00:00Z",
            json!({"serviceAccount": "web", "roleArn": ROLE_TARGET}),
        ),
    );
    eventually("updated role", || {
        agent.assocs.resolve(&web).map(|a| a.role_arn).ok() == Some(ROLE_TARGET.to_owned())
    })
    .await;
    // Deleting the older one hands the service account to the remaining one.
    api.delete(Res::Pias, "shop", "web");
    eventually("remaining resource applies", || {
        agent.assocs.resolve(&web).map(|a| a.role_arn).ok() == Some(ROLE_READER.to_owned())
    })
    .await;
    // Deleting the last one leaves the IRSA annotation (source irsa-annotation).
    api.delete(Res::Pias, "shop", "web-2");
    eventually("back to IRSA", || {
        agent.assocs.resolve(&web).map(|a| a.source).ok() == Some(Source::IrsaAnnotation)
    })
    .await;
    assert_eq!(agent.assocs.source_len(Source::Crd), 1);
    // The CRD watch is cluster-wide.
    assert!(api
        .requests(Res::Pias)
        .iter()
        .all(|r| !r.query.contains_key("fieldSelector")));
}

#[tokio::test]
async fn crd_watch_error_relists() {
    let api = ApiServer::start().await;
    seed(&api);
    let agent = start_agent(&api, |_| {}).await;
    eventually("ready", || agent.status.is_ready()).await;
    assert_eq!(agent.assocs.source_len(Source::Crd), 0);
    api.pause_watches();
    api.apply(
        Res::Pias,
        pia(
            "shop",
            "web",
            "2025-06-01T08:00:00Z",
            json!({"serviceAccount": "web", "roleArn": ROLE_WRITER}),
        ),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(agent.assocs.source_len(Source::Crd), 0, "not delivered yet");
    api.expire_watches();
    eventually("association after re-list", || {
        agent.assocs.source_len(Source::Crd) == 1
    })
    .await;
    assert!(api.lists(Res::Pias) >= 2);
}

#[tokio::test]
async fn startup_taint_is_removed_once_synced() {
    let api = ApiServer::start().await;
    seed(&api);
    api.lock().nodes.insert(
        NODE.to_owned(),
        node(
            NODE,
            json!([
                {"key": TAINT, "effect": "NoSchedule"},
                {"key": "dedicated", "value": "batch", "effect": "NoSchedule"}
            ]),
        ),
    );
    // The first patch loses a race with another writer (409): the agent retries
    // with the fresh resourceVersion.
    api.lock().conflict_next_patch = true;
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let mut settings = KubeSettings {
        access: ClusterAccess::Url(api.url()),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        startup_taint: Some(TAINT.to_owned()),
        crd: false,
        ..KubeSettings::new(NODE)
    };
    settings.node_name = NODE.to_owned();
    let sources = KubeSources::connect(settings, PodStore::new(), AssociationStore::new())
        .await
        .unwrap()
        .with_ready_gate(gate_rx);
    let status = sources.status();
    let task = tokio::spawn(sources.run());

    eventually("sources ready", || status.is_ready()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        api.lock().node_patches.is_empty(),
        "gate closed: taint stays"
    );
    gate_tx.send(true).unwrap();
    eventually("taint removed", || status.taint_removed()).await;

    let st = api.lock();
    let taints = st.nodes[NODE]["spec"]["taints"].as_array().unwrap().clone();
    assert_eq!(taints.len(), 1);
    assert_eq!(taints[0]["key"], "dedicated");
    assert_eq!(taints[0]["value"], "batch");
    assert_eq!(st.node_patches.len(), 2, "conflict, then success");
    for p in &st.node_patches {
        assert_eq!(p["metadata"]["resourceVersion"], "777", "{p}");
    }
    drop(st);
    task.abort();
}

#[tokio::test]
async fn a_taint_that_cannot_be_removed_does_not_stop_the_sources() {
    let api = ApiServer::start().await;
    seed(&api);
    // No such node in the API (a wrong --node-name would look like this): 404.
    let agent = start_agent(&api, |s| {
        s.crd = false;
        s.startup_taint = Some(TAINT.to_owned());
    })
    .await;
    eventually("pods synced", || agent.pods.is_synced()).await;
    eventually("node looked up", || {
        api.lock()
            .requests
            .iter()
            .any(|r| r.path == format!("/api/v1/nodes/{NODE}"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!agent.status.taint_removed());
    // Still watching.
    api.apply(
        Res::Pods,
        pod("shop", "web-late1", UID_LATE, NODE, "web", false),
    );
    eventually("pod after the taint failure", || {
        agent.pods.get(UID_LATE).is_some()
    })
    .await;
}
