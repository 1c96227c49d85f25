//! Obtaining a pod's credentials from EKS Auth (`AssumeRoleForPodIdentity`), as the
//! stock EKS Pod Identity Agent does on EKS.
//!
//! EKS Auth takes the pod's projected service-account token, verifies its signature
//! against the cluster's issuer, finds the association of the token's namespace and
//! service account, assumes the role as `pods.eks.amazonaws.com` (with the EKS
//! session tags, role chaining and session policies as the association says) and
//! answers with the credentials. The agent itself then needs no power to assume pod
//! roles (invariant 9), only `eks-auth:AssumeRoleForPodIdentity`, which the node
//! role's managed policy grants.
//!
//! The token is forwarded only after the kernel has confirmed that it names the
//! calling pod (invariant 1): [`EksAuthClient::fetch`] first runs
//! [`check_pod_token`], which refuses another pod's token with 403 before any
//! upstream call, and an empty, unparseable, expired or wrongly addressed token with
//! the stock agent's 400s; and it serves nothing that EKS Auth issued for another
//! service account than the pod's.
//!
//! Timeouts are the stock agent's (500 ms to connect, 1 s per attempt), with SDK
//! standard retries on a short backoff, all inside [`EksAuthSettings::call_timeout`]
//! (1.5 s): an answer, or an error, reaches the pod before botocore's own 2 s read
//! timeout (the Rust SDK waits 5 s).
//!
//! * [`error`]: [`EksAuthError`], with EKS Auth's status, code, message, request id
//!   and fault, and the stock agent's pod-facing body.
//! * [`pod_token`]: the token check, [`check_pod_token`].
//! * [`prefetch_token`]: the pod's token from the kubelet's directory, to warm the
//!   cache when the pod's cgroup appears (optional).

use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{Region, SdkConfig};
use aws_sdk_eksauth::operation::assume_role_for_pod_identity::AssumeRoleForPodIdentityOutput;

use crate::credentials::types::{account_id_from_arn, Credentials, Secret};
use crate::model::PodInfo;

pub mod error;
pub mod pod_token;
pub mod prefetch_token;

pub use error::{EksAuthError, ErrorKind, Fault};
pub use pod_token::{check_pod_token, PodToken, TokenError, AUDIENCE};

/// First retry backoff (doubling, with jitter): short, so a retry fits the budget.
const RETRY_INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest retry backoff.
const RETRY_MAX_BACKOFF: Duration = Duration::from_millis(400);

/// How to reach EKS Auth. Plain values, so tests build one directly
/// (`EksAuthSettings { endpoint_url: Some(..), ..Default::default() }`).
#[derive(Clone, Debug)]
pub struct EksAuthSettings {
    /// Endpoint override (the stand-in in tests, a VPC endpoint in production);
    /// `None` uses the regional endpoint (`https://eks-auth.<region>.api.aws`).
    pub endpoint_url: Option<String>,
    /// Region. Empty: the SDK config's.
    pub region: String,
    /// The cluster the node belongs to (the request path's `{clusterName}`).
    pub cluster_name: String,
    /// This node's Kubernetes name, sent as `eksNodeName` when known.
    pub node_name: Option<String>,
    /// Connecting to EKS Auth (the stock agent: 500 ms).
    pub connect_timeout: Duration,
    /// One attempt, connection included (the stock agent: 1 s).
    pub attempt_timeout: Duration,
    /// The whole call, retries included.
    pub call_timeout: Duration,
    /// Attempts per call (SDK standard retry mode, which also keeps a retry budget
    /// so an EKS Auth outage is not amplified).
    pub max_attempts: u32,
}

impl Default for EksAuthSettings {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: String::new(),
            cluster_name: String::new(),
            node_name: None,
            connect_timeout: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_millis(1500),
            max_attempts: 3,
        }
    }
}

