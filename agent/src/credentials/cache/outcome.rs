//! What a request gets from the cache: how it was answered ([`CacheOutcome`]), or
//! why no credentials could be served ([`CacheError`]).

use std::sync::Arc;
use std::time::Duration;

use crate::credentials::upstream::UpstreamError;

/// How a request was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheOutcome {
    /// Served from the cache.
    Hit,
    /// STS was called for this request (by it or by a concurrent request it joined).
    Miss,
    /// STS failed; still-valid older credentials were served.
    Stale,
}

impl CacheOutcome {
    /// Label for metrics (`pod_identity_cache_state{state=...}`).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Stale => "stale",
        }
    }
}

/// Why no credentials could be served.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CacheError {
    /// The upstream (STS or EKS Auth) failed and no credentials can be served in
    /// the meantime.
    #[error(transparent)]
    Upstream(Arc<UpstreamError>),
    /// STS issued credentials that expire too soon to be served: the association's
    /// session duration is shorter than `min_remaining` allows.
    #[error("STS issued credentials with {remaining:?} left, less than the {min_remaining:?} clients need")]
    ShortLived {
        /// Time left on the new credentials.
        remaining: Duration,
        /// The configured minimum.
        min_remaining: Duration,
    },
    /// The upstream did not answer within the request's wait
    /// ([`CacheSettings::request_wait`](super::CacheSettings::request_wait)); the
    /// fetch goes on and the next request joins it.
    #[error("the upstream did not answer within {waited:?}; the fetch goes on, ask again")]
    UpstreamSlow {
        /// How long the request waited.
        waited: Duration,
    },
    /// The fetch ended without a result (it panicked, or the runtime is shutting
    /// down, or there is no Tokio runtime to run it on).
    #[error("credential fetch aborted")]
    FetchAborted,
}

impl CacheError {
    /// Whether asking again may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            CacheError::Upstream(e) => e.is_retryable(),
            // Still-valid credentials are kept and the key backs off: a session
            // that short may be the upstream's glitch, and it is never served.
            CacheError::ShortLived { .. } => true,
            CacheError::UpstreamSlow { .. } | CacheError::FetchAborted => true,
        }
    }

    /// The upstream's (or the agent's generated) request id of the failed call, if one was made.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            CacheError::Upstream(e) => e.request_id(),
            CacheError::ShortLived { .. }
            | CacheError::UpstreamSlow { .. }
            | CacheError::FetchAborted => None,
        }
    }

    /// Short code for metrics and audit records.
    pub fn code(&self) -> &str {
        match self {
            CacheError::Upstream(e) => e.code(),
            CacheError::ShortLived { .. } => "ShortLived",
            CacheError::UpstreamSlow { .. } => "UpstreamSlow",
            CacheError::FetchAborted => "FetchAborted",
        }
    }
}
