//! Why EKS Auth gave no credentials: [`EksAuthError`] keeps the service's HTTP
//! status, error code, message, request id and fault for every error of
//! `AssumeRoleForPodIdentity`, renders the stock agent's pod-facing body, and says
//! whether a retry may help and whether cached credentials must go.
//!
//! The nine modeled errors (eks-auth 2023-11-26), as the service sends them:
//!
//! | [`ErrorKind`] | `x-amzn-errortype` | status | fault |
//! |---|---|---|---|
//! | `AccessDenied` | `AccessDeniedException` | 400 | client |
//! | `ExpiredToken` | `ExpiredTokenException` | 400 | client |
//! | `InternalServer` | `InternalServerException` | 500 | server |
//! | `InvalidParameter` | `InvalidParameterException` | 400 | client |
//! | `InvalidRequest` | `InvalidRequestException` | 400 | client |
//! | `InvalidToken` | `InvalidTokenException` | 400 | client |
//! | `ResourceNotFound` | `ResourceNotFoundException` | 404 | client |
//! | `ServiceUnavailable` | `ServiceUnavailableException` | 503 | server |
//! | `Throttling` | `ThrottlingException` | 429 | client |
//!
//! The fault comes from the model, as in the Go SDK the stock agent uses (an error
//! the model does not know has fault `unknown` there, and here).

use aws_sdk_eksauth::config::http::HttpResponse;
use aws_sdk_eksauth::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_eksauth::operation::assume_role_for_pod_identity::AssumeRoleForPodIdentityError;
use aws_sdk_eksauth::operation::RequestId;

use super::pod_token::TokenError;

/// What the SDK reports when `AssumeRoleForPodIdentity` fails.
pub type SdkFailure = SdkError<AssumeRoleForPodIdentityError, HttpResponse>;

/// Which of `AssumeRoleForPodIdentity`'s modeled errors EKS Auth answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    AccessDenied,
    ExpiredToken,
    InternalServer,
    InvalidParameter,
    InvalidRequest,
    InvalidToken,
    ResourceNotFound,
    ServiceUnavailable,
    Throttling,
    /// A code the model does not list (or none at all).
    Unmodeled,
}

/// Whose fault an error is, as the service model says (`client` for the caller's
/// request, `server` for the service's trouble).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    Client,
    Server,
    Unknown,
}

impl Fault {
    pub const fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Server => "server",
            Fault::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ErrorKind {
    /// The nine modeled errors.
    pub const MODELED: [ErrorKind; 9] = [
        ErrorKind::AccessDenied,
        ErrorKind::ExpiredToken,
        ErrorKind::InternalServer,
        ErrorKind::InvalidParameter,
        ErrorKind::InvalidRequest,
        ErrorKind::InvalidToken,
        ErrorKind::ResourceNotFound,
        ErrorKind::ServiceUnavailable,
        ErrorKind::Throttling,
    ];

    /// The error code (`x-amzn-errortype`) EKS Auth sends; `None` for [`ErrorKind::Unmodeled`].
    pub const fn code(self) -> Option<&'static str> {
        Some(match self {
            ErrorKind::AccessDenied => "AccessDeniedException",
            ErrorKind::ExpiredToken => "ExpiredTokenException",
            ErrorKind::InternalServer => "InternalServerException",
            ErrorKind::InvalidParameter => "InvalidParameterException",
            ErrorKind::InvalidRequest => "InvalidRequestException",
            ErrorKind::InvalidToken => "InvalidTokenException",
            ErrorKind::ResourceNotFound => "ResourceNotFoundException",
            ErrorKind::ServiceUnavailable => "ServiceUnavailableException",
            ErrorKind::Throttling => "ThrottlingException",
            ErrorKind::Unmodeled => return None,
        })
    }

    /// The kind for an error code, with or without the `Exception` suffix.
    pub fn from_code(code: &str) -> Self {
        let short = code.strip_suffix("Exception").unwrap_or(code);
        Self::MODELED
            .into_iter()
            .find(|k| k.code().and_then(|c| c.strip_suffix("Exception")) == Some(short))
            .unwrap_or(ErrorKind::Unmodeled)
    }

