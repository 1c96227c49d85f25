//! The EKS association source (`pod_identity_agent::sources::eks`) against an in-process
//! stand-in of the EKS API.
//!
//! There is no EKS endpoint to reach from here (no network beyond 127.0.0.1), so a
//! hyper server on loopback answers the two operations the agent uses, as the EKS
//! service model (restJson1) defines them:
//!
//! * `ListPodIdentityAssociations`: `GET /clusters/{clusterName}/pod-identity-associations?maxResults=&nextToken=`
//!   → `{"associations":[{clusterName, namespace, serviceAccount, associationArn,
//!   associationId, ownerArn?}], "nextToken"?}`; the stand-in pages by 2 to force
//!   pagination.
//! * `DescribePodIdentityAssociation`: `GET /clusters/{clusterName}/pod-identity-associations/{associationId}`
//!   → `{"association":{clusterName, namespace, serviceAccount, roleArn,
//!   associationArn, associationId, tags, createdAt, modifiedAt (epoch seconds),
//!   disableSessionTags, targetRoleArn?, externalId?, policy?}}`.
//! * Errors: the status code, `x-amzn-errortype: <Code>` and `{"message": …}`
//!   (`ResourceNotFoundException` 404, `ServerException` 500).
//!
//! The real aws-sdk-eks client signs every call (SigV4, static test credentials);
//! the stand-in checks that the signature names the `eks` service.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pod_identity_agent::model::Source;
use pod_identity_agent::model::{AssumeMode, PodInfo};
use pod_identity_agent::sources::associations::AssociationStore;
use pod_identity_agent::sources::eks::{eks_client, EksError, EksSettings, EksSource};
use serde_json::{json, Value};

const CLUSTER: &str = "prod";
const ACCOUNT: &str = "111122223333";
const PAGE: usize = 2;

#[derive(Clone, Debug)]
struct Stored {
    summary: Value,
    detail: Value,
}

#[derive(Default)]
struct State {
    /// By association id (sorted, as pages must be stable).
    associations: BTreeMap<String, Stored>,
    /// Every request: (path, query).
    requests: Vec<(String, String)>,
    /// Answer every call with 500 ServerException.
    failing: bool,
    /// Describe of these ids fails with 500.
    failing_describes: Vec<String>,
}

#[derive(Clone)]
struct EksApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-amzn-errortype", code)
        .header("x-amzn-requestid", "6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&json!({ "message": message })).unwrap(),
        )))
        .unwrap()
}

