//! The node-local file formats: the pods file and the associations file.
//!
//! * Pods file: `{"pods": [...]}`, read by [`load_pods_file`] and kept in a
//!   [`PodStore`] by [`watch_pods_file`] (reloaded on change: inotify on its
//!   directory, and a poll).
//! * Associations file: `{"associations": [...]}`, read by
//!   [`load_associations_file`] as the `file` source of the
//!   [`AssociationStore`] and kept there by [`watch_associations_file`] (reloaded
//!   on change, likewise).
//!
//! Their errors are [`PodError`] and [`AssociationError`], beside the stores; both
//! loaders are re-exported from [`pods`](crate::sources::pods) and
//! [`associations`](crate::sources::associations).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::dir_watch::DirWatch;
use crate::model::{Association, AssumeMode, PodInfo, PodUid};
use crate::sources::pods::{PodError, PodStore};
use crate::{
    model::Source,
    sources::associations::{index_source, AssociationError, AssociationStore},
};

// === pods file ===

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PodsFile {
    pods: Vec<PodInfo>,
}

/// Read and validate a pods file:
/// `{"pods": [{"uid", "namespace", "name", "serviceAccount",
/// "serviceAccountAnnotations": {…}, "hostNetwork": false}, …]}`.
///
/// UIDs must be UUIDs and are canonicalised (lowercase, `-`) as they are read
/// ([`PodUid`](crate::model::PodUid)); namespace, name, service account must not
/// be empty; a UID may appear only once.
pub fn load_pods_file(path: &Path) -> Result<Vec<PodInfo>, PodError> {
    let text = std::fs::read(path).map_err(|source| PodError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_pods_file(path, &text)
}

/// [`load_pods_file`] for the file's bytes, already read from `path` (which only
/// names the file in errors).
pub fn parse_pods_file(path: &Path, text: &[u8]) -> Result<Vec<PodInfo>, PodError> {
    let file: PodsFile = serde_json::from_slice(text).map_err(|source| PodError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| PodError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut seen: HashMap<&PodUid, usize> = HashMap::new();
    let pods = file.pods;
    for (i, pod) in pods.iter().enumerate() {
        for (field, value) in [
            ("namespace", &pod.namespace),
            ("name", &pod.name),
            ("serviceAccount", &pod.service_account),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(format!("pods[{i}].{field} is empty")));
            }
        }
        if let Some(&first) = seen.get(&pod.uid) {
            let other = &pods[first];
            return Err(invalid(format!(
                "pods[{first}] ({}/{}) and pods[{i}] ({}/{}) have the same uid {}",
                other.namespace, other.name, pod.namespace, pod.name, pod.uid
            )));
        }
        seen.insert(&pod.uid, i);
    }
    Ok(pods)
}

/// What identifies one version of the file: a rewrite changes mtime or size, an
/// atomic replace (rename over it, as a ConfigMap update does) changes the inode.
fn file_stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// Load the pods file into `store`, mark it synced, then reload it when it
/// changes (seen through inotify at once, or by the poll every `poll`).
///
/// Returns only if the first load fails. A file that breaks later is logged and the
/// previous snapshot stays: a bad edit must not make every pod unknown.
pub async fn watch_pods_file(
    path: PathBuf,
    store: PodStore,
    poll: Duration,
) -> Result<(), PodError> {
    let stamp = file_stamp(&path);
    let pods = load_pods_file(&path)?;
    tracing::info!(path = %path.display(), pods = pods.len(), "loaded pods file");
    store.replace_all(pods);
    store.mark_synced();
    on_each_change(&path, stamp, poll, || match load_pods_file(&path) {
        Ok(pods) => {
            tracing::info!(path = %path.display(), pods = pods.len(), "reloaded pods file");
            store.replace_all(pods);
        }
        Err(error) => {
            tracing::warn!(%error, "pods file not reloaded; keeping the previous pods");
        }
    })
    .await;
    Ok(())
}

