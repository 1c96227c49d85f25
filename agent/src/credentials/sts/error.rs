//! Why STS gave no credentials: [`StsError`] keeps STS's code and request id for
//! the stock agent's error format, and classifies fault, throttling and transient
//! errors and whether a retry may help. Which HTTP status a pod gets for each is
//! decided at the edge, in `http::refusal`.

use std::path::PathBuf;

use aws_sdk_sts::config::http::HttpResponse;
use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::RequestId;

/// Why credentials could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum StsError {
    /// STS answered with an error document (AccessDenied, Throttling, ...).
    /// Displayed like the stock agent's upstream errors.
    #[error("[{}]: ({code}): {message}, fault: {}", request_id.as_deref().unwrap_or(""), fault(*status))]
    Service {
        /// STS error code, e.g. `AccessDenied`, `Throttling`, `ValidationError`.
        code: String,
        /// STS's message; never contains credentials.
        message: String,
        /// `x-amzn-RequestId`, for support cases and CloudTrail.
        request_id: Option<String>,
        /// HTTP status STS answered with.
        status: u16,
    },
    /// The call did not finish within [`StsSettings::call_timeout`] (or a connect
    /// or attempt timeout fired on every attempt).
    ///
    /// [`StsSettings::call_timeout`]: super::StsSettings::call_timeout
    #[error("STS call timed out: {message}")]
    Timeout {
        /// The SDK's error chain.
        message: String,
    },
    /// STS could not be reached (connection refused, DNS, TLS), or the agent's own
    /// credentials could not be resolved.
    #[error("STS could not be reached: {message}")]
    Dispatch {
        /// The SDK's error chain.
        message: String,
    },
    /// STS answered something that is not a usable response (unparseable body,
    /// no credentials in it, an expiry out of range).
    #[error("unusable STS response: {message}")]
    InvalidResponse {
        /// What was wrong with it.
        message: String,
    },
    /// The request could not be built (invalid input the SDK rejects locally).
    #[error("STS request could not be built: {message}")]
    Construction {
        /// The SDK's error chain.
        message: String,
    },
    /// IRSA: the pod has no projected service account token for AWS on this node.
    #[error("no web identity token for the pod under {}", path.display())]
    WebIdentityTokenMissing {
        /// The directory that was searched.
        path: PathBuf,
    },
    /// IRSA: the token exists but could not be read.
    #[error("cannot read web identity token {}: {source}", path.display())]
    WebIdentityTokenRead {
        /// The token file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn fault(status: u16) -> &'static str {
    if status >= 500 {
        "server"
    } else {
        "client"
    }
}

/// STS/AWS error codes that mean "slow down".
fn is_throttling_code(code: &str) -> bool {
    matches!(
        code,
        "Throttling"
            | "ThrottlingException"
            | "ThrottledException"
            | "RequestThrottled"
            | "RequestThrottledException"
            | "RequestLimitExceeded"
            | "TooManyRequestsException"
            | "SlowDown"
            | "PriorRequestNotComplete"
    )
}

/// Codes that are transient although STS may send them with a 4xx status.
fn is_transient_code(code: &str) -> bool {
    matches!(
        code,
        "IDPCommunicationError"
            | "InternalFailure"
            | "InternalError"
            | "ServiceUnavailable"
            | "RequestTimeout"
            | "RequestTimeoutException"
    )
}

impl StsError {
    /// Whether asking again later may succeed. Drives the cache: on a retryable
    /// error it keeps serving still-valid credentials; on a final one it evicts.
    pub fn is_retryable(&self) -> bool {
        match self {
            StsError::Service { code, status, .. } => {
                *status >= 500
                    || *status == 429
                    || is_throttling_code(code)
                    || is_transient_code(code)
            }
            StsError::Timeout { .. }
            | StsError::Dispatch { .. }
            | StsError::InvalidResponse { .. } => true,
            StsError::Construction { .. }
            | StsError::WebIdentityTokenMissing { .. }
            | StsError::WebIdentityTokenRead { .. } => false,
        }
    }

    /// STS said "slow down" (a throttling code, or HTTP 429).
    pub fn is_throttling(&self) -> bool {
        matches!(self, StsError::Service { code, status, .. }
            if is_throttling_code(code) || *status == 429)
    }

    /// STS reported trouble on its side that a later call may not meet, although
    /// it may send it with a 4xx status (e.g. `IDPCommunicationError`).
    pub fn is_transient(&self) -> bool {
        matches!(self, StsError::Service { code, .. } if is_transient_code(code))
    }

