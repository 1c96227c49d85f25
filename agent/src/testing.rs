//! What the tests share: fake upstreams (STS behind [`Fetch`]), pod, association
//! and caller builders, a [`Resolver`] over a stand-in cgroupfs, [`eventually`],
//! unsigned pod tokens and the files the kubelet and the file sources read.
//!
//! Compiled for the unit tests (`cfg(test)`) and, with the `testing` feature, for
//! the integration tests (`agent/tests/` get the feature through the crate's
//! dev-dependency on itself). Not part of a plain `cargo build`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::attribution::{cgroup::CgroupIndex, Caller, Resolver};
use crate::credentials::{
    Credentials, Fetch, FetchRequest, Secret, StsError, Target, UpstreamError,
};
use crate::model::{Association, PodInfo, PodUid};
use crate::sources::{associations::AssociationStore, pods::PodStore};

/// The pod UID the builders use (a real UUID shape).
pub const POD_UID: &str = "2c48913c-b29f-11e7-9350-020968147796";

/// The account of the fakes' credentials.
pub const FAKE_ACCOUNT: &str = "111122223333";

// === pods and associations ===

/// `uid` as a [`PodUid`]; panics if it is not one (test data).
pub fn pod_uid(uid: &str) -> PodUid {
    PodUid::parse(uid).unwrap_or_else(|e| panic!("test pod UID: {e}"))
}

/// Pod `namespace/name` running as `service_account`, with UID [`POD_UID`];
/// change the rest with struct update syntax (`PodInfo { uid, ..pod(…) }`).
pub fn pod(namespace: &str, name: &str, service_account: &str) -> PodInfo {
    PodInfo {
        uid: pod_uid(POD_UID),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        service_account: service_account.to_owned(),
        service_account_annotations: Default::default(),
        host_network: false,
    }
}

/// `pod` whose service account carries the IRSA role annotation.
pub fn with_irsa_role(mut pod: PodInfo, role_arn: &str) -> PodInfo {
    pod.service_account_annotations.insert(
        crate::model::IRSA_ROLE_ANNOTATION.to_owned(),
        role_arn.to_owned(),
    );
    pod
}

/// Pod Identity association of `namespace/service_account` with `role_arn`, source
/// `file` (the default); change the rest with struct update syntax.
pub fn association(namespace: &str, service_account: &str, role_arn: &str) -> Association {
    Association {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        role_arn: role_arn.to_owned(),
        ..Association::default()
    }
}

/// The pod's cgroup directory below a cgroupfs `root` (the kubelet's systemd
/// driver, BestEffort QoS): a temp tree with it stands in for cgroupfs.
pub fn pod_cgroup_dir(root: &Path, uid: &str) -> PathBuf {
    root.join(format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
        uid.replace('-', "_")
    ))
}

/// A caller in cgroup `cgroup_id` (pid 1, `python3`, root) that connected to the
/// credentials address, as the kernel reports it.
pub fn caller(cgroup_id: u64) -> Caller {
    Caller {
        cgroup_id,
        pid: 1,
        tid: 1,
        uid: 0,
        gid: 0,
        comm: "python3".into(),
        netns_cookie: 1,
        socket_cookie: 1,
        original_destination: "169.254.170.23:80".parse().unwrap(),
        connect_ktime_ns: 0,
    }
}

/// A [`Resolver`] over `cgroup_root`, a temp directory tree standing in for
/// cgroupfs (cgroup ids are directory inodes either way; make pod cgroups with
/// [`pod_cgroup_dir`]), with stores of its own: no pods, `file_assocs` as the
/// `file` source.
pub fn resolver(
    cgroup_root: &Path,
    unknown_pod_wait: Duration,
    file_assocs: Vec<Association>,
) -> Resolver {
    let assocs = AssociationStore::new();
    assocs
        .replace_source(crate::model::Source::File, file_assocs)
        .expect("valid test associations");
    Resolver {
        index: Arc::new(CgroupIndex::new(cgroup_root.to_owned(), Duration::ZERO)),
        pods: PodStore::new(),
        assocs,
        unknown_pod_wait,
        cgroup_prefix: String::new(),
    }
}

// === fake upstreams ===

