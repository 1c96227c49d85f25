//! Associations from the EKS API, so an EKS cluster's existing Pod Identity
//! associations just work (source `eks` in the [`AssociationStore`]).
//!
//! Every `poll_interval` the agent lists the cluster's associations
//! (`ListPodIdentityAssociations`, all pages). The list's summaries carry no role, so
//! each association is described (`DescribePodIdentityAssociation`) when it is new,
//! and again every `describe_refresh` (an `UpdatePodIdentityAssociation` keeps the
//! id), with at most `max_concurrency` calls at a time: every node polls, so the
//! calls add up across a cluster.
//!
//! Failure keeps what was known: a failed list leaves the source's previous set in
//! force (logged, retried after `retry_interval`); a failed describe keeps that
//! association's previous description, and an association never described is not
//! served until a describe succeeds (no guessing its role). An association that EKS
//! reports but the agent cannot honour (an inline session `policy`, which the agent
//! would not apply and so would grant more than intended; an invalid role ARN) is
//! left out and logged.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_eks::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_eks::operation::describe_pod_identity_association::DescribePodIdentityAssociationError;
use aws_sdk_eks::operation::list_pod_identity_associations::ListPodIdentityAssociationsError;
use aws_sdk_eks::types::PodIdentityAssociation as EksAssociation;
use futures::stream::StreamExt;

use crate::model::Source;
use crate::model::{Association, AssumeMode};
use crate::sources::associations::AssociationStore;

/// Largest page `ListPodIdentityAssociations` accepts.
const PAGE_SIZE: i32 = 100;

/// Errors of the EKS association source.
#[derive(Debug, thiserror::Error)]
pub enum EksError {
    /// [`EksSettings::cluster_name`] is empty.
    #[error("no cluster name: pass --cluster-name")]
    NoClusterName,
    /// `ListPodIdentityAssociations` failed (after the SDK's retries).
    #[error("ListPodIdentityAssociations (cluster {cluster}): {}", DisplayErrorContext(&**.source))]
    List {
        /// The cluster.
        cluster: String,
        /// The SDK's error (service error, timeout, connection); boxed, it is large.
        source: Box<SdkError<ListPodIdentityAssociationsError>>,
    },
    /// `DescribePodIdentityAssociation` failed (after the SDK's retries).
    #[error("DescribePodIdentityAssociation {association_id} (cluster {cluster}): {}", DisplayErrorContext(&**.source))]
    Describe {
        /// The cluster.
        cluster: String,
        /// The association asked for.
        association_id: String,
        /// The SDK's error; boxed, it is large.
        source: Box<SdkError<DescribePodIdentityAssociationError>>,
    },
    /// The store refused the set (cannot happen after per-item validation; kept
    /// so it is not silently dropped).
    #[error("applying EKS associations: {0}")]
    Store(#[source] Box<crate::sources::associations::AssociationError>),
}

/// Settings of the EKS source; build by value
/// (`EksSettings { poll_interval: .., ..EksSettings::new("prod") }`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EksSettings {
    /// The EKS cluster whose associations to serve.
    pub cluster_name: String,
    /// Time between lists.
    pub poll_interval: Duration,
    /// Time before a failed poll is tried again (at most `poll_interval`).
    pub retry_interval: Duration,
    /// Re-describe a known association after this long (picks up updates).
    pub describe_refresh: Duration,
    /// Describe calls in flight at once.
    pub max_concurrency: usize,
    /// EKS endpoint override (a stand-in in tests, a VPC endpoint in production).
    pub endpoint_url: Option<String>,
    /// Region override; default: the SDK config's region.
    pub region: Option<String>,
    /// Deadline of one API call, retries included.
    pub operation_timeout: Duration,
}

impl EksSettings {
    /// Defaults: poll every 60 s, retry after 10 s, re-describe every 10 min, 4
    /// describes at a time, 10 s per call.
    pub fn new(cluster_name: impl Into<String>) -> Self {
        Self {
            cluster_name: cluster_name.into(),
            poll_interval: Duration::from_secs(60),
            retry_interval: Duration::from_secs(10),
            describe_refresh: Duration::from_secs(600),
            max_concurrency: 4,
            endpoint_url: None,
            region: None,
            operation_timeout: Duration::from_secs(10),
        }
    }
}

/// An EKS client from `sdk_config` (the agent's own credentials), with the
/// settings' endpoint, region and timeout.
pub fn eks_client(sdk_config: &SdkConfig, settings: &EksSettings) -> aws_sdk_eks::Client {
    let mut builder = aws_sdk_eks::config::Builder::from(sdk_config).timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .operation_timeout(settings.operation_timeout)
            .build(),
    );
    if let Some(url) = &settings.endpoint_url {
        builder = builder.endpoint_url(url.clone());
    }
    if let Some(region) = &settings.region {
        builder = builder.region(aws_config::Region::new(region.clone()));
    }
    aws_sdk_eks::Client::from_conf(builder.build())
}

