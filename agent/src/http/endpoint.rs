//! What the agent answers on the credentials endpoint, in the format every SDK
//! expects:
//!
//! * STS upstream: kernel caller → cgroup → pod (pod directory) → association →
//!   cached STS credentials.
//! * EKS Auth upstream: kernel caller → cgroup → pod UID; the pod's token must name
//!   that pod ([`check_pod_token`]); → cached EKS Auth credentials for the pod. No
//!   pod directory and no associations: namespace and service account come from the
//!   token, and EKS Auth, which verifies its signature, must answer for them.

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};

use crate::{
    attribution::{Caller, Resolver},
    audit::{Access, AccessSink},
    config::Config,
    credentials::{eks_auth::check_pod_token, CredentialCache, Fetch, FetchRequest},
    http::{
        listener::{Handler, RequestContext, Unattributed},
        ratelimit,
        refusal::RefusalObserver,
        response::{json, text},
        token, Refusal,
    },
    model::PodInfo,
};

/// Path of the credentials endpoint.
pub const CREDENTIALS_PATH: &str = "/v1/credentials";
/// Diagnostic endpoint: what the kernel says about the caller (its own data only).
pub const WHOAMI_PATH: &str = "/v1/whoami";

/// Settings of the endpoint itself.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    pub cred_addr4: String,
    pub cred_addr6: String,
    /// Refuse a token whose pod claims differ from the kernel's attribution.
    pub token_cross_check: bool,
    /// Request limits per caller cgroup.
    pub limits: ratelimit::Limits,
    /// Credentials from EKS Auth with the pod's own token (no local associations).
    pub eks_auth: bool,
}

impl From<&Config> for ServiceSettings {
    fn from(cfg: &Config) -> Self {
        ServiceSettings {
            cred_addr4: cfg.kernel.cred_addr4.to_string(),
            cred_addr6: cfg.kernel.cred_addr6.to_string(),
            token_cross_check: cfg.token_cross_check,
            limits: cfg.limits,
            eks_auth: cfg.upstream.is_eks_auth(),
        }
    }
}

/// The credentials endpoint.
pub struct Service<F: Fetch> {
    settings: ServiceSettings,
    resolver: Resolver,
    cache: CredentialCache<F>,
    sink: Arc<dyn AccessSink>,
    limiter: ratelimit::RateLimiter,
    observer: Option<Arc<dyn RefusalObserver>>,
}

impl<F: Fetch> Service<F> {
    pub fn new(
        settings: ServiceSettings,
        resolver: Resolver,
        cache: CredentialCache<F>,
        sink: Arc<dyn AccessSink>,
    ) -> Self {
        let limiter = ratelimit::RateLimiter::new(settings.limits);
        Service {
            settings,
            resolver,
            cache,
            sink,
            limiter,
            observer: None,
        }
    }

