use super::*;
use crate::credentials::sts::fixtures::{irsa_token, pod};
use crate::testing::{unsigned_jwt, write_projected_token};
use std::path::Path;
use std::time::Duration;

#[tokio::test]
async fn new_loads_the_default_chain_without_network() {
    let tmp = tempfile::tempdir().unwrap();
    let fetcher = StsFetcher::new(StsSettings {
        endpoint_url: Some("http://127.0.0.1:9".into()),
        region: "us-east-1".into(),
        web_identity_token_dir: tmp.path().to_path_buf(),
        ..Default::default()
    })
    .await;
    assert_eq!(fetcher.settings().region, "us-east-1");
    let mut a = Association {
        role_arn: "arn:aws:iam::111122223333:role/r".into(),
        ..Default::default()
    };
    a.mode = AssumeMode::WebIdentity;
    let err = fetcher.fetch(&pod(), &a).await.unwrap_err();
    assert!(
        matches!(err, StsError::WebIdentityTokenMissing { .. }),
        "{err}"
    );
}

/// A minimal STS stand-in on loopback: records each request (Authorization
/// header and form body) and answers what `respond` says. Used where moto
/// cannot tell: which key signed a call, exact error documents.
mod fake_sts {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Clone, Debug)]
    pub struct Request {
        pub authorization: Option<String>,
        pub body: String,
    }

    impl Request {
        pub fn action(&self) -> &str {
            self.param("Action").unwrap_or("")
        }
        pub fn param(&self, name: &str) -> Option<&str> {
            self.body
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        }
        /// The access key id in the SigV4 `Credential=` scope.
        pub fn signing_key(&self) -> Option<&str> {
            let auth = self.authorization.as_deref()?;
            auth.split("Credential=").nth(1)?.split('/').next()
        }
    }

    pub type Responder = Arc<dyn Fn(&Request, usize) -> (u16, String) + Send + Sync>;

    pub struct FakeSts {
        pub url: String,
        pub requests: Arc<Mutex<Vec<Request>>>,
    }

    impl FakeSts {
        pub async fn start(respond: Responder) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let requests = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&requests);
            tokio::spawn(async move {
                while let Ok((mut sock, _)) = listener.accept().await {
                    let (respond, log) = (Arc::clone(&respond), Arc::clone(&log));
                    tokio::spawn(async move {
                        let Some(req) = read_request(&mut sock).await else {
                            return;
                        };
                        let n = {
                            let mut log = log.lock().unwrap();
                            log.push(req.clone());
                            log.len()
                        };
                        let (status, body) = respond(&req, n);
                        let head = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: text/xml\r\nx-amzn-requestid: req-{n}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(body.as_bytes()).await;
                        let _ = sock.shutdown().await;
                    });
                }
            });
            Self { url, requests }
        }

        pub fn requests(&self) -> Vec<Request> {
            self.requests.lock().unwrap().clone()
        }
    }

    async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Request> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let header_end = loop {
            let n = sock.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < header_end + len {
            let n = sock.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(Request {
            authorization: header("authorization"),
            body: String::from_utf8_lossy(&buf[header_end..]).into_owned(),
        })
    }

    /// A successful response document for the request's action.
    pub fn success(req: &Request, n: usize) -> (u16, String) {
        let action = req.action();
        (
            200,
            format!(
                "<{action}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><{action}Result>\
                 <Credentials><AccessKeyId>ASIAHOP{n}</AccessKeyId><SecretAccessKey>secret{n}</SecretAccessKey>\
                 <SessionToken>token{n}</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>\
                 <AssumedRoleUser><AssumedRoleId>AROAEXAMPLE:s</AssumedRoleId>\
                 <Arn>arn:aws:sts::111122223333:assumed-role/r{n}/s</Arn></AssumedRoleUser>\
                 </{action}Result><ResponseMetadata><RequestId>req-{n}</RequestId></ResponseMetadata></{action}Response>"
            ),
        )
    }

    pub fn error(status: u16, code: &str, message: &str) -> (u16, String) {
        let kind = if status >= 500 { "Receiver" } else { "Sender" };
        (
            status,
            format!(
                "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>{kind}</Type>\
                 <Code>{code}</Code><Message>{message}</Message></Error><RequestId>ignored</RequestId></ErrorResponse>"
            ),
        )
    }
}