fn ok(body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("x-amzn-requestid", "0a9b8c7d-6e5f-4a3b-8c1d-2e3f4a5b6c7d")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap()
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

impl EksApi {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = EksApi {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
        };
        let a = api.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let a = a.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let a = a.clone();
                        async move { Ok::<_, Infallible>(a.handle(req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        api
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Create or update (same id) an association.
    fn put(&self, id: &str, namespace: &str, sa: &str, role: &str, extra: Value) {
        let arn = format!("arn:aws:eks:eu-west-1:{ACCOUNT}:podidentityassociation/{CLUSTER}/{id}");
        let summary = json!({
            "clusterName": CLUSTER,
            "namespace": namespace,
            "serviceAccount": sa,
            "associationArn": arn,
            "associationId": id,
        });
        let mut detail = json!({
            "clusterName": CLUSTER,
            "namespace": namespace,
            "serviceAccount": sa,
            "roleArn": role,
            "associationArn": arn,
            "associationId": id,
            "tags": {},
            "createdAt": 1.717320067E9,
            "modifiedAt": 1.717320067E9,
            "disableSessionTags": false,
        });
        for (k, v) in extra.as_object().unwrap() {
            detail[k] = v.clone();
        }
        self.lock()
            .associations
            .insert(id.to_owned(), Stored { summary, detail });
    }

    fn remove(&self, id: &str) {
        self.lock().associations.remove(id);
    }

    fn describes(&self) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|(p, _)| p.matches('/').count() == 4)
            .count()
    }

    fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut st = self.lock();
        st.requests.push((path.clone(), query.clone()));
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDSTANDIN/")
                && auth.contains("/eu-west-1/eks/aws4_request"),
            "unsigned or wrongly signed request: {auth:?}"
        );
        if st.failing {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServerException",
                "These errors are usually caused by a server-side issue.",
            );
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["clusters", cluster, "pod-identity-associations"] => {
                if *cluster != CLUSTER {
                    return error(
                        StatusCode::NOT_FOUND,
                        "ResourceNotFoundException",
                        &format!("No cluster found for name: {cluster}."),
                    );
                }
                let max: usize = query_param(&query, "maxResults")
                    .map(|m| m.parse().unwrap())
                    .unwrap_or(100);
                assert!((1..=100).contains(&max), "maxResults {max}");
                let start: usize = query_param(&query, "nextToken")
                    .map(|t| t.trim_start_matches("page-").parse().unwrap())
                    .unwrap_or(0);
                let all: Vec<&Stored> = st.associations.values().collect();
                let end = (start + PAGE.min(max)).min(all.len());
                let mut body = json!({
                    "associations": all[start..end].iter().map(|s| s.summary.clone()).collect::<Vec<_>>(),
                });
                if end < all.len() {
                    body["nextToken"] = format!("page-{end}").into();
                }
                ok(&body)
            }
            ["clusters", cluster, "pod-identity-associations", id] => {
                if *cluster != CLUSTER {
                    return error(
                        StatusCode::NOT_FOUND,
                        "ResourceNotFoundException",
                        &format!("No cluster found for name: {cluster}."),
                    );
                }
                if st.failing_describes.iter().any(|f| f == id) {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "ServerException",
                        "These errors are usually caused by a server-side issue.",
                    );
                }
                match st.associations.get(*id) {
                    Some(s) => ok(&json!({ "association": s.detail })),
                    None => error(
                        StatusCode::NOT_FOUND,
                        "ResourceNotFoundException",
                        &format!("Pod identity association {id} not found."),
                    ),
                }
            }
            _ => error(StatusCode::NOT_FOUND, "UnknownOperationException", &path),
        }
    }
}

fn role(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{name}")
}

fn id(n: u32) -> String {
    format!("a-{n:017}")
}

/// The agent's SDK config: static credentials, no retries (a failing poll fails
/// at once), and the stand-in as the endpoint through the settings.
fn source(
    api: &EksApi,
    store: &AssociationStore,
    edit: impl FnOnce(&mut EksSettings),
) -> EksSource {
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new(
                "AKIDSTANDIN",
                "standin-secret",
                None,
                None,
                "test",
            ),
        ))
        .retry_config(RetryConfig::disabled())
        .build();
    let mut settings = EksSettings {
        endpoint_url: Some(api.url()),
        ..EksSettings::new(CLUSTER)
    };
    edit(&mut settings);
    EksSource::new(eks_client(&sdk, &settings), settings, store.clone()).unwrap()
}

/// Wait (up to 10 s) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pod(namespace: &str, sa: &str) -> PodInfo {
    PodInfo {
        uid: "5f3c2a1e-8b7d-4c6e-9a0f-1b2c3d4e5f60".to_owned(),
        namespace: namespace.to_owned(),
        name: "p".to_owned(),
        service_account: sa.to_owned(),
        ..PodInfo::default()
    }
}

fn seed(api: &EksApi) {
    api.put(&id(1), "shop", "web", &role("web"), json!({}));
    api.put(
        &id(2),
        "shop",
        "worker",
        &role("worker"),
        json!({"disableSessionTags": true}),
    );
    api.put(
        &id(3),
        "batch",
        "etl",
        &role("etl-hop"),
        json!({
            "targetRoleArn": "arn:aws:iam::444455556666:role/etl-target",
            "externalId": "3b5f1c2e-6d7a-4b8c-9e0f-1a2b3c4d5e6f"
        }),
    );
    api.put(
        &id(4),
        "batch",
        "report",
        &role("report"),
        json!({"ownerArn": "arn:aws:eks:eu-west-1:111122223333:addon/prod/report/1a2b"}),
    );
    api.put(
        &id(5),
        "monitoring",
        "agent",
        &role("monitoring"),
        json!({}),
    );
}

