//! Why a caller gets no credentials, and the one place that decides the HTTP
//! status and body each reason gets. The error types of the other modules carry
//! codes and classifications (`is_retryable`, `is_throttling`, ...), never HTTP
//! statuses: the mapping to what the SDKs see lives here.

use hyper::StatusCode;

use crate::{
    attribution::cgroup::CgroupError,
    credentials::eks_auth::EksAuthError,
    credentials::{cache::CacheError, sts::StsError, upstream::UpstreamError},
    http::token,
    model::PodUid,
    sources::associations::AssociationError,
};

/// Why a caller gets no credentials. Each maps to a status and a plain-text body
/// (the `Display` text). A variant with a cause holds it as its `#[source]`, for
/// the log; where the body names the cause too (the stock agent's bodies do),
/// its text is also formatted in.
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
    Ambiguous(#[source] Box<CgroupError>),
    /// Other cgroup index failure.
    #[error("Internal error resolving the caller's cgroup: {0}")]
    Cgroup(#[source] Box<CgroupError>),
    /// The pod directory does not know the pod (yet).
    #[error("Pod {uid} is not known to the agent yet; retry")]
    UnknownPod { uid: PodUid },
    /// No association for the pod's service account.
    #[error("No Pod Identity association for service account {namespace}/{service_account} (pod {namespace}/{pod})")]
    NoAssociation {
        namespace: String,
        service_account: String,
        pod: String,
    },
    /// An association exists but is unusable.
    #[error("Invalid Pod Identity association: {0}")]
    BadAssociation(#[source] Box<AssociationError>),
    /// Token cross-check failed.
    #[error("{0}")]
    Token(token::TokenError),
    /// The caller is over its request rate.
    #[error("Too Many Requests")]
    Throttled,
    /// STS (or the cache) could not produce credentials. `body` is what the pod
    /// reads (see [`Refusal::credentials`]); the error, with its chain, is the
    /// source, for the log.
    #[error("{body}")]
    Credentials {
        #[source]
        error: CacheError,
        body: String,
    },
}

/// Told about each refusal on the credentials endpoint, with the pod when the
/// agent knows it (e.g. to post a Kubernetes Event on it). Called on the request
/// path: an implementation must return at once (queue, never wait).
pub trait RefusalObserver: Send + Sync {
    fn refused(&self, pod: Option<&crate::model::PodInfo>, refusal: &Refusal);
}

impl From<CacheError> for Refusal {
    fn from(e: CacheError) -> Self {
        Refusal::credentials(e)
    }
}

impl From<StsError> for Refusal {
    fn from(e: StsError) -> Self {
        Refusal::credentials(CacheError::Upstream(std::sync::Arc::new(e.into())))
    }
}

impl From<EksAuthError> for Refusal {
    fn from(e: EksAuthError) -> Self {
        Refusal::credentials(CacheError::Upstream(std::sync::Arc::new(e.into())))
    }
}

impl Refusal {
    /// No credentials for the pod because of `error`. The body is the stock
    /// agent's short upstream form, `[<request id>]: (<code>): <message>, fault:
    /// client|server`: STS's own code, message and request id for an error STS
    /// answered; a fixed message and the agent's generated request id when STS
    /// could not be asked (timeout, unreachable, unusable answer). The SDK's error
    /// chain never reaches the pod; the cache logs it with the same request id.
    pub fn credentials(error: CacheError) -> Self {
        let body = credentials_body(&error);
        Refusal::Credentials { error, body }
    }

    /// The status the caller gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Unattributed
            | Refusal::InvalidHost { .. }
            | Refusal::NotAPod { .. }
            | Refusal::Ambiguous(_) => StatusCode::FORBIDDEN,
            Refusal::LookupFailed | Refusal::Cgroup(_) => StatusCode::INTERNAL_SERVER_ERROR,
            // Retryable: the cgroup index or the pod watch may be a moment behind.
            Refusal::CgroupNotFound { .. } | Refusal::UnknownPod { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::NoAssociation { .. } => StatusCode::NOT_FOUND,
            Refusal::BadAssociation(_) => StatusCode::BAD_REQUEST,
            Refusal::Token(e) => token_status(e),
            Refusal::Throttled => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Credentials { error, .. } => credentials_status(error),
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
            Refusal::Credentials { error, .. } => error.code(),
        }
    }
}

/// The status a pod gets for an EKS Auth failure.
/// Status for the pod. EKS Auth's own status is passed through, as the stock
/// agent does (AccessDenied 400, ResourceNotFound 404, Throttling 429, ...);
/// trouble reaching it is a 503 (both botocore and the Rust SDK retry 5xx);
/// the token check's refusals are 400, or 403 for another pod's token.
pub fn eks_auth_status(e: &EksAuthError) -> StatusCode {
    let code = match e {
        EksAuthError::Token(e) => return token_status(e),
        EksAuthError::Service { status, kind, .. } => {
            if *status >= 400 {
                *status
            } else {
                // An error document with a success status: trust the model.
                kind.modeled_status().unwrap_or(500)
            }
        }
        EksAuthError::Timeout { .. } | EksAuthError::Dispatch { .. } => 503,
        EksAuthError::InvalidResponse { .. } | EksAuthError::Construction { .. } => 500,
        EksAuthError::SubjectMismatch { .. } => 403,
    };
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// As the stock agent: a token naming another pod is forbidden, any other bad
/// token is a bad request.
pub fn token_status(e: &token::TokenError) -> StatusCode {
    match e {
        token::TokenError::PodMismatch { .. } => StatusCode::FORBIDDEN,
        token::TokenError::Empty
        | token::TokenError::Unparseable(_)
        | token::TokenError::Claims(_) => StatusCode::BAD_REQUEST,
    }
}

fn credentials_body(e: &CacheError) -> String {
    let CacheError::Upstream(e) = e else {
        // Local and fixed: too-short credentials, an aborted fetch.
        return e.to_string();
    };
    match &**e {
        UpstreamError::Sts(e) => sts_body(e),
        UpstreamError::EksAuth(e) => eks_auth_body(e),
        UpstreamError::Misrouted => e.to_string(),
    }
}

/// `[<request id>]: (<code>): <message>, fault: <fault>`, with the agent's
/// generated request id when the upstream gave none.
fn upstream_body(request_id: Option<&str>, code: &str, message: &str, fault: &str) -> String {
    let id = request_id.map_or_else(
        crate::credentials::sts::error::generate_request_id,
        str::to_owned,
    );
    format!("[{id}]: ({code}): {message}, fault: {fault}")
}

fn sts_body(e: &StsError) -> String {
    let upstream = |code: &str, message: &str, fault: &str| {
        upstream_body(e.request_id(), code, message, fault)
    };
    match e {
        StsError::Service { code, message, .. } => upstream(
            code,
            message,
            if e.is_server_fault() {
                "server"
            } else {
                "client"
            },
        ),
        StsError::Timeout { .. } => {
            upstream(e.code(), "the agent's call to STS timed out", "server")
        }
        StsError::Dispatch { .. } => upstream(e.code(), "the agent could not reach STS", "server"),
        StsError::InvalidResponse { .. } => upstream(
            e.code(),
            "STS sent a response the agent cannot use",
            "server",
        ),
        StsError::Construction { .. } => upstream(
            e.code(),
            "the agent could not build the STS request",
            "server",
        ),
        // Why (the node role refused, a broken IRSA token of the agent's) is for
        // the operator, in the log.
        StsError::AgentCredentials { .. } => upstream(
            e.code(),
            "the agent has no usable AWS credentials of its own",
            "server",
        ),
        // Not upstream errors: the agent's own short messages.
        StsError::WebIdentityTokenMissing { .. }
        | StsError::WebIdentityTokenInvalid { .. }
        | StsError::WebIdentityTokenRead { .. } => e.to_string(),
    }
}

/// EKS Auth's own errors and the token check's refusals pass through as the stock
/// agent renders them; trouble reaching EKS Auth gets a fixed message (the SDK's
/// chain is for the log).
fn eks_auth_body(e: &EksAuthError) -> String {
    let upstream = |message: &str| upstream_body(e.request_id(), e.code(), message, "server");
    match e {
        EksAuthError::Token(_)
        | EksAuthError::Service { .. }
        | EksAuthError::SubjectMismatch { .. } => e.pod_body(),
        EksAuthError::Timeout { .. } => upstream("the agent's call to EKS Auth timed out"),
        EksAuthError::Dispatch { .. } => upstream("the agent could not reach EKS Auth"),
        EksAuthError::InvalidResponse { .. } => {
            upstream("EKS Auth sent a response the agent cannot use")
        }
        EksAuthError::Construction { .. } => {
            upstream("the agent could not build the EKS Auth request")
        }
    }
}

fn credentials_status(e: &CacheError) -> StatusCode {
    match e {
        CacheError::Upstream(e) => match &**e {
            UpstreamError::Sts(e) => sts_status(e),
            UpstreamError::EksAuth(e) => eks_auth_status(e),
            UpstreamError::Misrouted => StatusCode::INTERNAL_SERVER_ERROR,
        },
        CacheError::ShortLived { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        CacheError::UpstreamSlow { .. } | CacheError::FetchAborted => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// 4xx is final for the Rust SDK (it never retries it), 5xx makes SDKs retry, so
/// only transient trouble gets 5xx. Final STS errors answer 400 as the stock agent
/// does for AccessDenied, ExpiredToken, InvalidParameter...; a pod without a token
/// answers 404 like EKS's ResourceNotFound (nothing to assume with).
fn sts_status(e: &StsError) -> StatusCode {
    match e {
        StsError::Service { status, .. } => {
            if e.is_throttling() {
                StatusCode::TOO_MANY_REQUESTS
            } else if e.is_not_found() {
                StatusCode::NOT_FOUND
            } else if *status == 503 {
                StatusCode::SERVICE_UNAVAILABLE
            } else if *status >= 500 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else if e.is_transient() {
                // e.g. IDPCommunicationError, sent with a 400.
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_REQUEST
            }
        }
        StsError::Timeout { .. }
        | StsError::Dispatch { .. }
        | StsError::AgentCredentials { .. } => StatusCode::SERVICE_UNAVAILABLE,
        StsError::InvalidResponse { .. } | StsError::Construction { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        StsError::WebIdentityTokenMissing { .. } => StatusCode::NOT_FOUND,
        // Final, like the stock agent's token claim validations.
        StsError::WebIdentityTokenInvalid { .. } => StatusCode::BAD_REQUEST,
        StsError::WebIdentityTokenRead { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{cache::CacheError, sts::StsError};
    use crate::testing::sts_error;
    use hyper::StatusCode;
    use std::{sync::Arc, time::Duration};

    #[test]
    fn credential_errors_get_their_statuses_here() {
        let cases = [
            (sts_error("AccessDenied", 403), StatusCode::BAD_REQUEST),
            (
                sts_error("InvalidParameterValue", 400),
                StatusCode::BAD_REQUEST,
            ),
            (
                sts_error("ExpiredTokenException", 400),
                StatusCode::BAD_REQUEST,
            ),
            (
                sts_error("MalformedPolicyDocument", 400),
                StatusCode::BAD_REQUEST,
            ),
            (
                sts_error("RegionDisabledException", 403),
                StatusCode::BAD_REQUEST,
            ),
            (sts_error("ValidationError", 400), StatusCode::BAD_REQUEST),
            (sts_error("Throttling", 400), StatusCode::TOO_MANY_REQUESTS),
            (sts_error("Whatever", 429), StatusCode::TOO_MANY_REQUESTS),
            (sts_error("ResourceNotFound", 400), StatusCode::NOT_FOUND),
            (sts_error("NoSuchEntity", 404), StatusCode::NOT_FOUND),
            (
                sts_error("IDPCommunicationError", 400),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                sts_error("InternalFailure", 500),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                sts_error("ServiceUnavailable", 503),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (sts_error("Unknown", 502), StatusCode::INTERNAL_SERVER_ERROR),
            (
                StsError::AgentCredentials {
                    request_id: "id".into(),
                    source: "no credentials".into(),
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                StsError::WebIdentityTokenMissing { path: "/x".into() },
                StatusCode::NOT_FOUND,
            ),
            (
                StsError::WebIdentityTokenInvalid {
                    path: "/x".into(),
                    reason: "its audience (aud) is not sts.amazonaws.com",
                },
                StatusCode::BAD_REQUEST,
            ),
            (
                StsError::WebIdentityTokenRead {
                    path: "/x".into(),
                    source: std::io::Error::other("boom"),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (err, status) in cases {
            let shown = err.to_string();
            assert_eq!(Refusal::from(err).status(), status, "{shown}");
        }
        let short = CacheError::ShortLived {
            remaining: Duration::from_secs(60),
            min_remaining: Duration::from_secs(900),
        };
        assert_eq!(
            Refusal::from(short).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            Refusal::from(CacheError::UpstreamSlow {
                waited: Duration::from_millis(900)
            })
            .status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            Refusal::from(CacheError::FetchAborted).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let r = Refusal::from(CacheError::Upstream(Arc::new(UpstreamError::from(
            sts_error("Throttling", 400),
        ))));
        assert_eq!(
            (r.status(), r.code()),
            (StatusCode::TOO_MANY_REQUESTS, "Throttling")
        );
    }

    #[test]
    fn token_errors_get_their_statuses_here() {
        let mismatch = token::TokenError::PodMismatch {
            token_pod: "a".into(),
            kernel_pod: crate::testing::pod_uid(crate::testing::POD_UID),
        };
        assert_eq!(Refusal::Token(mismatch).status(), StatusCode::FORBIDDEN);
        for e in [
            token::TokenError::Empty,
            token::TokenError::Unparseable("x"),
            token::TokenError::Claims("y"),
        ] {
            assert_eq!(Refusal::Token(e).status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn other_refusals_keep_their_statuses() {
        let cases = [
            (Refusal::Unattributed, StatusCode::FORBIDDEN),
            (Refusal::LookupFailed, StatusCode::INTERNAL_SERVER_ERROR),
            (
                Refusal::InvalidHost {
                    addr4: "a".into(),
                    addr6: "b".into(),
                    host: "c".into(),
                },
                StatusCode::FORBIDDEN,
            ),
            (
                Refusal::CgroupNotFound { cgroup_id: 1 },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (Refusal::NotAPod { path: "/".into() }, StatusCode::FORBIDDEN),
            (
                Refusal::UnknownPod {
                    uid: crate::testing::pod_uid(crate::testing::POD_UID),
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                Refusal::NoAssociation {
                    namespace: "n".into(),
                    service_account: "s".into(),
                    pod: "p".into(),
                },
                StatusCode::NOT_FOUND,
            ),
            (Refusal::Throttled, StatusCode::TOO_MANY_REQUESTS),
        ];
        for (r, status) in cases {
            assert_eq!(r.status(), status, "{r}");
        }

        // A cause is the source (for the log) and, as before, named in the body.
        let with_causes = [
            (
                Refusal::Ambiguous(Box::new(CgroupError::MalformedPodSegment {
                    path: "/kubepods/besteffort/podx".into(),
                    segment: "podx".into(),
                })),
                StatusCode::FORBIDDEN,
                "Access Denied. The caller's cgroup cannot be attributed to one pod: ",
            ),
            (
                Refusal::Cgroup(Box::new(CgroupError::TooLarge {
                    root: "/sys/fs/cgroup".into(),
                    limit: 1,
                })),
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error resolving the caller's cgroup: ",
            ),
            (
                Refusal::BadAssociation(Box::new(AssociationError::InvalidRoleArn {
                    origin: crate::model::Source::File,
                    namespace: "n".into(),
                    service_account: "s".into(),
                    field: "roleArn".into(),
                    arn: "x".into(),
                })),
                StatusCode::BAD_REQUEST,
                "Invalid Pod Identity association: ",
            ),
        ];
        for (r, status, body) in with_causes {
            let cause = std::error::Error::source(&r).expect("a source").to_string();
            assert_eq!(r.to_string(), format!("{body}{cause}"));
            assert_eq!(r.status(), status, "{r}");
        }
    }

    #[test]
    fn credential_bodies_are_the_short_upstream_form_without_causes() {
        let chain = || -> crate::credentials::sts::error::BoxError {
            "dispatch failure: io error: tcp connect error 10.0.0.7:443: Connection refused (os error 111)".into()
        };
        let cases = [
            (
                StsError::Timeout {
                    request_id: "id-1".into(),
                    source: chain(),
                },
                "[id-1]: (Timeout): the agent's call to STS timed out, fault: server",
            ),
            (
                StsError::Dispatch {
                    request_id: "id-2".into(),
                    source: chain(),
                },
                "[id-2]: (Dispatch): the agent could not reach STS, fault: server",
            ),
            (
                StsError::InvalidResponse {
                    request_id: "id-3".into(),
                    source: chain(),
                },
                "[id-3]: (InvalidResponse): STS sent a response the agent cannot use, fault: server",
            ),
            (
                StsError::Construction {
                    request_id: "id-4".into(),
                    source: chain(),
                },
                "[id-4]: (Construction): the agent could not build the STS request, fault: server",
            ),
            (
                StsError::AgentCredentials {
                    request_id: "id-5".into(),
                    source: "node role refused: --allow-node-role".into(),
                },
                "[id-5]: (AgentCredentials): the agent has no usable AWS credentials of its own, fault: server",
            ),
            (
                sts_error("AccessDenied", 403),
                "[req-1]: (AccessDenied): msg, fault: client",
            ),
            (
                sts_error("InternalFailure", 500),
                "[req-1]: (InternalFailure): msg, fault: server",
            ),
            (
                StsError::WebIdentityTokenRead {
                    path: "/p/token".into(),
                    source: std::io::Error::other("secret detail"),
                },
                "cannot read web identity token /p/token",
            ),
        ];
        for (err, body) in cases {
            let r = Refusal::from(err);
            assert_eq!(r.to_string(), body);
            // The cause stays reachable for the log.
            if !body.starts_with("[req-1]") {
                assert!(std::error::Error::source(&r).is_some(), "{body}");
            }
        }
    }

    #[test]
    fn a_missing_request_id_is_generated_once_per_refusal() {
        let r = Refusal::from(StsError::Service {
            code: "InternalFailure".into(),
            message: "oops".into(),
            request_id: None,
            status: 500,
        });
        let body = r.to_string();
        assert_eq!(body, r.to_string(), "stable across displays");
        let id = body
            .strip_prefix('[')
            .and_then(|b| b.split_once(']'))
            .map(|(id, _)| id)
            .unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{body}");
        assert!(body.ends_with("]: (InternalFailure): oops, fault: server"));
    }
}
