//! `credentials::eks_auth` against a stand-in of EKS Auth (`support/eks_auth_api.rs`)
//! that verifies tokens, looks associations up and checks trust policies as EKS Auth
//! does, and gets the credentials from moto's IAM and STS (PyPI `moto[server]`).
//!
//! Each test starts its own `moto_server` on a free loopback port and kills it on
//! drop, also when the test panics. Without `moto_server` the tests fail with a
//! message saying how to install it: they are never skipped. No root needed.
//!
//! The credentials are checked the way a pod would use them: the real aws-sdk-sts
//! signs `GetCallerIdentity` with them, and moto answers with the assumed-role ARN
//! it issued them for.

mod support;

use std::time::{Duration, Instant, SystemTime};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use pod_identity_agent::credentials::eks_auth::{
    EksAuthClient, EksAuthError, EksAuthSettings, ErrorKind, Fault, TokenError,
};
use pod_identity_agent::http::refusal::eks_auth_status;
use pod_identity_agent::model::PodInfo;
use pod_identity_agent::testing;
use serde_json::{json, Value};
use support::eks_auth_api::{
    self, EksAuthApi, Failure, PodTokenClaims, TokenIssuer, ACCOUNT, AUDIENCE, CLUSTER, REGION,
};
use support::moto::{caller_arn, Moto};
use support::UIDS;

/// One test's world: moto, the cluster's token signer, the EKS Auth stand-in and
/// the agent's client pointed at it.
struct World {
    moto: Moto,
    issuer: TokenIssuer,
    api: EksAuthApi,
    client: EksAuthClient,
    sdk: SdkConfig,
}

const NODE: &str = "ip-10-0-1-23.ec2.internal";

impl World {
    async fn new() -> Self {
        let moto = Moto::start();
        let issuer = TokenIssuer::generate();
        let api = EksAuthApi::start(&moto.url(), &issuer).await;
        // The agent's own (node role) credentials; the stand-in only checks the
        // signature's scope.
        let sdk = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(SharedCredentialsProvider::new(
                aws_credential_types::Credentials::new(
                    "AKIAAGENTNODEROLE001",
                    "node-role-secret",
                    None,
                    None,
                    "eks-auth-standin-test",
                ),
            ))
            .build();
        let client = EksAuthClient::with_sdk_config(
            EksAuthSettings {
                endpoint_url: Some(api.url()),
                region: REGION.into(),
                cluster_name: CLUSTER.into(),
                node_name: Some(NODE.into()),
                ..Default::default()
            },
            &sdk,
        );
        World {
            moto,
            issuer,
            api,
            client,
            sdk,
        }
    }

    /// Role `s3-role`, trusted for EKS Pod Identity, associated with `default/s3-sa`.
    async fn associated_role(&self) -> eks_auth_api::Association {
        let role = self
            .api
            .create_role("s3-role", &eks_auth_api::pod_identity_trust_policy())
            .await;
        self.api.associate("default", "s3-sa", &role)
    }

    /// A valid token of `pod`.
    fn token(&self, pod: &PodInfo) -> String {
        self.issuer.pod_token(
            &pod.namespace,
            &pod.service_account,
            &pod.name,
            pod.uid.as_str(),
        )
    }

    /// The request id of the stand-in's last answer.
    fn last_request_id(&self) -> String {
        self.api
            .lock()
            .answers
            .last()
            .expect("an answer")
            .request_id
            .clone()
    }
}

/// Pod `default/<name>` running as `sa`, as the kernel attributes it.
fn pod(name: &str, sa: &str, uid: &str) -> PodInfo {
    PodInfo {
        uid: testing::pod_uid(uid),
        ..testing::pod("default", name, sa)
    }
}

fn s3_pod() -> PodInfo {
    pod("s3-pod-7d4b9c8f6-x2x9z", "s3-sa", UIDS[0])
}

/// `err` is EKS Auth's `kind`, passed through with its status and request id in
/// the stock agent's body.
fn assert_service_error(err: &EksAuthError, kind: ErrorKind, status: u16, request_id: &str) {
    let EksAuthError::Service {
        kind: k,
        code,
        message,
        request_id: rid,
        status: s,
        ..
    } = err
    else {
        panic!("expected EKS Auth's {kind:?}, got {err:?}");
    };
    assert_eq!(*k, kind, "{err}");
    assert_eq!(Some(code.as_str()), kind.code());
    assert_eq!(*s, status);
    assert_eq!(eks_auth_status(err).as_u16(), status);
    assert_eq!(rid.as_deref(), Some(request_id));
    let fault = if status >= 500 {
        Fault::Server
    } else {
        Fault::Client
    };
    assert_eq!(kind.fault(), fault);
    assert_eq!(
        err.pod_body(),
        format!("[{request_id}]: ({code}): {message}, fault: {fault}")
    );
}

