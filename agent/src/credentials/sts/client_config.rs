//! How the agent's STS client is configured: timeouts and retries from
//! [`StsSettings`], the agent's own credentials chain (never the container provider
//! pointing at this agent), and the override signing a chained hop.

use std::time::Duration;

use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::provider_config::ProviderConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{future, ProvideCredentials};

use super::StsSettings;
use crate::credentials::types::Credentials;

/// The addresses the agent answers on (and the kernel redirects).
const POD_IDENTITY_HOSTS: [&str; 2] = ["169.254.170.23", "[fd00:ec2::23]"];

/// Whether a container-credentials URI targets a pod identity agent's address.
pub(super) fn points_at_pod_identity_agent(uri: &str) -> bool {
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

/// Why the agent has no credentials when only the node role is left.
#[derive(Debug, thiserror::Error)]
#[error(
    "no AWS credentials for the agent from the environment, a profile, a web identity \
     token (IRSA) or a container provider, and the node's instance-profile role (IMDS) \
     is refused: give the agent its own role (IRSA, see docs/deploy.md), or run it with \
     --allow-node-role to use the node role (every pod role must then trust the node \
     role, and anything on the node that reaches IMDS can assume them)"
)]
pub struct NodeRoleRefused;

/// Last link of the chain without the node role: fails with [`NodeRoleRefused`]
/// instead of asking IMDS.
#[derive(Debug)]
struct RefuseNodeRole;

impl ProvideCredentials for RefuseNodeRole {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(Err(CredentialsError::invalid_configuration(
            NodeRoleRefused,
        )))
    }
}

/// The agent's own AWS credentials: aws-config's default chain (environment,
/// profile, web identity token, container, IMDS), except
///
/// * the container provider when it points at the pod identity address: that
///   would ask this agent (invariant 3);
/// * IMDS, the node's instance-profile role, unless `settings.allow_node_role`:
///   with it every pod role would have to trust the node role, and anything on
///   the node that reaches IMDS (a hostNetwork pod) could assume them all.
///   Without it the chain ends in [`NodeRoleRefused`], which names the flag.
pub(super) fn agent_credentials_chain(
    settings: &StsSettings,
    conf: &ProviderConfig,
) -> CredentialsProviderChain {
    use aws_config::ecs::EcsCredentialsProvider;
    use aws_config::environment::EnvironmentVariableCredentialsProvider;
    use aws_config::imds::credentials::ImdsCredentialsProvider;
    use aws_config::profile::ProfileFileCredentialsProvider;
    use aws_config::web_identity_token::WebIdentityTokenCredentialsProvider;

    let mut chain = CredentialsProviderChain::first_try(
        "Environment",
        EnvironmentVariableCredentialsProvider::new(),
    )
    .or_else(
        "Profile",
        ProfileFileCredentialsProvider::builder()
            .configure(conf)
            .build(),
    )
    .or_else(
        "WebIdentityToken",
        WebIdentityTokenCredentialsProvider::builder()
            .configure(conf)
            .build(),
    );
    match std::env::var("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        Ok(uri) if points_at_pod_identity_agent(&uri) => {
            tracing::warn!(
                uri,
                "AWS_CONTAINER_CREDENTIALS_FULL_URI points at the pod identity address; \
                 the agent ignores it and takes its own credentials from the environment, \
                 profile or web identity token"
            );
        }
        _ => {
            chain = chain.or_else(
                "EcsContainer",
                EcsCredentialsProvider::builder().configure(conf).build(),
            );
        }
    }
    if !settings.allow_node_role {
        return chain.or_else("NodeRoleRefused", RefuseNodeRole);
    }
    let mut imds = aws_config::imds::Client::builder().configure(conf);
    if let Some(url) = &settings.imds_endpoint {
        match imds.endpoint(url) {
            Ok(b) => imds = b,
            Err(error) => {
                // Fail closed: no node role from an IMDS nobody meant.
                tracing::error!(url, %error, "invalid IMDS endpoint; not using IMDS");
                return chain.or_else("NodeRoleRefused", RefuseNodeRole);
            }
        }
    }
    chain.or_else(
        "Ec2InstanceMetadata",
        ImdsCredentialsProvider::builder()
            .configure(conf)
            .imds_client(imds.build())
            .build(),
    )
}

pub(super) fn timeout_config(settings: &StsSettings) -> TimeoutConfig {
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

/// First retry backoff (doubling, with jitter): short, as for EKS Auth, so a
/// fetch that meets throttling or a 5xx retries soon and pods waiting on it
/// recover within a second of STS (the SDK's default starts at 1 s). The cache
/// backs a failing key off for much longer (`retry_backoff`, 30 s ± 20 %).
const RETRY_INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest retry backoff.
const RETRY_MAX_BACKOFF: Duration = Duration::from_millis(400);

pub(super) fn retry_config(settings: &StsSettings) -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(settings.max_attempts.max(1))
        .with_initial_backoff(RETRY_INITIAL_BACKOFF)
        .with_max_backoff(RETRY_MAX_BACKOFF)
}

/// Per-operation override for the second hop: sign with the first hop's
/// credentials. A fresh provider gets its own identity-cache partition; no cache at
/// all, because a partition per call would otherwise accumulate in the client.
pub(super) fn chained_config(first: &Credentials) -> aws_sdk_sts::config::Builder {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
