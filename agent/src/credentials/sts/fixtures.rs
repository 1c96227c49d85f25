//! What only the STS tests share: their pod and an IRSA token. Tokens on disk and
//! JWTs are [`crate::testing`]'s.

use crate::model::PodInfo;
use crate::testing;

/// The pod the STS tests ask for (UID [`testing::POD_UID`]).
pub(super) fn pod() -> PodInfo {
    testing::pod("team-a", "web-7d4b9c8f6-x2x9z", "web")
}

/// A token as the EKS IRSA webhook's projected volume holds it (audience
/// `sts.amazonaws.com`).
pub(super) fn irsa_token(sub: &str) -> String {
    testing::unsigned_jwt(&serde_json::json!({
        "aud": ["sts.amazonaws.com"],
        "iss": "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE",
        "sub": sub,
        "exp": 4_102_444_800u64,
    }))
}
