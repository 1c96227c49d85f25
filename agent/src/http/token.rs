//! The `Authorization` token pods send: accepted for compatibility, never used to
//! pick an identity (invariant 1). With cross-checking on, its pod claims must
//! match the pod the kernel attributed the connection to.
//!
//! The signature is not verified here (that needs the API server's keys); the
//! check only catches a pod presenting someone else's token, which is exactly
//! what token-trusting agents cannot see.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::PodUid;

/// Why a token was refused by the cross-check. The messages are the stock
/// agent's; the statuses are decided with every other refusal's in
/// [`http::refusal`](crate::http::refusal).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No or empty `Authorization` header.
    #[error("Service account token cannot be empty")]
    Empty,
    /// Not three dot-separated base64url parts with a JSON payload.
    #[error("Service account token cannot be parsed: {0}")]
    Unparseable(&'static str),
    /// `exp` in the past or `nbf` in the future.
    #[error("Service account token failed basic claim validations: {0}")]
    Claims(&'static str),
    /// The token names another pod than the kernel says is calling.
    #[error("Service account token belongs to pod {token_pod}, but the connection comes from pod {kernel_pod}")]
    PodMismatch {
        /// Pod UID in the token, as it is there.
        token_pod: String,
        /// Pod UID from the kernel's attribution.
        kernel_pod: PodUid,
    },
}

/// Pod claims of a projected service account token.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TokenClaims {
    pub pod_uid: Option<String>,
    pub pod_name: Option<String>,
    pub namespace: Option<String>,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
}

/// The payload of a JWT (`header.payload.signature`, base64url without padding),
/// parsed but not verified: the signature is the upstream's to check.
pub fn jwt_payload(token: &str) -> Result<serde_json::Value, TokenError> {
    let mut parts = token.split('.');
    let (Some(_h), Some(p), Some(_s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Unparseable(
            "not a JWT (want header.payload.signature)",
        ));
    };
    // base64url without padding → standard alphabet with padding.
    let mut std_b64: String = p
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !std_b64.len().is_multiple_of(4) {
        std_b64.push('=');
    }
    let bytes = aws_smithy_types::base64::decode(&std_b64)
        .map_err(|_| TokenError::Unparseable("payload is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Unparseable("payload is not JSON"))
}

/// Whether a JWT's `aud` (a string or an array of strings, RFC 7519 4.1.3) names
/// `wanted`.
pub fn names_audience(aud: &serde_json::Value, wanted: &str) -> bool {
    match aud {
        serde_json::Value::String(s) => s == wanted,
        serde_json::Value::Array(items) => items.iter().any(|a| a.as_str() == Some(wanted)),
        _ => false,
    }
}

/// Decode (without verifying) the payload of a Kubernetes service account JWT.
pub fn decode(token: &str) -> Result<TokenClaims, TokenError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    let v = jwt_payload(token)?;
    let k8s = &v["kubernetes.io"];
    let s = |x: &serde_json::Value| x.as_str().map(str::to_owned);
    Ok(TokenClaims {
        pod_uid: s(&k8s["pod"]["uid"]),
        pod_name: s(&k8s["pod"]["name"]),
        namespace: s(&k8s["namespace"]),
        exp: v["exp"].as_u64(),
        nbf: v["nbf"].as_u64(),
    })
}

/// Cross-check a token against the pod the kernel attributed the call to.
pub fn cross_check(
    token: Option<&str>,
    kernel_pod_uid: &PodUid,
    now: SystemTime,
) -> Result<(), TokenError> {
    let claims = decode(token.unwrap_or(""))?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if claims.exp.is_some_and(|exp| exp < now) {
        return Err(TokenError::Claims("token is expired"));
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + 60) {
        return Err(TokenError::Claims("token is not valid yet"));
    }
    match claims.pod_uid {
        // The API server writes UIDs canonical: the claim must be the same text.
        Some(uid) if uid == kernel_pod_uid.as_str() => Ok(()),
        Some(uid) => Err(TokenError::PodMismatch {
            token_pod: uid,
            kernel_pod: kernel_pod_uid.clone(),
        }),
        None => Err(TokenError::Claims("token has no kubernetes.io pod claim")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fake_pod_token, pod_uid};
    use std::time::Duration;

    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn matching_pod_passes() {
        let t = fake_pod_token("ns", "sa", "p", UID, 1_800_003_600);
        assert_eq!(decode(&t).unwrap().pod_uid.as_deref(), Some(UID));
        cross_check(Some(&t), &pod_uid(UID), now()).unwrap();
    }

    #[test]
    fn other_pods_token_is_a_pod_mismatch() {
        let t = fake_pod_token(
            "ns",
            "sa",
            "p",
            "8a1f0e2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
            1_800_003_600,
        );
        let e = cross_check(Some(&t), &pod_uid(UID), now()).unwrap_err();
        assert!(matches!(e, TokenError::PodMismatch { .. }));
    }

    #[test]
    fn bad_tokens_have_stock_messages() {
        assert_eq!(
            cross_check(None, &pod_uid(UID), now())
                .unwrap_err()
                .to_string(),
            "Service account token cannot be empty"
        );
        let e = cross_check(Some("abc"), &pod_uid(UID), now()).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("Service account token cannot be parsed"));
        let expired = fake_pod_token("ns", "sa", "p", UID, 1_700_000_000);
        let e = cross_check(Some(&expired), &pod_uid(UID), now()).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("Service account token failed basic claim validations"));
    }
}