use fake_sts::FakeSts;
use std::sync::Arc;

fn sdk_with_agent_keys() -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::new(
                    "AKIAAGENTEXAMPLE",
                    "agent-secret",
                    None,
                    None,
                    "test",
                ),
            ),
        )
        .build()
}

fn fetcher_for(fake: &FakeSts, token_dir: &Path) -> StsFetcher {
    let sdk = sdk_with_agent_keys();
    let settings = StsSettings {
        endpoint_url: Some(fake.url.clone()),
        region: "us-east-1".into(),
        cluster_name: "prod".into(),
        cluster_arn: Some("arn:aws:eks:us-east-1:111122223333:cluster/prod".into()),
        web_identity_token_dir: token_dir.to_path_buf(),
        // One attempt: the SDK's retry backoff would only slow these tests down.
        max_attempts: 1,
        ..Default::default()
    };
    StsFetcher::with_sdk_config(settings, &sdk)
}

fn role(name: &str) -> Association {
    Association {
        namespace: "team-a".into(),
        service_account: "web".into(),
        role_arn: format!("arn:aws:iam::111122223333:role/{name}"),
        ..Default::default()
    }
}

#[tokio::test]
async fn chained_hop_is_signed_with_the_first_roles_credentials() {
    let fake = FakeSts::start(Arc::new(fake_sts::success)).await;
    let tmp = tempfile::tempdir().unwrap();
    let fetcher = fetcher_for(&fake, tmp.path());
    let mut a = role("first");
    a.target_role_arn = Some("arn:aws:iam::444455556666:role/target".into());

    let creds = fetcher.fetch(&pod(), &a).await.unwrap();
    assert_eq!(creds.access_key_id, "ASIAHOP2");
    assert_eq!(
        creds.assumed_role_arn,
        "arn:aws:sts::111122223333:assumed-role/r2/s"
    );
    assert_eq!(creds.account_id.as_deref(), Some("111122223333"));
    // The agent's own credentials still sign plain calls afterwards.
    fetcher.fetch(&pod(), &role("plain")).await.unwrap();

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3);
    let (first, second, plain) = (&reqs[0], &reqs[1], &reqs[2]);
    assert_eq!(first.signing_key(), Some("AKIAAGENTEXAMPLE"));
    assert_eq!(first.param("DurationSeconds"), Some("3600"));
    assert!(
        first.body.contains("Tags.member.1.Key=eks-cluster-arn"),
        "{}",
        first.body
    );
    assert!(
        first.body.contains("Tags.member.6.Key=kubernetes-pod-uid"),
        "{}",
        first.body
    );
    assert!(
        first
            .body
            .contains("TransitiveTagKeys.member.6=kubernetes-pod-uid"),
        "{}",
        first.body
    );
    assert_eq!(second.signing_key(), Some("ASIAHOP1"));
    assert_eq!(second.param("DurationSeconds"), Some("3540"));
    assert!(!second.body.contains("Tags.member"), "{}", second.body);
    assert_eq!(
        first.param("RoleSessionName"),
        second.param("RoleSessionName")
    );
    assert_eq!(plain.signing_key(), Some("AKIAAGENTEXAMPLE"));
    assert_eq!(plain.param("DurationSeconds"), Some("21600"));
}

