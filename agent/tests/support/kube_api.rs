//! A **stand-in** for the Kubernetes API server: an in-process hyper server on
//! 127.0.0.1 that serves the API's HTTP contract, for `kube_standin.rs`.
//!
//! There is no API server to install on this machine (no kind, no kubelet, no
//! etcd), so the tests of `pod_identity_agent::sources::kubernetes` run against
//! this, with payloads shaped like real API server answers:
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
//! * Events (`events.k8s.io/v1`): `POST` (201, with uid, resourceVersion and
//!   creationTimestamp added; 409 AlreadyExists for a taken name) and merge `PATCH`
//!   (`application/merge-patch+json` only, else 415), validated as the API server
//!   does for that group version (`pkg/apis/core/validation/events.go`:
//!   `eventTime`, `reportingController` as a qualified name, `reportingInstance`,
//!   `action` and `reason` required and at most 128 characters, `note` at most
//!   1024, `type` Normal or Warning, the deprecated core/v1 fields unset,
//!   `series.count` at least 2 with `lastObservedTime`, immutable fields on update;
//!   the URL's namespace must be the object's), answering 422 `Invalid` with the
//!   causes. Accepted Events are recorded ([`State::events`]); `forbid_events`
//!   answers 403 as RBAC without the events rule would.
//!
//! Object bodies ([`pod`], [`service_account`], [`pia`], [`node`]) are modelled
//! on `kubectl get -o json` output from an EKS 1.33 cluster (pods with the Pod
//! Identity webhook's env and projected token volume).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// The collections the stand-in serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Res {
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

/// A request the stand-in received.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
}

impl Logged {
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").map(String::as_str) == Some("true")
    }
}

/// The "cluster": what tests change and inspect through [`ApiServer::lock`].
pub struct State {
    rv: u64,
    /// Watches from a resource version below this get "410 Expired".
    compacted: u64,
    /// While set, changes are recorded but not sent to open watches (a stalled
    /// watch connection).
    paused: bool,
    collections: HashMap<Res, Collection>,
    pub requests: Vec<Logged>,
    /// Next watch requests of a resource answered with HTTP 410.
    gone_watches: HashMap<Res, usize>,
    /// Next list requests of a resource answered with HTTP 500.
    failing_lists: HashMap<Res, usize>,
    pub nodes: BTreeMap<String, Value>,
    pub node_patches: Vec<Value>,
    /// Answer the next node PATCH with 409 Conflict.
    pub conflict_next_patch: bool,
    /// Accepted Events by "namespace/name", as stored.
    pub events: BTreeMap<String, Value>,
    /// Every Event request body (POSTs and PATCHes), accepted or not.
    pub event_requests: Vec<(Method, String, Value)>,
    /// Answer Event requests with 403 Forbidden (no RBAC rule for events).
    pub forbid_events: bool,
}

