//! Where credentials come from: the one [`Fetch`] interface the cache calls, what
//! one fetch needs ([`FetchRequest`]), the errors of either upstream
//! ([`UpstreamError`]), and the agent's choice between them ([`Upstream`]).
//!
//! * STS (clusters outside EKS): the agent knows the association (from its file,
//!   the CRD or the EKS API) and assumes the role itself.
//! * EKS Auth (EKS): the agent forwards the pod's own token, after the kernel
//!   confirmed which pod sent it; EKS Auth finds the association and assumes the
//!   role as `pods.eks.amazonaws.com`.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use crate::credentials::eks_auth::{EksAuthClient, EksAuthError, PodToken};
use crate::credentials::sts::{StsError, StsFetcher};
use crate::credentials::types::Credentials;
use crate::model::{Association, PodInfo};

/// What the upstream is asked for on behalf of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// STS: the agent assumes the association's role.
    Association(Association),
    /// EKS Auth: the pod's token, already checked to name the pod
    /// ([`check_pod_token`](crate::credentials::eks_auth::check_pod_token)).
    PodIdentity(PodToken),
}

/// One fetch: the pod (UID from the kernel's attribution) and what to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    pub pod: PodInfo,
    pub target: Target,
}

impl FetchRequest {
    /// STS request for `pod` under `assoc`.
    pub fn association(pod: PodInfo, assoc: Association) -> Self {
        Self {
            pod,
            target: Target::Association(assoc),
        }
    }

    /// EKS Auth request for `pod` with its checked `token`.
    pub fn pod_identity(pod: PodInfo, token: PodToken) -> Self {
        Self {
            pod,
            target: Target::PodIdentity(token),
        }
    }

    /// The association, for STS requests.
    pub fn association_ref(&self) -> Option<&Association> {
        match &self.target {
            Target::Association(a) => Some(a),
            Target::PodIdentity(_) => None,
        }
    }

    /// The role, for logs: the association's, or "EKS Auth" when EKS Auth decides.
    pub fn role_for_log(&self) -> &str {
        match &self.target {
            Target::Association(a) => a.effective_role_arn(),
            Target::PodIdentity(_) => "(EKS Auth association)",
        }
    }

    /// Whether `newer` should replace this request for later (background) fetches
    /// of the same entry: a pod's token that lives longer (the kubelet rotated it).
    pub fn is_superseded_by(&self, newer: &FetchRequest) -> bool {
        match (&self.target, &newer.target) {
            (Target::PodIdentity(old), Target::PodIdentity(new)) => {
                new.token != old.token && new.expires_at >= old.expires_at
            }
            _ => false,
        }
    }

    /// Whether a background fetch can still use this request (a pod's token that
    /// expired must wait for the pod's next request, which brings a fresh one).
    pub fn usable_at(&self, now: SystemTime) -> bool {
        match &self.target {
            Target::Association(_) => true,
            Target::PodIdentity(t) => t.expires_at.is_none_or(|exp| exp > now),
        }
    }
}

/// Why an upstream gave no credentials.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Sts(#[from] StsError),
    #[error(transparent)]
    EksAuth(#[from] EksAuthError),
    /// A request meant for the other upstream (a bug in the agent).
    #[error("internal error: credentials request for the other upstream")]
    Misrouted,
}

impl UpstreamError {
    /// Whether asking again later may help; a cache keeps serving still-valid
    /// credentials meanwhile. Anything else drops the pod's cached credentials.
    pub fn is_retryable(&self) -> bool {
        match self {
            UpstreamError::Sts(e) => e.is_retryable(),
            UpstreamError::EksAuth(e) => e.is_retryable(),
            UpstreamError::Misrouted => false,
        }
    }

    /// The upstream's request id, if it answered.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            UpstreamError::Sts(e) => e.request_id(),
            UpstreamError::EksAuth(e) => e.request_id(),
            UpstreamError::Misrouted => None,
        }
    }

    /// Short code for metrics and audit records.
    pub fn code(&self) -> &str {
        match self {
            UpstreamError::Sts(e) => e.code(),
            UpstreamError::EksAuth(e) => e.code(),
            UpstreamError::Misrouted => "Misrouted",
        }
    }
}

/// Something that turns a [`FetchRequest`] into credentials: [`Upstream`] in
/// production; tests use fakes.
pub trait Fetch: Send + Sync + 'static {
    /// Obtain fresh credentials.
    fn fetch(
        &self,
        req: &FetchRequest,
    ) -> impl Future<Output = Result<Credentials, UpstreamError>> + Send;
}

impl<F: Fetch> Fetch for Arc<F> {
    fn fetch(
        &self,
        req: &FetchRequest,
    ) -> impl Future<Output = Result<Credentials, UpstreamError>> + Send {
        (**self).fetch(req)
    }
}

/// The agent's upstream.
#[derive(Debug)]
pub enum Upstream {
    /// `sts:AssumeRole` (or `AssumeRoleWithWebIdentity`) by the agent.
    Sts(StsFetcher),
    /// `eks-auth:AssumeRoleForPodIdentity` with the pod's token.
    EksAuth(EksAuthClient),
}

impl Upstream {
    /// Whether credentials come from EKS Auth (no local associations).
    pub fn is_eks_auth(&self) -> bool {
        matches!(self, Upstream::EksAuth(_))
    }
}

impl Fetch for Upstream {
    async fn fetch(&self, req: &FetchRequest) -> Result<Credentials, UpstreamError> {
        match (self, &req.target) {
            (Upstream::Sts(sts), Target::Association(assoc)) => {
                Ok(sts.fetch(&req.pod, assoc).await?)
            }
            (Upstream::EksAuth(eks), Target::PodIdentity(token)) => {
                Ok(eks.fetch_checked(&req.pod, token).await?.credentials)
            }
            // The endpoint builds requests for its own upstream; a mix-up is a bug,
            // answered without asking anyone.
            (Upstream::Sts(_), Target::PodIdentity(_))
            | (Upstream::EksAuth(_), Target::Association(_)) => Err(UpstreamError::Misrouted),
        }
    }
}