#[tokio::test]
async fn external_id_and_session_policy_go_on_the_hop_the_pod_receives() {
    let fake = FakeSts::start(Arc::new(fake_sts::success)).await;
    let tmp = tempfile::tempdir().unwrap();
    let fetcher = fetcher_for(&fake, tmp.path());
    let mut chained = role("first");
    chained.target_role_arn = Some("arn:aws:iam::444455556666:role/target".into());
    chained.external_id = Some("ext-123".into());
    chained.policy = Some(r#"{"Version":"2012-10-17"}"#.into());
    fetcher.fetch(&pod(), &chained).await.unwrap();
    let mut plain = role("plain");
    plain.external_id = Some("ext-456".into());
    plain.policy = Some("{}".into());
    fetcher.fetch(&pod(), &plain).await.unwrap();

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].param("ExternalId"), None, "{}", reqs[0].body);
    assert_eq!(reqs[0].param("Policy"), None);
    assert_eq!(
        reqs[1].param("ExternalId"),
        Some("ext-123"),
        "{}",
        reqs[1].body
    );
    assert!(reqs[1].param("Policy").is_some(), "{}", reqs[1].body);
    assert_eq!(reqs[2].param("ExternalId"), Some("ext-456"));
    assert!(reqs[2].param("Policy").is_some());
}

#[tokio::test]
async fn disabled_session_tags_sends_no_tags() {
    let fake = FakeSts::start(Arc::new(fake_sts::success)).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut a = role("r");
    a.disable_session_tags = true;
    fetcher_for(&fake, tmp.path())
        .fetch(&pod(), &a)
        .await
        .unwrap();
    let body = &fake.requests()[0].body;
    assert!(
        !body.contains("Tags") && !body.contains("TransitiveTagKeys"),
        "{body}"
    );
}

#[tokio::test]
async fn web_identity_call_is_unsigned_and_carries_the_token() {
    let fake = FakeSts::start(Arc::new(fake_sts::success)).await;
    let tmp = tempfile::tempdir().unwrap();
    let p = pod();
    let token = irsa_token("system:serviceaccount:team-a:web");
    write_projected_token(tmp.path(), &p.uid, "aws-iam-token", &format!("{token}\n"));
    let mut a = role("irsa");
    a.mode = AssumeMode::WebIdentity;
    let creds = fetcher_for(&fake, tmp.path()).fetch(&p, &a).await.unwrap();
    assert_eq!(creds.access_key_id, "ASIAHOP1");
    let req = &fake.requests()[0];
    assert_eq!(req.action(), "AssumeRoleWithWebIdentity");
    assert_eq!(req.authorization, None);
    assert_eq!(req.param("WebIdentityToken"), Some(token.as_str()));
    assert_eq!(req.param("DurationSeconds"), Some("3600"));
}

#[tokio::test]
async fn service_errors_keep_code_request_id_and_class() {
    let fake = FakeSts::start(Arc::new(|req: &fake_sts::Request, _| {
        let role = req.param("RoleArn").unwrap_or("");
        if role.ends_with("denied") {
            fake_sts::error(
                403,
                "AccessDenied",
                "not authorized to perform sts:AssumeRole",
            )
        } else if role.ends_with("throttled") {
            fake_sts::error(400, "Throttling", "Rate exceeded")
        } else {
            fake_sts::error(500, "InternalFailure", "oops")
        }
    }))
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let fetcher = fetcher_for(&fake, tmp.path());

    let err = fetcher.fetch(&pod(), &role("denied")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "[req-1]: (AccessDenied): not authorized to perform sts:AssumeRole, fault: client"
    );
    assert_eq!((err.is_throttling(), err.is_retryable()), (false, false));

    let err = fetcher.fetch(&pod(), &role("throttled")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "[req-2]: (Throttling): Rate exceeded, fault: client"
    );
    assert_eq!((err.is_throttling(), err.is_retryable()), (true, true));

    let err = fetcher.fetch(&pod(), &role("broken")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "[req-3]: (InternalFailure): oops, fault: server"
    );
    assert_eq!((err.is_throttling(), err.is_retryable()), (false, true));
}

