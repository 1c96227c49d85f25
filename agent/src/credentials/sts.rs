//! Obtaining a pod's credentials from STS.
//!
//! * EKS Pod Identity associations: `AssumeRole` with the agent's own credentials,
//!   an EKS-style session name and the six EKS session tags (transitive, so a
//!   chained target role sees them too), then optionally `AssumeRole` of the
//!   target role with the first role's credentials (role chaining).
//! * IRSA associations: `AssumeRoleWithWebIdentity` with the pod's own projected
//!   token, read from the kubelet's volume directory on this node. That call is
//!   unsigned (aws-sdk-sts resolves it with the no-auth scheme), so it works even
//!   when the agent itself has no AWS credentials.
//!
//! Errors keep STS's code and request id so the agent can answer as the stock
//! agent does (`[<request-id>]: (<ErrorCode>): <message>, fault: client|server`),
//! and say whether a retry might help, which drives the cache's stale-serving.

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sts::config::http::HttpResponse;
use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::RequestId;

use crate::credentials::types::{account_id_from_arn, Credentials, Secret};
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
const STS_MIN_SECS: u32 = 900;
const STS_MAX_SECS: u32 = 43_200;
/// Role chaining cap, and the `MaxSessionDuration` every IAM role has by default.
const ONE_HOUR_SECS: u32 = 3_600;
/// STS's limit on `RoleSessionName`.
pub const SESSION_NAME_MAX: usize = 64;
/// Volume name the EKS IRSA webhook gives the projected token.
pub const IRSA_VOLUME_PREFIX: &str = "aws-iam-token";
/// Volume Kubernetes injects into every pod with the API-server token. Never sent
/// to STS: it is a credential for the API server, not for AWS.
const KUBE_API_ACCESS_PREFIX: &str = "kube-api-access-";
/// Roles remembered as capped at 1 h (see [`StsFetcher`]); bounded so a stream of
/// bogus role ARNs cannot grow it without limit.
const CAPPED_ROLES_MAX: usize = 4096;

/// How to reach STS and what to put in the sessions. Plain values, so tests build
/// one directly (`StsSettings { endpoint_url: Some(..), ..Default::default() }`).
#[derive(Clone, Debug)]
pub struct StsSettings {
    /// STS endpoint override (moto in tests, a VPC endpoint in production);
    /// `None` uses the regional endpoint.
    pub endpoint_url: Option<String>,
    /// Region for STS. Empty: whatever aws-config detects (environment, profile, IMDS).
    pub region: String,
    /// Goes into session names and the `eks-cluster-name` tag.
    pub cluster_name: String,
    /// The `eks-cluster-arn` tag; left out when unknown (clusters outside EKS).
    pub cluster_arn: Option<String>,
    /// Budget for one STS operation, retries included.
    pub call_timeout: Duration,
    /// The kubelet's pods directory, holding `<pod uid>/volumes/...`.
    pub web_identity_token_dir: PathBuf,
    /// Attempts per STS operation (SDK standard retry mode, which also keeps a
    /// retry budget so an STS outage is not amplified).
    pub max_attempts: u32,
}

impl Default for StsSettings {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: String::new(),
            cluster_name: String::new(),
            cluster_arn: None,
            call_timeout: Duration::from_secs(5),
            web_identity_token_dir: PathBuf::from("/var/lib/kubelet/pods"),
            max_attempts: 3,
        }
    }
}

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

    /// Status the agent should answer with. 4xx is final for the Rust SDK (it never
    /// retries it), 5xx makes SDKs retry, so only transient trouble gets 5xx.
    /// Final STS errors answer 400 as the stock agent does for AccessDenied,
    /// ExpiredToken, InvalidParameter...; a pod without a token answers 404 like
    /// EKS's ResourceNotFound (nothing to assume with).
    pub fn http_status(&self) -> u16 {
        match self {
            StsError::Service { code, status, .. } => {
                if is_throttling_code(code) || *status == 429 {
                    429
                } else if matches!(
                    code.as_str(),
                    "ResourceNotFound" | "ResourceNotFoundException" | "NoSuchEntity"
                ) {
                    404
                } else if *status == 503 {
                    503
                } else if *status >= 500 {
                    500
                } else if is_transient_code(code) {
                    // e.g. IDPCommunicationError, sent with a 400.
                    503
                } else {
                    400
                }
            }
            StsError::Timeout { .. } | StsError::Dispatch { .. } => 503,
            StsError::InvalidResponse { .. } | StsError::Construction { .. } => 500,
            StsError::WebIdentityTokenMissing { .. } => 404,
            StsError::WebIdentityTokenRead { .. } => 500,
        }
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
    fn exceeds_max_session_duration(&self) -> bool {
        matches!(self, StsError::Service { code, message, .. }
            if code == "ValidationError" && message.contains("MaxSessionDuration"))
    }

    fn from_sdk<E>(err: SdkError<E, HttpResponse>) -> Self
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

/// Something that turns (pod, association) into credentials. [`StsFetcher`] in
/// production; the cache's tests use a fake.
pub trait Fetch: Send + Sync + 'static {
    /// Obtain fresh credentials for `pod` under `assoc`.
    fn fetch(
        &self,
        pod: &PodInfo,
        assoc: &Association,
    ) -> impl Future<Output = Result<Credentials, StsError>> + Send;
}