    /// Tell `observer` about every refusal (Kubernetes Events for refused pods).
    pub fn with_refusal_observer(mut self, observer: Arc<dyn RefusalObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    fn check_host<B>(&self, req: &Request<B>) -> Result<(), Refusal> {
        let hosts = req.headers().get_all(hyper::header::HOST);
        if hosts.iter().count() > 1 {
            // RFC 9112 §3.2: a request with more than one Host is refused; which
            // one a proxy on the way used is anyone's guess.
            return Err(Refusal::InvalidHost {
                addr4: self.settings.cred_addr4.clone(),
                addr6: self.settings.cred_addr6.clone(),
                host: hosts
                    .iter()
                    .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                    .collect::<Vec<_>>()
                    .join(" and "),
            });
        }
        let host = crate::http::response::host_of(req).unwrap_or_default();
        if host == self.settings.cred_addr4 || host == self.settings.cred_addr6 {
            return Ok(());
        }
        Err(Refusal::InvalidHost {
            addr4: self.settings.cred_addr4.clone(),
            addr6: self.settings.cred_addr6.clone(),
            host,
        })
    }

    async fn credentials<B>(
        &self,
        caller: &Caller,
        req: &Request<B>,
        access: &mut Access,
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        let request = if self.settings.eks_auth {
            self.pod_identity_request(caller, req, access).await?
        } else {
            self.association_request(caller, req, access).await?
        };
        let (creds, outcome) = self.cache.get(&request).await?;
        access.cache = Some(outcome);
        access.access_key_id = Some(creds.access_key_id.clone());
        access.assumed_role_arn = Some(creds.assumed_role_arn.clone());
        Ok(json(StatusCode::OK, creds.to_sdk_json()))
    }

    /// EKS Auth: the kernel's pod UID and the pod's token, which must name it.
    async fn pod_identity_request<B>(
        &self,
        caller: &Caller,
        req: &Request<B>,
        access: &mut Access,
    ) -> Result<FetchRequest, Refusal> {
        let (path, pod_cgroup) = self.resolver.pod_cgroup_of(caller.cgroup_id).await?;
        access.cgroup_path = Some(path);
        access.container_id = pod_cgroup.container_id.clone();
        let tok = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let checked =
            check_pod_token(tok, &pod_cgroup.pod_uid, SystemTime::now()).map_err(Refusal::Token)?;
        // What a pod directory would add (hostNetwork), when there is one.
        let known = self.resolver.pods.get(&pod_cgroup.pod_uid);
        let pod = PodInfo {
            uid: pod_cgroup.pod_uid,
            namespace: checked.namespace.clone(),
            name: checked.pod_name.clone(),
            service_account: checked.service_account.clone(),
            service_account_annotations: Default::default(),
            host_network: known.is_some_and(|p| p.host_network),
        };
        access.pod = Some(pod.clone());
        Ok(FetchRequest::pod_identity(pod, checked))
    }

    /// STS: the pod from the pod directory and its association.
    async fn association_request<B>(
        &self,
        caller: &Caller,
        req: &Request<B>,
        access: &mut Access,
    ) -> Result<FetchRequest, Refusal> {
        let resolved = self.resolver.pod_of(caller.cgroup_id).await?;
        access.cgroup_path = Some(resolved.cgroup_path.clone());
        access.container_id = resolved.pod_cgroup.container_id.clone();
        access.pod = Some(resolved.pod.clone());
        if self.settings.token_cross_check {
            let tok = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            token::cross_check(tok, &resolved.pod.uid, SystemTime::now())
                .map_err(Refusal::Token)?;
        }
        let assoc = self.resolver.association(&resolved.pod)?;
        access.association = Some(assoc.clone());
        Ok(FetchRequest::association(resolved.pod, assoc))
    }

    /// Handle one request from an attributed (or not) connection.
    pub async fn respond<B>(
        &self,
        ctx: &RequestContext,
        req: &Request<B>,
    ) -> (Response<Full<Bytes>>, Access) {
        let start = Instant::now();
        let mut access = Access {
            path: req.uri().path().to_owned(),
            method: req.method().to_string(),
            peer: Some(ctx.peer),
            ..Access::default()
        };
        let result = async {
            let caller = match &ctx.caller {
                Ok(c) => c,
                Err(Unattributed::NoRecord) => return Err(Refusal::Unattributed),
                Err(Unattributed::LookupFailed(e)) => {
                    tracing::error!(peer = %ctx.peer, error = %e, "attribution lookup failed");
                    return Err(Refusal::LookupFailed);
                }
            };
            access.caller = Some(caller.clone());
            if !self.limiter.allow(caller.cgroup_id) {
                return Err(Refusal::Throttled);
            }
            self.check_host(req)?;
            match req.uri().path() {
                // The stock agent answers any method on the credentials path.
                CREDENTIALS_PATH => self.credentials(caller, req, &mut access).await,
                WHOAMI_PATH => Ok(json(
                    StatusCode::OK,
                    serde_json::to_string(caller).unwrap_or_default(),
                )),
                _ => Ok(text(StatusCode::NOT_FOUND, "404 page not found")),
            }
        }
        .await;
        let resp = match result {
            Ok(r) => r,
            Err(refusal) => {
                if let Some(observer) = &self.observer {
                    observer.refused(access.pod.as_ref(), &refusal);
                }
                access.reason = Some(refusal.code().to_owned());
                access.message = Some(refusal.to_string());
                text(refusal.status(), &refusal.to_string())
            }
        };
        access.status = resp.status().as_u16();
        access.latency = start.elapsed();
        (resp, access)
    }
}

impl<F: Fetch> Handler for Service<F> {
    async fn handle(&self, ctx: RequestContext, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (resp, access) = self.respond(&ctx, &req).await;
        self.sink.record(&access);
        resp
    }