/// `arn:aws:sts::<account>:assumed-role/<role>/<session>` for a role ARN.
pub fn assumed_role_arn(role_arn: &str, session: &str) -> String {
    format!(
        "{}/{session}",
        role_arn
            .replace(":iam::", ":sts::")
            .replace(":role/", ":assumed-role/")
    )
}

/// What [`FakeSts`] issues: key `ASIAFAKE`, secret `secret`, token `token`, 6 h
/// left, account [`FAKE_ACCOUNT`], the effective role assumed with the pod's name
/// as the session name.
pub fn fake_credentials(pod: &PodInfo, assoc: &Association) -> Credentials {
    Credentials {
        access_key_id: "ASIAFAKE".into(),
        secret_access_key: Secret::new("secret"),
        session_token: Secret::new("token"),
        expiration: SystemTime::now() + Duration::from_secs(6 * 3600),
        account_id: Some(FAKE_ACCOUNT.into()),
        assumed_role_arn: assumed_role_arn(assoc.effective_role_arn(), &pod.name),
    }
}

/// An STS that always answers, with [`fake_credentials`].
#[derive(Clone, Copy, Debug, Default)]
pub struct FakeSts;

/// [`fake_credentials`] for a request: with EKS Auth, the role is named after the
/// token's service account (`arn:aws:iam::<FAKE_ACCOUNT>:role/<sa>`).
pub fn fake_credentials_for(req: &FetchRequest) -> Credentials {
    match &req.target {
        Target::Association(assoc) => fake_credentials(&req.pod, assoc),
        Target::PodIdentity(token) => fake_credentials(
            &req.pod,
            &association(
                &token.namespace,
                &token.service_account,
                &format!("arn:aws:iam::{FAKE_ACCOUNT}:role/{}", token.service_account),
            ),
        ),
    }
}

impl Fetch for FakeSts {
    async fn fetch(&self, req: &FetchRequest) -> Result<Credentials, UpstreamError> {
        Ok(fake_credentials_for(req))
    }
}

/// [`FakeSts`] that counts its calls; clones share the count.
#[derive(Clone, Debug, Default)]
pub struct CountingSts(Arc<AtomicUsize>);

impl CountingSts {
    /// Calls so far.
    pub fn calls(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Fetch for CountingSts {
    async fn fetch(&self, req: &FetchRequest) -> Result<Credentials, UpstreamError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(fake_credentials_for(req))
    }
}

/// An STS that always fails with the error `make` builds; counts its calls,
/// clones share the count.
#[derive(Clone, Debug)]
pub struct FailingSts {
    make: fn() -> StsError,
    calls: Arc<AtomicUsize>,
}

impl FailingSts {
    pub fn new(make: fn() -> StsError) -> Self {
        Self {
            make,
            calls: Arc::default(),
        }
    }

    /// Calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Fetch for FailingSts {
    async fn fetch(&self, _: &FetchRequest) -> Result<Credentials, UpstreamError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err((self.make)().into())
    }
}

/// An error STS answered: `code` with HTTP `status`, message `msg`, request id
/// `req-1`.
pub fn sts_error(code: &str, status: u16) -> StsError {
    StsError::Service {
        code: code.into(),
        message: "msg".into(),
        request_id: Some("req-1".into()),
        status,
    }
}

/// STS throttling the agent (`Throttling`, sent with a 400; retryable).
pub fn throttled() -> StsError {
    StsError::Service {
        code: "Throttling".into(),
        message: "Rate exceeded".into(),
        request_id: Some("r-1".into()),
        status: 400,
    }
}

/// The role's trust policy does not let the agent in (`AccessDenied`, 403; final).
pub fn access_denied() -> StsError {
    StsError::Service {
        code: "AccessDenied".into(),
        message: "not authorized to perform sts:AssumeRole".into(),
        request_id: Some("r-2".into()),
        status: 403,
    }
}

// === waiting ===

/// Polls `cond` every 10 ms until it holds (`true`) or `timeout` has passed
/// (`false`). Assert the result, or what the condition was about afterwards.
#[must_use = "eventually does not fail by itself: assert its result or the condition"]
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// === files ===

