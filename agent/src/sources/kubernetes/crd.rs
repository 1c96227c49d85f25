//! The `PodIdentityAssociation` custom resource, its conversion into
//! [`Association`]s (source `crd`), and the watch that feeds the
//! [`AssociationStore`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use ::kube::api::Api;
use ::kube::runtime::watcher::{self, Event};
use ::kube::{Client, CustomResource, ResourceExt};
use futures::stream::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::relisting::{relisting_watcher, Backoff};
use super::{KubeStatus, SaKey};
use crate::model::Source;
use crate::model::{Association, AssumeMode};
use crate::sources::associations::AssociationStore;

/// `PodIdentityAssociation`: give the service account `spec.serviceAccount` in the
/// resource's namespace the role `spec.roleArn`, as an EKS Pod Identity association
/// would. The agent assumes the role with its own credentials and session tags.
///
/// Whoever may create these in a namespace may hand any role that trusts the agent
/// to that namespace's service accounts: grant `create`/`update` on them only to
/// cluster administrators (see docs/deploy.md).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "pod-identity.aws-agent.io",
    version = "v1alpha1",
    kind = "PodIdentityAssociation",
    plural = "podidentityassociations",
    shortname = "pia",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct PodIdentityAssociationSpec {
    /// Name of the service account, in the association's namespace.
    pub service_account: String,
    /// IAM role the agent assumes for the pods.
    pub role_arn: String,
    /// Role chaining: assume `roleArn`, then this role with those credentials
    /// (cross-account; sessions are capped at one hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_role_arn: Option<String>,
    /// Do not attach the `eks-*`/`kubernetes-*` session tags.
    #[serde(default)]
    pub disable_session_tags: bool,
    /// Requested session duration in seconds (1800..=43200); default 6 h, or 59 min
    /// with a target role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_duration_secs: Option<u32>,
    /// `sts:ExternalId` sent when assuming the role the pod receives (the target
    /// role when chaining), for trust policies that require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Inline session policy (JSON) narrowing the pod's credentials; as in EKS, it
    /// requires `disableSessionTags: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// One `PodIdentityAssociation` as an [`Association`] (source `crd`), without
/// validation.
pub fn crd_association(pia: &PodIdentityAssociation) -> Option<Association> {
    Some(Association {
        namespace: pia.metadata.namespace.clone()?,
        service_account: pia.spec.service_account.clone(),
        role_arn: pia.spec.role_arn.clone(),
        target_role_arn: pia.spec.target_role_arn.clone().filter(|t| !t.is_empty()),
        disable_session_tags: pia.spec.disable_session_tags,
        session_duration_secs: pia.spec.session_duration_secs,
        mode: AssumeMode::PodIdentity,
        source: Source::Crd,
        association_id: None,
        external_id: pia.spec.external_id.clone().filter(|x| !x.is_empty()),
        policy: pia.spec.policy.clone().filter(|p| !p.trim().is_empty()),
    })
}

/// The associations the `crd` source contributes, from all resources.
///
/// Every node must decide the same way, and one bad resource must not disable the
/// others (the store takes a source's set all or nothing): invalid resources are
/// left out (logged), and when resources disagree about one service account the
/// oldest (creation time, then name) wins, as Kubernetes conflict rules usually go.
pub fn crd_associations<'a>(
    resources: impl IntoIterator<Item = &'a PodIdentityAssociation>,
) -> Vec<Association> {
    let mut candidates: Vec<(&PodIdentityAssociation, Association)> = Vec::new();
    for pia in resources {
        let name = format!("{}/{}", pia.namespace().unwrap_or_default(), pia.name_any());
        let Some(assoc) = crd_association(pia) else {
            tracing::warn!(resource = %name, "PodIdentityAssociation without a namespace; ignored");
            continue;
        };
        // The store's own validation, on a scratch store: the same rules as every
        // other source, naming this resource when it fails.
        if let Err(error) = AssociationStore::new().replace_source(Source::Crd, vec![assoc.clone()])
        {
            tracing::warn!(resource = %name, %error, "invalid PodIdentityAssociation; ignored");
            continue;
        }
        candidates.push((pia, assoc));
    }
    candidates.sort_by(|(a, _), (b, _)| {
        let key = |p: &PodIdentityAssociation| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.name_any(),
            )
        };
        key(a).cmp(&key(b))
    });
    let mut chosen: HashMap<SaKey, (String, Association)> = HashMap::new();
    for (pia, assoc) in candidates {
        let key = (assoc.namespace.clone(), assoc.service_account.clone());
        match chosen.get(&key) {
            None => {
                chosen.insert(key, (pia.name_any(), assoc));
            }
            Some((winner, kept)) => {
                if *kept != assoc {
                    tracing::warn!(
                        namespace = %key.0,
                        service_account = %key.1,
                        kept = %winner,
                        ignored = %pia.name_any(),
                        "two PodIdentityAssociations for one service account; the older one applies"
                    );
                }
            }
        }
    }
    let mut out: Vec<Association> = chosen.into_values().map(|(_, a)| a).collect();
    out.sort_by(|a, b| (&a.namespace, &a.service_account).cmp(&(&b.namespace, &b.service_account)));
    out
}