/// Readiness of the EKS source, for `/readyz`; clones share it.
#[derive(Clone, Debug, Default)]
pub struct EksStatus {
    synced: Arc<AtomicBool>,
}

impl EksStatus {
    /// A poll has succeeded at least once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

/// What one poll did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollReport {
    /// Associations the list returned.
    pub listed: usize,
    /// Describe calls made.
    pub described: usize,
    /// Associations now in the store from this source.
    pub applied: usize,
    /// Associations left out (never described, policy, invalid).
    pub skipped: usize,
}

struct Described {
    association: EksAssociation,
    at: Instant,
}

/// The EKS association source.
pub struct EksSource {
    client: aws_sdk_eks::Client,
    settings: EksSettings,
    assocs: AssociationStore,
    status: EksStatus,
    /// Descriptions by association id.
    cache: HashMap<String, Described>,
}

impl std::fmt::Debug for EksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EksSource")
            .field("settings", &self.settings)
            .field("cached", &self.cache.len())
            .field("synced", &self.status.is_synced())
            .finish()
    }
}

impl EksSource {
    /// A source polling with `client`.
    pub fn new(
        client: aws_sdk_eks::Client,
        settings: EksSettings,
        assocs: AssociationStore,
    ) -> Result<Self, EksError> {
        if settings.cluster_name.trim().is_empty() {
            return Err(EksError::NoClusterName);
        }
        Ok(Self {
            client,
            settings,
            assocs,
            status: EksStatus::default(),
            cache: HashMap::new(),
        })
    }

    /// The readiness handle.
    pub fn status(&self) -> EksStatus {
        self.status.clone()
    }

    /// List, describe what needs it, and replace the source's set. On a list error
    /// nothing changes.
    pub async fn poll_once(&mut self) -> Result<PollReport, EksError> {
        let cluster = self.settings.cluster_name.clone();
        let mut ids: Vec<String> = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_pod_identity_associations()
                .cluster_name(&cluster)
                .max_results(PAGE_SIZE)
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|source| EksError::List {
                    cluster: cluster.clone(),
                    source: Box::new(source),
                })?;
            ids.extend(
                page.associations()
                    .iter()
                    .filter_map(|s| s.association_id().map(str::to_owned)),
            );
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => break,
            }
        }
        let listed: HashSet<String> = ids.iter().cloned().collect();
        self.cache.retain(|id, _| listed.contains(id));

        let now = Instant::now();
        let due: Vec<String> = ids
            .iter()
            .filter(|id| {
                self.cache
                    .get(*id)
                    .is_none_or(|d| now.duration_since(d.at) >= self.settings.describe_refresh)
            })
            .cloned()
            .collect();
        let described = due.len();
        let client = &self.client;
        let results: Vec<(String, Result<Option<EksAssociation>, EksError>)> =
            futures::stream::iter(due)
                .map(|id| {
                    let cluster = cluster.clone();
                    async move {
                        let r = client
                            .describe_pod_identity_association()
                            .cluster_name(&cluster)
                            .association_id(&id)
                            .send()
                            .await;
                        let r = match r {
                            Ok(out) => Ok(out.association().cloned()),
                            // Deleted between list and describe: gone.
                            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
                            Err(source) => Err(EksError::Describe {
                                cluster,
                                association_id: id.clone(),
                                source: Box::new(source),
                            }),
                        };
                        (id, r)
                    }
                })
                .buffer_unordered(self.settings.max_concurrency.max(1))
                .collect()
                .await;
        for (id, result) in results {
            match result {
                Ok(Some(association)) => {
                    self.cache.insert(
                        id,
                        Described {
                            association,
                            at: Instant::now(),
                        },
                    );
                }
                Ok(None) => {
                    self.cache.remove(&id);
                }
                Err(error) => {
                    let kept = self.cache.contains_key(&id);
                    tracing::warn!(%error, kept_previous = kept, "describing an EKS association failed");
                }
            }
        }

        let mut set = Vec::new();
        let mut skipped = 0;
        for id in &ids {
            match self.cache.get(id) {
                Some(d) => match to_association(&d.association) {
                    Some(a) => set.push(a),
                    None => skipped += 1,
                },
                None => skipped += 1,
            }
        }
        let applied = set.len();
        self.assocs
            .replace_source(Source::Eks, set)
            .map_err(|e| EksError::Store(Box::new(e)))?;
        self.status.synced.store(true, Ordering::Release);
        Ok(PollReport {
            listed: ids.len(),
            described,
            applied,
            skipped,
        })
    }

    /// Poll forever: every `poll_interval`, or `retry_interval` after a failure.
    pub async fn run(mut self) {
        loop {
            let wait = match self.poll_once().await {
                Ok(report) => {
                    tracing::info!(
                        cluster = %self.settings.cluster_name,
                        listed = report.listed,
                        described = report.described,
                        applied = report.applied,
                        skipped = report.skipped,
                        "EKS associations polled"
                    );
                    self.settings.poll_interval
                }
                Err(error) => {
                    tracing::warn!(%error, "EKS associations not refreshed; keeping the previous set");
                    self.settings
                        .retry_interval
                        .min(self.settings.poll_interval)
                }
            };
            tokio::time::sleep(with_jitter(wait)).await;
        }
    }
}

