//! The pod directory: pod UID → namespace, name, service account.
//!
//! Sources (a JSON file here, the Kubernetes API elsewhere) replace or patch a
//! snapshot held in a [`tokio::sync::watch`] channel; lookups read it, and can wait
//! a little for an update, because a new pod's cgroup (and its first request) can
//! come before the watch reports the pod (kube2iam #46, #136: "wrong role right
//! after pod start").

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::attribution::cgroup::canonical_pod_uid;
use crate::model::PodInfo;

/// Errors of the pod directory and its file source.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// No pod with this UID is known (also not after waiting for updates).
    #[error("unknown pod uid {uid}")]
    UnknownPod {
        /// The UID asked for.
        uid: String,
    },
    /// Reading the pods file failed.
    #[error("{path}: {source}")]
    Io {
        /// The pods file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The pods file is not the expected JSON.
    #[error("{path}: invalid JSON: {source}")]
    Parse {
        /// The pods file.
        path: PathBuf,
        /// The JSON error (it carries line and column).
        source: serde_json::Error,
    },
    /// The pods file parsed but an entry is not acceptable.
    #[error("{path}: {reason}")]
    Invalid {
        /// The pods file.
        path: PathBuf,
        /// What is wrong, naming the entry and field.
        reason: String,
    },
}

/// Snapshot of all known pods, by canonical UID.
pub type PodMap = HashMap<String, PodInfo>;

/// Lookups accept either UID form (`_` from systemd paths) and any case.
fn normalise_uid(uid: &str) -> String {
    uid.to_ascii_lowercase().replace('_', "-")
}

struct Inner {
    tx: watch::Sender<PodMap>,
    synced: AtomicBool,
}

/// Handle to the pod directory; clones share one snapshot.
#[derive(Clone)]
pub struct PodStore {
    inner: Arc<Inner>,
}

impl Default for PodStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for PodStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodStore")
            .field("pods", &self.len())
            .field("synced", &self.is_synced())
            .finish()
    }
}

impl PodStore {
    /// An empty, not yet synced directory.
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(PodMap::new());
        Self {
            inner: Arc::new(Inner {
                tx,
                synced: AtomicBool::new(false),
            }),
        }
    }

    /// Replace the whole snapshot (a full list from a source).
    pub fn replace_all(&self, pods: Vec<PodInfo>) {
        let map: PodMap = pods
            .into_iter()
            .map(|mut pod| {
                pod.uid = normalise_uid(&pod.uid);
                (pod.uid.clone(), pod)
            })
            .collect();
        self.inner.tx.send_replace(map);
    }

    /// Add or update one pod (a watch event).
    pub fn upsert(&self, mut pod: PodInfo) {
        pod.uid = normalise_uid(&pod.uid);
        self.inner.tx.send_if_modified(|map| {
            if map.get(&pod.uid) == Some(&pod) {
                return false;
            }
            map.insert(pod.uid.clone(), pod);
            true
        });
    }

    /// Forget one pod (a watch deletion).
    pub fn remove(&self, uid: &str) {
        let uid = normalise_uid(uid);
        self.inner
            .tx
            .send_if_modified(|map| map.remove(&uid).is_some());
    }

    /// The pod with this UID, if known now.
    pub fn get(&self, uid: &str) -> Option<PodInfo> {
        self.inner.tx.borrow().get(&normalise_uid(uid)).cloned()
    }

    /// Number of known pods.
    pub fn len(&self) -> usize {
        self.inner.tx.borrow().len()
    }

    /// Whether no pod is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A receiver of snapshot updates (e.g. to drop cached credentials of pods
    /// that are gone).
    pub fn subscribe(&self) -> watch::Receiver<PodMap> {
        self.inner.tx.subscribe()
    }

    /// The pod with this UID; if unknown, wait up to `wait` for an update that
    /// brings it (the Kubernetes watch can lag the pod's first connection).
    pub async fn lookup(&self, uid: &str, wait: Duration) -> Result<PodInfo, PodError> {
        let key = normalise_uid(uid);
        // Subscribe before the first look, so an update between the look and the
        // wait is not missed.
        let mut rx = self.inner.tx.subscribe();
        if let Some(pod) = rx.borrow_and_update().get(&key) {
            return Ok(pod.clone());
        }
        let found = tokio::time::timeout(wait, async {
            // The sender lives in `self`, so `wait_for` cannot fail while we wait.
            rx.wait_for(|map| map.contains_key(&key))
                .await
                .ok()
                .and_then(|map| map.get(&key).cloned())
        })
        .await;
        match found {
            Ok(Some(pod)) => Ok(pod),
            _ => Err(PodError::UnknownPod {
                uid: uid.to_owned(),
            }),
        }
    }

    /// Record that a source has delivered its first complete list (readiness).
    pub fn mark_synced(&self) {
        self.inner.synced.store(true, Ordering::Release);
    }

    /// Whether a source has delivered its first complete list.
    pub fn is_synced(&self) -> bool {
        self.inner.synced.load(Ordering::Acquire)
    }
}

