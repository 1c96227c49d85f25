//! `sts` and `cache` against a real STS: moto's server (PyPI `moto[server]`).
//!
//! Each test starts its own `moto_server` on a free loopback port and kills it on
//! drop, also when the test panics. Without `moto_server` the tests fail with a
//! message saying how to install it: they are never skipped.
//!
//! The served credentials are checked the way a pod would use them: the real
//! aws-sdk-sts signs `GetCallerIdentity` with them, and moto answers with the
//! assumed-role ARN it issued them for.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use hyper::StatusCode;
mod support;

use pod_identity_agent::credentials::cache::{CacheOutcome, CacheSettings, CredentialCache};
use pod_identity_agent::credentials::sts::{ErrorChain, StsError, StsFetcher, StsSettings};
use pod_identity_agent::credentials::types::Credentials;
use pod_identity_agent::credentials::{FetchRequest, Upstream};
use pod_identity_agent::http::Refusal;
use pod_identity_agent::model::{Association, AssumeMode, PodInfo, Source};
use pod_identity_agent::testing::{self, write_projected_token};
use support::moto::{caller_arn, Moto};

/// moto's default account.
const ACCOUNT: &str = "123456789012";

/// SDK config with static agent credentials (moto accepts any).
fn agent_sdk_config(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new(
                "AKIAIOSFODNN7EXAMPLE",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                None,
                None,
                "sts-moto-test",
            ),
        ))
        .build()
}

fn settings(moto: &Moto, token_dir: &Path) -> StsSettings {
    StsSettings {
        endpoint_url: Some(moto.url()),
        region: "us-east-1".into(),
        cluster_name: "test-cluster".into(),
        cluster_arn: Some(format!(
            "arn:aws:eks:us-east-1:{ACCOUNT}:cluster/test-cluster"
        )),
        call_timeout: Duration::from_secs(5),
        web_identity_token_dir: token_dir.to_path_buf(),
        ..Default::default()
    }
}

/// Pod `team-a/web-7d4b9c8f6-x2x9z` (service account `web`).
fn pod() -> PodInfo {
    testing::pod("team-a", "web-7d4b9c8f6-x2x9z", "web")
}

/// The association of `pod()`'s service account with `role`.
fn assoc(role: &str) -> Association {
    Association {
        source: Source::File,
        ..testing::association("team-a", "web", role)
    }
}

/// The session-name part of an assumed-role ARN.
fn session_of(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or_default()
}

fn assert_lifetime(creds: &Credentials, expected: Duration) {
    let remaining = creds.remaining(std::time::SystemTime::now());
    assert!(
        remaining <= expected && remaining + Duration::from_secs(120) >= expected,
        "expected about {expected:?} left, got {remaining:?}"
    );
}

#[tokio::test]
async fn assume_role_serves_the_role_with_eks_session_name() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let fetcher =
        StsFetcher::with_sdk_config(settings(&moto, tmp.path()), &agent_sdk_config(&moto.url()));
    let role = format!("arn:aws:iam::{ACCOUNT}:role/my-role");

    let creds = fetcher
        .fetch(&pod(), &assoc(&role))
        .await
        .expect("AssumeRole");

    let arn = caller_arn(&moto, &creds).await;
    let session = session_of(&arn);
    assert_eq!(
        arn,
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/my-role/{session}")
    );
    assert!(
        session.starts_with("eks-test-cluster-web-7d4b9c-"),
        "{session}"
    );
    assert!(session.len() <= 64, "{session}");
    assert_eq!(creds.assumed_role_arn, arn);
    assert_eq!(creds.account_id.as_deref(), Some(ACCOUNT));
    assert!(!creds.access_key_id.is_empty());
    assert_lifetime(&creds, Duration::from_secs(21_600));

    // The body the agent serves is what the SDKs parse.
    let body: serde_json::Value = serde_json::from_str(&creds.to_sdk_json()).unwrap();
    assert_eq!(body["AccessKeyId"], creds.access_key_id.as_str());
    assert_eq!(body["AccountId"], ACCOUNT);
    assert!(body["Expiration"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn role_chaining_serves_the_target_role() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let fetcher =
        StsFetcher::with_sdk_config(settings(&moto, tmp.path()), &agent_sdk_config(&moto.url()));
    let mut a = assoc(&format!("arn:aws:iam::{ACCOUNT}:role/first-role"));
    a.target_role_arn = Some("arn:aws:iam::444455556666:role/target-role".into());

    let creds = fetcher.fetch(&pod(), &a).await.expect("chained AssumeRole");

    let arn = caller_arn(&moto, &creds).await;
    let session = session_of(&arn);
    assert_eq!(
        arn,
        format!("arn:aws:sts::444455556666:assumed-role/target-role/{session}")
    );
    assert!(session.starts_with("eks-test-cluster-"), "{session}");
    assert_eq!(creds.account_id.as_deref(), Some("444455556666"));
    assert_eq!(creds.assumed_role_arn, arn);
    assert_lifetime(&creds, Duration::from_secs(3_540));
}

#[tokio::test]
async fn disabled_session_tags_still_assume() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let fetcher =
        StsFetcher::with_sdk_config(settings(&moto, tmp.path()), &agent_sdk_config(&moto.url()));
    let mut a = assoc(&format!("arn:aws:iam::{ACCOUNT}:role/untagged"));
    a.disable_session_tags = true;
    a.session_duration_secs = Some(7200);
    let creds = fetcher
        .fetch(&pod(), &a)
        .await
        .expect("AssumeRole without tags");
    assert!(caller_arn(&moto, &creds)
        .await
        .contains(":assumed-role/untagged/eks-"));
    assert_lifetime(&creds, Duration::from_secs(7200));
}