/// Up to +10 %, so the nodes of a cluster do not poll in lockstep.
fn with_jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    d + d.mul_f64((random % 1000) as f64 / 10_000.0)
}

/// An EKS association as the agent's [`Association`] (source `eks`), or `None`
/// (logged) if the agent cannot serve it as EKS would.
pub fn to_association(e: &EksAssociation) -> Option<Association> {
    let id = e.association_id().unwrap_or("?");
    let (Some(namespace), Some(service_account), Some(role_arn)) =
        (e.namespace(), e.service_account(), e.role_arn())
    else {
        tracing::warn!(
            association_id = id,
            "EKS association without namespace, service account or role; ignored"
        );
        return None;
    };
    let a = Association {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        role_arn: role_arn.to_owned(),
        target_role_arn: e
            .target_role_arn()
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
        disable_session_tags: e.disable_session_tags().unwrap_or(false),
        session_duration_secs: None,
        mode: AssumeMode::PodIdentity,
        source: Source::Eks,
        association_id: e.association_id().map(str::to_owned),
        // EKS sets an external id on target-role associations; the target role's
        // trust policy may require it. The inline session policy narrows what the
        // pod gets (EKS requires disableSessionTags with it).
        external_id: e.external_id().filter(|x| !x.is_empty()).map(str::to_owned),
        policy: e
            .policy()
            .filter(|p| !p.trim().is_empty())
            .map(str::to_owned),
    };
    // The store's own rules, one association at a time, so one bad entry does not
    // block the rest (the store takes a source's set all or nothing).
    if let Err(error) = AssociationStore::new().replace_source(Source::Eks, vec![a.clone()]) {
        tracing::warn!(association_id = id, %error, "invalid EKS association; ignored");
        return None;
    }
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder(
        ns: &str,
        sa: &str,
        role: &str,
    ) -> aws_sdk_eks::types::builders::PodIdentityAssociationBuilder {
        EksAssociation::builder()
            .cluster_name("c")
            .namespace(ns)
            .service_account(sa)
            .role_arn(role)
            .association_id("a-1")
    }

    fn eks(ns: &str, sa: &str, role: &str) -> EksAssociation {
        builder(ns, sa, role).build()
    }

    #[test]
    fn converts_and_filters() {
        let role = "arn:aws:iam::111122223333:role/r";
        let a = to_association(&eks("ns", "sa", role)).unwrap();
        assert_eq!(
            (
                a.namespace.as_str(),
                a.service_account.as_str(),
                a.role_arn.as_str()
            ),
            ("ns", "sa", role)
        );
        assert_eq!(a.source, Source::Eks);
        assert_eq!(a.association_id.as_deref(), Some("a-1"));
        assert!(a.target_role_arn.is_none() && !a.disable_session_tags);

        let chained = builder("ns", "sa", role)
            .target_role_arn("arn:aws:iam::444455556666:role/t")
            .disable_session_tags(true)
            .build();
        let a = to_association(&chained).unwrap();
        assert_eq!(a.effective_role_arn(), "arn:aws:iam::444455556666:role/t");
        assert!(a.disable_session_tags);

        // The inline session policy and external id are carried, never dropped
        // (serving without the policy would grant the whole role).
        let with_policy = builder("ns", "sa", role)
            .policy(r#"{"Version":"2012-10-17","Statement":[]}"#)
            .external_id("ext-1")
            .build();
        let a = to_association(&with_policy).unwrap();
        assert_eq!(
            a.policy.as_deref(),
            Some(r#"{"Version":"2012-10-17","Statement":[]}"#)
        );
        assert_eq!(a.external_id.as_deref(), Some("ext-1"));
        assert!(to_association(&eks("ns", "sa", "not-an-arn")).is_none());
        assert!(to_association(&EksAssociation::builder().build()).is_none());
    }

    #[test]
    fn jitter_is_bounded() {
        for _ in 0..100 {
            let d = with_jitter(Duration::from_secs(60));
            assert!(
                d >= Duration::from_secs(60) && d <= Duration::from_secs(66),
                "{d:?}"
            );
        }
    }
}