#[tokio::test]
async fn all_pages_listed_each_described_and_applied() {
    let api = EksApi::start().await;
    seed(&api);
    // An association with an inline session policy: carried, and applied on AssumeRole.
    api.put(
        &id(6),
        "shop",
        "restricted",
        &role("restricted"),
        json!({"disableSessionTags": true, "policy": "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Deny\",\"Action\":\"s3:*\",\"Resource\":\"*\"}]}"}),
    );
    let store = AssociationStore::new();
    let mut src = source(&api, &store, |_| {});
    let status = src.status();
    assert!(!status.is_synced());

    let report = src.poll_once().await.unwrap();
    assert_eq!(
        (
            report.listed,
            report.described,
            report.applied,
            report.skipped
        ),
        (6, 6, 6, 0)
    );
    assert!(status.is_synced());
    assert_eq!(store.source_len(Source::Eks), 6);

    let web = store.resolve(&pod("shop", "web")).unwrap();
    assert_eq!(
        (web.source.as_str(), web.mode, web.role_arn.as_str()),
        ("eks", AssumeMode::PodIdentity, role("web").as_str())
    );
    assert_eq!(web.association_id.as_deref(), Some(id(1).as_str()));
    assert!(!web.disable_session_tags);
    assert!(
        store
            .resolve(&pod("shop", "worker"))
            .unwrap()
            .disable_session_tags
    );
    let etl = store.resolve(&pod("batch", "etl")).unwrap();
    assert_eq!(
        etl.target_role_arn.as_deref(),
        Some("arn:aws:iam::444455556666:role/etl-target")
    );
    assert_eq!(
        etl.effective_role_arn(),
        "arn:aws:iam::444455556666:role/etl-target"
    );
    // Carried with its session policy (never served without it).
    let restricted = store.resolve(&pod("shop", "restricted")).unwrap();
    assert!(restricted.policy.as_deref().unwrap().contains("\"Deny\""));
    assert!(restricted.disable_session_tags);

    // Pagination: 3 pages of 2, following nextToken, asking for full pages.
    let st = api.lock();
    let lists: Vec<&(String, String)> = st
        .requests
        .iter()
        .filter(|(p, _)| p == "/clusters/prod/pod-identity-associations")
        .collect();
    assert_eq!(lists.len(), 3, "{lists:?}");
    assert_eq!(query_param(&lists[0].1, "nextToken"), None);
    assert_eq!(query_param(&lists[1].1, "nextToken"), Some("page-2"));
    assert_eq!(query_param(&lists[2].1, "nextToken"), Some("page-4"));
    assert!(lists
        .iter()
        .all(|(_, q)| query_param(q, "maxResults") == Some("100")));
}

#[tokio::test]
async fn known_associations_are_not_described_every_poll() {
    let api = EksApi::start().await;
    seed(&api);
    let store = AssociationStore::new();
    let mut src = source(&api, &store, |_| {});
    src.poll_once().await.unwrap();
    assert_eq!(api.describes(), 5);

    // A new one is described; the known ones wait for describe_refresh.
    api.put(&id(7), "shop", "cart", &role("cart"), json!({}));
    api.remove(&id(5));
    let report = src.poll_once().await.unwrap();
    assert_eq!((report.listed, report.described, report.applied), (5, 1, 5));
    assert_eq!(api.describes(), 6);
    assert!(store.resolve(&pod("shop", "cart")).is_ok());
    assert!(
        store.resolve(&pod("monitoring", "agent")).is_err(),
        "deleted association"
    );
}

#[tokio::test]
async fn updated_associations_are_picked_up_on_refresh() {
    let api = EksApi::start().await;
    seed(&api);
    let store = AssociationStore::new();
    let mut src = source(&api, &store, |s| s.describe_refresh = Duration::ZERO);
    src.poll_once().await.unwrap();
    // UpdatePodIdentityAssociation keeps the id and changes the role.
    api.put(&id(1), "shop", "web", &role("web-v2"), json!({}));
    let report = src.poll_once().await.unwrap();
    assert_eq!(report.described, 5);
    assert_eq!(
        store.resolve(&pod("shop", "web")).unwrap().role_arn,
        role("web-v2")
    );
}