#[tokio::test]
async fn web_identity_uses_the_pods_projected_token_without_agent_credentials() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let p = pod();
    write_projected_token(
        tmp.path(),
        &p.uid,
        "kube-api-access-8x7kq",
        "api-server-token",
    );
    write_projected_token(
        tmp.path(),
        &p.uid,
        "aws-iam-token",
        "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsic3RzLmFtYXpvbmF3cy5jb20iXX0.c2lnbmF0dXJl\n",
    );
    // No credentials at all: AssumeRoleWithWebIdentity must go out unsigned.
    let no_creds = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .build();
    let fetcher = StsFetcher::with_sdk_config(settings(&moto, tmp.path()), &no_creds);
    let mut a = assoc(&format!("arn:aws:iam::{ACCOUNT}:role/irsa-role"));
    a.mode = AssumeMode::WebIdentity;
    a.source = Source::IrsaAnnotation;

    let creds = fetcher
        .fetch(&p, &a)
        .await
        .expect("AssumeRoleWithWebIdentity");

    let arn = caller_arn(&moto, &creds).await;
    assert_eq!(
        arn,
        format!(
            "arn:aws:sts::{ACCOUNT}:assumed-role/irsa-role/{}",
            session_of(&arn)
        )
    );
    assert_eq!(creds.assumed_role_arn, arn);
    assert_eq!(creds.account_id.as_deref(), Some(ACCOUNT));

    // Another pod on the node without a token: final 404-class error, no STS call needed.
    let mut other = pod();
    other.uid = testing::pod_uid("0b0c5f0e-0000-4000-8000-000000000000");
    let err = fetcher.fetch(&other, &a).await.unwrap_err();
    assert!(
        matches!(err, StsError::WebIdentityTokenMissing { .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(Refusal::from(err).status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cache_over_real_sts_makes_one_call_for_concurrent_requests() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let fetcher =
        StsFetcher::with_sdk_config(settings(&moto, tmp.path()), &agent_sdk_config(&moto.url()));
    let cache = CredentialCache::new(Upstream::Sts(fetcher), CacheSettings::default());
    let a = assoc(&format!("arn:aws:iam::{ACCOUNT}:role/my-role"));
    let a = FetchRequest::association(pod(), a);

    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (cache, a) = (cache.clone(), a.clone());
        set.spawn(async move { cache.get(&a).await });
    }
    let mut keys = std::collections::HashSet::new();
    while let Some(joined) = set.join_next().await {
        let (creds, outcome) = joined.unwrap().expect("credentials");
        assert_eq!(outcome, CacheOutcome::Miss);
        keys.insert(creds.access_key_id.clone());
    }
    assert_eq!(keys.len(), 1);
    assert_eq!(cache.stats().sts_calls, 1);
    let (creds, outcome) = cache.get(&a).await.unwrap();
    assert_eq!(outcome, CacheOutcome::Hit);
    assert!(caller_arn(&moto, &creds)
        .await
        .contains(":assumed-role/my-role/eks-"));
}

#[tokio::test]
async fn stopped_sts_is_a_retryable_error() {
    let mut moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings(&moto, tmp.path());
    s.call_timeout = Duration::from_secs(3);
    let fetcher = StsFetcher::with_sdk_config(s, &agent_sdk_config(&moto.url()));
    let a = assoc(&format!("arn:aws:iam::{ACCOUNT}:role/my-role"));
    fetcher
        .fetch(&pod(), &a)
        .await
        .expect("works while moto runs");

    moto.stop();
    let started = Instant::now();
    let err = fetcher.fetch(&pod(), &a).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        matches!(err, StsError::Dispatch { .. } | StsError::Timeout { .. }),
        "{err:?}"
    );
    let refusal = Refusal::from(err);
    assert_eq!(refusal.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The pod reads a short line with a request id; the SDK's chain (the address,
    // the OS error) stays in the log.
    let body = refusal.to_string();
    assert!(
        body.starts_with('[') && body.ends_with(", fault: server"),
        "{body}"
    );
    assert!(
        !body.contains("127.0.0.1") && !body.contains("os error"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// IMDS on loopback: moto's instance metadata (it answers `/latest/api/token` and
/// `/latest/meta-data/iam/security-credentials/...`), behind a relay that counts
/// the requests, so a test can tell whether the agent asked IMDS at all. The relay
/// also adds the `x-aws-ec2-metadata-token-ttl-seconds` header real IMDS sends with
/// a token: moto leaves it out, and the Rust SDK refuses a token without it.
struct CountingImds {
    url: String,
    requests: Arc<AtomicUsize>,
}

impl CountingImds {
    async fn start(moto: &Moto) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let (count, port) = (Arc::clone(&requests), moto.port);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let _ = Self::relay(&mut client, port, &count).await;
                });
            }
        });
        Self { url, requests }
    }

    /// One request per connection (the relay answers `Connection: close`); IMDS
    /// requests have no body.
    async fn relay(
        client: &mut tokio::net::TcpStream,
        port: u16,
        count: &AtomicUsize,
    ) -> std::io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = client.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        count.fetch_add(1, Ordering::SeqCst);
        let token_request = head.starts_with(b"PUT /latest/api/token ");
        let after_request_line = |bytes: &[u8]| {
            bytes
                .windows(2)
                .position(|w| w == b"\r\n")
                .map_or(bytes.len(), |i| i + 2)
        };
        let at = after_request_line(&head);
        head.splice(at..at, b"Connection: close\r\n".iter().copied());
        let mut upstream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        upstream.write_all(&head).await?;
        let mut response = Vec::new();
        upstream.read_to_end(&mut response).await?;
        if token_request {
            let at = after_request_line(&response);
            response.splice(
                at..at,
                b"x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n"
                    .iter()
                    .copied(),
            );
        }
        client.write_all(&response).await?;
        client.shutdown().await
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// These tests take the agent's credentials from its real default sources; any
/// ambient AWS credentials would be used before IMDS and void them.
fn assert_no_ambient_aws_credentials() {
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
    ] {
        assert!(
            std::env::var_os(var).is_none(),
            "{var} is set: run these tests without AWS credentials in the environment"
        );
    }
    if let Some(home) = std::env::var_os("HOME") {
        for f in [".aws/credentials", ".aws/config"] {
            let path = Path::new(&home).join(f);
            assert!(
                !path.exists(),
                "{} exists: run these tests without a local AWS profile",
                path.display()
            );
        }
    }
}

