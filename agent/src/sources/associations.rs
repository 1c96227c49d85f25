//! (namespace, service account) → role.
//!
//! Several sources feed the store, each owning its own part
//! ([`AssociationStore::replace_source`]): the config file, a CRD, the EKS API. When
//! more than one has an association for the same service account, [`PRECEDENCE`] decides. Without any, an
//! IRSA annotation on the service account (`eks.amazonaws.com/role-arn`) selects
//! AssumeRoleWithWebIdentity. Otherwise the pod has no role: the agent refuses
//! rather than falling back to some default role (kube2iam's default-role
//! surprises).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::model::{Association, AssumeMode, PodInfo, Source, IRSA_ROLE_ANNOTATION};

// The associations file lives with the other file formats (`sources::files`);
// re-exported here so callers keep their paths.
pub use crate::sources::files::{load_associations_file, watch_associations_file};

/// Sources, highest precedence first. An explicit, cluster-managed association
/// (`crd`) beats the EKS API's (`eks`), which beats the node-local file (`file`).
pub const PRECEDENCE: &[Source] = &[Source::Crd, Source::Eks, Source::File];

/// Session durations accepted: STS allows 15 min to 12 h, but the agent never serves
/// credentials with less than 15 min left (botocore refreshes inside 15 min), so a
/// session must last at least 30 min to be servable at all; shorter ones are refused
/// when loaded rather than failing every request with a 500.
pub const SESSION_DURATION_SECS: std::ops::RangeInclusive<u32> = 1_800..=43_200;

/// Errors of association lookup, validation and loading.
#[derive(Debug, thiserror::Error)]
pub enum AssociationError {
    /// No source and no IRSA annotation gives this service account a role.
    #[error("no role association for service account {namespace}/{service_account}")]
    NoAssociation {
        /// Pod namespace.
        namespace: String,
        /// Pod service account.
        service_account: String,
    },
    /// One source gives one service account two different associations (EKS allows
    /// one role per service account).
    #[error("source {origin}: service account {namespace}/{service_account} has two associations: {first} and {second}")]
    Conflict {
        /// The association source (`file`, `crd`, …).
        origin: Source,
        /// Namespace of the service account.
        namespace: String,
        /// The service account.
        service_account: String,
        /// The association seen first, described.
        first: String,
        /// The association that contradicts it, described.
        second: String,
    },
    /// A role ARN is not `arn:<partition>:iam::<12 digits>:role/<path/name>`.
    #[error("source {origin}: service account {namespace}/{service_account}: {field} {arn:?} is not an IAM role ARN")]
    InvalidRoleArn {
        /// The association source.
        origin: Source,
        /// Namespace of the service account.
        namespace: String,
        /// The service account.
        service_account: String,
        /// Which field held it (`roleArn`, `targetRoleArn`, the annotation).
        field: String,
        /// The rejected value.
        arn: String,
    },
    /// The session duration is outside what STS accepts.
    #[error("source {origin}: service account {namespace}/{service_account}: sessionDurationSecs {secs} is outside 1800..=43200 (credentials are served with at least 15 min left)")]
    InvalidSessionDuration {
        /// The association source.
        origin: Source,
        /// Namespace of the service account.
        namespace: String,
        /// The service account.
        service_account: String,
        /// The rejected duration.
        secs: u32,
    },
    /// A required field is empty.
    #[error("source {origin}: association #{index}: {field} is empty")]
    EmptyField {
        /// The association source.
        origin: Source,
        /// Position of the association in the list given.
        index: usize,
        /// The empty field.
        field: &'static str,
    },
    /// A source not listed in [`PRECEDENCE`] (the IRSA annotation is read from
    /// the pod's service account, never stored): its rank would be undefined.
    #[error("association source {origin} has no rank (explicit sources: crd, eks, file)")]
    UnknownSource {
        /// The source given.
        origin: Source,
    },
    /// Reading the associations file failed.
    #[error("{path}: {source}")]
    Io {
        /// The associations file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The associations file is not the expected JSON.
    #[error("{path}: invalid JSON: {source}")]
    Parse {
        /// The associations file.
        path: PathBuf,
        /// The JSON error (it carries line and column).
        source: serde_json::Error,
    },
    /// The associations file parsed, but an entry is invalid.
    #[error("{path}: {error}")]
    InFile {
        /// The associations file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        error: Box<AssociationError>,
    },
}

// === validation ===

/// Whether `arn` is `arn:<partition>:iam::<12 digits>:role/<path/>name`.
///
/// Checked before any STS call so a typo shows at load time, with its source, and so
/// an annotation cannot smuggle something else into the AssumeRole request.
pub fn is_valid_role_arn(arn: &str) -> bool {
    // IAM's limits: ARN up to 2048 chars, role name 1..=64 of [\w+=,.@-], path
    // elements printable ASCII other than '/'.
    if arn.len() > 2048 {
        return false;
    }
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let partition_ok = partition == "aws"
        || partition.strip_prefix("aws-").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    let Some(path_and_name) = resource.strip_prefix("role/") else {
        return false;
    };
    let mut elements: Vec<&str> = path_and_name.split('/').collect();
    let name = elements.pop().unwrap_or_default();
    let name_ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b));
    let path_ok = elements
        .iter()
        .all(|e| !e.is_empty() && e.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    partition_ok && account_ok && name_ok && path_ok
}

