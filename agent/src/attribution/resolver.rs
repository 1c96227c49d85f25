//! cgroup id → cgroup path → pod → association, failing closed at every step.
//! Shared by the endpoint and the rescan task.

use std::{sync::Arc, time::Duration};

use crate::{
    attribution::cgroup::{self, CgroupError, CgroupIndex, PodCgroup},
    http::Refusal,
    model::{Association, PodInfo},
    sources::{
        associations::{AssociationError, AssociationStore},
        pods::{PodError, PodStore},
    },
};

/// cgroup → pod resolution, shared by the endpoint and the lifecycle task.
#[derive(Clone)]
pub struct Resolver {
    pub index: Arc<CgroupIndex>,
    pub pods: PodStore,
    pub assocs: AssociationStore,
    pub unknown_pod_wait: Duration,
    /// Where the kubelet's cgroup tree starts below the cgroup root ("" normally;
    /// `/docker/<id>` on a nested node). Pod paths must be anchored there.
    pub cgroup_prefix: String,
}

/// A resolved caller.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub cgroup_path: String,
    pub pod_cgroup: PodCgroup,
    pub pod: PodInfo,
}

impl Resolver {
    /// cgroup id → (cgroup path, the pod cgroup it lies in), failing closed. All
    /// the kernel's word says: the pod UID, without asking any pod directory.
    pub async fn pod_cgroup_of(&self, cgroup_id: u64) -> Result<(String, PodCgroup), Refusal> {
        let path = self.cgroup_path(cgroup_id).await?;
        match cgroup::parse_pod_cgroup(&path, &self.cgroup_prefix) {
            Ok(Some(pc)) => Ok((path, pc)),
            Ok(None) => Err(Refusal::NotAPod { path }),
            Err(e) => Err(Refusal::Ambiguous(Box::new(e))),
        }
    }

    /// cgroup id → pod, failing closed.
    pub async fn pod_of(&self, cgroup_id: u64) -> Result<Resolved, Refusal> {
        let (path, pod_cgroup) = self.pod_cgroup_of(cgroup_id).await?;
        let pod = self
            .pods
            .lookup(&pod_cgroup.pod_uid, self.unknown_pod_wait)
            .await
            .map_err(|e| match e {
                PodError::UnknownPod { uid } => Refusal::UnknownPod { uid },
                // `lookup` fails with nothing else (the others are the pods file's);
                // should it, the pod is not known either.
                other => {
                    tracing::warn!(pod_uid = %pod_cgroup.pod_uid, error = %other, "pod lookup failed");
                    Refusal::UnknownPod {
                        uid: pod_cgroup.pod_uid.clone(),
                    }
                }
            })?;
        Ok(Resolved {
            cgroup_path: path,
            pod_cgroup,
            pod,
        })
    }

    async fn cgroup_path(&self, cgroup_id: u64) -> Result<String, Refusal> {
        // Known cgroups (every request but a new pod's first) need no thread hop.
        if let Some(path) = self.index.lookup_fresh(cgroup_id) {
            return Ok(path);
        }
        // A brand-new pod can call before the index has seen its cgroup; the index
        // rescans on a miss at most every `min_rescan_interval`, so try twice.
        for attempt in 0..2 {
            let index = self.index.clone();
            let r = tokio::task::spawn_blocking(move || index.resolve(cgroup_id))
                .await
                .map_err(|_| Refusal::LookupFailed)?;
            match r {
                Ok(p) => return Ok(p),
                Err(CgroupError::NotFound { .. }) if attempt == 0 => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(CgroupError::NotFound { cgroup_id }) => {
                    return Err(Refusal::CgroupNotFound { cgroup_id })
                }
                Err(e) => return Err(Refusal::Cgroup(Box::new(e))),
            }
        }
        Err(Refusal::CgroupNotFound { cgroup_id })
    }

    pub fn association(&self, pod: &PodInfo) -> Result<Association, Refusal> {
        self.assocs.resolve(pod).map_err(|e| match e {
            AssociationError::NoAssociation {
                namespace,
                service_account,
            } => Refusal::NoAssociation {
                namespace,
                service_account,
                pod: pod.name.clone(),
            },
            other => Refusal::BadAssociation(Box::new(other)),
        })
    }
}
