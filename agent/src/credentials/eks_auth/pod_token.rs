//! The pod's projected service-account token, checked before it is forwarded to
//! EKS Auth (invariant 1: the kernel has first confirmed that it names the calling
//! pod).
//!
//! The payload is decoded without checking the signature: that needs the cluster
//! issuer's keys, and EKS Auth checks it anyway. What is checked here is what the
//! agent can know on its own: the token is there and is a JWT, it is not expired
//! (nor valid only later), it is meant for EKS Pod Identity (audience
//! `pods.eks.amazonaws.com`), and its `kubernetes.io.pod.uid` is the pod the kernel
//! attributed the connection to. Another pod's token is refused with 403 before any
//! upstream call; the rest are the stock agent's 400s.
//!
//! Decoding and the pod cross-check are `http::token`'s ([`decode`](crate::http::token::decode),
//! [`cross_check`](crate::http::token::cross_check)), so both paths refuse a token
//! with the same texts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::credentials::types::Secret;
pub use crate::http::token::TokenError;
use crate::http::token::{jwt_payload, names_audience};

/// The audience of the tokens the EKS Pod Identity webhook projects, and the only
/// one EKS Auth accepts.
pub const AUDIENCE: &str = "pods.eks.amazonaws.com";

/// A token that passed [`check_pod_token`], with the claims that name the pod.
///
/// `Debug` shows the claims, never the token (a bearer credential: invariant 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodToken {
    /// The token to forward, surrounding whitespace removed.
    pub token: Secret,
    /// `kubernetes.io.namespace`.
    pub namespace: String,
    /// `kubernetes.io.serviceaccount.name`.
    pub service_account: String,
    /// `kubernetes.io.pod.name`.
    pub pod_name: String,
    /// `kubernetes.io.pod.uid`: equal to the kernel-attributed pod's UID.
    pub pod_uid: String,
    /// `exp`, when the token has one.
    pub expires_at: Option<SystemTime>,
}