/// Call `reload` whenever `path`'s stamp (mtime, size, inode) differs from the
/// last one seen, starting from `stamp`: looked at as soon as its directory
/// changes (inotify, [`DirWatch`]) and every `poll` in any case. The new stamp is
/// kept even if the reload fails, so a broken file is reported once, not every
/// poll. Never returns.
async fn on_each_change(
    path: &Path,
    mut stamp: Option<(SystemTime, u64, u64)>,
    poll: Duration,
    mut reload: impl FnMut(),
) {
    // The directory, not the file: an atomic replace (rename over it, a
    // ConfigMap's `..data` swap) makes a new file the old watch would not see.
    let watch = path.parent().and_then(|dir| {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let mut w = DirWatch::new().ok()?;
        (w.set([dir.to_path_buf()]) == 1).then_some(w)
    });
    if watch.is_none() {
        tracing::debug!(path = %path.display(), "no inotify watch; polling only");
    }
    loop {
        match &watch {
            Some(w) => {
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = w.changed() => {
                        // A writer's burst (create, write, rename) is one change.
                        tokio::time::sleep(SETTLE).await;
                    }
                }
            }
            None => tokio::time::sleep(poll).await,
        }
        let now = file_stamp(path);
        if now != stamp {
            stamp = now;
            reload();
        }
    }
}

/// How long a change of the file's directory settles before the file is read.
const SETTLE: Duration = Duration::from_millis(5);

// === associations file ===

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AssociationsFile {
    associations: Vec<FileEntry>,
}

/// One entry of the file. Unknown keys are rejected, so a misspelt
/// `targetRoleArn` cannot silently hand out the wrong role.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileEntry {
    namespace: String,
    service_account: String,
    role_arn: String,
    #[serde(default)]
    target_role_arn: Option<String>,
    #[serde(default)]
    disable_session_tags: bool,
    #[serde(default)]
    session_duration_secs: Option<u32>,
    #[serde(default)]
    mode: AssumeMode,
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    policy: Option<String>,
}

/// Read and validate an associations file:
/// `{"associations": [{"namespace", "serviceAccount", "roleArn", "targetRoleArn"?,
/// "disableSessionTags"?, "sessionDurationSecs"?, "mode"?: "pod-identity" |
/// "web-identity"}]}`. Associations get source `file`.
pub fn load_associations_file(path: &Path) -> Result<Vec<Association>, AssociationError> {
    let text = std::fs::read(path).map_err(|source| AssociationError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_associations_file(path, &text)
}

/// [`load_associations_file`] for the file's bytes, already read from `path`
/// (which only names the file in errors).
pub fn parse_associations_file(
    path: &Path,
    text: &[u8],
) -> Result<Vec<Association>, AssociationError> {
    let file: AssociationsFile =
        serde_json::from_slice(text).map_err(|source| AssociationError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    let assocs: Vec<Association> = file
        .associations
        .into_iter()
        .map(|e| Association {
            namespace: e.namespace,
            service_account: e.service_account,
            role_arn: e.role_arn,
            target_role_arn: e.target_role_arn,
            disable_session_tags: e.disable_session_tags,
            session_duration_secs: e.session_duration_secs,
            mode: e.mode,
            source: Source::File,
            association_id: None,
            external_id: e.external_id,
            policy: e.policy,
        })
        .collect();
    // Validate here too, so the error names the file.
    index_source(Source::File, assocs.clone()).map_err(|error| AssociationError::InFile {
        path: path.to_path_buf(),
        error: Box::new(error),
    })?;
    Ok(assocs)
}

/// Load the associations file as the `file` source of `store`, then reload it
/// when it changes (inotify at once, or the poll every `poll`): an edited association (a role moved
/// to another service account, one removed) takes effect, as a change through the
/// Kubernetes or EKS API does.
///
/// Returns only if the first load fails. A file that breaks later (unreadable,
/// invalid, conflicting) is logged and the previous associations stay: a bad edit
/// must not drop or change every pod's role.
pub async fn watch_associations_file(
    path: PathBuf,
    store: AssociationStore,
    poll: Duration,
) -> Result<(), AssociationError> {
    let stamp = file_stamp(&path);
    let list = load_associations_file(&path)?;
    tracing::info!(path = %path.display(), associations = list.len(), "loaded associations file");
    store.replace_source(Source::File, list)?;
    on_each_change(&path, stamp, poll, || {
        let loaded = load_associations_file(&path).and_then(|list| {
            let n = list.len();
            store.replace_source(Source::File, list).map(|()| n)
        });
        match loaded {
            Ok(n) => {
                tracing::info!(path = %path.display(), associations = n, "reloaded associations file");
            }
            Err(error) => {
                tracing::warn!(%error, "associations file not reloaded; keeping the previous associations");
            }
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests;
