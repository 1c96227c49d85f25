//! What goes into an STS session: EKS-style session names (sanitised, cut to
//! STS's 64 characters), the EKS session tags, and session durations within
//! STS's bounds.

use super::StsSettings;
use crate::model::{Association, AssumeMode, PodInfo};

/// Final session duration of a plain association, as EKS (6 h).
pub const DEFAULT_SESSION_SECS: u32 = 21_600;
/// Final session duration with a target role, as EKS (59 min): role chaining caps
/// chained sessions at 1 h.
pub const CHAINED_SESSION_SECS: u32 = 3_540;
/// Default for IRSA associations: what the pod's own SDK would ask for (it sends
/// no `DurationSeconds`, so STS gives 1 h), and what every role allows.
pub const WEB_IDENTITY_SESSION_SECS: u32 = 3_600;
/// STS bounds for `DurationSeconds`.
pub(super) const STS_MIN_SECS: u32 = 900;
pub(super) const STS_MAX_SECS: u32 = 43_200;
/// Role chaining cap, and the `MaxSessionDuration` every IAM role has by default.
pub(super) const ONE_HOUR_SECS: u32 = 3_600;
/// STS's limit on `RoleSessionName`.
pub const SESSION_NAME_MAX: usize = 64;

/// Duration of the credentials the pod finally receives: the association's
/// request, else 6 h (59 min with a target role, 1 h for IRSA); within STS's
/// bounds, and at most 1 h when chaining.
pub fn session_duration_secs(assoc: &Association) -> u32 {
    let chained = assoc.target_role_arn.is_some();
    let default = match (chained, assoc.mode) {
        (true, _) => CHAINED_SESSION_SECS,
        (false, AssumeMode::PodIdentity) => DEFAULT_SESSION_SECS,
        (false, AssumeMode::WebIdentity) => WEB_IDENTITY_SESSION_SECS,
    };
    let secs = assoc.session_duration_secs.unwrap_or(default);
    let max = if chained { ONE_HOUR_SECS } else { STS_MAX_SECS };
    secs.clamp(STS_MIN_SECS, max)
}

/// STS allows `[\w+=,.@-]` in session names; anything else becomes `-`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `eks-<cluster>-<pod>-<uuid>` as EKS names sessions, cut to STS's 64 characters
/// by shortening the pod name (and the cluster name too if it alone is too long).
/// The uuid keeps names unique per fetch and is never cut.
pub fn session_name(cluster: &str, pod_name: &str, id: &uuid::Uuid) -> String {
    let id = id.hyphenated().to_string();
    let mut cluster = sanitize(cluster);
    let mut pod = sanitize(pod_name);
    // "eks-" + cluster + "-" + pod + "-" + uuid
    let budget = SESSION_NAME_MAX - "eks-".len() - 2 - id.len();
    // Sanitised strings are ASCII, so byte truncation is char truncation.
    cluster.truncate(budget);
    pod.truncate(budget - cluster.len());
    format!("eks-{cluster}-{pod}-{id}")
}

/// The EKS session tags for `pod`, in EKS's order; `eks-cluster-arn` only when known.
pub fn session_tags(settings: &StsSettings, pod: &PodInfo) -> Vec<(&'static str, String)> {
    let mut tags = Vec::with_capacity(6);
    if let Some(arn) = settings.cluster_arn.as_deref().filter(|a| !a.is_empty()) {
        tags.push(("eks-cluster-arn", arn.to_owned()));
    }
    tags.push(("eks-cluster-name", settings.cluster_name.clone()));
    tags.push(("kubernetes-namespace", pod.namespace.clone()));
    tags.push(("kubernetes-service-account", pod.service_account.clone()));
    tags.push(("kubernetes-pod-name", pod.name.clone()));
    tags.push(("kubernetes-pod-uid", pod.uid.to_string()));
    tags
}

#[cfg(test)]
mod tests;