pub(super) async fn run_crd(
    client: Client,
    assocs: AssociationStore,
    status: KubeStatus,
    backoff: Backoff,
) {
    let mut events = relisting_watcher(
        Api::<PodIdentityAssociation>::all(client),
        watcher::Config::default(),
        "podidentityassociations",
        backoff,
    );
    let key = |p: &PodIdentityAssociation| (p.namespace().unwrap_or_default(), p.name_any());
    let mut current: HashMap<SaKey, PodIdentityAssociation> = HashMap::new();
    let mut buf: Option<HashMap<SaKey, PodIdentityAssociation>> = None;
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Event::Init => {
                buf = Some(HashMap::new());
                continue;
            }
            Event::InitApply(p) => {
                if let Some(b) = buf.as_mut() {
                    b.insert(key(&p), p);
                }
                continue;
            }
            Event::InitDone => {
                current = buf.take().unwrap_or_default();
                listed = true;
            }
            Event::Apply(p) => {
                current.insert(key(&p), p);
            }
            Event::Delete(p) => {
                current.remove(&key(&p));
            }
        }
        if !listed {
            continue;
        }
        let set = crd_associations(current.values());
        let count = set.len();
        match assocs.replace_source(Source::Crd, set) {
            Ok(()) => {
                tracing::info!(associations = count, "PodIdentityAssociations applied");
                status.inner.associations.store(true, Ordering::Release);
            }
            // Cannot happen after crd_associations' filtering; keep the old set.
            Err(error) => tracing::error!(%error, "PodIdentityAssociations not applied"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::kube::CustomResourceExt;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    const ROLE_A: &str = "arn:aws:iam::111122223333:role/a";
    const ROLE_B: &str = "arn:aws:iam::111122223333:role/b";

    fn pia(ns: &str, name: &str, created: i64, sa: &str, role: &str) -> PodIdentityAssociation {
        let mut p = PodIdentityAssociation::new(
            name,
            PodIdentityAssociationSpec {
                service_account: sa.to_owned(),
                role_arn: role.to_owned(),
                target_role_arn: None,
                disable_session_tags: false,
                session_duration_secs: None,
                external_id: None,
                policy: None,
            },
        );
        p.metadata = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            creation_timestamp: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + created).unwrap(),
            )),
            ..ObjectMeta::default()
        };
        p
    }

    #[test]
    fn crd_conflicts_and_invalid_resources() {
        let newer = pia("ns", "newer", 10, "sa", ROLE_B);
        let older = pia("ns", "older", 5, "sa", ROLE_A);
        let same_again = pia("ns", "dup", 20, "sa", ROLE_A);
        let invalid = pia("ns", "bad", 1, "other", "arn:aws:iam::1:role/x");
        let mut long = pia("ns", "long", 2, "long", ROLE_B);
        long.spec.session_duration_secs = Some(99_999);
        let fine = pia("other-ns", "fine", 30, "sa", ROLE_B);
        let got = crd_associations([&newer, &invalid, &older, &same_again, &long, &fine]);
        let summary: Vec<_> = got
            .iter()
            .map(|a| {
                (
                    a.namespace.as_str(),
                    a.service_account.as_str(),
                    a.role_arn.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [("ns", "sa", ROLE_A), ("other-ns", "sa", ROLE_B)],
            "oldest wins, invalid ones are dropped"
        );
        assert!(got.iter().all(|a| a.source == Source::Crd));
        // and the result is accepted by the store as one set
        AssociationStore::new()
            .replace_source(Source::Crd, got)
            .unwrap();
    }

    /// deploy/crd.yaml must describe the same resource as the Rust type.
    #[test]
    fn crd_manifest_matches_the_type() {
        let yaml = include_str!("../../../../deploy/crd.yaml");
        let crd = PodIdentityAssociation::crd();
        let names = &crd.spec.names;
        for needle in [
            format!("name: {}", crd.metadata.name.as_deref().unwrap()),
            format!("group: {}", crd.spec.group),
            format!("kind: {}", names.kind),
            format!("plural: {}", names.plural),
            format!("singular: {}", names.singular.as_deref().unwrap()),
            format!("scope: {}", crd.spec.scope),
            format!("- name: {}", crd.spec.versions[0].name),
        ] {
            assert!(yaml.contains(&needle), "deploy/crd.yaml lacks {needle:?}");
        }
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let props = schema["properties"]["spec"]["properties"]
            .as_object()
            .unwrap();
        for field in props.keys() {
            assert!(
                yaml.contains(&format!("{field}:")),
                "deploy/crd.yaml lacks spec field {field}"
            );
        }
        assert_eq!(props.len(), 7);
    }
}
