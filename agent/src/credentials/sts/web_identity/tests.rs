use super::*;
use crate::credentials::sts::fixtures::{irsa_token, pod};
use crate::testing::{unsigned_jwt, write_projected_token};

#[tokio::test]
async fn token_comes_from_the_irsa_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let uid = pod().uid;
    let irsa = irsa_token("system:serviceaccount:team-a:web");
    write_projected_token(
        tmp.path(),
        &uid,
        "kube-api-access-abcde",
        "api-server-token",
    );
    write_projected_token(tmp.path(), &uid, "a-custom-token", &irsa_token("custom"));
    write_projected_token(tmp.path(), &uid, "aws-iam-token", &format!("{irsa}\n"));
    let t = read_web_identity_token(tmp.path(), &uid).await.unwrap();
    assert_eq!(t.expose(), irsa);
}

#[tokio::test]
async fn other_projected_volumes_are_never_used() {
    let tmp = tempfile::tempdir().unwrap();
    let uid = pod().uid;
    // STS-audience tokens, but not in the IRSA webhook's volume: a pod can
    // project any token it likes under any name.
    for volume in [
        "aws-iam-token-evil",
        "aws-iam-token2",
        "my-token",
        "kube-api-access-abcde",
    ] {
        write_projected_token(tmp.path(), &uid, volume, &irsa_token(volume));
    }
    std::fs::create_dir_all(
        tmp.path()
            .join(uid.as_str())
            .join("volumes/kubernetes.io~projected/aws-iam-token"),
    )
    .unwrap();
    let err = read_web_identity_token(tmp.path(), &uid).await.unwrap_err();
    assert!(
        matches!(err, StsError::WebIdentityTokenMissing { .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn irsa_volume_token_must_be_for_sts() {
    let tmp = tempfile::tempdir().unwrap();
    let uid = pod().uid;
    let refused = [
        // Another audience: the EKS Pod Identity token, or the API server's.
        unsigned_jwt(&serde_json::json!({"aud": ["pods.eks.amazonaws.com"], "sub": "x"})),
        unsigned_jwt(&serde_json::json!({"aud": "https://kubernetes.default.svc", "sub": "x"})),
        unsigned_jwt(&serde_json::json!({"aud": ["sts.amazonaws.com.evil"], "sub": "x"})),
        // No audience at all.
        unsigned_jwt(&serde_json::json!({"sub": "x"})),
        // Not a JWT.
        "irsa-token".to_owned(),
        "a.b.c".to_owned(),
    ];
    for token in refused {
        write_projected_token(tmp.path(), &uid, "aws-iam-token", &token);
        let err = read_web_identity_token(tmp.path(), &uid).await.unwrap_err();
        assert!(
            matches!(err, StsError::WebIdentityTokenInvalid { .. }),
            "{token}: {err}"
        );
        assert!(!err.is_retryable());
        // The token itself never goes into the error.
        assert!(!err.to_string().contains(&token), "{err}");
    }
    // `aud` may be a string or a list containing STS among others.
    for aud in [
        serde_json::json!("sts.amazonaws.com"),
        serde_json::json!(["other", "sts.amazonaws.com"]),
    ] {
        let token = unsigned_jwt(&serde_json::json!({"aud": aud, "sub": "x"}));
        write_projected_token(tmp.path(), &uid, "aws-iam-token", &token);
        let t = read_web_identity_token(tmp.path(), &uid).await.unwrap();
        assert_eq!(t.expose(), token);
    }
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
    write_projected_token(
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
    // Path traversal in a uid is refused: no `PodUid` holds one.
    for traversal in [
        "../etc",
        "..",
        "/etc",
        "2c48913c-b29f-11e7-9350-020968147796/..",
    ] {
        assert!(
            crate::model::PodUid::parse(traversal).is_err(),
            "{traversal}"
        );
    }
    // Empty token.
    write_projected_token(tmp.path(), &uid, "aws-iam-token", "\n");
    let err = read_web_identity_token(tmp.path(), &uid).await.unwrap_err();
    assert!(
        matches!(err, StsError::WebIdentityTokenMissing { .. }),
        "{err}"
    );
}