    fn unattributed(&self, peer: std::net::SocketAddr, _local: std::net::SocketAddr) {
        self.sink.record(&Access {
            peer: Some(peer),
            status: Refusal::Unattributed.status().as_u16(),
            reason: Some(Refusal::Unattributed.code().to_owned()),
            message: Some(Refusal::Unattributed.to_string()),
            ..Access::default()
        });
    }

    fn connection(&self, caller: &Caller, event: crate::audit::ConnectionEvent) {
        self.sink.connection(caller.socket_cookie, event);
    }
}

#[cfg(test)]
mod tests {
    //! The endpoint without root: a temp directory tree stands in for cgroupfs
    //! (cgroup ids are directory inodes either way) and a fake STS.
    use super::*;
    use crate::{
        audit::TracingSink,
        credentials::{CacheSettings, StsError},
        sources::pods::PodStore,
        testing::{self, FailingSts, FakeSts, POD_UID},
    };
    use std::os::unix::fs::MetadataExt;
    use std::time::Duration;

    const CID: &str = "4b3c0a1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b";

    struct Fixture<F: Fetch = FakeSts> {
        _dir: tempfile::TempDir,
        pod_cgroup: u64,
        host_cgroup: u64,
        svc: Service<F>,
        pods: PodStore,
    }

    fn fixture(cross_check: bool) -> Fixture {
        fixture_with(cross_check, FakeSts)
    }

    fn fixture_with<F: Fetch>(cross_check: bool, fetcher: F) -> Fixture<F> {
        fixture_mode(cross_check, false, fetcher)
    }

    fn fixture_mode<F: Fetch>(cross_check: bool, eks_auth: bool, fetcher: F) -> Fixture<F> {
        let dir = tempfile::tempdir().unwrap();
        let pod_dir = testing::pod_cgroup_dir(dir.path(), POD_UID)
            .join(format!("cri-containerd-{CID}.scope"));
        let host_dir = dir.path().join("system.slice/sshd.service");
        std::fs::create_dir_all(&pod_dir).unwrap();
        std::fs::create_dir_all(&host_dir).unwrap();
        let app = testing::association("ns", "app", "arn:aws:iam::111122223333:role/app");
        let resolver = testing::resolver(dir.path(), Duration::from_millis(50), vec![app]);
        let pods = resolver.pods.clone();
        let settings = ServiceSettings {
            cred_addr4: "169.254.170.23".into(),
            cred_addr6: "fd00:ec2::23".into(),
            token_cross_check: cross_check,
            limits: ratelimit::Limits::default(),
            eks_auth,
        };
        let svc = Service::new(
            settings,
            resolver,
            CredentialCache::new(fetcher, CacheSettings::default()),
            Arc::new(TracingSink),
        );
        Fixture {
            pod_cgroup: std::fs::metadata(&pod_dir).unwrap().ino(),
            host_cgroup: std::fs::metadata(&host_dir).unwrap().ino(),
            _dir: dir,
            svc,
            pods,
        }
    }

    /// Pod `ns/web` ([`POD_UID`], in the fixture's pod cgroup) running as `sa`.
    fn pod(sa: &str) -> crate::model::PodInfo {
        testing::pod("ns", "web", sa)
    }

    fn ctx(cgroup_id: Option<u64>) -> RequestContext {
        RequestContext {
            peer: "169.254.200.2:40000".parse().unwrap(),
            local: "169.254.199.1:2710".parse().unwrap(),
            caller: cgroup_id.map(testing::caller).ok_or(Unattributed::NoRecord),
        }
    }

    fn req(host: &str, token: Option<&str>) -> Request<()> {
        let mut b = Request::builder()
            .uri(CREDENTIALS_PATH)
            .header("host", host);
        if let Some(t) = token {
            b = b.header("authorization", t);
        }
        b.body(()).unwrap()
    }

    async fn call<F: Fetch>(
        f: &Fixture<F>,
        cgroup: Option<u64>,
        host: &str,
        token: Option<&str>,
    ) -> (u16, String, Access) {
        use http_body_util::BodyExt;
        let (resp, access) = f.svc.respond(&ctx(cgroup), &req(host, token)).await;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap(), access)
    }