    /// STS (or IAM behind it) says what was asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StsError::Service { code, .. }
            if matches!(code.as_str(), "ResourceNotFound" | "ResourceNotFoundException" | "NoSuchEntity"))
    }

    /// A short code for metrics labels and audit records: STS's error code, or the
    /// kind of local failure.
    pub fn code(&self) -> &str {
        match self {
            StsError::Service { code, .. } => code,
            StsError::Timeout { .. } => "Timeout",
            StsError::Dispatch { .. } => "Dispatch",
            StsError::InvalidResponse { .. } => "InvalidResponse",
            StsError::Construction { .. } => "Construction",
            StsError::WebIdentityTokenMissing { .. } => "WebIdentityTokenMissing",
            StsError::WebIdentityTokenRead { .. } => "WebIdentityTokenRead",
        }
    }

    /// STS refused the duration because the role allows less (its
    /// `MaxSessionDuration`, 1 h unless raised). EKS itself is exempt from that
    /// limit; an agent calling STS directly is not.
    pub(super) fn exceeds_max_session_duration(&self) -> bool {
        matches!(self, StsError::Service { code, message, .. }
            if code == "ValidationError" && message.contains("MaxSessionDuration"))
    }

    pub(super) fn from_sdk<E>(err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(ctx) => StsError::Service {
                code: err.code().unwrap_or("Unknown").to_owned(),
                message: err.message().unwrap_or_default().to_owned(),
                request_id: err.request_id().map(str::to_owned),
                status: ctx.raw().status().as_u16(),
            },
            SdkError::TimeoutError(_) => StsError::Timeout {
                message: DisplayErrorContext(&err).to_string(),
            },
            SdkError::DispatchFailure(d) if d.is_timeout() => StsError::Timeout {
                message: DisplayErrorContext(&err).to_string(),
            },
            SdkError::ResponseError(_) => StsError::InvalidResponse {
                message: DisplayErrorContext(&err).to_string(),
            },
            SdkError::ConstructionFailure(_) => StsError::Construction {
                message: DisplayErrorContext(&err).to_string(),
            },
            // DispatchFailure, and whatever future SDKs add (the enum is non-exhaustive):
            // treat as "could not reach STS", which is retryable.
            _ => StsError::Dispatch {
                message: DisplayErrorContext(&err).to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str, status: u16) -> StsError {
        StsError::Service {
            code: code.into(),
            message: "msg".into(),
            request_id: Some("req-1".into()),
            status,
        }
    }

    #[test]
    fn error_classification() {
        // (error, retryable, throttling, transient)
        let cases = [
            (service("AccessDenied", 403), false, false, false),
            (service("InvalidParameterValue", 400), false, false, false),
            (service("ExpiredTokenException", 400), false, false, false),
            (service("ValidationError", 400), false, false, false),
            (service("Throttling", 400), true, true, false),
            (service("Whatever", 429), true, true, false),
            (service("IDPCommunicationError", 400), true, false, true),
            (service("InternalFailure", 500), true, false, true),
            (service("ServiceUnavailable", 503), true, false, true),
            (service("Unknown", 502), true, false, false),
            (
                StsError::Timeout {
                    message: "t".into(),
                },
                true,
                false,
                false,
            ),
            (
                StsError::Dispatch {
                    message: "d".into(),
                },
                true,
                false,
                false,
            ),
            (
                StsError::InvalidResponse {
                    message: "r".into(),
                },
                true,
                false,
                false,
            ),
            (
                StsError::Construction {
                    message: "c".into(),
                },
                false,
                false,
                false,
            ),
            (
                StsError::WebIdentityTokenMissing { path: "/x".into() },
                false,
                false,
                false,
            ),
        ];
        for (err, retryable, throttling, transient) in cases {
            assert_eq!(err.is_retryable(), retryable, "{err}");
            assert_eq!(err.is_throttling(), throttling, "{err}");
            assert_eq!(err.is_transient(), transient, "{err}");
        }
        assert!(service("NoSuchEntity", 404).is_not_found());
        assert!(service("ResourceNotFound", 400).is_not_found());
        assert!(!service("AccessDenied", 403).is_not_found());
    }

    #[test]
    fn service_error_display_matches_stock_agent() {
        assert_eq!(
            service("AccessDenied", 403).to_string(),
            "[req-1]: (AccessDenied): msg, fault: client"
        );
        assert_eq!(
            service("InternalFailure", 500).to_string(),
            "[req-1]: (InternalFailure): msg, fault: server"
        );
        assert_eq!(service("AccessDenied", 403).code(), "AccessDenied");
    }

    #[test]
    fn max_session_duration_error_detected() {
        let e = StsError::Service {
            code: "ValidationError".into(),
            message:
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."
                    .into(),
            request_id: None,
            status: 400,
        };
        assert!(e.exceeds_max_session_duration());
        assert!(!service("ValidationError", 400).exceeds_max_session_duration());
    }
}