/// STS client for the agent.
///
/// Roles whose `MaxSessionDuration` turned out to be shorter than the requested
/// duration are remembered and asked for 1 h from then on (one wasted call per
/// role and agent lifetime instead of one per refresh).
pub struct StsFetcher {
    settings: StsSettings,
    client: aws_sdk_sts::Client,
    capped_roles: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for StsFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StsFetcher")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// One STS hop.
enum Hop<'a> {
    /// `AssumeRole`, signed with the agent's credentials, or with `via` when chaining.
    AssumeRole {
        tags: &'a [(&'static str, String)],
        via: Option<&'a Credentials>,
        /// `ExternalId` and inline session `Policy` (on the hop whose credentials the
        /// pod receives).
        external_id: Option<&'a str>,
        policy: Option<&'a str>,
    },
    /// `AssumeRoleWithWebIdentity` with the pod's token (unsigned), and the session
    /// policy when this hop's credentials are the pod's.
    WebIdentity {
        token: &'a str,
        policy: Option<&'a str>,
    },
}

impl StsFetcher {
    /// Client using the agent's own credentials from aws-config's default chain
    /// (environment, profile, web identity, container, IMDS), with the region and
    /// endpoint of `settings`.
    pub async fn new(settings: StsSettings) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeout_config(&settings))
            .retry_config(retry_config(&settings));
        if !settings.region.is_empty() {
            loader = loader.region(Region::new(settings.region.clone()));
        }
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        // Invariant 3: if the agent's own pod was given Pod Identity variables, the
        // default chain would ask the credentials address, i.e. this agent.
        if let Ok(uri) = std::env::var("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            if points_at_pod_identity_agent(&uri) {
                tracing::warn!(
                    uri,
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI points at the pod identity address; \
                     the agent ignores it and takes its own credentials from the environment, \
                     profile, web identity or IMDS"
                );
                let region =
                    (!settings.region.is_empty()).then(|| Region::new(settings.region.clone()));
                loader = loader.credentials_provider(chain_without_container_credentials(region));
            }
        }
        let sdk_config = loader.load().await;
        Self::with_sdk_config(settings, &sdk_config)
    }

    /// Client from a ready SDK config (tests pass static credentials); region,
    /// endpoint, timeouts and retries of `settings` override the config's.
    pub fn with_sdk_config(settings: StsSettings, sdk_config: &SdkConfig) -> Self {
        let mut builder = aws_sdk_sts::config::Builder::from(sdk_config)
            .timeout_config(timeout_config(&settings))
            .retry_config(retry_config(&settings));
        if !settings.region.is_empty() {
            builder = builder.region(Region::new(settings.region.clone()));
        }
        if let Some(url) = &settings.endpoint_url {
            builder = builder.endpoint_url(url.clone());
        }
        Self {
            client: aws_sdk_sts::Client::from_conf(builder.build()),
            settings,
            capped_roles: Mutex::new(HashSet::new()),
        }
    }

    /// The settings this fetcher was built with.
    pub fn settings(&self) -> &StsSettings {
        &self.settings
    }

    /// Fresh credentials for `pod` under `assoc` (see the module docs for the calls made).
    pub async fn fetch(&self, pod: &PodInfo, assoc: &Association) -> Result<Credentials, StsError> {
        let session = session_name(
            &self.settings.cluster_name,
            &pod.name,
            &uuid::Uuid::new_v4(),
        );
        let final_secs = session_duration_secs(assoc);
        // The first hop's credentials are used once, right away, when chaining.
        let first_secs = if assoc.target_role_arn.is_some() {
            ONE_HOUR_SECS
        } else {
            final_secs
        };
        let first = match assoc.mode {
            AssumeMode::PodIdentity => {
                let tags = if assoc.disable_session_tags {
                    Vec::new()
                } else {
                    session_tags(&self.settings, pod)
                };
                // ExternalId and the session policy belong to the hop whose
                // credentials the pod receives: the target role when chaining.
                let last = assoc.target_role_arn.is_none();
                let hop = Hop::AssumeRole {
                    tags: &tags,
                    via: None,
                    external_id: assoc.external_id.as_deref().filter(|_| last),
                    policy: assoc.policy.as_deref().filter(|_| last),
                };
                self.assume(&assoc.role_arn, &session, first_secs, &hop)
                    .await?
            }
            AssumeMode::WebIdentity => {
                let token =
                    read_web_identity_token(&self.settings.web_identity_token_dir, &pod.uid)
                        .await?;
                let hop = Hop::WebIdentity {
                    token: token.expose(),
                    policy: assoc
                        .policy
                        .as_deref()
                        .filter(|_| assoc.target_role_arn.is_none()),
                };
                self.assume(&assoc.role_arn, &session, first_secs, &hop)
                    .await?
            }
        };
        let Some(target) = assoc.target_role_arn.as_deref() else {
            return Ok(first);
        };
        // No tags on the second hop: the first hop's transitive tags carry over, and
        // STS rejects a request that sets a key already set transitively.
        let hop = Hop::AssumeRole {
            tags: &[],
            via: Some(&first),
            external_id: assoc.external_id.as_deref(),
            policy: assoc.policy.as_deref(),
        };
        self.assume(target, &session, final_secs, &hop).await
    }

    /// One hop, retried once with 1 h if the role's `MaxSessionDuration` is shorter.
    async fn assume(
        &self,
        role: &str,
        session: &str,
        secs: u32,
        hop: &Hop<'_>,
    ) -> Result<Credentials, StsError> {
        let capped = self.capped_roles.lock().is_ok_and(|c| c.contains(role));
        let secs = if capped {
            secs.min(ONE_HOUR_SECS)
        } else {
            secs
        };
        match self.call(role, session, secs, hop).await {
            Err(e) if secs > ONE_HOUR_SECS && e.exceeds_max_session_duration() => {
                tracing::info!(
                    role,
                    requested_secs = secs,
                    "role allows shorter sessions; asking for 1 h"
                );
                if let Ok(mut c) = self.capped_roles.lock() {
                    if c.len() >= CAPPED_ROLES_MAX {
                        c.clear();
                    }
                    c.insert(role.to_owned());
                }
                self.call(role, session, ONE_HOUR_SECS, hop).await
            }
            other => other,
        }
    }

    async fn call(
        &self,
        role: &str,
        session: &str,
        secs: u32,
        hop: &Hop<'_>,
    ) -> Result<Credentials, StsError> {
        // Bounded to [900, 43200] before this point, so the cast cannot wrap.
        let duration = i32::try_from(secs.clamp(STS_MIN_SECS, STS_MAX_SECS)).unwrap_or(3600);
        let (creds, user) = match hop {
            Hop::AssumeRole {
                tags,
                via,
                external_id,
                policy,
            } => {
                let mut req = self
                    .client
                    .assume_role()
                    .role_arn(role)
                    .role_session_name(session)
                    .duration_seconds(duration)
                    .set_external_id(external_id.map(str::to_owned))
                    .set_policy(policy.map(str::to_owned));
                for (key, value) in tags.iter() {
                    let tag = aws_sdk_sts::types::Tag::builder()
                        .key(*key)
                        .value(value)
                        .build()
                        .map_err(|e| StsError::Construction {
                            message: e.to_string(),
                        })?;
                    req = req.tags(tag).transitive_tag_keys(*key);
                }
                let out = match via {
                    None => req.send().await,
                    Some(first) => {
                        req.customize()
                            .config_override(chained_config(first))
                            .send()
                            .await
                    }
                }
                .map_err(StsError::from_sdk)?;
                (out.credentials, out.assumed_role_user)
            }
            Hop::WebIdentity { token, policy } => {
                let out = self
                    .client
                    .assume_role_with_web_identity()
                    .role_arn(role)
                    .role_session_name(session)
                    .web_identity_token(*token)
                    .set_policy(policy.map(str::to_owned))
                    .duration_seconds(duration)
                    .send()
                    .await
                    .map_err(StsError::from_sdk)?;
                (out.credentials, out.assumed_role_user)
            }
        };
        let creds = convert(creds, user)?;
        tracing::debug!(
            role,
            session,
            access_key_id = %creds.access_key_id,
            assumed_role_arn = %creds.assumed_role_arn,
            "STS issued credentials"
        );
        Ok(creds)
    }
}

