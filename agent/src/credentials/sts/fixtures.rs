//! Test fixtures shared by the STS tests: a pod, and a projected token on disk.

use std::path::Path;

use crate::model::{PodInfo, PodUid};

pub(super) fn pod() -> PodInfo {
    PodInfo {
        uid: crate::testing::pod_uid("2c48913c-b29f-11e7-9350-020968147796"),
        ..crate::testing::pod("team-a", "web-7d4b9c8f6-x2x9z", "web")
    }
}

pub(super) fn write_token(root: &Path, uid: &PodUid, volume: &str, token: &str) {
    let dir = root
        .join(uid.as_str())
        .join("volumes/kubernetes.io~projected")
        .join(volume);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), token).unwrap();
}

/// An unsigned JWT with these claims, shaped like a projected service account token.
pub(super) fn jwt(claims: serde_json::Value) -> String {
    let enc = |v: &serde_json::Value| {
        aws_smithy_types::base64::encode(v.to_string())
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    };
    let header = serde_json::json!({"alg": "RS256", "kid": "test"});
    format!("{}.{}.c2lnbmF0dXJl", enc(&header), enc(&claims))
}

/// A token as the EKS IRSA webhook's projected volume holds it (audience
/// `sts.amazonaws.com`).
pub(super) fn irsa_token(sub: &str) -> String {
    jwt(serde_json::json!({
        "aud": ["sts.amazonaws.com"],
        "iss": "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE",
        "sub": sub,
        "exp": 4_102_444_800u64,
    }))
}
