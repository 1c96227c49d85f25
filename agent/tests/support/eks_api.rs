//! A **stand-in** for the EKS API: an in-process hyper server on 127.0.0.1, for
//! `eks_standin.rs`.
//!
//! There is no EKS endpoint to reach from here (no network beyond 127.0.0.1), so
//! this answers the two operations the agent uses, as the EKS service model
//! (restJson1) defines them:
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
//! The real aws-sdk-eks client signs every call (SigV4, static test credentials
//! `AKIDSTANDIN`); the stand-in checks that the signature names the `eks` service.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

/// The one cluster the stand-in knows.
pub const CLUSTER: &str = "prod";
/// The account of its ARNs.
pub const ACCOUNT: &str = "111122223333";
/// Associations per page, to force pagination.
const PAGE: usize = 2;

#[derive(Clone, Debug)]
struct Stored {
    summary: Value,
    detail: Value,
}

/// What tests change and inspect through [`EksApi::lock`].
#[derive(Default)]
pub struct State {
    /// By association id (sorted, as pages must be stable).
    associations: BTreeMap<String, Stored>,
    /// Every request: (path, query).
    pub requests: Vec<(String, String)>,
    /// Answer every call with 500 ServerException.
    pub failing: bool,
    /// Describe of these ids fails with 500.
    pub failing_describes: Vec<String>,
}

/// The EKS API stand-in, on a loopback port.
#[derive(Clone)]
pub struct EksApi {
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

/// The value of `key` in a query string.
pub fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

impl EksApi {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = EksApi {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
        };
        let a = api.clone();
        super::serve(listener, move |req| {
            let a = a.clone();
            async move { a.handle(req) }
        });
        api
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Create or update (same id) an association.
    pub fn put(&self, id: &str, namespace: &str, sa: &str, role: &str, extra: Value) {
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

    pub fn remove(&self, id: &str) {
        self.lock().associations.remove(id);
    }

    /// Describe requests so far.
    pub fn describes(&self) -> usize {
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