/// Check one association, as given by `origin` at position `index`.
fn validate(origin: Source, index: usize, a: &Association) -> Result<(), AssociationError> {
    for (field, value) in [
        ("namespace", &a.namespace),
        ("serviceAccount", &a.service_account),
        ("roleArn", &a.role_arn),
    ] {
        if value.trim().is_empty() {
            return Err(AssociationError::EmptyField {
                origin,
                index,
                field,
            });
        }
    }
    let bad_arn = |field: &str, arn: &str| AssociationError::InvalidRoleArn {
        origin,
        namespace: a.namespace.clone(),
        service_account: a.service_account.clone(),
        field: field.to_owned(),
        arn: arn.to_owned(),
    };
    if !is_valid_role_arn(&a.role_arn) {
        return Err(bad_arn("roleArn", &a.role_arn));
    }
    if let Some(target) = &a.target_role_arn {
        if !is_valid_role_arn(target) {
            return Err(bad_arn("targetRoleArn", target));
        }
    }
    if let Some(secs) = a.session_duration_secs {
        if !SESSION_DURATION_SECS.contains(&secs) {
            return Err(AssociationError::InvalidSessionDuration {
                origin,
                namespace: a.namespace.clone(),
                service_account: a.service_account.clone(),
                secs,
            });
        }
    }
    Ok(())
}

/// Human-readable summary of an association for conflict messages.
fn describe(a: &Association) -> String {
    let mut s = a.role_arn.clone();
    if let Some(target) = &a.target_role_arn {
        s.push_str(" -> ");
        s.push_str(target);
    }
    s.push_str(&format!(" ({:?}", a.mode));
    if let Some(secs) = a.session_duration_secs {
        s.push_str(&format!(", {secs}s"));
    }
    if a.disable_session_tags {
        s.push_str(", no session tags");
    }
    s.push(')');
    s
}

type Key = (String, String);

/// Validate a source's associations, stamp them with `origin`, and index them by
/// (namespace, service account). Exact duplicates collapse; different ones conflict.
pub(super) fn index_source(
    origin: Source,
    assocs: Vec<Association>,
) -> Result<HashMap<Key, Association>, AssociationError> {
    let mut map: HashMap<Key, Association> = HashMap::with_capacity(assocs.len());
    for (index, mut a) in assocs.into_iter().enumerate() {
        a.source = origin;
        validate(origin, index, &a)?;
        let key = (a.namespace.clone(), a.service_account.clone());
        if let Some(first) = map.get(&key) {
            if *first != a {
                return Err(AssociationError::Conflict {
                    origin,
                    first: describe(first),
                    second: describe(&a),
                    namespace: a.namespace,
                    service_account: a.service_account,
                });
            }
            continue;
        }
        map.insert(key, a);
    }
    Ok(map)
}