/// The Kubernetes API server stand-in, on a loopback port.
#[derive(Clone)]
pub struct ApiServer {
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
    pub async fn start() -> Self {
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
                events: BTreeMap::new(),
                event_requests: Vec::new(),
                forbid_events: false,
            })),
        };
        let s = server.clone();
        super::serve(listener, move |req| {
            let s = s.clone();
            async move { s.handle(req).await }
        });
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    // --- what tests do to the "cluster" ---

    /// Create or update an object (ADDED / MODIFIED).
    pub fn apply(&self, res: Res, mut object: Value) {
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
    pub fn delete(&self, res: Res, namespace: &str, name: &str) {
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
    pub fn pause_watches(&self) {
        self.lock().paused = true;
    }

    /// What etcd compaction plus a watch-cache reset look like to a client: every
    /// open watch gets `ERROR` 410 Expired and ends; resuming from an old
    /// resource version gets the same. Only a new list helps.
    pub fn expire_watches(&self) {
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
    pub fn close_watches(&self) {
        let mut st = self.lock();
        st.paused = false;
        for coll in st.collections.values() {
            let _ = coll.live.send(Live::Close);
        }
    }

    /// Answer the next `n` watch requests of `res` with HTTP 410 Gone.
    pub fn gone_next_watches(&self, res: Res, n: usize) {
        self.lock().gone_watches.insert(res, n);
    }

    /// Answer the next `n` list requests of `res` with HTTP 500.
    pub fn fail_next_lists(&self, res: Res, n: usize) {
        self.lock().failing_lists.insert(res, n);
    }

    /// Requests of `res` so far (lists and watches).
    pub fn requests(&self, res: Res) -> Vec<Logged> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path == res.path())
            .cloned()
            .collect()
    }

    /// List requests of `res` so far.
    pub fn lists(&self, res: Res) -> usize {
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
        if let Some(rest) = path.strip_prefix("/apis/events.k8s.io/v1/namespaces/") {
            let content_type = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            return self.event(method, rest, &content_type, &body);
        }
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

// === events.k8s.io/v1 ===

impl ApiServer {
    /// Accepted Events about the pod `namespace/name`.
    pub fn events_for(&self, namespace: &str, name: &str) -> Vec<Value> {
        self.lock()
            .events
            .values()
            .filter(|e| e["regarding"]["namespace"] == namespace && e["regarding"]["name"] == name)
            .cloned()
            .collect()
    }

    /// `rest`: `<namespace>/events` (POST) or `<namespace>/events/<name>` (PATCH).
    fn event(&self, method: Method, rest: &str, content_type: &str, body: &[u8]) -> Response<Body> {
        let parts: Vec<&str> = rest.split('/').collect();
        let (namespace, name) = match parts.as_slice() {
            [ns, "events"] => (*ns, None),
            [ns, "events", name] => (*ns, Some(*name)),
            _ => {
                return json_response(
                    StatusCode::NOT_FOUND,
                    &status(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    ),
                )
            }
        };
        let Ok(object) = serde_json::from_slice::<Value>(body) else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &status(
                    400,
                    "BadRequest",
                    "the body of the request was in an unknown format",
                ),
            );
        };
        let mut st = self.lock();
        st.event_requests
            .push((method.clone(), rest.to_owned(), object.clone()));
        if st.forbid_events {
            let verb = if method == Method::POST {
                "create"
            } else {
                "patch"
            };
            return json_response(
                StatusCode::FORBIDDEN,
                &status(
                    403,
                    "Forbidden",
                    &format!("events.events.k8s.io is forbidden: User \"system:serviceaccount:kube-system:pod-identity-agent\" cannot {verb} resource \"events\" in API group \"events.k8s.io\" in the namespace \"{namespace}\""),
                ),
            );
        }
        match (method, name) {
            (Method::POST, None) => {
                let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
                if let Some(ns) = object["metadata"]["namespace"].as_str() {
                    if ns != namespace {
                        return json_response(
                            StatusCode::BAD_REQUEST,
                            &status(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request"),
                        );
                    }
                }
                let causes = validate_event(&object);
                if !causes.is_empty() {
                    return invalid_event(&name, causes);
                }
                let key = format!("{namespace}/{name}");
                if st.events.contains_key(&key) {
                    return json_response(
                        StatusCode::CONFLICT,
                        &status(
                            409,
                            "AlreadyExists",
                            &format!("events.events.k8s.io \"{name}\" already exists"),
                        ),
                    );
                }
                st.rv += 1;
                let mut stored = object;
                stored["metadata"]["namespace"] = namespace.into();
                stored["metadata"]["uid"] =
                    format!("7e3f0c1a-2b4d-4c6e-8f0a-{:012x}", st.rv).into();
                stored["metadata"]["resourceVersion"] = st.rv.to_string().into();
                stored["metadata"]["creationTimestamp"] = "2025-06-02T10:20:00Z".into();
                st.events.insert(key, stored.clone());
                json_response(StatusCode::CREATED, &stored)
            }
            (Method::PATCH, Some(name)) => {
                if content_type != "application/merge-patch+json" {
                    return json_response(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        &status(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"),
                    );
                }
                let key = format!("{namespace}/{name}");
                let Some(old) = st.events.get(&key).cloned() else {
                    return json_response(
                        StatusCode::NOT_FOUND,
                        &status(
                            404,
                            "NotFound",
                            &format!("events.events.k8s.io \"{name}\" not found"),
                        ),
                    );
                };
                let mut new = old.clone();
                merge_patch(&mut new, &object);
                let mut causes = validate_event(&new);
                for field in [
                    "regarding",
                    "related",
                    "reason",
                    "note",
                    "type",
                    "eventTime",
                    "action",
                    "reportingController",
                    "reportingInstance",
                ] {
                    if new[field] != old[field] {
                        causes.push((
                            "FieldValueInvalid",
                            "field is immutable".into(),
                            field.into(),
                        ));
                    }
                }
                if !causes.is_empty() {
                    return invalid_event(name, causes);
                }
                st.rv += 1;
                new["metadata"]["resourceVersion"] = st.rv.to_string().into();
                st.events.insert(key, new.clone());
                json_response(StatusCode::OK, &new)
            }
            _ => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &status(405, "MethodNotAllowed", "method not allowed"),
            ),
        }
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// `validation.IsQualifiedName`: an optional DNS-subdomain prefix and `/`, then a
/// name of at most 63 alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn is_qualified_name(s: &str) -> bool {
    let name = s.rsplit_once('/').map_or(s, |(_, n)| n);
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || "-_.".contains(c))
}

/// `IsDNS1123Subdomain`.
fn is_dns_subdomain(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.starts_with(ok)
        && s.ends_with(ok)
        && s.chars().all(|c| ok(c) || c == '-' || c == '.')
}

/// An RFC 3339 time as the API's MicroTime decodes it.
fn is_time(v: &Value) -> bool {
    v.as_str().is_some_and(|t| {
        t.len() >= 20 && t.as_bytes()[10] == b'T' && (t.ends_with('Z') || t.contains('+'))
    })
}

/// `ValidateEventCreate` for events.k8s.io/v1: (reason, message, field) causes.
fn validate_event(e: &Value) -> Vec<(&'static str, String, String)> {
    let mut causes = Vec::new();
    let mut required = |field: &str| {
        causes.push((
            "FieldValueRequired",
            "Required value".to_owned(),
            field.to_owned(),
        ))
    };
    let str_of = |f: &str| e[f].as_str().unwrap_or("");
    let name = e["metadata"]["name"].as_str().unwrap_or("");
    if name.is_empty() {
        required("metadata.name");
    }
    if e["eventTime"].is_null() {
        required("eventTime");
    }
    if str_of("reportingController").is_empty() {
        required("reportingController");
    }
    if str_of("reportingInstance").is_empty() {
        required("reportingInstance");
    }
    if str_of("action").is_empty() {
        required("action");
    }
    if str_of("reason").is_empty() {
        required("reason");
    }
    let mut invalid = |field: &str, message: String| {
        causes.push(("FieldValueInvalid", message, field.to_owned()))
    };
    if !name.is_empty() && !is_dns_subdomain(name) {
        invalid("metadata.name", "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
    }
    if !e["eventTime"].is_null() && !is_time(&e["eventTime"]) {
        invalid("eventTime", "not a time".into());
    }
    let controller = str_of("reportingController");
    if !controller.is_empty() && !is_qualified_name(controller) {
        invalid(
            "reportingController",
            "name part must consist of alphanumeric characters, '-', '_' or '.'".into(),
        );
    }
    for (field, limit) in [
        ("reportingInstance", 128),
        ("action", 128),
        ("reason", 128),
        ("note", 1024),
    ] {
        if str_of(field).len() > limit {
            invalid(field, format!("can have at most {limit} characters"));
        }
    }
    if !matches!(str_of("type"), "Normal" | "Warning") {
        invalid("type", format!("has invalid value: {}", str_of("type")));
    }
    for field in [
        "deprecatedFirstTimestamp",
        "deprecatedLastTimestamp",
        "deprecatedCount",
        "deprecatedSource",
    ] {
        if !e[field].is_null() {
            invalid(field, "needs to be unset".into());
        }
    }
    let regarding = &e["regarding"];
    if regarding["namespace"].as_str().unwrap_or("").is_empty()
        && !matches!(
            e["metadata"]["namespace"].as_str(),
            Some("default" | "kube-system")
        )
    {
        invalid(
            "involvedObject.namespace",
            "does not match event.namespace".into(),
        );
    }
    if !e["series"].is_null() {
        if e["series"]["count"].as_i64().unwrap_or(0) < 2 {
            invalid("series.count", "should be at least 2".into());
        }
        if !is_time(&e["series"]["lastObservedTime"]) {
            causes.push((
                "FieldValueRequired",
                "Required value".into(),
                "series.lastObservedTime".into(),
            ));
        }
    }
    causes
}

fn invalid_event(name: &str, causes: Vec<(&'static str, String, String)>) -> Response<Body> {
    let summary: Vec<String> = causes.iter().map(|(_, m, f)| format!("{f}: {m}")).collect();
    let mut body = status(
        422,
        "Invalid",
        &format!(
            "Event.events.k8s.io \"{name}\" is invalid: [{}]",
            summary.join(", ")
        ),
    );
    body["details"] = json!({
        "name": name,
        "group": "events.k8s.io",
        "kind": "Event",
        "causes": causes.iter().map(|(r, m, f)| json!({"reason": r, "message": m, "field": f})).collect::<Vec<_>>(),
    });
    json_response(StatusCode::UNPROCESSABLE_ENTITY, &body)
}

// === fixtures (shapes of real API objects) ===

/// A pod as the API server returns it, after the EKS Pod Identity webhook.
pub fn pod(
    namespace: &str,
    name: &str,
    uid: &str,
    node: &str,
    sa: &str,
    host_network: bool,
) -> Value {
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

/// A ServiceAccount with these annotations.
pub fn service_account(namespace: &str, name: &str, annotations: Value) -> Value {
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

/// A PodIdentityAssociation custom resource, created at `created` (RFC 3339).
pub fn pia(namespace: &str, name: &str, created: &str, spec: Value) -> Value {
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

/// A Node with these taints, at resourceVersion 777.
pub fn node(name: &str, taints: Value) -> Value {
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