impl Fetch for StsFetcher {
    fn fetch(
        &self,
        pod: &PodInfo,
        assoc: &Association,
    ) -> impl Future<Output = Result<Credentials, StsError>> + Send {
        StsFetcher::fetch(self, pod, assoc)
    }
}

/// The addresses the agent answers on (and the kernel redirects).
const POD_IDENTITY_HOSTS: [&str; 2] = ["169.254.170.23", "[fd00:ec2::23]"];

/// Whether a container-credentials URI targets a pod identity agent's address.
fn points_at_pod_identity_agent(uri: &str) -> bool {
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match authority.find(']') {
        Some(end) if authority.starts_with('[') => &authority[..=end],
        _ => authority.split(':').next().unwrap_or_default(),
    };
    POD_IDENTITY_HOSTS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(host))
}

/// aws-config's default chain minus the container (ECS / Pod Identity) provider.
fn chain_without_container_credentials(
    region: Option<Region>,
) -> aws_config::meta::credentials::CredentialsProviderChain {
    use aws_config::environment::EnvironmentVariableCredentialsProvider;
    use aws_config::imds::credentials::ImdsCredentialsProvider;
    use aws_config::profile::ProfileFileCredentialsProvider;
    use aws_config::provider_config::ProviderConfig;
    use aws_config::web_identity_token::WebIdentityTokenCredentialsProvider;

    let conf = ProviderConfig::default().with_region(region);
    aws_config::meta::credentials::CredentialsProviderChain::first_try(
        "Environment",
        EnvironmentVariableCredentialsProvider::new(),
    )
    .or_else(
        "Profile",
        ProfileFileCredentialsProvider::builder()
            .configure(&conf)
            .build(),
    )
    .or_else(
        "WebIdentityToken",
        WebIdentityTokenCredentialsProvider::builder()
            .configure(&conf)
            .build(),
    )
    .or_else(
        "Ec2InstanceMetadata",
        ImdsCredentialsProvider::builder().configure(&conf).build(),
    )
}