// === store ===

/// Per source, the associations it owns.
type Snapshot = BTreeMap<Source, Arc<HashMap<Key, Association>>>;

/// Handle to the association table; clones share it.
#[derive(Clone, Default)]
pub struct AssociationStore {
    // Readers clone the Arc and drop the lock at once; writers swap in a new map.
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
}

impl std::fmt::Debug for AssociationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snap = self.load();
        let mut d = f.debug_struct("AssociationStore");
        for (source, map) in snap.iter() {
            d.field(source.as_str(), &map.len());
        }
        d.finish()
    }
}

impl AssociationStore {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn load(&self) -> Arc<Snapshot> {
        // Writers only swap whole values, so a poisoned lock still holds a
        // consistent snapshot.
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replace everything `source` (one of [`PRECEDENCE`]) contributes.
    ///
    /// All or nothing: if any association is invalid (empty field, bad role ARN,
    /// session duration) or two conflict, the error is returned and the source's
    /// previous set stays in force.
    pub fn replace_source(
        &self,
        origin: Source,
        assocs: Vec<Association>,
    ) -> Result<(), AssociationError> {
        if !PRECEDENCE.contains(&origin) {
            return Err(AssociationError::UnknownSource { origin });
        }
        let map = Arc::new(index_source(origin, assocs)?);
        let mut guard = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        let mut next = Snapshot::clone(&guard);
        next.insert(origin, map);
        *guard = Arc::new(next);
        Ok(())
    }

    /// Number of associations `source` currently contributes.
    pub fn source_len(&self, source: Source) -> usize {
        self.load().get(&source).map_or(0, |m| m.len())
    }