    /// The HTTP status the model gives the error.
    pub const fn modeled_status(self) -> Option<u16> {
        match self {
            ErrorKind::AccessDenied
            | ErrorKind::ExpiredToken
            | ErrorKind::InvalidParameter
            | ErrorKind::InvalidRequest
            | ErrorKind::InvalidToken => Some(400),
            ErrorKind::ResourceNotFound => Some(404),
            ErrorKind::Throttling => Some(429),
            ErrorKind::InternalServer => Some(500),
            ErrorKind::ServiceUnavailable => Some(503),
            ErrorKind::Unmodeled => None,
        }
    }

    pub const fn fault(self) -> Fault {
        match self {
            ErrorKind::InternalServer | ErrorKind::ServiceUnavailable => Fault::Server,
            ErrorKind::Unmodeled => Fault::Unknown,
            _ => Fault::Client,
        }
    }

    /// Errors after which the stock agent drops the pod's cached credentials: the
    /// association, the token or the role's trust is gone, so serving what was
    /// issued before would outlive the administrator's decision.
    pub const fn is_irrecoverable(self) -> bool {
        matches!(
            self,
            ErrorKind::AccessDenied
                | ErrorKind::ExpiredToken
                | ErrorKind::InvalidToken
                | ErrorKind::ResourceNotFound
        )
    }

    fn of(err: &AssumeRoleForPodIdentityError) -> Self {
        use AssumeRoleForPodIdentityError as E;
        match err {
            E::AccessDeniedException(_) => ErrorKind::AccessDenied,
            E::ExpiredTokenException(_) => ErrorKind::ExpiredToken,
            E::InternalServerException(_) => ErrorKind::InternalServer,
            E::InvalidParameterException(_) => ErrorKind::InvalidParameter,
            E::InvalidRequestException(_) => ErrorKind::InvalidRequest,
            E::InvalidTokenException(_) => ErrorKind::InvalidToken,
            E::ResourceNotFoundException(_) => ErrorKind::ResourceNotFound,
            E::ServiceUnavailableException(_) => ErrorKind::ServiceUnavailable,
            E::ThrottlingException(_) => ErrorKind::Throttling,
            _ => err
                .code()
                .map_or(ErrorKind::Unmodeled, ErrorKind::from_code),
        }
    }
}

/// Why credentials could not be obtained from EKS Auth.
#[derive(Debug, thiserror::Error)]
pub enum EksAuthError {
    /// The pod's token was refused before any upstream call (empty, unparseable,
    /// expired, wrong audience: 400; another pod's: 403).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// EKS Auth answered with an error document. Displayed as the stock agent
    /// answers pods: `[<request id>]: (<Code>): <message>, fault: client|server`.
    #[error("[{}]: ({code}): {message}, fault: {}", request_id.as_deref().unwrap_or(""), kind.fault())]
    Service {
        /// Which modeled error it is.
        kind: ErrorKind,
        /// The code as sent, e.g. `AccessDeniedException`.
        code: String,
        /// EKS Auth's message; never contains credentials.
        message: String,
        /// `x-amzn-requestid`, for support cases.
        request_id: Option<String>,
        /// The HTTP status EKS Auth answered with.
        status: u16,
        #[source]
        source: Box<SdkFailure>,
    },
    /// No answer within the call budget (or a connect or attempt timeout fired on
    /// every attempt).
    #[error("EKS Auth call timed out")]
    Timeout {
        #[source]
        source: Box<SdkFailure>,
    },
    /// EKS Auth could not be reached (connection refused, DNS, TLS), or the agent's
    /// own credentials could not be resolved.
    #[error("EKS Auth could not be reached")]
    Dispatch {
        #[source]
        source: Box<SdkFailure>,
    },
    /// An answer that is not usable: unparseable, or without credentials, role or
    /// association, or already expired.
    #[error("unusable EKS Auth response: {message}")]
    InvalidResponse {
        message: String,
        #[source]
        source: Option<Box<SdkFailure>>,
    },
    /// The request could not be built (invalid input the SDK rejects locally, no
    /// region).
    #[error("EKS Auth request could not be built")]
    Construction {
        #[source]
        source: Box<SdkFailure>,
    },
    /// EKS Auth issued credentials for another service account than the one the
    /// calling pod runs as; they are not served.
    #[error(
        "EKS Auth answered for service account {got_namespace}/{got_service_account}, \
         but the calling pod runs as {pod_namespace}/{pod_service_account}"
    )]
    SubjectMismatch {
        got_namespace: String,
        got_service_account: String,
        pod_namespace: String,
        pod_service_account: String,
    },
}

