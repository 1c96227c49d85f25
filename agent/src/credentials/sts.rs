//! Obtaining a pod's credentials from STS.
//!
//! * EKS Pod Identity associations: `AssumeRole` with the agent's own credentials,
//!   an EKS-style session name and the six EKS session tags (transitive, so a
//!   chained target role sees them too), then optionally `AssumeRole` of the
//!   target role with the first role's credentials (role chaining).
//! * IRSA associations: `AssumeRoleWithWebIdentity` with the pod's own projected
//!   token, read from the IRSA webhook's volume (`aws-iam-token`, audience
//!   `sts.amazonaws.com`) in the kubelet's directory on this node. That call is
//!   unsigned (aws-sdk-sts resolves it with the no-auth scheme), so it works even
//!   when the agent itself has no AWS credentials.
//!
//! Errors keep STS's code and request id so the agent can answer as the stock
//! agent does (`[<request-id>]: (<ErrorCode>): <message>, fault: client|server`),
//! and say whether a retry might help, which drives the cache's stale-serving.
//!
//! * [`error`]: [`StsError`], and which errors are worth a retry.
//! * [`session`]: session names, session tags and session durations.
//! * [`web_identity`]: the pod's projected token for IRSA.
//! * `client_config`: timeouts, retries, the agent's own credentials chain, the
//!   chained hop's signing override.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_config::provider_config::ProviderConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sts::operation::RequestId;

use crate::credentials::types::{account_id_from_arn, Credentials, Secret};
use crate::model::{Association, AssumeMode, PodInfo};

mod client_config;
pub mod error;
pub mod session;
pub mod web_identity;

pub use client_config::NodeRoleRefused;
pub use error::{ErrorChain, StsError};
pub use session::{
    session_duration_secs, session_name, session_tags, CHAINED_SESSION_SECS, DEFAULT_SESSION_SECS,
    SESSION_NAME_MAX, WEB_IDENTITY_SESSION_SECS,
};
pub use web_identity::{read_web_identity_token, IRSA_AUDIENCE, IRSA_VOLUME};

use client_config::{agent_credentials_chain, chained_config, retry_config, timeout_config};
use session::{ONE_HOUR_SECS, STS_MAX_SECS, STS_MIN_SECS};

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
    /// May the agent use the node's instance-profile role (IMDS) as its own AWS
    /// identity (`--allow-node-role`)? Every pod role must then trust the node
    /// role, and whatever on the node reaches IMDS could assume them all.
    pub allow_node_role: bool,
    /// IMDS endpoint override for the node role (tests point it at a local IMDS);
    /// `None`: the SDK's (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, else 169.254.169.254).
    pub imds_endpoint: Option<String>,
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
            allow_node_role: false,
            imds_endpoint: None,
        }
    }
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
    /// Client using the agent's own credentials (see [`agent_sdk_config`]), with
    /// the region and endpoint of `settings`.
    pub async fn new(settings: StsSettings) -> Self {
        let sdk_config = agent_sdk_config(&settings).await;
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
        let (creds, user, request_id) = match hop {
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
                            request_id: error::generate_request_id(),
                            source: Box::new(e),
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
                let request_id = out.request_id().map(str::to_owned);
                (out.credentials, out.assumed_role_user, request_id)
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
                let request_id = out.request_id().map(str::to_owned);
                (out.credentials, out.assumed_role_user, request_id)
            }
        };
        let creds = convert(creds, user, request_id)?;
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

/// The agent's own AWS identity, for any AWS client it builds: the region of
/// `settings` (else aws-config's), and credentials from the environment, a
/// profile, a web identity token (IRSA for the agent's own service account) or a
/// container provider that is not this agent; the node's instance-profile role
/// (IMDS) only with `settings.allow_node_role`. Nothing STS-specific: the STS
/// endpoint, timeouts and retries are applied by [`StsFetcher::with_sdk_config`].
pub async fn agent_sdk_config(settings: &StsSettings) -> SdkConfig {
    if settings.allow_node_role {
        tracing::warn!(
            "--allow-node-role: the node's instance-profile role may sign sts:AssumeRole; \
             every pod role must trust it, and anything on the node that reaches IMDS \
             can assume them"
        );
    } else {
        tracing::info!(
            "the agent's own AWS credentials come from the environment, a profile, a web \
             identity token (IRSA) or a container provider; the node role (IMDS) is \
             refused without --allow-node-role"
        );
    }
    agent_sdk_config_quiet(settings).await
}

/// [`agent_sdk_config`] without its log line (the EKS Auth upstream says why it
/// uses the node role).
pub async fn agent_sdk_config_quiet(settings: &StsSettings) -> SdkConfig {
    let region = (!settings.region.is_empty()).then(|| Region::new(settings.region.clone()));
    let provider_config = match &region {
        Some(r) => ProviderConfig::without_region().with_region(Some(r.clone())),
        None => ProviderConfig::with_default_region().await,
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .credentials_provider(agent_credentials_chain(settings, &provider_config));
    if let Some(region) = region {
        loader = loader.region(region);
    }
    loader.load().await
}

fn convert(
    creds: Option<aws_sdk_sts::types::Credentials>,
    user: Option<aws_sdk_sts::types::AssumedRoleUser>,
    request_id: Option<String>,
) -> Result<Credentials, StsError> {
    let request_id = || {
        request_id
            .clone()
            .unwrap_or_else(error::generate_request_id)
    };
    let creds = creds.ok_or_else(|| StsError::InvalidResponse {
        request_id: request_id(),
        source: "response has no Credentials".into(),
    })?;
    let expiration =
        SystemTime::try_from(*creds.expiration()).map_err(|e| StsError::InvalidResponse {
            request_id: request_id(),
            source: format!("Expiration out of range: {e}").into(),
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

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;