/// Check the `Authorization` token of a request the kernel attributed to the pod
/// with UID `kernel_pod_uid`, before forwarding it to EKS Auth.
///
/// Errors, in the order checked, with the stock agent's texts:
/// * [`TokenError::Empty`] (400): no token, or only whitespace;
/// * [`TokenError::Unparseable`] (400): not `header.payload.signature` with a
///   base64url JSON payload;
/// * [`TokenError::Claims`] (400): `exp` passed, `nbf` in the future (60 s leeway),
///   no `kubernetes.io.pod.uid`;
/// * [`TokenError::PodMismatch`] (403): the token names another pod;
/// * [`TokenError::Claims`] (400): audience not `pods.eks.amazonaws.com`, no
///   namespace or service account claim, an `exp` too large for a time.
pub fn check_pod_token(
    token: Option<&str>,
    kernel_pod_uid: &crate::model::PodUid,
    now: SystemTime,
) -> Result<PodToken, TokenError> {
    let raw = token.map(str::trim).unwrap_or_default();
    crate::http::token::cross_check(Some(raw), kernel_pod_uid, now)?;
    // cross_check decoded the payload already; this only fails if it changes.
    let claims = jwt_payload(raw)?;
    if !names_audience(&claims["aud"], AUDIENCE) {
        return Err(TokenError::Claims("token has invalid audience"));
    }
    let k8s = &claims["kubernetes.io"];
    let text = |v: &serde_json::Value| {
        v.as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let namespace = text(&k8s["namespace"])
        .ok_or(TokenError::Claims("missing claim: kubernetes.io/namespace"))?;
    let service_account = text(&k8s["serviceaccount"]["name"]).ok_or(TokenError::Claims(
        "missing claim: kubernetes.io/serviceaccount/name",
    ))?;
    let pod_name = text(&k8s["pod"]["name"])
        .ok_or(TokenError::Claims("missing claim: kubernetes.io/pod/name"))?;
    let expires_at = match claims["exp"].as_u64() {
        None => None,
        Some(exp) => Some(
            UNIX_EPOCH
                .checked_add(Duration::from_secs(exp))
                .ok_or(TokenError::Claims("token expiry is out of range"))?,
        ),
    };
    Ok(PodToken {
        token: Secret::new(raw),
        namespace,
        service_account,
        pod_name,
        pod_uid: kernel_pod_uid.to_string(),
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::refusal::token_status;
    use crate::testing::fake_pod_token;
    use serde_json::json;

    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const OTHER_UID: &str = "8a1f0e2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
    const NOW: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    /// An unsigned JWT with `payload`.
    fn jwt(payload: &serde_json::Value) -> String {
        let enc = |v: &serde_json::Value| {
            aws_smithy_types::base64::encode(v.to_string())
                .trim_end_matches('=')
                .replace('+', "-")
                .replace('/', "_")
        };
        format!(
            "{}.{}.c2lnbmF0dXJl",
            enc(&json!({"alg": "RS256", "kid": "k"})),
            enc(payload)
        )
    }

    fn claims(aud: serde_json::Value) -> serde_json::Value {
        json!({
            "aud": aud,
            "exp": NOW + 3600,
            "iat": NOW - 60,
            "nbf": NOW - 60,
            "iss": "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE",
            "sub": "system:serviceaccount:default:s3-sa",
            "kubernetes.io": {
                "namespace": "default",
                "pod": {"name": "s3-pod", "uid": UID},
                "serviceaccount": {"name": "s3-sa", "uid": "5f3ab0c1-0000-4000-8000-000000000001"}
            }
        })
    }

    #[test]
    fn the_calling_pods_token_passes_with_its_claims() {
        let t = fake_pod_token("default", "s3-sa", "s3-pod", UID, NOW + 3600);
        let checked = check_pod_token(
            Some(&format!(" {t}\n")),
            &crate::testing::pod_uid(UID),
            now(),
        )
        .unwrap();
        assert_eq!(checked.token.expose(), t);
        assert_eq!(checked.namespace, "default");
        assert_eq!(checked.service_account, "s3-sa");
        assert_eq!(checked.pod_name, "s3-pod");
        assert_eq!(checked.pod_uid, UID);
        assert_eq!(
            checked.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(NOW + 3600))
        );
        // The token never shows in Debug output.
        let dbg = format!("{checked:?}");
        assert!(!dbg.contains(&t[..20]), "{dbg}");
        // A string audience works as well as an array.
        check_pod_token(
            Some(&jwt(&claims(json!(AUDIENCE)))),
            &crate::testing::pod_uid(UID),
            now(),
        )
        .unwrap();
        check_pod_token(
            Some(&jwt(&claims(json!([
                "https://kubernetes.default.svc",
                AUDIENCE
            ])))),
            &crate::testing::pod_uid(UID),
            now(),
        )
        .unwrap();
    }

    /// An `exp` past what `SystemTime` holds (u64::MAX seconds) is refused like
    /// any bad claim, not the "overflow when adding duration to instant" panic
    /// that killed the connection's task.
    #[test]
    fn an_expiry_out_of_range_is_a_400() {
        let mut c = claims(json!(AUDIENCE));
        c["exp"] = json!(u64::MAX);
        let e = check_pod_token(Some(&jwt(&c)), &crate::testing::pod_uid(UID), now()).unwrap_err();
        assert!(matches!(e, TokenError::Claims(_)), "{e}");
        assert_eq!(token_status(&e).as_u16(), 400);
    }

    #[test]
    fn another_pods_token_is_a_403() {
        let t = fake_pod_token("default", "s3-sa", "s3-pod", OTHER_UID, NOW + 3600);
        let e = check_pod_token(Some(&t), &crate::testing::pod_uid(UID), now()).unwrap_err();
        assert_eq!(
            e,
            TokenError::PodMismatch {
                token_pod: OTHER_UID.into(),
                kernel_pod: crate::testing::pod_uid(UID)
            }
        );
        assert_eq!(token_status(&e).as_u16(), 403);
    }

    #[test]
    fn bad_tokens_are_400s_with_the_stock_agents_texts() {
        let cases: [(Option<String>, &str); 9] = [
            (None, "Service account token cannot be empty"),
            (Some(" \n".into()), "Service account token cannot be empty"),
            (
                Some("not-a-jwt".into()),
                "Service account token cannot be parsed: ",
            ),
            (
                Some("a.!!!.c".into()),
                "Service account token cannot be parsed: ",
            ),
            (
                Some(fake_pod_token("default", "s3-sa", "s3-pod", UID, NOW - 1)),
                "Service account token failed basic claim validations: token is expired",
            ),
            (
                Some(jwt(&claims(json!("sts.amazonaws.com")))),
                "Service account token failed basic claim validations: token has invalid audience",
            ),
            (
                Some(jwt(&claims(json!(null)))),
                "Service account token failed basic claim validations: token has invalid audience",
            ),
            (
                Some(jwt(&{
                    let mut c = claims(json!(AUDIENCE));
                    c["kubernetes.io"]["serviceaccount"] = json!({});
                    c
                })),
                "Service account token failed basic claim validations: missing claim: kubernetes.io/serviceaccount/name",
            ),
            (
                Some(jwt(&{
                    let mut c = claims(json!(AUDIENCE));
                    c["nbf"] = json!(NOW + 3600);
                    c
                })),
                "Service account token failed basic claim validations: token is not valid yet",
            ),
        ];
        for (token, want) in cases {
            let e = check_pod_token(token.as_deref(), &crate::testing::pod_uid(UID), now())
                .unwrap_err();
            assert!(e.to_string().starts_with(want), "{token:?}: {e}");
            assert_eq!(token_status(&e).as_u16(), 400, "{e}");
        }
    }
}
