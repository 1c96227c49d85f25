use std::time::{Duration, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_eksauth::types::{
    AssumedRoleUser, Credentials as EksCredentials, PodIdentityAssociation, Subject as EksSubject,
};
use aws_smithy_types::DateTime;

use super::*;
use crate::http::refusal::eks_auth_status;
use crate::testing::{self, fake_pod_token};

const NOW: u64 = 1_800_000_000;
const ROLE_ARN: &str = "arn:aws:sts::111122223333:assumed-role/s3-role/eks-prod-s3-pod-5f6e";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn output(expiration: u64) -> aws_sdk_eksauth::operation::assume_role_for_pod_identity::builders::AssumeRoleForPodIdentityOutputBuilder{
    AssumeRoleForPodIdentityOutput::builder()
        .subject(
            EksSubject::builder()
                .namespace("default")
                .service_account("s3-sa")
                .build()
                .unwrap(),
        )
        .audience(AUDIENCE)
        .pod_identity_association(
            PodIdentityAssociation::builder()
                .association_arn(
                    "arn:aws:eks:us-east-1:111122223333:podidentityassociation/prod/a-0123456789abcdef0",
                )
                .association_id("a-0123456789abcdef0")
                .build()
                .unwrap(),
        )
        .assumed_role_user(
            AssumedRoleUser::builder()
                .arn(ROLE_ARN)
                .assume_role_id("AROAEXAMPLE:eks-prod-s3-pod-5f6e")
                .build()
                .unwrap(),
        )
        .credentials(
            EksCredentials::builder()
                .access_key_id("ASIAEXAMPLE")
                .secret_access_key("secret-key")
                .session_token("session-token")
                .expiration(DateTime::from_secs(expiration as i64))
                .build()
                .unwrap(),
        )
}

#[test]
fn a_full_answer_converts_to_served_credentials() {
    let out = convert(output(NOW + 21_600).build().unwrap(), now()).unwrap();
    let c = &out.credentials;
    assert_eq!(c.access_key_id, "ASIAEXAMPLE");
    assert_eq!(c.secret_access_key.expose(), "secret-key");
    assert_eq!(c.session_token.expose(), "session-token");
    assert_eq!(c.expiration, UNIX_EPOCH + Duration::from_secs(NOW + 21_600));
    assert_eq!(c.account_id.as_deref(), Some("111122223333"));
    assert_eq!(c.assumed_role_arn, ROLE_ARN);
    assert_eq!(out.association_id, "a-0123456789abcdef0");
    assert!(out
        .association_arn
        .ends_with(":podidentityassociation/prod/a-0123456789abcdef0"));
    assert_eq!(
        out.subject,
        Subject {
            namespace: "default".into(),
            service_account: "s3-sa".into()
        }
    );
    assert_eq!(out.audience, AUDIENCE);
    assert_eq!(out.assume_role_id, "AROAEXAMPLE:eks-prod-s3-pod-5f6e");
    // Loggable.
    let dbg = format!("{out:?}");
    assert!(
        !dbg.contains("secret-key") && !dbg.contains("session-token"),
        "{dbg}"
    );
}

#[test]
fn half_made_answers_are_refused() {
    let cases = [
        (output(NOW + 60).set_credentials(None), "no credentials"),
        (
            output(NOW + 60).credentials(
                EksCredentials::builder()
                    .access_key_id("")
                    .secret_access_key("s")
                    .session_token("t")
                    .expiration(DateTime::from_secs(NOW as i64 + 60))
                    .build()
                    .unwrap(),
            ),
            "incomplete credentials",
        ),
        (output(NOW), "expired credentials"),
        (
            output(NOW + 60).set_assumed_role_user(None),
            "no assumed role",
        ),
        (
            output(NOW + 60).set_pod_identity_association(None),
            "no pod identity association",
        ),
        (output(NOW + 60).set_subject(None), "no subject"),
    ];
    for (builder, want) in cases {
        let e = convert(builder.build().unwrap(), now()).unwrap_err();
        assert!(
            matches!(&e, EksAuthError::InvalidResponse { message, .. } if message.contains(want)),
            "{want}: {e:?}"
        );
        assert_eq!(eks_auth_status(&e).as_u16(), 500);
        assert!(e.is_retryable());
    }
}

#[test]
fn timeouts_fit_inside_the_sdks_budgets() {
    let s = EksAuthSettings::default();
    let t = timeout_config(&s);
    assert_eq!(t.connect_timeout(), Some(Duration::from_millis(500)));
    assert_eq!(t.operation_attempt_timeout(), Some(Duration::from_secs(1)));
    assert_eq!(t.operation_timeout(), Some(Duration::from_millis(1500)));
    // botocore gives the agent 2 s to answer.
    assert!(s.call_timeout < Duration::from_secs(2));
    let r = retry_config(&s);
    assert_eq!(r.max_attempts(), 3);
    assert_eq!(r.initial_backoff(), RETRY_INITIAL_BACKOFF);
}

fn client_to(endpoint: &str) -> EksAuthClient {
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new("AKIDNODE", "node-secret", None, None, "test"),
        ))
        .build();
    EksAuthClient::with_sdk_config(
        EksAuthSettings {
            endpoint_url: Some(endpoint.into()),
            cluster_name: "prod".into(),
            ..Default::default()
        },
        &sdk,
    )
}

#[tokio::test]
async fn refused_tokens_never_leave_the_node() {
    // Nothing listens there: a call would fail with Dispatch, not a token error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = client_to(&format!("http://{closed}"));
    let pod = testing::pod("default", "s3-pod", "s3-sa");
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let other = fake_pod_token(
        "default",
        "s3-sa",
        "other-pod",
        "8a1f0e2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
        exp,
    );
    let e = client.fetch(&pod, Some(&other)).await.unwrap_err();
    assert!(
        matches!(e, EksAuthError::Token(TokenError::PodMismatch { .. })),
        "{e:?}"
    );
    assert_eq!(eks_auth_status(&e).as_u16(), 403);
    let e = client.fetch(&pod, None).await.unwrap_err();
    assert_eq!(e.pod_body(), "Service account token cannot be empty");

    // The pod's own token does go out (and fails to connect, retryably).
    let own = fake_pod_token("default", "s3-sa", "s3-pod", pod.uid.as_str(), exp);
    let e = client.fetch(&pod, Some(&own)).await.unwrap_err();
    assert!(matches!(e, EksAuthError::Dispatch { .. }), "{e:?}");
    assert_eq!(eks_auth_status(&e).as_u16(), 503);
    assert!(e.is_retryable());
    assert!(
        e.pod_body().starts_with("EKS Auth could not be reached: "),
        "{}",
        e.pod_body()
    );
}
