//! Why a caller gets no credentials, and the status and body each reason gets.

use crate::{
    attribution::cgroup::CgroupError, http::token, sources::associations::AssociationError,
};

/// Why a caller gets no credentials. Each maps to a status and a plain-text body.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No kernel record for the connection.
    #[error("Access Denied. The kernel has no record of this connection: call http://169.254.170.23/v1/credentials from a pod on this node")]
    Unattributed,
    /// The attribution map lookup failed.
    #[error("Internal error: attribution lookup failed")]
    LookupFailed,
    /// Wrong `Host` header.
    #[error("Access Denied. Called agent through invalid address, please use either [{addr4} {addr6}] address not {host}")]
    InvalidHost {
        addr4: String,
        addr6: String,
        host: String,
    },
    /// The caller's cgroup is gone or not indexed yet.
    #[error("The caller's cgroup {cgroup_id} was not found on this node; retry")]
    CgroupNotFound { cgroup_id: u64 },
    /// The caller is not in a pod's cgroup (a host process).
    #[error("Access Denied. The caller (cgroup {path}) is not in a Kubernetes pod")]
    NotAPod { path: String },
    /// The cgroup path could not be attributed safely.
    #[error("Access Denied. The caller's cgroup cannot be attributed to one pod: {0}")]
    Ambiguous(Box<CgroupError>),
    /// Other cgroup index failure.
    #[error("Internal error resolving the caller's cgroup: {0}")]
    Cgroup(Box<CgroupError>),
    /// The pod directory does not know the pod (yet).
    #[error("Pod {uid} is not known to the agent yet; retry")]
    UnknownPod { uid: String },
    /// No association for the pod's service account.
    #[error("No Pod Identity association for service account {namespace}/{service_account} (pod {namespace}/{pod})")]
    NoAssociation {
        namespace: String,
        service_account: String,
        pod: String,
    },
    /// An association exists but is unusable.
    #[error("Invalid Pod Identity association: {0}")]
    BadAssociation(Box<AssociationError>),
    /// Token cross-check failed.
    #[error("{0}")]
    Token(token::TokenError),
    /// The caller is over its request rate.
    #[error("Too Many Requests")]
    Throttled,
    /// STS (or the cache) could not produce credentials.
    #[error("{message}")]
    Credentials {
        status: u16,
        code: String,
        message: String,
    },
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Unattributed
            | Refusal::InvalidHost { .. }
            | Refusal::NotAPod { .. }
            | Refusal::Ambiguous(_) => 403,
            Refusal::LookupFailed | Refusal::Cgroup(_) => 500,
            // Retryable: the cgroup index or the pod watch may be a moment behind.
            Refusal::CgroupNotFound { .. } | Refusal::UnknownPod { .. } => 503,
            Refusal::NoAssociation { .. } => 404,
            Refusal::BadAssociation(_) => 400,
            Refusal::Token(e) => e.http_status(),
            Refusal::Throttled => 429,
            Refusal::Credentials { status, .. } => *status,
        }
    }

    /// Short reason code for logs and audit records.
    pub fn code(&self) -> &str {
        match self {
            Refusal::Unattributed => "Unattributed",
            Refusal::LookupFailed => "LookupFailed",
            Refusal::InvalidHost { .. } => "InvalidHost",
            Refusal::CgroupNotFound { .. } => "CgroupNotFound",
            Refusal::NotAPod { .. } => "NotAPod",
            Refusal::Ambiguous(_) => "AmbiguousCgroup",
            Refusal::Cgroup(_) => "CgroupError",
            Refusal::UnknownPod { .. } => "UnknownPod",
            Refusal::NoAssociation { .. } => "NoAssociation",
            Refusal::BadAssociation(_) => "BadAssociation",
            Refusal::Token(token::TokenError::PodMismatch { .. }) => "TokenPodMismatch",
            Refusal::Token(_) => "BadToken",
            Refusal::Throttled => "Throttled",
            Refusal::Credentials { code, .. } => code,
        }
    }
}