    /// The association for `pod`'s service account.
    ///
    /// Precedence: an explicit association from the first source in [`PRECEDENCE`]
    /// that has one; else the service account's IRSA annotation
    /// ([`IRSA_ROLE_ANNOTATION`]), as [`AssumeMode::WebIdentity`] with source
    /// [`Source::IrsaAnnotation`]; else [`AssociationError::NoAssociation`]. An annotation that
    /// is not a role ARN is an error, not a fall-through.
    pub fn resolve(&self, pod: &PodInfo) -> Result<Association, AssociationError> {
        let snap = self.load();
        let key = (pod.namespace.clone(), pod.service_account.clone());
        for source in PRECEDENCE {
            if let Some(a) = snap.get(source).and_then(|m| m.get(&key)) {
                return Ok(a.clone());
            }
        }
        if let Some(arn) = pod.service_account_annotations.get(IRSA_ROLE_ANNOTATION) {
            let arn = arn.trim();
            if !is_valid_role_arn(arn) {
                return Err(AssociationError::InvalidRoleArn {
                    origin: Source::IrsaAnnotation,
                    namespace: pod.namespace.clone(),
                    service_account: pod.service_account.clone(),
                    field: IRSA_ROLE_ANNOTATION.to_owned(),
                    arn: arn.to_owned(),
                });
            }
            return Ok(Association {
                namespace: pod.namespace.clone(),
                service_account: pod.service_account.clone(),
                role_arn: arn.to_owned(),
                mode: AssumeMode::WebIdentity,
                source: Source::IrsaAnnotation,
                ..Association::default()
            });
        }
        Err(AssociationError::NoAssociation {
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, association, with_irsa_role};

    const ROLE_A: &str = "arn:aws:iam::123456789012:role/a";
    const ROLE_B: &str = "arn:aws:iam::123456789012:role/service-role/b";
    const ROLE_C: &str = "arn:aws-cn:iam::210987654321:role/c";

    /// Pod `ns/p` running as `sa`.
    fn pod(ns: &str, sa: &str) -> PodInfo {
        testing::pod(ns, "p", sa)
    }

    #[test]
    fn role_arns() {
        for ok in [
            ROLE_A,
            ROLE_B,
            ROLE_C,
            "arn:aws-us-gov:iam::123456789012:role/a/b/c/Name+=,.@_-x",
            "arn:aws-iso-b:iam::123456789012:role/x",
        ] {
            assert!(is_valid_role_arn(ok), "{ok}");
        }
        for bad in [
            "",
            "arn:aws:iam::123456789012:user/a",
            "arn:aws:iam::12345678901:role/a",
            "arn:aws:iam::1234567890123:role/a",
            "arn:aws:iam:us-east-1:123456789012:role/a",
            "arn:aws:sts::123456789012:role/a",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role//a",
            "arn:aws:iam::123456789012:role/a b",
            "arn:gcp:iam::123456789012:role/a",
            "arn:aws-:iam::123456789012:role/a",
            "arn:aws:iam::123456789012:role/a:b",
            &format!("arn:aws:iam::123456789012:role/{}", "x".repeat(65)),
            " arn:aws:iam::123456789012:role/a",
        ] {
            assert!(!is_valid_role_arn(bad), "{bad}");
        }
    }

    #[test]
    fn precedence_crd_eks_file() {
        let store = AssociationStore::new();
        store
            .replace_source(
                Source::File,
                vec![
                    association("ns", "sa", ROLE_A),
                    association("ns", "only-file", ROLE_A),
                ],
            )
            .unwrap();
        let got = store.resolve(&pod("ns", "sa")).unwrap();
        assert_eq!(
            (got.role_arn.as_str(), got.source.as_str()),
            (ROLE_A, "file")
        );

        store
            .replace_source(Source::Eks, vec![association("ns", "sa", ROLE_B)])
            .unwrap();
        assert_eq!(store.resolve(&pod("ns", "sa")).unwrap().source, Source::Eks);

        store
            .replace_source(Source::Crd, vec![association("ns", "sa", ROLE_C)])
            .unwrap();
        let got = store.resolve(&pod("ns", "sa")).unwrap();
        assert_eq!(
            (got.role_arn.as_str(), got.source.as_str()),
            (ROLE_C, "crd")
        );

        // Lower sources still answer for what the higher ones do not cover.
        assert_eq!(
            store.resolve(&pod("ns", "only-file")).unwrap().source,
            Source::File
        );

        // An explicit association beats the IRSA annotation.
        let got = store
            .resolve(&with_irsa_role(pod("ns", "sa"), ROLE_B))
            .unwrap();
        assert_eq!(got.source, Source::Crd);

        // Emptying a source hands the service account back to the next one.
        store.replace_source(Source::Crd, vec![]).unwrap();
        assert_eq!(store.resolve(&pod("ns", "sa")).unwrap().source, Source::Eks);
        assert_eq!(store.source_len(Source::Eks), 1);
        assert_eq!(store.source_len(Source::Crd), 0);
        assert_eq!(PRECEDENCE, [Source::Crd, Source::Eks, Source::File]);
    }

    #[test]
    fn irsa_fallback_and_no_association() {
        let store = AssociationStore::new();
        let got = store
            .resolve(&with_irsa_role(pod("ns", "sa"), ROLE_B))
            .unwrap();
        assert_eq!(got.mode, AssumeMode::WebIdentity);
        assert_eq!(got.source, Source::IrsaAnnotation);
        assert_eq!(got.role_arn, ROLE_B);
        assert_eq!(
            (got.namespace.as_str(), got.service_account.as_str()),
            ("ns", "sa")
        );

        let err = store
            .resolve(&with_irsa_role(pod("ns", "sa"), "not-an-arn"))
            .unwrap_err();
        assert!(
            matches!(&err, AssociationError::InvalidRoleArn { origin, arn, .. }
            if *origin == Source::IrsaAnnotation && arn == "not-an-arn")
        );

        let err = store.resolve(&pod("ns", "nobody")).unwrap_err();
        assert!(
            matches!(&err, AssociationError::NoAssociation { namespace, service_account }
            if namespace == "ns" && service_account == "nobody")
        );
        assert_eq!(
            err.to_string(),
            "no role association for service account ns/nobody"
        );

        // Same service account name in another namespace is another identity.
        store
            .replace_source(Source::File, vec![association("a", "sa", ROLE_A)])
            .unwrap();
        assert!(store.resolve(&pod("b", "sa")).is_err());
    }

    #[test]
    fn conflicts_within_a_source() {
        let store = AssociationStore::new();
        store
            .replace_source(Source::File, vec![association("ns", "sa", ROLE_A)])
            .unwrap();
        let err = store
            .replace_source(
                Source::File,
                vec![
                    association("ns", "sa", ROLE_B),
                    association("ns", "other", ROLE_B),
                    association("ns", "sa", ROLE_C),
                ],
            )
            .unwrap_err();
        match &err {
            AssociationError::Conflict {
                origin,
                namespace,
                service_account,
                first,
                second,
            } => {
                assert_eq!(
                    (
                        origin.as_str(),
                        namespace.as_str(),
                        service_account.as_str()
                    ),
                    ("file", "ns", "sa")
                );
                assert!(
                    first.starts_with(ROLE_B) && second.starts_with(ROLE_C),
                    "{err}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The previous set stays.
        assert_eq!(store.resolve(&pod("ns", "sa")).unwrap().role_arn, ROLE_A);
        assert_eq!(store.source_len(Source::File), 1);

        // Exact duplicates are harmless; the same role with other settings is not.
        store
            .replace_source(
                Source::File,
                vec![
                    association("ns", "sa", ROLE_B),
                    association("ns", "sa", ROLE_B),
                ],
            )
            .unwrap();
        assert_eq!(store.source_len(Source::File), 1);
        let mut longer = association("ns", "sa", ROLE_B);
        longer.session_duration_secs = Some(3600);
        assert!(matches!(
            store.replace_source(Source::File, vec![association("ns", "sa", ROLE_B), longer]),
            Err(AssociationError::Conflict { .. })
        ));

        // The same service account in two sources is not a conflict (precedence).
        store
            .replace_source(Source::Eks, vec![association("ns", "sa", ROLE_C)])
            .unwrap();
    }

    #[test]
    fn invalid_input_keeps_the_previous_set() {
        let store = AssociationStore::new();
        store
            .replace_source(Source::Eks, vec![association("ns", "sa", ROLE_A)])
            .unwrap();

        let err = store
            .replace_source(
                Source::Eks,
                vec![association("ns", "sa", "arn:aws:iam::123:role/x")],
            )
            .unwrap_err();
        assert!(
            matches!(&err, AssociationError::InvalidRoleArn { arn, field, .. }
            if arn == "arn:aws:iam::123:role/x" && field == "roleArn")
        );
        assert!(err.to_string().contains("arn:aws:iam::123:role/x"));

        let mut chained = association("ns", "sa", ROLE_B);
        chained.target_role_arn = Some("arn:aws:iam::123456789012:user/u".to_owned());
        assert!(matches!(
            store.replace_source(Source::Eks, vec![chained]),
            Err(AssociationError::InvalidRoleArn { field, .. }) if field == "targetRoleArn"
        ));

        let mut short = association("ns", "sa", ROLE_B);
        short.session_duration_secs = Some(1799);
        assert!(matches!(
            store.replace_source(Source::Eks, vec![short]),
            Err(AssociationError::InvalidSessionDuration { secs: 1799, .. })
        ));

        assert!(matches!(
            store.replace_source(Source::Eks, vec![association("ns", "", ROLE_B)]),
            Err(AssociationError::EmptyField {
                field: "serviceAccount",
                index: 0,
                ..
            })
        ));

        assert!(matches!(
            store.replace_source(Source::IrsaAnnotation, vec![]),
            Err(AssociationError::UnknownSource { origin }) if origin == Source::IrsaAnnotation
        ));

        assert_eq!(store.resolve(&pod("ns", "sa")).unwrap().role_arn, ROLE_A);
    }
}
