//! The pod directory: pod UID → namespace, name, service account.
//!
//! Sources (a JSON file, the Kubernetes API) replace or patch a
//! snapshot held in a [`tokio::sync::watch`] channel; lookups read it, and can wait
//! a little for an update, because a new pod's cgroup (and its first request) can
//! come before the watch reports the pod (kube2iam #46, #136: "wrong role right
//! after pod start").

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::model::{PodInfo, PodUid};

// The pods file lives with the other file formats (`sources::files`); re-exported
// here so callers keep their paths.
pub use crate::sources::files::{load_pods_file, watch_pods_file};

/// Errors of the pod directory and its file source.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// No pod with this UID is known (also not after waiting for updates).
    #[error("unknown pod uid {uid}")]
    UnknownPod {
        /// The UID asked for.
        uid: PodUid,
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

/// Snapshot of all known pods, by UID.
pub type PodMap = HashMap<PodUid, PodInfo>;

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
        let map: PodMap = pods.into_iter().map(|pod| (pod.uid.clone(), pod)).collect();
        self.inner.tx.send_replace(map);
    }

    /// Add or update one pod (a watch event).
    pub fn upsert(&self, pod: PodInfo) {
        self.inner.tx.send_if_modified(|map| {
            if map.get(&pod.uid) == Some(&pod) {
                return false;
            }
            map.insert(pod.uid.clone(), pod);
            true
        });
    }

    /// Forget one pod (a watch deletion).
    pub fn remove(&self, uid: &PodUid) {
        self.inner
            .tx
            .send_if_modified(|map| map.remove(uid).is_some());
    }

    /// The pod with this UID, if known now.
    pub fn get(&self, uid: &PodUid) -> Option<PodInfo> {
        self.inner.tx.borrow().get(uid).cloned()
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
    pub async fn lookup(&self, uid: &PodUid, wait: Duration) -> Result<PodInfo, PodError> {
        // Subscribe before the first look, so an update between the look and the
        // wait is not missed.
        let mut rx = self.inner.tx.subscribe();
        if let Some(pod) = rx.borrow_and_update().get(uid) {
            return Ok(pod.clone());
        }
        let found = tokio::time::timeout(wait, async {
            // The sender lives in `self`, so `wait_for` cannot fail while we wait.
            rx.wait_for(|map| map.contains_key(uid))
                .await
                .ok()
                .and_then(|map| map.get(uid).cloned())
        })
        .await;
        match found {
            Ok(Some(pod)) => Ok(pod),
            _ => Err(PodError::UnknownPod { uid: uid.clone() }),
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::pod_uid;

    const UID_A: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const UID_B: &str = "daa5c7ee-3484-4533-af39-3591564fd03e";

    fn pod(uid: &str, name: &str) -> PodInfo {
        PodInfo {
            uid: pod_uid(uid),
            ..crate::testing::pod("default", name, "sa")
        }
    }

    #[tokio::test]
    async fn store_basics() {
        let store = PodStore::new();
        assert!(!store.is_synced());
        store.replace_all(vec![pod(UID_A, "a")]);
        store.mark_synced();
        assert!(store.is_synced());
        assert_eq!(store.get(&pod_uid(UID_A)).unwrap().name, "a");
        // systemd form and upper case find the same pod
        let systemd = UID_A.replace('-', "_").to_uppercase();
        assert_eq!(store.get(&pod_uid(&systemd)).unwrap().name, "a");
        store.upsert(pod(UID_B, "b"));
        assert_eq!(store.len(), 2);
        store.remove(&pod_uid(UID_A));
        assert!(store.get(&pod_uid(UID_A)).is_none());
        store.replace_all(vec![]);
        assert!(store.is_empty());
        // clones share the snapshot
        let clone = store.clone();
        clone.upsert(pod(UID_A, "a2"));
        assert_eq!(store.get(&pod_uid(UID_A)).unwrap().name, "a2");
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
        let got = store
            .lookup(&pod_uid(UID_A), Duration::from_secs(10))
            .await
            .unwrap();
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
            .lookup(&pod_uid(UID_A), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(&err, PodError::UnknownPod { uid } if uid == UID_A));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_secs(4), "{waited:?}");
        // present: immediate, even with no wait
        store.upsert(pod(UID_A, "now"));
        assert_eq!(
            store
                .lookup(&pod_uid(UID_A), Duration::ZERO)
                .await
                .unwrap()
                .name,
            "now"
        );
    }
}