// === file source ===

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PodsFile {
    pods: Vec<PodInfo>,
}

/// Read and validate a pods file:
/// `{"pods": [{"uid", "namespace", "name", "serviceAccount",
/// "serviceAccountAnnotations": {…}, "hostNetwork": false}, …]}`.
///
/// UIDs are canonicalised (lowercase, `-`) and must be UUIDs; namespace, name,
/// service account must not be empty; a UID may appear only once.
pub fn load_pods_file(path: &Path) -> Result<Vec<PodInfo>, PodError> {
    let text = std::fs::read(path).map_err(|source| PodError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file: PodsFile = serde_json::from_slice(&text).map_err(|source| PodError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| PodError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut pods = file.pods;
    for i in 0..pods.len() {
        let pod = &mut pods[i];
        for (field, value) in [
            ("uid", &pod.uid),
            ("namespace", &pod.namespace),
            ("name", &pod.name),
            ("serviceAccount", &pod.service_account),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(format!("pods[{i}].{field} is empty")));
            }
        }
        pod.uid = canonical_pod_uid(&pod.uid).ok_or_else(|| {
            invalid(format!(
                "pods[{i}].uid {:?} ({}/{}) is not a UUID",
                pod.uid, pod.namespace, pod.name
            ))
        })?;
        let pod = &pods[i];
        if let Some(&first) = seen.get(&pod.uid) {
            let other = &pods[first];
            return Err(invalid(format!(
                "pods[{first}] ({}/{}) and pods[{i}] ({}/{}) have the same uid {}",
                other.namespace, other.name, pod.namespace, pod.name, pod.uid
            )));
        }
        seen.insert(pod.uid.clone(), i);
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

/// Load the pods file into `store`, mark it synced, then poll every `poll` and
/// reload when the file changes.
///
/// Returns only if the first load fails. A file that breaks later is logged and the
/// previous snapshot stays: a bad edit must not make every pod unknown.
pub async fn watch_pods_file(
    path: PathBuf,
    store: PodStore,
    poll: Duration,
) -> Result<(), PodError> {
    let mut stamp = file_stamp(&path);
    let pods = load_pods_file(&path)?;
    tracing::info!(path = %path.display(), pods = pods.len(), "loaded pods file");
    store.replace_all(pods);
    store.mark_synced();
    loop {
        tokio::time::sleep(poll).await;
        let now = file_stamp(&path);
        if now == stamp {
            continue;
        }
        // Remember the new stamp even if the load fails, so a broken file is
        // reported once, not every poll.
        stamp = now;
        match load_pods_file(&path) {
            Ok(pods) => {
                tracing::info!(path = %path.display(), pods = pods.len(), "reloaded pods file");
                store.replace_all(pods);
            }
            Err(error) => {
                tracing::warn!(%error, "pods file not reloaded; keeping the previous pods");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID_A: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const UID_B: &str = "daa5c7ee-3484-4533-af39-3591564fd03e";

    fn pod(uid: &str, name: &str) -> PodInfo {
        PodInfo {
            uid: uid.to_owned(),
            namespace: "default".to_owned(),
            name: name.to_owned(),
            service_account: "sa".to_owned(),
            ..PodInfo::default()
        }
    }

    #[tokio::test]
    async fn store_basics() {
        let store = PodStore::new();
        assert!(!store.is_synced());
        store.replace_all(vec![pod(UID_A, "a")]);
        store.mark_synced();
        assert!(store.is_synced());
        assert_eq!(store.get(UID_A).unwrap().name, "a");
        // systemd form and upper case find the same pod
        let systemd = UID_A.replace('-', "_").to_uppercase();
        assert_eq!(store.get(&systemd).unwrap().name, "a");
        store.upsert(pod(UID_B, "b"));
        assert_eq!(store.len(), 2);
        store.remove(UID_A);
        assert!(store.get(UID_A).is_none());
        store.replace_all(vec![]);
        assert!(store.is_empty());
        // clones share the snapshot
        let clone = store.clone();
        clone.upsert(pod(UID_A, "a2"));
        assert_eq!(store.get(UID_A).unwrap().name, "a2");
    }

    // Real (short) time: tokio's `test-util` (paused clock) is not a dev-dependency.
    #[tokio::test]
    async fn lookup_waits_for_the_pod() {
        let store = PodStore::new();
        let writer = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            writer.upsert(pod(UID_B, "other")); // an unrelated update does not end the wait
            tokio::time::sleep(Duration::from_millis(30)).await;
            writer.upsert(pod(UID_A, "late"));
        });
        let started = std::time::Instant::now();
        let got = store.lookup(UID_A, Duration::from_secs(10)).await.unwrap();
        assert_eq!(got.name, "late");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(60), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    #[tokio::test]
    async fn lookup_times_out() {
        let store = PodStore::new();
        let writer = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            writer.upsert(pod(UID_B, "other"));
            tokio::time::sleep(Duration::from_secs(5)).await;
            writer.upsert(pod(UID_A, "too-late"));
        });
        let started = std::time::Instant::now();
        let err = store
            .lookup(UID_A, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(&err, PodError::UnknownPod { uid } if uid == UID_A));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_secs(4), "{waited:?}");
        // present: immediate, even with no wait
        store.upsert(pod(UID_A, "now"));
        assert_eq!(
            store.lookup(UID_A, Duration::ZERO).await.unwrap().name,
            "now"
        );
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn parses_pods_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(
            tmp.path(),
            "pods.json",
            &format!(
                r#"{{"pods": [
                  {{"uid": "{}", "namespace": "team-a", "name": "web-0", "serviceAccount": "web",
                    "serviceAccountAnnotations": {{"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/web"}},
                    "hostNetwork": true}},
                  {{"uid": "{UID_B}", "namespace": "team-b", "name": "job", "serviceAccount": "default"}}
                ]}}"#,
                UID_A.replace('-', "_").to_uppercase()
            ),
        );
        let pods = load_pods_file(&path).unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[0].uid, UID_A, "canonicalised");
        assert!(pods[0].host_network);
        assert_eq!(
            pods[0].service_account_annotations["eks.amazonaws.com/role-arn"],
            "arn:aws:iam::123456789012:role/web"
        );
        assert_eq!(pods[1].service_account, "default");
        assert!(!pods[1].host_network);
        assert!(pods[1].service_account_annotations.is_empty());
    }

    #[test]
    fn pods_file_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing.json");
        assert!(
            matches!(load_pods_file(&missing), Err(PodError::Io { path, .. }) if path == missing)
        );

        for (text, want) in [
            ("{", "invalid JSON"),
            (r#"{"pods": [{"uid": "x"}]}"#, "invalid JSON"), // missing fields
            (r#"{"pod": []}"#, "invalid JSON"),              // typo in the key
        ] {
            let path = write(tmp.path(), "bad.json", text);
            let err = load_pods_file(&path).unwrap_err();
            assert!(matches!(err, PodError::Parse { .. }), "{text}: {err}");
            assert!(err.to_string().contains(want) && err.to_string().contains("bad.json"));
        }

        let entry = |uid: &str, ns: &str, name: &str, sa: &str| {
            format!(
                r#"{{"uid": "{uid}", "namespace": "{ns}", "name": "{name}", "serviceAccount": "{sa}"}}"#
            )
        };
        for (pods, want) in [
            (vec![entry("", "ns", "n", "sa")], "pods[0].uid is empty"),
            (
                vec![entry(UID_A, "", "n", "sa")],
                "pods[0].namespace is empty",
            ),
            (vec![entry(UID_A, "ns", " ", "sa")], "pods[0].name is empty"),
            (
                vec![entry(UID_A, "ns", "n", "")],
                "pods[0].serviceAccount is empty",
            ),
            (
                vec![entry("not-a-uuid", "ns", "n", "sa")],
                "pods[0].uid \"not-a-uuid\" (ns/n) is not a UUID",
            ),
            (
                vec![
                    entry(UID_A, "ns", "one", "sa"),
                    entry(UID_B, "ns", "x", "sa"),
                    entry(&UID_A.replace('-', "_"), "ns", "two", "sa"),
                ],
                "pods[0] (ns/one) and pods[2] (ns/two) have the same uid",
            ),
        ] {
            let path = write(
                tmp.path(),
                "invalid.json",
                &format!(r#"{{"pods": [{}]}}"#, pods.join(",")),
            );
            let err = load_pods_file(&path).unwrap_err();
            assert!(matches!(err, PodError::Invalid { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(want) && msg.contains("invalid.json"), "{msg}");
        }
    }

    async fn eventually(store: &PodStore, what: impl Fn(&PodStore) -> bool) {
        for _ in 0..200 {
            if what(store) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached; store: {store:?}");
    }

    #[tokio::test]
    async fn watch_reloads_and_survives_a_broken_file() {
        let tmp = tempfile::tempdir().unwrap();
        let one = format!(
            r#"{{"pods": [{{"uid": "{UID_A}", "namespace": "ns", "name": "a", "serviceAccount": "sa"}}]}}"#
        );
        let path = write(tmp.path(), "pods.json", &one);
        let store = PodStore::new();
        let task = tokio::spawn(watch_pods_file(
            path.clone(),
            store.clone(),
            Duration::from_millis(10),
        ));

        eventually(&store, |s| s.is_synced() && s.get(UID_A).is_some()).await;

        // Broken edit: the previous snapshot stays.
        std::fs::write(&path, "{ not json").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.get(UID_A).unwrap().name, "a");
        assert_eq!(store.len(), 1);

        // Fixed edit (atomic replace, as ConfigMap updates do): reloaded.
        let two = format!(
            r#"{{"pods": [{{"uid": "{UID_B}", "namespace": "ns", "name": "b", "serviceAccount": "sa"}}]}}"#
        );
        let tmp_file = write(tmp.path(), "pods.json.new", &two);
        std::fs::rename(&tmp_file, &path).unwrap();
        eventually(&store, |s| s.get(UID_B).is_some() && s.get(UID_A).is_none()).await;

        assert!(!task.is_finished());
        task.abort();
    }

    #[tokio::test]
    async fn watch_returns_the_first_load_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), "pods.json", "[]");
        let store = PodStore::new();
        let err = watch_pods_file(path, store.clone(), Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(matches!(err, PodError::Parse { .. }));
        assert!(!store.is_synced());
    }
}