#[tokio::test]
async fn role_with_short_max_session_duration_falls_back_to_one_hour() {
    let fake = FakeSts::start(Arc::new(|req: &fake_sts::Request, n| {
        if req.param("DurationSeconds") == Some("21600") {
            fake_sts::error(
                400,
                "ValidationError",
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            )
        } else {
            fake_sts::success(req, n)
        }
    }))
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let fetcher = fetcher_for(&fake, tmp.path());
    fetcher.fetch(&pod(), &role("short")).await.unwrap();
    // Remembered: the next fetch asks for 1 h straight away.
    fetcher.fetch(&pod(), &role("short")).await.unwrap();
    let durations: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| r.param("DurationSeconds").unwrap_or("").to_owned())
        .collect();
    assert_eq!(durations, ["21600", "3600", "3600"]);
}

/// Every message of the error's source chain, joined (what the log shows).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

fn fetcher_at(url: String, call_timeout: Duration) -> StsFetcher {
    let fake = FakeSts {
        url,
        requests: Default::default(),
    };
    let tmp = std::env::temp_dir();
    let mut f = fetcher_for(&fake, &tmp);
    f.settings.call_timeout = call_timeout;
    StsFetcher::with_sdk_config(f.settings.clone(), &sdk_with_agent_keys())
}

#[tokio::test]
async fn unreachable_sts_keeps_the_sdk_chain_as_source_not_in_its_message() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let err = fetcher_at(url, Duration::from_secs(3))
        .fetch(&pod(), &role("r"))
        .await
        .unwrap_err();
    assert!(matches!(err, StsError::Dispatch { .. }), "{err:?}");
    let shown = err.to_string();
    for leak in [
        "dispatch failure",
        "os error",
        "127.0.0.1",
        "DispatchFailure",
    ] {
        assert!(!shown.contains(leak), "{leak:?} in {shown:?}");
    }
    let full = chain(&err);
    assert!(full.contains("Connection refused"), "{full}");
}

#[tokio::test]
async fn hanging_sts_is_a_timeout_with_the_sdk_chain_as_source() {
    // Accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let err = fetcher_at(url, Duration::from_secs(1))
        .fetch(&pod(), &role("r"))
        .await
        .unwrap_err();
    assert!(matches!(err, StsError::Timeout { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(!shown.contains("timeout"), "{shown:?}");
    assert!(std::error::Error::source(&err).is_some(), "{err:?}");
    assert!(chain(&err).len() > shown.len());
}

#[tokio::test]
async fn web_identity_sends_no_token_but_the_irsa_volumes_sts_token() {
    let fake = FakeSts::start(Arc::new(fake_sts::success)).await;
    let tmp = tempfile::tempdir().unwrap();
    let fetcher = fetcher_for(&fake, tmp.path());
    let mut a = role("irsa");
    a.mode = AssumeMode::WebIdentity;
    let p = pod();

    // An STS-audience token in a look-alike volume: not the webhook's.
    write_projected_token(
        tmp.path(),
        &p.uid,
        "aws-iam-token-evil",
        &irsa_token("system:serviceaccount:team-a:web"),
    );
    let err = fetcher.fetch(&p, &a).await.unwrap_err();
    assert!(
        matches!(err, StsError::WebIdentityTokenMissing { .. }),
        "{err}"
    );

    // The webhook's volume, but a token for another audience.
    let pod_identity_token = unsigned_jwt(&serde_json::json!({
        "aud": ["pods.eks.amazonaws.com"],
        "sub": "system:serviceaccount:team-a:web",
    }));
    write_projected_token(tmp.path(), &p.uid, "aws-iam-token", &pod_identity_token);
    let err = fetcher.fetch(&p, &a).await.unwrap_err();
    assert!(
        matches!(err, StsError::WebIdentityTokenInvalid { .. }),
        "{err}"
    );
    assert!(!err.is_retryable());

    assert!(fake.requests().is_empty(), "a token went to STS");
}