impl EksAuthError {
    pub(super) fn from_sdk(err: SdkFailure) -> Self {
        match &err {
            // A success status the SDK could not read (a malformed or cut body
            // turns into an error without a code): nothing usable, retryable,
            // and no reason to drop a pod's cached credentials.
            SdkError::ServiceError(ctx) if ctx.raw().status().is_success() => {
                EksAuthError::InvalidResponse {
                    message: "the response could not be parsed".into(),
                    source: Some(Box::new(err)),
                }
            }
            SdkError::ServiceError(ctx) => {
                let kind = ErrorKind::of(ctx.err());
                let code = err
                    .code()
                    .or(kind.code())
                    .unwrap_or("UnknownError")
                    .to_owned();
                let message = err.message().unwrap_or_default().to_owned();
                // The parsed error carries `x-amzn-requestid`; the raw headers too.
                let request_id = ctx
                    .err()
                    .request_id()
                    .or_else(|| err.request_id())
                    .map(str::to_owned);
                let status = ctx.raw().status().as_u16();
                EksAuthError::Service {
                    kind,
                    code,
                    message,
                    request_id,
                    status,
                    source: Box::new(err),
                }
            }
            SdkError::TimeoutError(_) => EksAuthError::Timeout {
                source: Box::new(err),
            },
            SdkError::DispatchFailure(d) if d.is_timeout() => EksAuthError::Timeout {
                source: Box::new(err),
            },
            SdkError::ResponseError(_) => EksAuthError::InvalidResponse {
                message: "the response could not be parsed".into(),
                source: Some(Box::new(err)),
            },
            SdkError::ConstructionFailure(_) => EksAuthError::Construction {
                source: Box::new(err),
            },
            // DispatchFailure, and whatever future SDKs add (the enum is
            // non-exhaustive): could not reach EKS Auth, which is retryable.
            _ => EksAuthError::Dispatch {
                source: Box::new(err),
            },
        }
    }

    /// The modeled error EKS Auth answered with, if it answered with one.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            EksAuthError::Service { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// What the SDK reported, when the call was made.
    pub fn sdk_error(&self) -> Option<&SdkFailure> {
        match self {
            EksAuthError::Service { source, .. }
            | EksAuthError::Timeout { source }
            | EksAuthError::Dispatch { source }
            | EksAuthError::Construction { source } => Some(source),
            EksAuthError::InvalidResponse { source, .. } => source.as_deref(),
            EksAuthError::Token(_) | EksAuthError::SubjectMismatch { .. } => None,
        }
    }

    /// EKS Auth's request id, if it answered.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            EksAuthError::Service { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// Whether asking again later may succeed (a cache keeps serving still-valid
    /// credentials meanwhile).
    pub fn is_retryable(&self) -> bool {
        match self {
            EksAuthError::Service { kind, status, .. } => {
                *status >= 500 || *status == 429 || *kind == ErrorKind::Throttling
            }
            EksAuthError::Timeout { .. }
            | EksAuthError::Dispatch { .. }
            | EksAuthError::InvalidResponse { .. } => true,
            EksAuthError::Token(_)
            | EksAuthError::Construction { .. }
            | EksAuthError::SubjectMismatch { .. } => false,
        }
    }

    /// Whether the pod's cached credentials must be dropped (the stock agent evicts
    /// on AccessDenied, ExpiredToken, InvalidToken and ResourceNotFound).
    pub fn is_irrecoverable(&self) -> bool {
        match self {
            EksAuthError::Service { kind, .. } => kind.is_irrecoverable(),
            EksAuthError::SubjectMismatch { .. } => true,
            _ => false,
        }
    }