impl EksAuthSettings {
    /// These settings with every timeout multiplied by `factor`
    /// (`--upstream-timeout-scale`, for tests under emulation).
    pub fn scaled(self, factor: f64) -> Self {
        Self {
            connect_timeout: self.connect_timeout.mul_f64(factor),
            attempt_timeout: self.attempt_timeout.mul_f64(factor),
            call_timeout: self.call_timeout.mul_f64(factor),
            ..self
        }
    }
}

/// The service account EKS Auth issued credentials for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub namespace: String,
    pub service_account: String,
}

/// What `AssumeRoleForPodIdentity` answered.
///
/// `Debug` is safe to log: the secret key and the session token are [`Secret`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentityCredentials {
    /// The credentials to serve; `account_id` from the assumed-role ARN.
    pub credentials: Credentials,
    /// The association EKS Auth used, e.g. `a-0123456789abcdef0`.
    pub association_id: String,
    /// `arn:aws:eks:<region>:<account>:podidentityassociation/<cluster>/<id>`.
    pub association_arn: String,
    /// The service account the credentials are for.
    pub subject: Subject,
    /// Always `pods.eks.amazonaws.com`.
    pub audience: String,
    /// `<role id>:<session name>`, session name `eks-<cluster>-<pod>-<uuid>`.
    pub assume_role_id: String,
}

/// EKS Auth client for the agent.
pub struct EksAuthClient {
    settings: EksAuthSettings,
    client: aws_sdk_eksauth::Client,
}

impl std::fmt::Debug for EksAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EksAuthClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl EksAuthClient {
    /// Client signing with the credentials of `sdk_config` (the agent's own: the
    /// node role on EKS); region, endpoint, timeouts and retries of `settings`
    /// override the config's.
    ///
    /// The agent builds one `SdkConfig` for all its AWS clients, without the
    /// container-credentials provider (which would ask this agent, invariant 3).
    pub fn with_sdk_config(settings: EksAuthSettings, sdk_config: &SdkConfig) -> Self {
        let mut builder = aws_sdk_eksauth::config::Builder::from(sdk_config)
            .timeout_config(timeout_config(&settings))
            .retry_config(retry_config(&settings));
        if !settings.region.is_empty() {
            builder = builder.region(Region::new(settings.region.clone()));
        }
        if let Some(url) = &settings.endpoint_url {
            builder = builder.endpoint_url(url.clone());
        }
        Self {
            client: aws_sdk_eksauth::Client::from_conf(builder.build()),
            settings,
        }
    }

    /// The settings this client was built with.
    pub fn settings(&self) -> &EksAuthSettings {
        &self.settings
    }

    /// Credentials for `pod`, the pod the kernel attributed the request to, with
    /// the `token` it sent: [`check_pod_token`] first (nothing leaves the node for
    /// another pod's token), then `AssumeRoleForPodIdentity`, then a check that
    /// EKS Auth answered for the pod's own namespace and service account.
    pub async fn fetch(
        &self,
        pod: &PodInfo,
        token: Option<&str>,
    ) -> Result<PodIdentityCredentials, EksAuthError> {
        let checked = check_pod_token(token, &pod.uid, SystemTime::now())?;
        self.fetch_checked(pod, &checked).await
    }

    /// As [`EksAuthClient::fetch`] with a token [`check_pod_token`] accepted
    /// earlier (the cache refreshes with the newest token a pod presented): the
    /// token must still name `pod` and not have expired since.
    pub async fn fetch_checked(
        &self,
        pod: &PodInfo,
        checked: &PodToken,
    ) -> Result<PodIdentityCredentials, EksAuthError> {
        if checked.pod_uid != pod.uid.as_str() {
            return Err(EksAuthError::Token(TokenError::PodMismatch {
                token_pod: checked.pod_uid.clone(),
                kernel_pod: pod.uid.clone(),
            }));
        }
        if checked
            .expires_at
            .is_some_and(|exp| exp <= SystemTime::now())
        {
            return Err(EksAuthError::Token(TokenError::Claims("token is expired")));
        }
        let out = self
            .assume_role_for_pod_identity(checked.token.expose())
            .await?;
        if out.subject.namespace != pod.namespace
            || out.subject.service_account != pod.service_account
        {
            return Err(EksAuthError::SubjectMismatch {
                got_namespace: out.subject.namespace,
                got_service_account: out.subject.service_account,
                pod_namespace: pod.namespace.clone(),
                pod_service_account: pod.service_account.clone(),
            });
        }
        Ok(out)
    }

