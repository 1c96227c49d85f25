//! IRSA: finding and reading the pod's projected service account token for AWS in
//! the kubelet's pods directory on this node (never the API-server token).

use std::path::Path;

use super::StsError;
use crate::credentials::types::Secret;

/// Volume name the EKS IRSA webhook gives the projected token.
pub const IRSA_VOLUME_PREFIX: &str = "aws-iam-token";
/// Volume Kubernetes injects into every pod with the API-server token. Never sent
/// to STS: it is a credential for the API server, not for AWS.
const KUBE_API_ACCESS_PREFIX: &str = "kube-api-access-";

/// Finds the pod's projected AWS token on this node and reads it.
///
/// Looks at `<pods_dir>/<uid>/volumes/kubernetes.io~projected/<volume>/token`.
/// A pod has several projected volumes with a `token` file: Kubernetes's own
/// `kube-api-access-*` (API-server audience) is never used; a volume whose name
/// starts with `aws-iam-token` (the EKS webhook's name) wins; otherwise the first
/// remaining volume by name, so the choice is deterministic.
pub async fn read_web_identity_token(pods_dir: &Path, pod_uid: &str) -> Result<Secret, StsError> {
    let valid_uid = !pod_uid.is_empty()
        && pod_uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let projected = pods_dir
        .join(if valid_uid { pod_uid } else { "_invalid_uid_" })
        .join("volumes/kubernetes.io~projected");
    let missing = || StsError::WebIdentityTokenMissing {
        path: projected.clone(),
    };
    if !valid_uid {
        return Err(missing());
    }
    let mut dir = match tokio::fs::read_dir(&projected).await {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(source) => {
            return Err(StsError::WebIdentityTokenRead {
                path: projected,
                source,
            })
        }
    };
    let mut candidates = Vec::new();
    loop {
        match dir.next_entry().await {
            Ok(Some(entry)) => {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(KUBE_API_ACCESS_PREFIX) {
                    continue;
                }
                // kubelet writes `token` as a symlink into `..data/`; metadata follows it.
                let is_file = tokio::fs::metadata(entry.path().join("token"))
                    .await
                    .is_ok_and(|m| m.is_file());
                if is_file {
                    candidates.push(name);
                }
            }
            Ok(None) => break,
            Err(source) => {
                return Err(StsError::WebIdentityTokenRead {
                    path: projected,
                    source,
                })
            }
        }
    }
    candidates.sort_by_key(|name| (!name.starts_with(IRSA_VOLUME_PREFIX), name.clone()));
    let Some(volume) = candidates.first() else {
        return Err(missing());
    };
    let path = projected.join(volume).join("token");
    let token = tokio::fs::read_to_string(&path).await.map_err(|source| {
        StsError::WebIdentityTokenRead {
            path: path.clone(),
            source,
        }
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(StsError::WebIdentityTokenMissing { path });
    }
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests;
