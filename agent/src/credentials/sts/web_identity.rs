//! IRSA: the pod's projected token for STS, read from the kubelet's pods
//! directory on this node.
//!
//! Only the volume the EKS pod identity (IRSA) webhook adds is used: `aws-iam-token`
//! (mounted in the pod at `/var/run/secrets/eks.amazonaws.com/serviceaccount`,
//! audience `sts.amazonaws.com`). A pod can project service account tokens of any
//! audience under any volume name; none of those is ever sent to STS, and neither
//! is a token in the IRSA volume whose `aud` claim does not name STS. The claims
//! are decoded without checking the signature: STS does that.

use std::path::Path;

use super::StsError;
use crate::credentials::types::Secret;
use crate::http::token::{jwt_payload, names_audience, TokenError};
use crate::model::PodUid;

/// The projected volume the EKS IRSA webhook adds to the pod: the only one read.
pub const IRSA_VOLUME: &str = "aws-iam-token";
/// The file in it.
const IRSA_TOKEN_FILE: &str = "token";
/// The audience the webhook requests, and the one required in `aud`.
pub const IRSA_AUDIENCE: &str = "sts.amazonaws.com";

/// Reads the pod's IRSA token on this node:
/// `<pods_dir>/<uid>/volumes/kubernetes.io~projected/aws-iam-token/token`, and
/// only if it is a JWT whose `aud` contains `sts.amazonaws.com`. A [`PodUid`] is
/// a UUID, so the path stays inside `pods_dir`.
pub async fn read_web_identity_token(
    pods_dir: &Path,
    pod_uid: &PodUid,
) -> Result<Secret, StsError> {
    let volume = pods_dir
        .join(pod_uid.as_str())
        .join("volumes/kubernetes.io~projected")
        .join(IRSA_VOLUME);
    let path = volume.join(IRSA_TOKEN_FILE);
    // kubelet writes `token` as a symlink into `..data/`; reading follows it.
    let token = match tokio::fs::read_to_string(&path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StsError::WebIdentityTokenMissing { path: volume })
        }
        Err(source) => return Err(StsError::WebIdentityTokenRead { path, source }),
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(StsError::WebIdentityTokenMissing { path });
    }
    if let Err(reason) = check_audience(token) {
        return Err(StsError::WebIdentityTokenInvalid { path, reason });
    }
    Ok(Secret::new(token))
}

/// Whether the JWT's `aud` (a string or a list) contains [`IRSA_AUDIENCE`].
fn check_audience(token: &str) -> Result<(), &'static str> {
    let claims = jwt_payload(token).map_err(|e| match e {
        TokenError::Unparseable(why) => why,
        _ => "not a JWT",
    })?;
    if names_audience(&claims["aud"], IRSA_AUDIENCE) {
        Ok(())
    } else {
        Err("its audience (aud) is not sts.amazonaws.com")
    }
}

#[cfg(test)]
mod tests;