#[tokio::test]
async fn the_backend_gets_the_associated_roles_credentials() {
    let w = World::new().await;
    let assoc = w.associated_role().await;
    let pod = s3_pod();

    let out = w
        .client
        .fetch(&pod, Some(&w.token(&pod)))
        .await
        .expect("credentials from EKS Auth");

    // Usable, and for the association's role, in an EKS-style session.
    let creds = &out.credentials;
    let arn = caller_arn(&w.moto, creds).await;
    assert_eq!(arn, creds.assumed_role_arn);
    let session = arn.rsplit('/').next().unwrap().to_owned();
    assert_eq!(
        arn,
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/s3-role/{session}")
    );
    // eks-<cluster>-<pod>-<uuid>, the pod name cut to fit 64 characters.
    assert!(
        session.starts_with("eks-test-cluster-s3-pod-7d4-"),
        "{session}"
    );
    assert_eq!(session.len(), 64, "{session}");
    assert_eq!(creds.account_id.as_deref(), Some(ACCOUNT));
    let left = creds.remaining(SystemTime::now());
    assert!(
        left <= Duration::from_secs(21_600) && left >= Duration::from_secs(21_400),
        "{left:?}"
    );
    assert_eq!(out.association_id, assoc.id);
    assert_eq!(out.association_arn, assoc.arn);
    assert_eq!(out.subject.namespace, "default");
    assert_eq!(out.subject.service_account, "s3-sa");
    assert_eq!(out.audience, AUDIENCE);
    assert!(
        out.assume_role_id.ends_with(&format!(":{session}")),
        "{}",
        out.assume_role_id
    );

    // What EKS Auth was asked, and what it asked STS.
    let st = w.api.lock();
    assert_eq!(st.arrivals.len(), 1);
    assert_eq!(st.arrivals[0].cluster, CLUSTER);
    assert_eq!(
        st.arrivals[0].signed_for.as_deref(),
        Some("us-east-1/eks-auth")
    );
    assert_eq!(st.arrivals[0].node_name.as_deref(), Some(NODE));
    let call = &st.assume_role_calls[0];
    assert_eq!(call.session_name, session);
    assert_eq!(call.duration_secs, 21_600);
    let tags: Vec<(&str, &str)> = call
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        tags,
        [
            (
                "eks-cluster-arn",
                "arn:aws:eks:us-east-1:123456789012:cluster/test-cluster"
            ),
            ("eks-cluster-name", CLUSTER),
            ("kubernetes-namespace", "default"),
            ("kubernetes-service-account", "s3-sa"),
            ("kubernetes-pod-name", "s3-pod-7d4b9c8f6-x2x9z"),
            ("kubernetes-pod-uid", UIDS[0]),
        ]
    );
    assert_eq!(call.transitive_tag_keys.len(), 6);
    drop(st);

    // The body the agent would serve parses as the SDKs expect.
    let body: Value = serde_json::from_str(&creds.to_sdk_json()).unwrap();
    assert_eq!(body["AccessKeyId"], creds.access_key_id.as_str());
    assert_eq!(body["AccountId"], ACCOUNT);
    assert!(body["Expiration"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn a_role_without_the_pod_identity_trust_is_access_denied() {
    let w = World::new().await;
    let pod = s3_pod();
    let token = w.token(&pod);
    let untrusted = [
        (
            "ec2-role",
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": ["sts:AssumeRole", "sts:TagSession"]}]}),
        ),
        (
            "no-tag-session",
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Principal": {"Service": AUDIENCE}, "Action": "sts:AssumeRole"}]}),
        ),
    ];
    let mut roles: Vec<String> = Vec::new();
    for (name, policy) in &untrusted {
        roles.push(w.api.create_role(name, policy).await);
    }
    // A role that does not exist looks the same to the pod.
    roles.push(format!("arn:aws:iam::{ACCOUNT}:role/deleted-role"));

    for role in roles {
        w.api.associate("default", "s3-sa", &role);
        let err = w.client.fetch(&pod, Some(&token)).await.unwrap_err();
        assert_service_error(&err, ErrorKind::AccessDenied, 400, &w.last_request_id());
        assert!(
            err.pod_body().ends_with(
                "(AccessDeniedException): Unauthorized Exception! EKS does not have \
                 permissions to assume the associated role., fault: client"
            ),
            "{role}: {}",
            err.pod_body()
        );
        assert!(err.is_irrecoverable() && !err.is_retryable(), "{err}");
    }
    // Refused before STS was asked, and without retries (4xx).
    assert!(w.api.lock().assume_role_calls.is_empty());
    assert_eq!(w.api.arrivals(), 3);
}

#[tokio::test]
async fn tokens_eks_auth_cannot_verify_are_refused() {
    let w = World::new().await;
    w.associated_role().await;
    let pod = s3_pod();
    let claims = PodTokenClaims::new(
        &pod.namespace,
        &pod.service_account,
        &pod.name,
        pod.uid.as_str(),
    );

    // Signed by another key: under its own key id, or claiming the cluster's.
    let forger = TokenIssuer::generate();
    let forged_own_kid = forger.mint(&claims);
    let forged = forger.with_kid(w.issuer.kid()).mint(&claims);
    // The pod's real token, with the payload edited to another service account.
    let real = w.token(&pod);
    let mut escalated = claims.clone();
    escalated.service_account = "admin".into();
    let edited_payload = w.issuer.mint(&escalated);
    let tampered = format!(
        "{}.{}.{}",
        real.split('.').next().unwrap(),
        edited_payload.split('.').nth(1).unwrap(),
        real.split('.').nth(2).unwrap()
    );
    w.api.associate(
        "default",
        "admin",
        &format!("arn:aws:iam::{ACCOUNT}:role/s3-role"),
    );

    for token in [forged_own_kid, forged, tampered] {
        // The pod claims match the kernel's pod, so the local check lets them through.
        let err = w.client.fetch(&pod, Some(&token)).await.unwrap_err();
        assert_service_error(&err, ErrorKind::InvalidToken, 400, &w.last_request_id());
        assert!(err.is_irrecoverable());
    }

    // Wrong audience and expired: the agent refuses them itself (400, the stock
    // agent's texts); sent anyway, EKS Auth refuses them too.
    let mut sts_audience = claims.clone();
    sts_audience.audience = vec!["sts.amazonaws.com".into()];
    let mut expired = claims.clone();
    expired.expires_at = expired.issued_at - 1;
    expired.issued_at -= 3600;
    expired.not_before -= 3600;
    let cases = [
        (
            w.issuer.mint(&sts_audience),
            "Service account token failed basic claim validations: token has invalid audience",
            ErrorKind::InvalidToken,
        ),
        (
            w.issuer.mint(&expired),
            "Service account token failed basic claim validations: token is expired",
            ErrorKind::ExpiredToken,
        ),
    ];
    for (token, local_body, upstream) in cases {
        let before = w.api.arrivals();
        let err = w.client.fetch(&pod, Some(&token)).await.unwrap_err();
        assert!(
            matches!(err, EksAuthError::Token(TokenError::Claims(_))),
            "{err:?}"
        );
        assert_eq!(eks_auth_status(&err).as_u16(), 400);
        assert_eq!(err.pod_body(), local_body);
        assert_eq!(w.api.arrivals(), before, "refused locally, nothing sent");

        let err = w
            .client
            .assume_role_for_pod_identity(&token)
            .await
            .unwrap_err();
        assert_service_error(&err, upstream, 400, &w.last_request_id());
    }
    assert!(w.api.lock().assume_role_calls.is_empty());
}

#[tokio::test]
async fn no_association_is_resource_not_found_404() {
    let w = World::new().await;
    w.associated_role().await;
    let pod = pod("web-5c9f7", "web-sa", UIDS[1]);
    let err = w
        .client
        .fetch(&pod, Some(&w.token(&pod)))
        .await
        .unwrap_err();
    assert_service_error(&err, ErrorKind::ResourceNotFound, 404, &w.last_request_id());
    assert!(err.is_irrecoverable() && !err.is_retryable());
    assert_eq!(w.api.arrivals(), 1, "4xx is not retried");
}

#[tokio::test]
async fn throttling_is_passed_through_as_429_after_retries() {
    let w = World::new().await;
    w.associated_role().await;
    w.api.lock().throttling = true;
    let pod = s3_pod();
    let started = Instant::now();
    let err = w
        .client
        .fetch(&pod, Some(&w.token(&pod)))
        .await
        .unwrap_err();
    assert_service_error(&err, ErrorKind::Throttling, 429, &w.last_request_id());
    assert!(err.is_retryable() && !err.is_irrecoverable());
    assert_eq!(w.api.arrivals(), 3, "standard retries: 3 attempts");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    // And works again once EKS Auth does.
    w.api.lock().throttling = false;
    w.client
        .fetch(&pod, Some(&w.token(&pod)))
        .await
        .expect("credentials");
}

#[tokio::test]
async fn server_errors_are_passed_through_and_retryable() {
    let w = World::new().await;
    w.associated_role().await;
    let pod = s3_pod();
    for (failure, kind, status) in [
        (Failure::InternalServer, ErrorKind::InternalServer, 500),
        (
            Failure::ServiceUnavailable,
            ErrorKind::ServiceUnavailable,
            503,
        ),
    ] {
        w.api.lock().failing = Some(failure);
        let before = w.api.arrivals();
        let err = w
            .client
            .fetch(&pod, Some(&w.token(&pod)))
            .await
            .unwrap_err();
        assert_service_error(&err, kind, status, &w.last_request_id());
        assert!(
            err.pod_body().ends_with(", fault: server"),
            "{}",
            err.pod_body()
        );
        assert!(err.is_retryable() && !err.is_irrecoverable());
        assert_eq!(w.api.arrivals() - before, 3, "standard retries: 3 attempts");
    }
}

#[tokio::test]
async fn a_slow_eks_auth_times_out_inside_the_sdks_budget() {
    let w = World::new().await;
    w.associated_role().await;
    w.api.lock().delay = Duration::from_secs(10);
    let pod = s3_pod();
    let started = Instant::now();
    let err = w
        .client
        .fetch(&pod, Some(&w.token(&pod)))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, EksAuthError::Timeout { .. }), "{err:?}");
    // The 1.5 s call budget (1 s per attempt), well inside botocore's 2 s.
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(2000),
        "took {took:?}"
    );
    assert_eq!(eks_auth_status(&err).as_u16(), 503);
    assert!(err.is_retryable());
    assert!(
        err.pod_body().starts_with("EKS Auth call timed out: "),
        "{}",
        err.pod_body()
    );

    w.api.lock().delay = Duration::ZERO;
    w.client
        .fetch(&pod, Some(&w.token(&pod)))
        .await
        .expect("credentials once EKS Auth answers again");
}