/// An unsigned JWT with these claims (header `RS256`, a placeholder signature).
pub fn unsigned_jwt(claims: &serde_json::Value) -> String {
    let enc = |v: &serde_json::Value| {
        aws_smithy_types::base64::encode(v.to_string())
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    };
    let header = serde_json::json!({"alg": "RS256", "kid": "test"});
    format!("{}.{}.c2lnbmF0dXJl", enc(&header), enc(claims))
}

/// An unsigned token with pod claims, shaped like the kubelet's projected
/// service account tokens (the signature is a placeholder).
pub fn fake_pod_token(
    namespace: &str,
    sa: &str,
    pod_name: &str,
    pod_uid: &str,
    exp: u64,
) -> String {
    pod_identity_token(
        "pods.eks.amazonaws.com",
        namespace,
        sa,
        pod_name,
        pod_uid,
        exp,
    )
}

/// As [`fake_pod_token`], for audience `aud`.
pub fn pod_identity_token(
    aud: &str,
    namespace: &str,
    sa: &str,
    pod_name: &str,
    pod_uid: &str,
    exp: u64,
) -> String {
    unsigned_jwt(&serde_json::json!({
        "aud": [aud],
        "exp": exp,
        "iat": exp.saturating_sub(86400),
        "iss": "https://kubernetes.default.svc",
        "kubernetes.io": {
            "namespace": namespace,
            "pod": {"name": pod_name, "uid": pod_uid},
            "serviceaccount": {"name": sa, "uid": "00000000-0000-0000-0000-000000000000"}
        },
        "nbf": exp.saturating_sub(86400),
        "sub": format!("system:serviceaccount:{namespace}:{sa}")
    }))
}

/// A projected service account token where the kubelet puts it:
/// `<kubelet_pods>/<uid>/volumes/kubernetes.io~projected/<volume>/token`.
pub fn write_projected_token(kubelet_pods: &Path, uid: &PodUid, volume: &str, token: &str) {
    let dir = kubelet_pods
        .join(uid.as_str())
        .join("volumes/kubernetes.io~projected")
        .join(volume);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), token).unwrap();
}

/// Write `v` to `path` (pretty JSON) through a rename, so a watching source never
/// sees half a file.
pub fn write_json(path: &Path, v: &serde_json::Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The JSON lines of a file (the audit log); none while it does not exist.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // A writer may be mid-line: only complete (newline-terminated) lines count.
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    complete
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: line not JSON ({e}): {l}", path.display()))
        })
        .collect()
}

/// Serve HTTP/1 on `listener` (bound by a stand-in, which needs its address
/// first), every request answered by `handle`, until the runtime ends.
pub fn serve<H, F, B>(listener: tokio::net::TcpListener, handle: H)
where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = hyper::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let answer = handle(req);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fakes_answer_as_documented() {
        let p = pod("ns", "web", "app");
        let a = association("ns", "app", "arn:aws:iam::111122223333:role/app");
        let r = FetchRequest::association(p.clone(), a.clone());
        let c = FakeSts.fetch(&r).await.unwrap();
        assert_eq!(
            c.assumed_role_arn,
            "arn:aws:sts::111122223333:assumed-role/app/web"
        );
        assert_eq!(c.account_id.as_deref(), Some(FAKE_ACCOUNT));

        let counting = CountingSts::default();
        counting.clone().fetch(&r).await.unwrap();
        counting.fetch(&r).await.unwrap();
        assert_eq!(counting.calls(), 2);

        let failing = FailingSts::new(access_denied);
        let e = failing.fetch(&r).await.unwrap_err();
        assert!(
            matches!(&e, UpstreamError::Sts(StsError::Service { code, status: 403, .. }) if code == "AccessDenied"),
            "{e}"
        );
        assert!(!e.is_retryable(), "{e}");
        assert!(FailingSts::new(throttled)
            .fetch(&r)
            .await
            .unwrap_err()
            .is_retryable());
        assert_eq!(failing.calls(), 1);
    }

    #[tokio::test]
    async fn eventually_reports_whether_the_condition_held() {
        let mut n = 0;
        assert!(
            eventually(Duration::from_secs(5), || {
                n += 1;
                n == 3
            })
            .await
        );
        assert!(!eventually(Duration::from_millis(30), || false).await);
    }
}
