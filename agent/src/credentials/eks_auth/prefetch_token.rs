//! Optional prefetch on EKS: the token the EKS Pod Identity webhook projects into a
//! pod, read from the kubelet's pods directory (`--kubelet-pods-dir`, mounted
//! read-only) when the kernel shows the pod's cgroup, so the pod's first request
//! is a cache hit.
//!
//! Only the webhook's volume of the pod the cgroup belongs to is read:
//! `<pods_dir>/<uid>/volumes/kubernetes.io~projected/eks-pod-identity-token/eks-pod-identity-token`,
//! and only a token that passes [`check_pod_token`] for that pod (audience
//! `pods.eks.amazonaws.com`, the pod's own UID, not expired) is ever forwarded.
//! A [`PodUid`] is a UUID, so the path stays inside `pods_dir`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::pod_token::{check_pod_token, PodToken, TokenError};
use crate::model::PodUid;

/// The projected volume (and file) the EKS Pod Identity webhook adds.
pub const POD_IDENTITY_VOLUME: &str = "eks-pod-identity-token";
/// Larger files are not tokens (projected tokens are ~1 KiB).
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// Why no prefetch token was read; only logged (at debug: most pods have none).
#[derive(Debug, thiserror::Error)]
pub enum PrefetchTokenError {
    #[error("no pod identity token at {path}")]
    Missing { path: PathBuf },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than a token")]
    TooLarge { path: PathBuf },
    #[error("token at {path} refused")]
    Refused {
        path: PathBuf,
        #[source]
        source: TokenError,
    },
}

/// Where the kubelet puts the pod's EKS Pod Identity token.
pub fn token_path(pods_dir: &Path, pod_uid: &PodUid) -> PathBuf {
    pods_dir
        .join(pod_uid.as_str())
        .join("volumes/kubernetes.io~projected")
        .join(POD_IDENTITY_VOLUME)
        .join(POD_IDENTITY_VOLUME)
}

/// Reads and checks the pod's token (blocking: call from `spawn_blocking`).
pub fn read_prefetch_token(
    pods_dir: &Path,
    pod_uid: &PodUid,
    now: SystemTime,
) -> Result<PodToken, PrefetchTokenError> {
    use std::io::Read;
    let path = token_path(pods_dir, pod_uid);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PrefetchTokenError::Missing { path })
        }
        Err(source) => return Err(PrefetchTokenError::Read { path, source }),
    };
    let mut raw = String::new();
    let read = file
        .take(MAX_TOKEN_BYTES + 1)
        .read_to_string(&mut raw)
        .map_err(|source| PrefetchTokenError::Read {
            path: path.clone(),
            source,
        })?;
    if read as u64 > MAX_TOKEN_BYTES {
        return Err(PrefetchTokenError::TooLarge { path });
    }
    check_pod_token(Some(&raw), pod_uid, now)
        .map_err(|source| PrefetchTokenError::Refused { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{pod_uid, POD_UID};
    use std::time::Duration;

    fn token(aud: &str, uid: &str, exp: u64) -> String {
        crate::testing::pod_identity_token(aud, "ns", "sa", "web", uid, exp)
    }

    fn exp() -> u64 {
        (SystemTime::now() + Duration::from_secs(3600))
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn reads_only_the_pods_own_pod_identity_token() {
        let dir = tempfile::tempdir().unwrap();
        let uid = pod_uid(POD_UID);
        let now = SystemTime::now();
        assert!(matches!(
            read_prefetch_token(dir.path(), &uid, now),
            Err(PrefetchTokenError::Missing { .. })
        ));
        let path = token_path(dir.path(), &uid);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();

        std::fs::write(&path, token("pods.eks.amazonaws.com", POD_UID, exp())).unwrap();
        let t = read_prefetch_token(dir.path(), &uid, now).unwrap();
        assert_eq!(
            (t.namespace.as_str(), t.service_account.as_str()),
            ("ns", "sa")
        );

        // Another audience (an IRSA token put there) is never forwarded.
        std::fs::write(&path, token("sts.amazonaws.com", POD_UID, exp())).unwrap();
        assert!(matches!(
            read_prefetch_token(dir.path(), &uid, now),
            Err(PrefetchTokenError::Refused { .. })
        ));
        // Another pod's token in this pod's volume: refused too.
        let other = "8a1f0e2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
        std::fs::write(&path, token("pods.eks.amazonaws.com", other, exp())).unwrap();
        assert!(matches!(
            read_prefetch_token(dir.path(), &uid, now),
            Err(PrefetchTokenError::Refused {
                source: TokenError::PodMismatch { .. },
                ..
            })
        ));
        std::fs::write(&path, vec![b'a'; 70_000]).unwrap();
        assert!(matches!(
            read_prefetch_token(dir.path(), &uid, now),
            Err(PrefetchTokenError::TooLarge { .. })
        ));
    }
}