    /// One `AssumeRoleForPodIdentity` call with `token` as it is, no local checks
    /// (use [`EksAuthClient::fetch`] for pods).
    pub async fn assume_role_for_pod_identity(
        &self,
        token: &str,
    ) -> Result<PodIdentityCredentials, EksAuthError> {
        let out = self
            .client
            .assume_role_for_pod_identity()
            .cluster_name(&self.settings.cluster_name)
            .token(token)
            .set_eks_node_name(self.settings.node_name.clone())
            .send()
            .await
            .map_err(EksAuthError::from_sdk)?;
        let out = convert(out, SystemTime::now())?;
        tracing::debug!(
            association_id = %out.association_id,
            namespace = %out.subject.namespace,
            service_account = %out.subject.service_account,
            access_key_id = %out.credentials.access_key_id,
            assumed_role_arn = %out.credentials.assumed_role_arn,
            "EKS Auth issued credentials"
        );
        Ok(out)
    }
}

fn timeout_config(settings: &EksAuthSettings) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(settings.connect_timeout.min(settings.attempt_timeout))
        .operation_attempt_timeout(settings.attempt_timeout.min(settings.call_timeout))
        .operation_timeout(settings.call_timeout)
        .build()
}

fn retry_config(settings: &EksAuthSettings) -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(settings.max_attempts.max(1))
        .with_initial_backoff(RETRY_INITIAL_BACKOFF)
        .with_max_backoff(RETRY_MAX_BACKOFF)
}

/// The SDK fills required members that the answer lacks with empty values, so each
/// is checked here: nothing half-made reaches a pod.
fn convert(
    out: AssumeRoleForPodIdentityOutput,
    now: SystemTime,
) -> Result<PodIdentityCredentials, EksAuthError> {
    let invalid = |message: &str| EksAuthError::InvalidResponse {
        message: message.to_owned(),
        source: None,
    };
    let creds = out
        .credentials
        .ok_or_else(|| invalid("response has no credentials"))?;
    if creds.access_key_id.is_empty()
        || creds.secret_access_key.is_empty()
        || creds.session_token.is_empty()
    {
        return Err(invalid("response has incomplete credentials"));
    }
    let expiration = SystemTime::try_from(creds.expiration)
        .map_err(|e| invalid(&format!("expiration out of range: {e}")))?;
    if expiration <= now {
        return Err(invalid("response has expired credentials"));
    }
    let user = out
        .assumed_role_user
        .filter(|u| !u.arn.is_empty())
        .ok_or_else(|| invalid("response has no assumed role"))?;
    let association = out
        .pod_identity_association
        .filter(|a| !a.association_id.is_empty())
        .ok_or_else(|| invalid("response has no pod identity association"))?;
    let subject = out
        .subject
        .filter(|s| !s.namespace.is_empty() && !s.service_account.is_empty())
        .ok_or_else(|| invalid("response has no subject"))?;
    Ok(PodIdentityCredentials {
        credentials: Credentials {
            account_id: account_id_from_arn(&user.arn),
            access_key_id: creds.access_key_id,
            secret_access_key: Secret::from(creds.secret_access_key),
            session_token: Secret::from(creds.session_token),
            expiration,
            assumed_role_arn: user.arn,
        },
        association_id: association.association_id,
        association_arn: association.association_arn,
        subject: Subject {
            namespace: subject.namespace,
            service_account: subject.service_account,
        },
        audience: out.audience,
        assume_role_id: user.assume_role_id,
    })
}

#[cfg(test)]
mod tests;
