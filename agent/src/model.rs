//! Plain data that flows between the modules: who the pod is, which role it gets.
//!
//! Kept free of I/O so every module (and every test) can build these by value.

use std::collections::BTreeMap;

/// Annotation on a ServiceAccount that asks for IRSA (AssumeRoleWithWebIdentity).
pub const IRSA_ROLE_ANNOTATION: &str = "eks.amazonaws.com/role-arn";

/// A pod, as the pod directory (file or Kubernetes) knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    /// `metadata.uid`, canonical form with dashes.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// `spec.serviceAccountName`.
    pub service_account: String,
    /// Annotations of the pod's ServiceAccount (IRSA role ARN among them).
    #[serde(default)]
    pub service_account_annotations: BTreeMap<String, String>,
    /// `spec.hostNetwork`.
    #[serde(default)]
    pub host_network: bool,
}

/// How the agent obtains credentials for an association.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum AssumeMode {
    /// EKS Pod Identity: AssumeRole with the agent's own credentials and session tags.
    #[default]
    PodIdentity,
    /// IRSA: AssumeRoleWithWebIdentity with the pod's own projected token.
    WebIdentity,
}

/// Where an association came from. Explicit sources rank in
/// [`crate::sources::associations::PRECEDENCE`]; an IRSA annotation is the fallback.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A `PodIdentityAssociation` custom resource.
    Crd,
    /// The EKS API (`ListPodIdentityAssociations`).
    Eks,
    /// The associations file.
    #[default]
    File,
    /// The `eks.amazonaws.com/role-arn` annotation of the service account (IRSA).
    IrsaAnnotation,
}

impl Source {
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Crd => "crd",
            Source::Eks => "eks",
            Source::File => "file",
            Source::IrsaAnnotation => "irsa-annotation",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// (namespace, service account) → role. One role per service account, as in EKS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Association {
    pub namespace: String,
    pub service_account: String,
    pub role_arn: String,
    /// Role chaining: assume `role_arn`, then this role with those credentials.
    #[serde(default)]
    pub target_role_arn: Option<String>,
    #[serde(default)]
    pub disable_session_tags: bool,
    /// Requested session duration; default 6 h, 59 min with a target role.
    #[serde(default)]
    pub session_duration_secs: Option<u32>,
    #[serde(default)]
    pub mode: AssumeMode,
    /// Where the association came from (stamped by the source that delivered it).
    #[serde(default)]
    pub source: Source,
    /// EKS association id, when it came from EKS.
    #[serde(default)]
    pub association_id: Option<String>,
    /// `sts:ExternalId` for the role the pod finally receives (EKS sets one on
    /// target-role associations; the target role's trust policy may require it).
    #[serde(default)]
    pub external_id: Option<String>,
    /// Inline session policy (JSON) that narrows the credentials the pod receives.
    #[serde(default)]
    pub policy: Option<String>,
}

impl Association {
    /// The role whose credentials the pod finally receives.
    pub fn effective_role_arn(&self) -> &str {
        self.target_role_arn.as_deref().unwrap_or(&self.role_arn)
    }
}