#[tokio::test]
async fn another_pods_token_is_refused_before_any_upstream_call() {
    let w = World::new().await;
    w.associated_role().await;
    // Two pods of one service account: EKS Auth itself would issue the role for
    // either token; only the kernel knows which pod is calling.
    let caller = s3_pod();
    let victim = pod("s3-pod-7d4b9c8f6-q8w2e", "s3-sa", UIDS[1]);
    let stolen = w.token(&victim);

    let err = w.client.fetch(&caller, Some(&stolen)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "Service account token belongs to pod {}, but the connection comes from pod {}",
            UIDS[1], UIDS[0]
        )
    );
    assert_eq!(eks_auth_status(&err).as_u16(), 403);
    for token in [None, Some(""), Some("not a jwt")] {
        let err = w.client.fetch(&caller, token).await.unwrap_err();
        assert!(matches!(err, EksAuthError::Token(_)), "{err:?}");
        assert_eq!(eks_auth_status(&err).as_u16(), 400);
    }
    assert_eq!(w.api.arrivals(), 0, "nothing reached EKS Auth");

    // Sent without the check, EKS Auth would have answered: the check is what stops it.
    let out = w
        .client
        .assume_role_for_pod_identity(&stolen)
        .await
        .expect("EKS Auth verifies signatures, not callers");
    assert!(out
        .credentials
        .assumed_role_arn
        .contains(":assumed-role/s3-role/"));

    // And an answer for another service account than the pod's is not served.
    let role = format!("arn:aws:iam::{ACCOUNT}:role/s3-role");
    w.api.associate("default", "other-sa", &role);
    let mut claims = PodTokenClaims::new("default", "other-sa", &caller.name, caller.uid.as_str());
    claims.service_account_uid = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6".into();
    let err = w
        .client
        .fetch(&caller, Some(&w.issuer.mint(&claims)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EksAuthError::SubjectMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(eks_auth_status(&err).as_u16(), 403);
}

#[test]
fn the_stand_ins_trust_evaluation() {
    use eks_auth_api::{percent_decode, pod_identity_trust_policy, trusts};
    let both = |doc: &Value| {
        trusts(doc, AUDIENCE, "sts:AssumeRole") && trusts(doc, AUDIENCE, "sts:TagSession")
    };
    let stmt = |s: Value| json!({"Version": "2012-10-17", "Statement": s});
    assert!(both(&pod_identity_trust_policy()));
    // Single statement object, string principal list, wildcards, split statements.
    assert!(both(&stmt(
        json!({"Effect": "Allow", "Principal": {"Service": [AUDIENCE]}, "Action": "sts:*"})
    )));
    assert!(both(&stmt(json!([
        {"Effect": "Allow", "Principal": {"Service": AUDIENCE}, "Action": "sts:AssumeRole"},
        {"Effect": "Allow", "Principal": {"Service": AUDIENCE}, "Action": "STS:TagSession"}
    ]))));
    // Missing action, other principal, a Deny, an unevaluated Condition: refused.
    assert!(!both(&stmt(
        json!([{"Effect": "Allow", "Principal": {"Service": AUDIENCE}, "Action": "sts:AssumeRole"}])
    )));
    assert!(!both(&stmt(
        json!([{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:*"}])
    )));
    assert!(!both(&stmt(json!([
        {"Effect": "Allow", "Principal": {"Service": AUDIENCE}, "Action": "sts:*"},
        {"Effect": "Deny", "Principal": {"Service": AUDIENCE}, "Action": "sts:TagSession"}
    ]))));
    assert!(!both(&stmt(
        json!([{"Effect": "Allow", "Principal": {"Service": AUDIENCE},
        "Action": ["sts:AssumeRole", "sts:TagSession"],
        "Condition": {"StringEquals": {"aws:SourceAccount": "111122223333"}}}])
    )));
    assert!(!both(&Value::Null));
    assert_eq!(
        percent_decode("%7B%22Action%22%3A%20%22sts%3A%2A%22%7D%"),
        "{\"Action\": \"sts:*\"}%"
    );
}

#[tokio::test]
async fn the_cache_over_eks_auth_coalesces_and_rides_out_an_outage() {
    use pod_identity_agent::credentials::eks_auth::check_pod_token;
    use pod_identity_agent::credentials::{
        CacheOutcome, CacheSettings, CredentialCache, FetchRequest, Upstream,
    };
    let w = World::new().await;
    w.associated_role().await;
    let upstream = Upstream::EksAuth(EksAuthClient::with_sdk_config(
        w.client.settings().clone(),
        &w.sdk,
    ));
    // Refresh ahead at once (every 6 h session is "due"): the outage below hits a
    // background refresh while the credentials are still valid.
    let cache = CredentialCache::new(
        upstream,
        CacheSettings {
            refresh_ahead: Duration::from_secs(7 * 3600),
            ..CacheSettings::default()
        },
    );
    let pod = s3_pod();
    let token = check_pod_token(Some(&w.token(&pod)), &pod.uid, SystemTime::now()).unwrap();
    let req = FetchRequest::pod_identity(pod.clone(), token);

    // 20 concurrent first requests: one EKS Auth call.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (cache, req) = (cache.clone(), req.clone());
        set.spawn(async move { cache.get(&req).await });
    }
    let mut keys = std::collections::HashSet::new();
    while let Some(joined) = set.join_next().await {
        let (creds, outcome) = joined.unwrap().expect("credentials");
        assert_eq!(outcome, CacheOutcome::Miss);
        keys.insert(creds.access_key_id.clone());
    }
    assert_eq!((keys.len(), w.api.arrivals()), (1, 1));

    // EKS Auth goes down: the still-valid credentials keep being served.
    w.api.lock().failing = Some(Failure::ServiceUnavailable);
    let (first, outcome) = cache.get(&req).await.unwrap();
    assert_eq!(outcome, CacheOutcome::Hit, "served while the refresh runs");
    assert!(
        testing::eventually(Duration::from_secs(5), || w.api.arrivals() == 4).await,
        "one background refresh, 3 attempts: {}",
        w.api.arrivals()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (stale, outcome) = cache.get(&req).await.unwrap();
    assert_eq!(outcome, CacheOutcome::Stale);
    assert_eq!(stale.access_key_id, first.access_key_id);
    assert!(stale.expiration > SystemTime::now() + Duration::from_secs(3600));
    assert!(caller_arn(&w.moto, &stale)
        .await
        .contains(":assumed-role/s3-role/"));
    assert_eq!(w.api.arrivals(), 4, "no call per request during the outage");
}