#[tokio::test]
async fn a_failing_poll_keeps_the_previous_set() {
    let api = EksApi::start().await;
    seed(&api);
    let store = AssociationStore::new();
    let mut src = source(&api, &store, |_| {});
    src.poll_once().await.unwrap();
    assert_eq!(store.source_len(Source::Eks), 5);

    api.lock().failing = true;
    api.remove(&id(1));
    let err = src.poll_once().await.unwrap_err();
    assert!(matches!(err, EksError::List { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("ListPodIdentityAssociations") && text.contains("ServerException"),
        "{text}"
    );
    assert_eq!(store.source_len(Source::Eks), 5, "previous set kept");
    assert!(store.resolve(&pod("shop", "web")).is_ok());

    // Recovered: the deletion now shows.
    api.lock().failing = false;
    src.poll_once().await.unwrap();
    assert_eq!(store.source_len(Source::Eks), 4);
    assert!(store.resolve(&pod("shop", "web")).is_err());
}

#[tokio::test]
async fn a_failing_describe_keeps_known_and_withholds_new() {
    let api = EksApi::start().await;
    seed(&api);
    let store = AssociationStore::new();
    let mut src = source(&api, &store, |s| s.describe_refresh = Duration::ZERO);
    src.poll_once().await.unwrap();

    api.put(&id(8), "shop", "new", &role("new"), json!({}));
    api.lock().failing_describes = vec![id(1), id(8)];
    let report = src.poll_once().await.unwrap();
    assert_eq!((report.listed, report.applied, report.skipped), (6, 5, 1));
    assert_eq!(
        store.resolve(&pod("shop", "web")).unwrap().role_arn,
        role("web"),
        "kept"
    );
    assert!(
        store.resolve(&pod("shop", "new")).is_err(),
        "never described: not served"
    );

    api.lock().failing_describes.clear();
    src.poll_once().await.unwrap();
    assert_eq!(
        store.resolve(&pod("shop", "new")).unwrap().role_arn,
        role("new")
    );
}

#[tokio::test]
async fn unknown_cluster_is_an_error_and_nothing_is_applied() {
    let api = EksApi::start().await;
    seed(&api);
    let store = AssociationStore::new();
    let mut src = source(&api, &store, |s| s.cluster_name = "staging".to_owned());
    let err = src.poll_once().await.unwrap_err();
    assert!(
        err.to_string().contains("ResourceNotFoundException"),
        "{err}"
    );
    assert!(err.to_string().contains("staging"), "{err}");
    assert!(!src.status().is_synced());
    assert_eq!(store.source_len(Source::Eks), 0);
}

#[tokio::test]
async fn run_polls_on_its_interval() {
    let api = EksApi::start().await;
    seed(&api);
    let store = AssociationStore::new();
    let src = source(&api, &store, |s| {
        s.poll_interval = Duration::from_millis(50);
        s.retry_interval = Duration::from_millis(20);
    });
    let status = src.status();
    let task = tokio::spawn(src.run());
    eventually("first poll", || {
        status.is_synced() && store.source_len(Source::Eks) == 5
    })
    .await;
    api.put(&id(9), "shop", "late", &role("late"), json!({}));
    eventually("next poll", || store.resolve(&pod("shop", "late")).is_ok()).await;
    api.lock().failing = true;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.source_len(Source::Eks), 6, "outage keeps the set");
    task.abort();
}

#[tokio::test]
async fn empty_cluster_name_is_refused() {
    let api = EksApi::start().await;
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .build();
    let settings = EksSettings {
        endpoint_url: Some(api.url()),
        ..EksSettings::new(" ")
    };
    let err = EksSource::new(
        eks_client(&sdk, &settings),
        settings,
        AssociationStore::new(),
    )
    .unwrap_err();
    assert!(matches!(err, EksError::NoClusterName));
}