fn timeout_config(settings: &StsSettings) -> TimeoutConfig {
    TimeoutConfig::builder()
        .operation_timeout(settings.call_timeout)
        // Leave room for a retry inside the budget; STS answers in well under a second.
        .operation_attempt_timeout(
            settings
                .call_timeout
                .mul_f32(0.6)
                .max(Duration::from_millis(500)),
        )
        .connect_timeout(Duration::from_secs(1).min(settings.call_timeout))
        .build()
}

fn retry_config(settings: &StsSettings) -> RetryConfig {
    RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1))
}

/// Per-operation override for the second hop: sign with the first hop's
/// credentials. A fresh provider gets its own identity-cache partition; no cache at
/// all, because a partition per call would otherwise accumulate in the client.
fn chained_config(first: &Credentials) -> aws_sdk_sts::config::Builder {
    let provider = aws_credential_types::Credentials::new(
        first.access_key_id.clone(),
        first.secret_access_key.expose().to_owned(),
        Some(first.session_token.expose().to_owned()),
        Some(first.expiration),
        "pod-identity-agent-role-chain",
    );
    aws_sdk_sts::config::Builder::default()
        .credentials_provider(provider)
        .identity_cache(aws_sdk_sts::config::IdentityCache::no_cache())
}

fn convert(
    creds: Option<aws_sdk_sts::types::Credentials>,
    user: Option<aws_sdk_sts::types::AssumedRoleUser>,
) -> Result<Credentials, StsError> {
    let creds = creds.ok_or_else(|| StsError::InvalidResponse {
        message: "response has no Credentials".into(),
    })?;
    let expiration =
        SystemTime::try_from(*creds.expiration()).map_err(|e| StsError::InvalidResponse {
            message: format!("Expiration out of range: {e}"),
        })?;
    let assumed_role_arn = user.map(|u| u.arn).unwrap_or_default();
    Ok(Credentials {
        account_id: account_id_from_arn(&assumed_role_arn),
        access_key_id: creds.access_key_id,
        secret_access_key: Secret::from(creds.secret_access_key),
        session_token: Secret::from(creds.session_token),
        expiration,
        assumed_role_arn,
    })
}

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
    tags.push(("kubernetes-pod-uid", pod.uid.clone()));
    tags
}

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
mod tests {
    use super::*;

    fn pod() -> PodInfo {
        PodInfo {
            uid: "2c48913c-b29f-11e7-9350-020968147796".into(),
            namespace: "team-a".into(),
            name: "web-7d4b9c8f6-x2x9z".into(),
            service_account: "web".into(),
            ..Default::default()
        }
    }

    fn id() -> uuid::Uuid {
        uuid::Uuid::parse_str("a1b2c3d4-e5f6-4789-8abc-def012345678").unwrap()
    }

    fn name_ok(name: &str) -> bool {
        name.len() <= SESSION_NAME_MAX
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
    }

    #[test]
    fn session_name_short_inputs_kept_whole() {
        let n = session_name("prod", "web-1", &id());
        assert_eq!(n, "eks-prod-web-1-a1b2c3d4-e5f6-4789-8abc-def012345678");
        assert!(name_ok(&n));
    }

    #[test]
    fn session_name_cuts_pod_part_to_64() {
        let n = session_name("prod", &pod().name, &id());
        assert_eq!(n.len(), SESSION_NAME_MAX, "{n}");
        assert!(n.starts_with("eks-prod-web-7d4b9c8f6-x2x9-"), "{n}");
        assert!(n.ends_with("-a1b2c3d4-e5f6-4789-8abc-def012345678"), "{n}");
        assert!(name_ok(&n));
    }

    #[test]
    fn session_name_long_cluster_and_odd_chars() {
        let n = session_name(&"c".repeat(100), "p", &id());
        assert_eq!(n.len(), SESSION_NAME_MAX, "{n}");
        assert!(n.starts_with("eks-cccc"), "{n}");
        assert!(name_ok(&n), "{n}");

        let n = session_name("my cluster/é", "pod:x*y", &id());
        assert!(name_ok(&n), "{n}");
        assert!(n.starts_with("eks-my-cluster--"), "{n}");
        assert!(n.contains("-pod-x-y-"), "{n}");
    }