    /// A short code for metrics labels and audit records: EKS Auth's error code,
    /// or the kind of local failure.
    pub fn code(&self) -> &str {
        match self {
            EksAuthError::Token(TokenError::PodMismatch { .. }) => "PodMismatch",
            EksAuthError::Token(_) => "InvalidPodToken",
            EksAuthError::Service { code, .. } => code,
            EksAuthError::Timeout { .. } => "Timeout",
            EksAuthError::Dispatch { .. } => "Dispatch",
            EksAuthError::InvalidResponse { .. } => "InvalidResponse",
            EksAuthError::Construction { .. } => "Construction",
            EksAuthError::SubjectMismatch { .. } => "SubjectMismatch",
        }
    }

    /// The plain-text body for the pod (without the trailing newline the HTTP
    /// layer adds): EKS Auth's errors as the stock agent renders them,
    /// `[<request id>]: (<Code>): <message>, fault: client|server`; the token
    /// check's refusals with the stock agent's texts; local failures with their
    /// cause chain.
    pub fn pod_body(&self) -> String {
        match self {
            EksAuthError::Token(_)
            | EksAuthError::Service { .. }
            | EksAuthError::SubjectMismatch { .. } => self.to_string(),
            _ => DisplayErrorContext(self).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::refusal::eks_auth_status;
    use aws_sdk_eksauth::types::error as model;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    /// What the SDK makes of an error document with `code` and `status`.
    fn service_failure(kind: ErrorKind, status: u16) -> SdkFailure {
        use AssumeRoleForPodIdentityError as E;
        let code = kind.code().unwrap_or("SomethingNewException");
        let meta = ErrorMetadata::builder()
            .code(code)
            .message("the message")
            .custom("aws_request_id", "5e8f0c1a-0000-4000-8000-00000000abcd")
            .build();
        let msg = Some("the message".to_owned());
        macro_rules! modeled {
            ($variant:ident, $ty:ident) => {
                E::$variant(
                    model::$ty::builder()
                        .set_message(msg.clone())
                        .meta(meta.clone())
                        .build(),
                )
            };
        }
        let err = match kind {
            ErrorKind::AccessDenied => modeled!(AccessDeniedException, AccessDeniedException),
            ErrorKind::ExpiredToken => modeled!(ExpiredTokenException, ExpiredTokenException),
            ErrorKind::InternalServer => {
                modeled!(InternalServerException, InternalServerException)
            }
            ErrorKind::InvalidParameter => {
                modeled!(InvalidParameterException, InvalidParameterException)
            }
            ErrorKind::InvalidRequest => {
                modeled!(InvalidRequestException, InvalidRequestException)
            }
            ErrorKind::InvalidToken => modeled!(InvalidTokenException, InvalidTokenException),
            ErrorKind::ResourceNotFound => {
                modeled!(ResourceNotFoundException, ResourceNotFoundException)
            }
            ErrorKind::ServiceUnavailable => {
                modeled!(ServiceUnavailableException, ServiceUnavailableException)
            }
            ErrorKind::Throttling => modeled!(ThrottlingException, ThrottlingException),
            ErrorKind::Unmodeled => E::generic(meta),
        };
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        SdkError::service_error(err, raw)
    }

    #[test]
    fn all_nine_errors_keep_status_code_message_request_id_and_fault() {
        for kind in ErrorKind::MODELED {
            let status = kind.modeled_status().unwrap();
            let e = EksAuthError::from_sdk(service_failure(kind, status));
            let EksAuthError::Service {
                kind: k,
                code,
                message,
                request_id,
                status: s,
                ..
            } = &e
            else {
                panic!("{e:?}")
            };
            assert_eq!(*k, kind);
            assert_eq!(Some(code.as_str()), kind.code());
            assert_eq!(message, "the message");
            assert_eq!(
                request_id.as_deref(),
                Some("5e8f0c1a-0000-4000-8000-00000000abcd")
            );
            assert_eq!(*s, status);
            assert_eq!(eks_auth_status(&e).as_u16(), status);
            assert_eq!(e.kind(), Some(kind));
            assert_eq!(e.code(), kind.code().unwrap());
            let fault = if status >= 500 { "server" } else { "client" };
            assert_eq!(
                e.pod_body(),
                format!(
                    "[5e8f0c1a-0000-4000-8000-00000000abcd]: ({}): the message, fault: {fault}",
                    kind.code().unwrap()
                )
            );
            assert_eq!(e.pod_body(), e.to_string());
            // The SDK's error stays reachable, as the source too.
            let source = std::error::Error::source(&e).expect("source kept");
            assert!(source.downcast_ref::<Box<SdkFailure>>().is_some());
            assert!(matches!(e.sdk_error(), Some(SdkError::ServiceError(_))));
        }
    }

    /// Found by tests/upstream_faults.rs: a malformed 200 became an
    /// `UnknownError`, and the pod's still-valid credentials were dropped.
    #[test]
    fn an_unreadable_success_is_an_invalid_response() {
        let raw = |status: u16| {
            HttpResponse::new(
                status.try_into().unwrap(),
                SdkBody::from(r#"{"credentials": {"accessKeyId": "#),
            )
        };
        let unreadable = || {
            AssumeRoleForPodIdentityError::generic(
                aws_smithy_types::error::ErrorMetadata::builder().build(),
            )
        };
        let e = EksAuthError::from_sdk(SdkError::service_error(unreadable(), raw(200)));
        assert!(matches!(e, EksAuthError::InvalidResponse { .. }), "{e}");
        assert!(e.is_retryable() && !e.is_irrecoverable());
        let e = EksAuthError::from_sdk(SdkError::service_error(unreadable(), raw(403)));
        assert!(
            matches!(e, EksAuthError::Service { status: 403, .. }),
            "{e}"
        );
    }

    #[test]
    fn retry_and_eviction_follow_the_stock_agent() {
        let cases = [
            (ErrorKind::AccessDenied, false, true),
            (ErrorKind::ExpiredToken, false, true),
            (ErrorKind::InvalidToken, false, true),
            (ErrorKind::ResourceNotFound, false, true),
            (ErrorKind::InvalidParameter, false, false),
            (ErrorKind::InvalidRequest, false, false),
            (ErrorKind::Throttling, true, false),
            (ErrorKind::InternalServer, true, false),
            (ErrorKind::ServiceUnavailable, true, false),
        ];
        for (kind, retryable, irrecoverable) in cases {
            let e = EksAuthError::from_sdk(service_failure(kind, kind.modeled_status().unwrap()));
            assert_eq!(e.is_retryable(), retryable, "{kind:?}");
            assert_eq!(e.is_irrecoverable(), irrecoverable, "{kind:?}");
        }
        let token = EksAuthError::from(TokenError::Empty);
        assert!(!token.is_retryable() && !token.is_irrecoverable());
        assert_eq!(eks_auth_status(&token).as_u16(), 400);
        assert_eq!(token.pod_body(), "Service account token cannot be empty");
        let mismatch = EksAuthError::from(TokenError::PodMismatch {
            token_pod: "a".into(),
            kernel_pod: crate::testing::pod_uid("2c48913c-b29f-11e7-9350-020968147796"),
        });
        assert_eq!(eks_auth_status(&mismatch).as_u16(), 403);
        assert_eq!(mismatch.code(), "PodMismatch");
    }

    #[test]
    fn unmodeled_errors_keep_their_code_with_fault_unknown() {
        let e = EksAuthError::from_sdk(service_failure(ErrorKind::Unmodeled, 502));
        assert_eq!(e.kind(), Some(ErrorKind::Unmodeled));
        assert_eq!(e.code(), "SomethingNewException");
        assert_eq!(eks_auth_status(&e).as_u16(), 502);
        assert!(e.is_retryable());
        assert_eq!(
            e.pod_body(),
            "[5e8f0c1a-0000-4000-8000-00000000abcd]: (SomethingNewException): the message, fault: unknown"
        );
    }

    #[test]
    fn codes_map_to_kinds() {
        for kind in ErrorKind::MODELED {
            let code = kind.code().unwrap();
            assert_eq!(ErrorKind::from_code(code), kind);
            assert_eq!(
                ErrorKind::from_code(code.strip_suffix("Exception").unwrap()),
                kind
            );
        }
        assert_eq!(ErrorKind::from_code("Whatever"), ErrorKind::Unmodeled);
        assert_eq!(ErrorKind::from_code(""), ErrorKind::Unmodeled);
    }
}
