use super::*;
use crate::credentials::sts::fixtures::{pod, write_token};

#[tokio::test]
async fn token_prefers_aws_iam_token_and_skips_kube_api_access() {
    let tmp = tempfile::tempdir().unwrap();
    let uid = pod().uid;
    write_token(
        tmp.path(),
        &uid,
        "kube-api-access-abcde",
        "api-server-token",
    );
    write_token(tmp.path(), &uid, "a-custom-token", "custom");
    write_token(tmp.path(), &uid, "aws-iam-token", "irsa-token\n");
    let t = read_web_identity_token(tmp.path(), &uid).await.unwrap();
    assert_eq!(t.expose(), "irsa-token");
}

#[tokio::test]
async fn token_falls_back_to_other_projected_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let uid = pod().uid;
    write_token(
        tmp.path(),
        &uid,
        "kube-api-access-abcde",
        "api-server-token",
    );
    write_token(tmp.path(), &uid, "zz-token", "zz");
    write_token(tmp.path(), &uid, "my-token", "mine");
    std::fs::create_dir_all(
        tmp.path()
            .join(&uid)
            .join("volumes/kubernetes.io~projected/no-token-here"),
    )
    .unwrap();
    let t = read_web_identity_token(tmp.path(), &uid).await.unwrap();
    assert_eq!(t.expose(), "mine");
}

#[tokio::test]
async fn token_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let uid = pod().uid;
    let err = read_web_identity_token(tmp.path(), &uid).await.unwrap_err();
    assert!(
        matches!(err, StsError::WebIdentityTokenMissing { .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
    // Only the API-server token: still missing, never sent to STS.
    write_token(
        tmp.path(),
        &uid,
        "kube-api-access-abcde",
        "api-server-token",
    );
    let err = read_web_identity_token(tmp.path(), &uid).await.unwrap_err();
    assert!(
        matches!(err, StsError::WebIdentityTokenMissing { .. }),
        "{err}"
    );
    // Path traversal in a uid is refused.
    let err = read_web_identity_token(tmp.path(), "../etc")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StsError::WebIdentityTokenMissing { .. }),
        "{err}"
    );
    // Empty token.
    write_token(tmp.path(), &uid, "aws-iam-token", "\n");
    let err = read_web_identity_token(tmp.path(), &uid).await.unwrap_err();
    assert!(
        matches!(err, StsError::WebIdentityTokenMissing { .. }),
        "{err}"
    );
}