    #[tokio::test]
    async fn serves_the_pods_role_in_the_sdk_format() {
        let f = fixture(false);
        f.pods.upsert(pod("app"));
        let (status, body, access) = call(&f, Some(f.pod_cgroup), "169.254.170.23", None).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with(r#"{"AccessKeyId":"ASIAFAKE","SecretAccessKey":"secret","Token":"token","AccountId":"111122223333","Expiration":""#), "{body}");
        assert_eq!(access.access_key_id.as_deref(), Some("ASIAFAKE"));
        assert_eq!(access.container_id.as_deref(), Some(CID));
        // Bracketed IPv6 host with port is accepted too.
        assert_eq!(
            call(&f, Some(f.pod_cgroup), "[fd00:ec2::23]:80", None)
                .await
                .0,
            200
        );
    }

    #[tokio::test]
    async fn refusals_have_their_statuses_and_messages() {
        let f = fixture(false);
        let (s, b, a) = call(&f, None, "169.254.170.23", None).await;
        assert_eq!((s, a.reason.as_deref()), (403, Some("Unattributed")), "{b}");
        let (s, b, _) = call(&f, Some(f.pod_cgroup), "example.com", None).await;
        assert_eq!(s, 403);
        assert!(b.starts_with("Access Denied. Called agent through invalid address, please use either [169.254.170.23 fd00:ec2::23] address not example.com"), "{b}");
        // Two Host headers, the first one right: refused all the same.
        let mut two = req("169.254.170.23", None);
        two.headers_mut()
            .append("host", "evil.example".parse().unwrap());
        let (resp, access) = f.svc.respond(&ctx(Some(f.pod_cgroup)), &two).await;
        assert_eq!(resp.status(), 403);
        assert_eq!(access.reason.as_deref(), Some("InvalidHost"));
        assert!(
            access
                .message
                .as_deref()
                .unwrap_or_default()
                .ends_with("not 169.254.170.23 and evil.example"),
            "{access:?}"
        );
        let (s, b, _) = call(&f, Some(f.host_cgroup), "169.254.170.23", None).await;
        assert_eq!(s, 403, "{b}");
        assert!(b.contains("not in a Kubernetes pod"), "{b}");
        // Pod not (yet) known: retryable.
        let (s, _, a) = call(&f, Some(f.pod_cgroup), "169.254.170.23", None).await;
        assert_eq!((s, a.reason.as_deref()), (503, Some("UnknownPod")));
        // Known pod, service account without association.
        f.pods.upsert(pod("other"));
        let (s, b, _) = call(&f, Some(f.pod_cgroup), "169.254.170.23", None).await;
        assert_eq!(s, 404);
        assert_eq!(
            b,
            "No Pod Identity association for service account ns/other (pod ns/web)\n"
        );
        // A cgroup id that exists nowhere.
        let (s, _, a) = call(&f, Some(u64::MAX), "169.254.170.23", None).await;
        assert_eq!((s, a.reason.as_deref()), (503, Some("CgroupNotFound")));
    }

    #[tokio::test]
    async fn eks_auth_mode_serves_the_tokens_pod_without_a_pod_directory() {
        let counting = testing::CountingSts::default();
        let f = fixture_mode(false, true, counting.clone());
        let exp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let mine = testing::fake_pod_token("ns", "app", "web", POD_UID, exp);
        // The pod directory is empty: the kernel's pod UID and the token suffice.
        let (s, b, a) = call(&f, Some(f.pod_cgroup), "169.254.170.23", Some(&mine)).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(
            a.assumed_role_arn.as_deref(),
            Some("arn:aws:sts::111122223333:assumed-role/app/web")
        );
        let pod = a.pod.expect("audited pod");
        assert_eq!(
            (
                pod.uid.as_str(),
                pod.namespace.as_str(),
                pod.service_account.as_str()
            ),
            (POD_UID, "ns", "app")
        );
        assert_eq!(a.container_id.as_deref(), Some(CID));
        assert_eq!(counting.calls(), 1);

        // Another pod's token, copied into this pod: 403 before any upstream call,
        // even though credentials for this pod are cached.
        let theirs = testing::fake_pod_token(
            "ns",
            "app",
            "db",
            "8a1f0e2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
            exp,
        );
        let (s, b, a) = call(&f, Some(f.pod_cgroup), "169.254.170.23", Some(&theirs)).await;
        assert_eq!(
            (s, a.reason.as_deref()),
            (403, Some("TokenPodMismatch")),
            "{b}"
        );
        assert!(b.starts_with("Service account token belongs to pod 8a1f0e2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b, but the connection comes from pod 2c48913c"), "{b}");
        // No token, a token for another audience (IRSA's): the stock agent's 400s.
        let (s, b, _) = call(&f, Some(f.pod_cgroup), "169.254.170.23", None).await;
        assert_eq!(
            (s, b.as_str()),
            (400, "Service account token cannot be empty\n")
        );
        let irsa =
            testing::pod_identity_token("sts.amazonaws.com", "ns", "app", "web", POD_UID, exp);
        let (s, b, _) = call(&f, Some(f.pod_cgroup), "169.254.170.23", Some(&irsa)).await;
        assert_eq!(s, 400, "{b}");
        assert!(b.contains("audience"), "{b}");
        // A host process: refused whatever token it holds.
        let (s, b, _) = call(&f, Some(f.host_cgroup), "169.254.170.23", Some(&mine)).await;
        assert_eq!(s, 403, "{b}");
        assert_eq!(counting.calls(), 1, "refusals never reach the upstream");
        // The same pod again: a hit.
        let (s, _, a) = call(&f, Some(f.pod_cgroup), "169.254.170.23", Some(&mine)).await;
        assert_eq!(
            (s, a.cache),
            (200, Some(crate::credentials::CacheOutcome::Hit))
        );
    }

    #[tokio::test]
    async fn cross_check_refuses_another_pods_token() {
        let f = fixture(true);
        f.pods.upsert(pod("app"));
        let exp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let mine = testing::fake_pod_token("ns", "app", "web", POD_UID, exp);
        let theirs = testing::fake_pod_token(
            "ns",
            "app",
            "db",
            "8a1f0e2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
            exp,
        );
        assert_eq!(
            call(&f, Some(f.pod_cgroup), "169.254.170.23", Some(&mine))
                .await
                .0,
            200
        );
        let (s, b, _) = call(&f, Some(f.pod_cgroup), "169.254.170.23", Some(&theirs)).await;
        assert_eq!(s, 403, "{b}");
        let (s, b, _) = call(&f, Some(f.pod_cgroup), "169.254.170.23", None).await;
        assert_eq!(
            (s, b.as_str()),
            (400, "Service account token cannot be empty\n")
        );
    }

    /// Records what the endpoint tells its refusal observer.
    #[derive(Default)]
    struct Observed(std::sync::Mutex<Vec<(Option<String>, String, String)>>);

    impl RefusalObserver for Observed {
        fn refused(&self, pod: Option<&crate::model::PodInfo>, refusal: &Refusal) {
            let note = crate::sources::kubernetes::EventReason::of(refusal)
                .map(|r| crate::sources::kubernetes::event_note(r, refusal))
                .unwrap_or_default();
            self.0.lock().unwrap().push((
                pod.map(|p| format!("{}/{}", p.namespace, p.name)),
                refusal.code().to_owned(),
                note,
            ));
        }
    }

    #[tokio::test]
    async fn refusals_reach_the_observer_with_the_pod_and_no_token() {
        let observed = Arc::new(Observed::default());
        let mut f = fixture_with(true, FailingSts::new(testing::access_denied));
        f.svc = f.svc.with_refusal_observer(observed.clone());
        let exp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let mine = testing::fake_pod_token("ns", "app", "web", POD_UID, exp);
        let theirs = testing::fake_pod_token(
            "ns",
            "app",
            "db",
            "8a1f0e2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
            exp,
        );
        // No association for service account "nobody".
        f.pods.upsert(pod("nobody"));
        let (s, _, _) = call(&f, Some(f.pod_cgroup), "169.254.170.23", Some(&mine)).await;
        assert_eq!(s, 404);
        // Association, but STS says AccessDenied.
        f.pods.upsert(pod("app"));
        let (s, _, _) = call(&f, Some(f.pod_cgroup), "169.254.170.23", Some(&mine)).await;
        assert_eq!(s, 400);
        // Another pod's token.
        let (s, _, _) = call(&f, Some(f.pod_cgroup), "169.254.170.23", Some(&theirs)).await;
        assert_eq!(s, 403);
        // A host process: no pod.
        let (s, _, _) = call(&f, Some(f.host_cgroup), "169.254.170.23", Some(&mine)).await;
        assert_eq!(s, 403);
        let seen = observed.0.lock().unwrap().clone();
        let codes: Vec<(Option<&str>, &str)> = seen
            .iter()
            .map(|(p, c, _)| (p.as_deref(), c.as_str()))
            .collect();
        assert_eq!(
            codes,
            [
                (Some("ns/web"), "NoAssociation"),
                (Some("ns/web"), "AccessDenied"),
                (Some("ns/web"), "TokenPodMismatch"),
                (None, "NotAPod"),
            ]
        );
        for (_, code, note) in &seen {
            for tok in [&mine, &theirs] {
                // No token, nor any of its three parts, in what an Event would say.
                for part in tok.split('.').filter(|p| p.len() > 8) {
                    assert!(!note.contains(part), "{code}: {note}");
                }
            }
        }
        assert!(seen[2].2.contains("8a1f0e2b-"), "{:?}", seen[2]);
    }

    /// `[<id>]: (<code>): <message>, fault: <fault>` plus newline; returns the id.
    fn stock_upstream_form<'a>(body: &'a str, code: &str, fault: &str) -> &'a str {
        let rest = body
            .strip_prefix('[')
            .unwrap_or_else(|| panic!("no request id in {body:?}"));
        let (id, rest) = rest
            .split_once("]: ")
            .unwrap_or_else(|| panic!("no request id in {body:?}"));
        assert!(!id.is_empty(), "empty request id in {body:?}");
        assert!(
            rest.starts_with(&format!("({code}): ")),
            "want code {code} in {body:?}"
        );
        assert!(
            rest.ends_with(&format!(", fault: {fault}\n")),
            "want fault {fault} in {body:?}"
        );
        id
    }

    #[tokio::test]
    async fn sts_service_errors_reach_pods_in_the_stock_short_form() {
        let f = fixture_with(
            false,
            FailingSts::new(|| StsError::Service {
                code: "AccessDenied".into(),
                message: "not authorized to perform sts:AssumeRole".into(),
                request_id: Some("req-9".into()),
                status: 403,
            }),
        );
        f.pods.upsert(pod("app"));
        let (s, b, a) = call(&f, Some(f.pod_cgroup), "169.254.170.23", None).await;
        assert_eq!(s, 400);
        assert_eq!(
            b,
            "[req-9]: (AccessDenied): not authorized to perform sts:AssumeRole, fault: client\n"
        );
        assert_eq!(a.reason.as_deref(), Some("AccessDenied"));

        // No request id from STS: the pod still gets one to quote.
        let f = fixture_with(
            false,
            FailingSts::new(|| StsError::Service {
                code: "InternalFailure".into(),
                message: "oops".into(),
                request_id: None,
                status: 500,
            }),
        );
        f.pods.upsert(pod("app"));
        let (s, b, _) = call(&f, Some(f.pod_cgroup), "169.254.170.23", None).await;
        assert_eq!(s, 500);
        stock_upstream_form(&b, "InternalFailure", "server");
        assert!(
            b.ends_with("(InternalFailure): oops, fault: server\n"),
            "{b}"
        );
    }

    #[tokio::test]
    async fn transport_errors_reach_pods_without_the_sdk_error_chain() {
        // A real STS client against a closed port: the SDK's error chain names
        // the address and the OS error; the pod gets neither.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(
                    aws_credential_types::Credentials::new("AKIAAGENT", "secret", None, None, "t"),
                ),
            )
            .build();
        let fetcher =
            crate::credentials::Upstream::Sts(crate::credentials::StsFetcher::with_sdk_config(
                crate::credentials::sts::StsSettings {
                    endpoint_url: Some(format!("http://127.0.0.1:{port}")),
                    region: "us-east-1".into(),
                    max_attempts: 1,
                    call_timeout: Duration::from_secs(3),
                    ..Default::default()
                },
                &sdk,
            ));
        let f = fixture_with(false, fetcher);
        f.pods.upsert(pod("app"));
        let (s, b, a) = call(&f, Some(f.pod_cgroup), "169.254.170.23", None).await;
        assert_eq!(s, 503, "{b}");
        let id = stock_upstream_form(&b, "Dispatch", "server").to_owned();
        for leak in [
            "127.0.0.1",
            &port.to_string(),
            "os error",
            "dispatch failure",
            "io error",
        ] {
            assert!(!b.contains(leak), "{leak:?} leaked into {b:?}");
        }
        assert!(b.len() < 200, "{b}");
        // The audit record carries what the pod saw, id included.
        assert_eq!(a.message.as_deref(), Some(b.trim_end()));
        assert!(a.message.unwrap().contains(&id));
    }
}
