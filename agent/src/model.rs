//! Plain data that flows between the modules: who the pod is, which role it gets.
//!
//! Kept free of I/O so every module (and every test) can build these by value.

use std::collections::BTreeMap;

/// Annotation on a ServiceAccount that asks for IRSA (AssumeRoleWithWebIdentity).
pub const IRSA_ROLE_ANNOTATION: &str = "eks.amazonaws.com/role-arn";

/// A pod's UID (`metadata.uid`) in canonical form: the UUID shape (8-4-4-4-12 hex
/// digits), lowercase, `-` separators.
///
/// Only [`PodUid::parse`] makes one (`FromStr` and `Deserialize` go through it), so
/// the UIDs from cgroup paths (systemd writes `_` for `-`), the pods file and the
/// API compare, hash and name directories alike, and none can hold a path
/// separator. Serialised as the plain string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct PodUid(String);

/// Why a string is not a pod UID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PodUidError {
    #[error("pod UID is empty")]
    Empty,
    #[error("pod UID {0:?} is not a UUID (8-4-4-4-12 hex digits)")]
    NotAUuid(String),
}

impl PodUid {
    /// The canonical UID (lowercase, `-` separators) from the forms found in cgroup
    /// paths and the API (`_` is systemd's escape for `-`, hex digits in either
    /// case); anything but the UUID shape 8-4-4-4-12 is refused.
    pub fn parse(raw: &str) -> Result<Self, PodUidError> {
        const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
        if raw.is_empty() {
            return Err(PodUidError::Empty);
        }
        let not_a_uuid = || PodUidError::NotAUuid(raw.to_owned());
        let mut parts = raw.split(['-', '_']);
        for len in GROUPS {
            let part = parts.next().ok_or_else(not_a_uuid)?;
            if part.len() != len || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(not_a_uuid());
            }
        }
        if parts.next().is_some() {
            return Err(not_a_uuid());
        }
        Ok(PodUid(raw.to_ascii_lowercase().replace('_', "-")))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for PodUid {
    type Err = PodUidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PodUid::parse(s)
    }
}

impl std::fmt::Display for PodUid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for PodUid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Compares the canonical text with `other` as it is (no canonicalisation of
/// `other`).
impl PartialEq<str> for PodUid {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// As `PartialEq<str>`.
impl PartialEq<&str> for PodUid {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl<'de> serde::Deserialize<'de> for PodUid {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <String as serde::Deserialize>::deserialize(deserializer)?;
        PodUid::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A pod, as the pod directory (file or Kubernetes) knows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    /// `metadata.uid`.
    pub uid: PodUid,
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