    #[test]
    fn session_names_are_unique_per_fetch() {
        let a = session_name("c", "p", &uuid::Uuid::new_v4());
        let b = session_name("c", "p", &uuid::Uuid::new_v4());
        assert_ne!(a, b);
    }

    #[test]
    fn tags_are_the_six_eks_tags() {
        let settings = StsSettings {
            cluster_name: "prod".into(),
            cluster_arn: Some("arn:aws:eks:us-east-1:111122223333:cluster/prod".into()),
            ..Default::default()
        };
        let tags = session_tags(&settings, &pod());
        let keys: Vec<_> = tags.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "eks-cluster-arn",
                "eks-cluster-name",
                "kubernetes-namespace",
                "kubernetes-service-account",
                "kubernetes-pod-name",
                "kubernetes-pod-uid"
            ]
        );
        assert_eq!(tags[0].1, "arn:aws:eks:us-east-1:111122223333:cluster/prod");
        assert_eq!(tags[1].1, "prod");
        assert_eq!(tags[2].1, "team-a");
        assert_eq!(tags[3].1, "web");
        assert_eq!(tags[4].1, "web-7d4b9c8f6-x2x9z");
        assert_eq!(tags[5].1, "2c48913c-b29f-11e7-9350-020968147796");

        let no_arn = StsSettings {
            cluster_name: "prod".into(),
            ..Default::default()
        };
        let tags = session_tags(&no_arn, &pod());
        assert_eq!(tags.len(), 5);
        assert_eq!(tags[0].0, "eks-cluster-name");
    }

    #[test]
    fn durations() {
        let mut a = Association {
            role_arn: "arn:aws:iam::111122223333:role/r".into(),
            ..Default::default()
        };
        assert_eq!(session_duration_secs(&a), 21_600);
        a.session_duration_secs = Some(60);
        assert_eq!(session_duration_secs(&a), 900);
        a.session_duration_secs = Some(100_000);
        assert_eq!(session_duration_secs(&a), 43_200);
        a.target_role_arn = Some("arn:aws:iam::444455556666:role/t".into());
        assert_eq!(session_duration_secs(&a), 3_600);
        a.session_duration_secs = None;
        assert_eq!(session_duration_secs(&a), 3_540);
        a.target_role_arn = None;
        a.mode = AssumeMode::WebIdentity;
        assert_eq!(session_duration_secs(&a), 3_600);
    }

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
        let cases = [
            (service("AccessDenied", 403), false, 400),
            (service("InvalidParameterValue", 400), false, 400),
            (service("ExpiredTokenException", 400), false, 400),
            (service("MalformedPolicyDocument", 400), false, 400),
            (service("RegionDisabledException", 403), false, 400),
            (service("ValidationError", 400), false, 400),
            (service("Throttling", 400), true, 429),
            (service("IDPCommunicationError", 400), true, 503),
            (service("InternalFailure", 500), true, 500),
            (service("ServiceUnavailable", 503), true, 503),
            (service("Unknown", 502), true, 500),
            (
                StsError::Timeout {
                    message: "t".into(),
                },
                true,
                503,
            ),
            (
                StsError::Dispatch {
                    message: "d".into(),
                },
                true,
                503,
            ),
            (
                StsError::InvalidResponse {
                    message: "r".into(),
                },
                true,
                500,
            ),
            (
                StsError::Construction {
                    message: "c".into(),
                },
                false,
                500,
            ),
            (
                StsError::WebIdentityTokenMissing { path: "/x".into() },
                false,
                404,
            ),
        ];
        for (err, retryable, status) in cases {
            assert_eq!(err.is_retryable(), retryable, "{err}");
            assert_eq!(err.http_status(), status, "{err}");
        }
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
    fn own_container_credentials_at_the_agent_address_are_recognised() {
        for uri in [
            "http://169.254.170.23/v1/credentials",
            "http://169.254.170.23:80/v1/credentials",
            "http://[fd00:ec2::23]/v1/credentials",
            "http://[FD00:EC2::23]:80/v1/credentials",
        ] {
            assert!(points_at_pod_identity_agent(uri), "{uri}");
        }
        for uri in [
            "http://169.254.170.2/v2/credentials/abc",
            "http://127.0.0.1:8080/creds",
            "https://creds.example/169.254.170.23",
            "http://[fd00:ec2::254]/",
        ] {
            assert!(!points_at_pod_identity_agent(uri), "{uri}");
        }
    }

    #[tokio::test]
    async fn new_loads_the_default_chain_without_network() {
        let tmp = tempfile::tempdir().unwrap();
        let fetcher = StsFetcher::new(StsSettings {
            endpoint_url: Some("http://127.0.0.1:9".into()),
            region: "us-east-1".into(),
            web_identity_token_dir: tmp.path().to_path_buf(),
            ..Default::default()
        })
        .await;
        assert_eq!(fetcher.settings().region, "us-east-1");
        let mut a = Association {
            role_arn: "arn:aws:iam::111122223333:role/r".into(),
            ..Default::default()
        };
        a.mode = AssumeMode::WebIdentity;
        let err = fetcher.fetch(&pod(), &a).await.unwrap_err();
        assert!(
            matches!(err, StsError::WebIdentityTokenMissing { .. }),
            "{err}"
        );
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

    fn write_token(root: &Path, uid: &str, volume: &str, token: &str) {
        let dir = root
            .join(uid)
            .join("volumes/kubernetes.io~projected")
            .join(volume);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), token).unwrap();
    }

    #[tokio::test]
    async fn token_prefers_aws_iam_token_and_skips_kube_api_access() {
        let tmp = tempfile::tempdir().unwrap();
        let uid = pod().uid;
        write_token(
            tmp.path(),
            &uid,
            "kube-api-access-abcde",
            "api-server-token",
        );
        write_token(tmp.path(), &uid, "a-custom-token", "custom");
        write_token(tmp.path(), &uid, "aws-iam-token", "irsa-token\n");
        let t = read_web_identity_token(tmp.path(), &uid).await.unwrap();
        assert_eq!(t.expose(), "irsa-token");
    }

    #[tokio::test]
    async fn token_falls_back_to_other_projected_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let uid = pod().uid;
        write_token(
            tmp.path(),
            &uid,
            "kube-api-access-abcde",
            "api-server-token",
        );
        write_token(tmp.path(), &uid, "zz-token", "zz");
        write_token(tmp.path(), &uid, "my-token", "mine");
        std::fs::create_dir_all(
            tmp.path()
                .join(&uid)
                .join("volumes/kubernetes.io~projected/no-token-here"),
        )
        .unwrap();
        let t = read_web_identity_token(tmp.path(), &uid).await.unwrap();
        assert_eq!(t.expose(), "mine");
    }

    #[tokio::test]
    async fn token_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let uid = pod().uid;
        let err = read_web_identity_token(tmp.path(), &uid).await.unwrap_err();
        assert!(
            matches!(err, StsError::WebIdentityTokenMissing { .. }),
            "{err}"
        );
        assert!(!err.is_retryable());
        // Only the API-server token: still missing, never sent to STS.
        write_token(
            tmp.path(),
            &uid,
            "kube-api-access-abcde",
            "api-server-token",
        );
        let err = read_web_identity_token(tmp.path(), &uid).await.unwrap_err();
        assert!(
            matches!(err, StsError::WebIdentityTokenMissing { .. }),
            "{err}"
        );
        // Path traversal in a uid is refused.
        let err = read_web_identity_token(tmp.path(), "../etc")
            .await
            .unwrap_err();
        assert!(
            matches!(err, StsError::WebIdentityTokenMissing { .. }),
            "{err}"
        );
        // Empty token.
        write_token(tmp.path(), &uid, "aws-iam-token", "\n");
        let err = read_web_identity_token(tmp.path(), &uid).await.unwrap_err();
        assert!(
            matches!(err, StsError::WebIdentityTokenMissing { .. }),
            "{err}"
        );
    }

    /// A minimal STS stand-in on loopback: records each request (Authorization
    /// header and form body) and answers what `respond` says. Used where moto
    /// cannot tell: which key signed a call, exact error documents.
    mod fake_sts {
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        #[derive(Clone, Debug)]
        pub struct Request {
            pub authorization: Option<String>,
            pub body: String,
        }

        impl Request {
            pub fn action(&self) -> &str {
                self.param("Action").unwrap_or("")
            }
            pub fn param(&self, name: &str) -> Option<&str> {
                self.body
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            }
            /// The access key id in the SigV4 `Credential=` scope.
            pub fn signing_key(&self) -> Option<&str> {
                let auth = self.authorization.as_deref()?;
                auth.split("Credential=").nth(1)?.split('/').next()
            }
        }

        pub type Responder = Arc<dyn Fn(&Request, usize) -> (u16, String) + Send + Sync>;

        pub struct FakeSts {
            pub url: String,
            pub requests: Arc<Mutex<Vec<Request>>>,
        }

        impl FakeSts {
            pub async fn start(respond: Responder) -> Self {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let url = format!("http://{}", listener.local_addr().unwrap());
                let requests = Arc::new(Mutex::new(Vec::new()));
                let log = Arc::clone(&requests);
                tokio::spawn(async move {
                    while let Ok((mut sock, _)) = listener.accept().await {
                        let (respond, log) = (Arc::clone(&respond), Arc::clone(&log));
                        tokio::spawn(async move {
                            let Some(req) = read_request(&mut sock).await else {
                                return;
                            };
                            let n = {
                                let mut log = log.lock().unwrap();
                                log.push(req.clone());
                                log.len()
                            };
                            let (status, body) = respond(&req, n);
                            let head = format!(
                                "HTTP/1.1 {status} X\r\ncontent-type: text/xml\r\nx-amzn-requestid: req-{n}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = sock.write_all(head.as_bytes()).await;
                            let _ = sock.write_all(body.as_bytes()).await;
                            let _ = sock.shutdown().await;
                        });
                    }
                });
                Self { url, requests }
            }

            pub fn requests(&self) -> Vec<Request> {
                self.requests.lock().unwrap().clone()
            }
        }

        async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Request> {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let header_end = loop {
                let n = sock.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
            let header = |name: &str| {
                head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_owned())
                })
            };
            let len: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < header_end + len {
                let n = sock.read(&mut chunk).await.ok()?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Some(Request {
                authorization: header("authorization"),
                body: String::from_utf8_lossy(&buf[header_end..]).into_owned(),
            })
        }

        /// A successful response document for the request's action.
        pub fn success(req: &Request, n: usize) -> (u16, String) {
            let action = req.action();
            (
                200,
                format!(
                    "<{action}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><{action}Result>\
                     <Credentials><AccessKeyId>ASIAHOP{n}</AccessKeyId><SecretAccessKey>secret{n}</SecretAccessKey>\
                     <SessionToken>token{n}</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>\
                     <AssumedRoleUser><AssumedRoleId>AROAEXAMPLE:s</AssumedRoleId>\
                     <Arn>arn:aws:sts::111122223333:assumed-role/r{n}/s</Arn></AssumedRoleUser>\
                     </{action}Result><ResponseMetadata><RequestId>req-{n}</RequestId></ResponseMetadata></{action}Response>"
                ),
            )
        }

        pub fn error(status: u16, code: &str, message: &str) -> (u16, String) {
            let kind = if status >= 500 { "Receiver" } else { "Sender" };
            (
                status,
                format!(
                    "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>{kind}</Type>\
                     <Code>{code}</Code><Message>{message}</Message></Error><RequestId>ignored</RequestId></ErrorResponse>"
                ),
            )
        }
    }

    use fake_sts::FakeSts;
    use std::sync::Arc;

    fn fetcher_for(fake: &FakeSts, token_dir: &Path) -> StsFetcher {
        let sdk = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(
                    aws_credential_types::Credentials::new(
                        "AKIAAGENTEXAMPLE",
                        "agent-secret",
                        None,
                        None,
                        "test",
                    ),
                ),
            )
            .build();
        let settings = StsSettings {
            endpoint_url: Some(fake.url.clone()),
            region: "us-east-1".into(),
            cluster_name: "prod".into(),
            cluster_arn: Some("arn:aws:eks:us-east-1:111122223333:cluster/prod".into()),
            web_identity_token_dir: token_dir.to_path_buf(),
            // One attempt: the SDK's retry backoff would only slow these tests down.
            max_attempts: 1,
            ..Default::default()
        };
        StsFetcher::with_sdk_config(settings, &sdk)
    }

    fn role(name: &str) -> Association {
        Association {
            namespace: "team-a".into(),
            service_account: "web".into(),
            role_arn: format!("arn:aws:iam::111122223333:role/{name}"),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn chained_hop_is_signed_with_the_first_roles_credentials() {
        let fake = FakeSts::start(Arc::new(fake_sts::success)).await;
        let tmp = tempfile::tempdir().unwrap();
        let fetcher = fetcher_for(&fake, tmp.path());
        let mut a = role("first");
        a.target_role_arn = Some("arn:aws:iam::444455556666:role/target".into());

        let creds = fetcher.fetch(&pod(), &a).await.unwrap();
        assert_eq!(creds.access_key_id, "ASIAHOP2");
        assert_eq!(
            creds.assumed_role_arn,
            "arn:aws:sts::111122223333:assumed-role/r2/s"
        );
        assert_eq!(creds.account_id.as_deref(), Some("111122223333"));
        // The agent's own credentials still sign plain calls afterwards.
        fetcher.fetch(&pod(), &role("plain")).await.unwrap();

        let reqs = fake.requests();
        assert_eq!(reqs.len(), 3);
        let (first, second, plain) = (&reqs[0], &reqs[1], &reqs[2]);
        assert_eq!(first.signing_key(), Some("AKIAAGENTEXAMPLE"));
        assert_eq!(first.param("DurationSeconds"), Some("3600"));
        assert!(
            first.body.contains("Tags.member.1.Key=eks-cluster-arn"),
            "{}",
            first.body
        );
        assert!(
            first.body.contains("Tags.member.6.Key=kubernetes-pod-uid"),
            "{}",
            first.body
        );
        assert!(
            first
                .body
                .contains("TransitiveTagKeys.member.6=kubernetes-pod-uid"),
            "{}",
            first.body
        );
        assert_eq!(second.signing_key(), Some("ASIAHOP1"));
        assert_eq!(second.param("DurationSeconds"), Some("3540"));
        assert!(!second.body.contains("Tags.member"), "{}", second.body);
        assert_eq!(
            first.param("RoleSessionName"),
            second.param("RoleSessionName")
        );
        assert_eq!(plain.signing_key(), Some("AKIAAGENTEXAMPLE"));
        assert_eq!(plain.param("DurationSeconds"), Some("21600"));
    }

    #[tokio::test]
    async fn external_id_and_session_policy_go_on_the_hop_the_pod_receives() {
        let fake = FakeSts::start(Arc::new(fake_sts::success)).await;
        let tmp = tempfile::tempdir().unwrap();
        let fetcher = fetcher_for(&fake, tmp.path());
        let mut chained = role("first");
        chained.target_role_arn = Some("arn:aws:iam::444455556666:role/target".into());
        chained.external_id = Some("ext-123".into());
        chained.policy = Some(r#"{"Version":"2012-10-17"}"#.into());
        fetcher.fetch(&pod(), &chained).await.unwrap();
        let mut plain = role("plain");
        plain.external_id = Some("ext-456".into());
        plain.policy = Some("{}".into());
        fetcher.fetch(&pod(), &plain).await.unwrap();

        let reqs = fake.requests();
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[0].param("ExternalId"), None, "{}", reqs[0].body);
        assert_eq!(reqs[0].param("Policy"), None);
        assert_eq!(
            reqs[1].param("ExternalId"),
            Some("ext-123"),
            "{}",
            reqs[1].body
        );
        assert!(reqs[1].param("Policy").is_some(), "{}", reqs[1].body);
        assert_eq!(reqs[2].param("ExternalId"), Some("ext-456"));
        assert!(reqs[2].param("Policy").is_some());
    }

    #[tokio::test]
    async fn disabled_session_tags_sends_no_tags() {
        let fake = FakeSts::start(Arc::new(fake_sts::success)).await;
        let tmp = tempfile::tempdir().unwrap();
        let mut a = role("r");
        a.disable_session_tags = true;
        fetcher_for(&fake, tmp.path())
            .fetch(&pod(), &a)
            .await
            .unwrap();
        let body = &fake.requests()[0].body;
        assert!(
            !body.contains("Tags") && !body.contains("TransitiveTagKeys"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn web_identity_call_is_unsigned_and_carries_the_token() {
        let fake = FakeSts::start(Arc::new(fake_sts::success)).await;
        let tmp = tempfile::tempdir().unwrap();
        let p = pod();
        write_token(tmp.path(), &p.uid, "aws-iam-token", "header.payload.sig\n");
        let mut a = role("irsa");
        a.mode = AssumeMode::WebIdentity;
        let creds = fetcher_for(&fake, tmp.path()).fetch(&p, &a).await.unwrap();
        assert_eq!(creds.access_key_id, "ASIAHOP1");
        let req = &fake.requests()[0];
        assert_eq!(req.action(), "AssumeRoleWithWebIdentity");
        assert_eq!(req.authorization, None);
        assert_eq!(req.param("WebIdentityToken"), Some("header.payload.sig"));
        assert_eq!(req.param("DurationSeconds"), Some("3600"));
    }

    #[tokio::test]
    async fn service_errors_keep_code_request_id_and_class() {
        let fake = FakeSts::start(Arc::new(|req: &fake_sts::Request, _| {
            let role = req.param("RoleArn").unwrap_or("");
            if role.ends_with("denied") {
                fake_sts::error(
                    403,
                    "AccessDenied",
                    "not authorized to perform sts:AssumeRole",
                )
            } else if role.ends_with("throttled") {
                fake_sts::error(400, "Throttling", "Rate exceeded")
            } else {
                fake_sts::error(500, "InternalFailure", "oops")
            }
        }))
        .await;
        let tmp = tempfile::tempdir().unwrap();
        let fetcher = fetcher_for(&fake, tmp.path());

        let err = fetcher.fetch(&pod(), &role("denied")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "[req-1]: (AccessDenied): not authorized to perform sts:AssumeRole, fault: client"
        );
        assert_eq!((err.http_status(), err.is_retryable()), (400, false));

        let err = fetcher.fetch(&pod(), &role("throttled")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "[req-2]: (Throttling): Rate exceeded, fault: client"
        );
        assert_eq!((err.http_status(), err.is_retryable()), (429, true));

        let err = fetcher.fetch(&pod(), &role("broken")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "[req-3]: (InternalFailure): oops, fault: server"
        );
        assert_eq!((err.http_status(), err.is_retryable()), (500, true));
    }

    #[tokio::test]
    async fn role_with_short_max_session_duration_falls_back_to_one_hour() {
        let fake = FakeSts::start(Arc::new(|req: &fake_sts::Request, n| {
            if req.param("DurationSeconds") == Some("21600") {
                fake_sts::error(
                    400,
                    "ValidationError",
                    "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
                )
            } else {
                fake_sts::success(req, n)
            }
        }))
        .await;
        let tmp = tempfile::tempdir().unwrap();
        let fetcher = fetcher_for(&fake, tmp.path());
        fetcher.fetch(&pod(), &role("short")).await.unwrap();
        // Remembered: the next fetch asks for 1 h straight away.
        fetcher.fetch(&pod(), &role("short")).await.unwrap();
        let durations: Vec<_> = fake
            .requests()
            .iter()
            .map(|r| r.param("DurationSeconds").unwrap_or("").to_owned())
            .collect();
        assert_eq!(durations, ["21600", "3600", "3600"]);
    }
}