fn node_role_settings(moto: &Moto, imds: &CountingImds, token_dir: &Path) -> StsSettings {
    StsSettings {
        imds_endpoint: Some(imds.url.clone()),
        max_attempts: 1,
        ..settings(moto, token_dir)
    }
}

#[tokio::test]
async fn node_role_is_refused_without_allow_node_role() {
    assert_no_ambient_aws_credentials();
    let moto = Moto::start();
    let imds = CountingImds::start(&moto).await;
    let tmp = tempfile::tempdir().unwrap();
    let fetcher = StsFetcher::new(node_role_settings(&moto, &imds, tmp.path())).await;

    let err = fetcher
        .fetch(
            &pod(),
            &assoc(&format!("arn:aws:iam::{ACCOUNT}:role/my-role")),
        )
        .await
        .expect_err("no credentials but the node role, which is refused");

    assert_eq!(imds.requests(), 0, "the agent asked IMDS");
    assert!(matches!(err, StsError::AgentCredentials { .. }), "{err:?}");
    let logged = ErrorChain(&err).to_string();
    assert!(
        logged.contains("node")
            && logged.contains("refused")
            && logged.contains("--allow-node-role"),
        "{logged}"
    );
    assert!(err.is_retryable(), "{err:?}");
    let refusal = Refusal::from(err);
    assert_eq!(refusal.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = refusal.to_string();
    assert!(
        !body.contains("--allow-node-role"),
        "pods need not know: {body}"
    );
}

#[tokio::test]
async fn node_role_is_used_with_allow_node_role() {
    assert_no_ambient_aws_credentials();
    let moto = Moto::start();
    let imds = CountingImds::start(&moto).await;
    let tmp = tempfile::tempdir().unwrap();
    let fetcher = StsFetcher::new(StsSettings {
        allow_node_role: true,
        ..node_role_settings(&moto, &imds, tmp.path())
    })
    .await;

    let creds = fetcher
        .fetch(
            &pod(),
            &assoc(&format!("arn:aws:iam::{ACCOUNT}:role/my-role")),
        )
        .await
        .expect("AssumeRole signed with the node role from IMDS");

    assert!(imds.requests() > 0, "IMDS was not asked");
    assert!(caller_arn(&moto, &creds)
        .await
        .contains(":assumed-role/my-role/eks-"));
}
