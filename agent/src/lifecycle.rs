//! Pods coming and going, seen through the cgroup tree: prefetch credentials when a
//! pod's cgroup appears, stop renewing when its last cgroup disappears (stock agent
//! issue #171), and keep the kernel's verdicts current for enforce mode.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use agent_ebpf::verdict;

use crate::{cache::CredentialCache, cgroup, service::Resolver, sts::Fetch};

/// Where kernel verdicts go (the eBPF `VERDICTS` map in production).
pub trait VerdictSink: Send + Sync + 'static {
    fn set(&self, cgroup_id: u64, verdict: Option<u32>);
}

impl VerdictSink for crate::ebpf::Kernel {
    fn set(&self, cgroup_id: u64, v: Option<u32>) {
        if let Err(e) = self.set_verdict(cgroup_id, v) {
            tracing::warn!(cgroup_id, error = %e, "updating kernel verdict failed");
        }
    }
}

/// State carried between rescans.
#[derive(Default)]
pub struct Lifecycle {
    /// cgroup id → pod UID (`None`: not a pod, or unparseable).
    cgroups: HashMap<u64, Option<String>>,
    /// Verdicts written to the kernel, to write only changes.
    verdicts: HashMap<u64, u32>,
    /// Pods whose credentials were prefetched already.
    prefetched: HashSet<String>,
}

impl Lifecycle {
    /// One rescan: returns (pods appeared, pods gone).
    pub async fn tick<F: Fetch>(
        &mut self,
        resolver: &Resolver,
        cache: &CredentialCache<F>,
        verdicts: Option<&dyn VerdictSink>,
    ) -> (usize, usize) {
        let index = resolver.index.clone();
        let delta = match tokio::task::spawn_blocking(move || index.rescan()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cgroup rescan failed");
                return (0, 0);
            }
            Err(_) => return (0, 0),
        };
        for (id, path) in &delta.appeared {
            let uid = cgroup::parse_cgroup_path(path)
                .ok()
                .flatten()
                .map(|pc| pc.pod_uid);
            self.cgroups.insert(*id, uid);
        }
        let mut gone_pods = 0;
        for (id, _) in &delta.gone {
            if let Some(Some(uid)) = self.cgroups.remove(id) {
                if !self
                    .cgroups
                    .values()
                    .any(|u| u.as_deref() == Some(uid.as_str()))
                {
                    let n = cache.evict_pod(&uid);
                    self.prefetched.remove(&uid);
                    gone_pods += 1;
                    tracing::debug!(pod_uid = %uid, evicted = n, "pod gone: credentials dropped");
                }
            }
            if self.verdicts.remove(id).is_some() {
                if let Some(v) = verdicts {
                    v.set(*id, None);
                }
            }
        }
        let mut appeared_pods = 0;
        // Prefetch for pods whose cgroups are new and whose pod and association are known.
        let uids: HashSet<String> = self.cgroups.values().flatten().cloned().collect();
        for uid in uids {
            if self.prefetched.contains(&uid) {
                continue;
            }
            if let Some(pod) = resolver.pods.get(&uid) {
                if let Ok(assoc) = resolver.assocs.resolve(&pod) {
                    cache.prefetch(pod, assoc);
                    appeared_pods += 1;
                }
                self.prefetched.insert(uid);
            }
        }
        if let Some(sink) = verdicts {
            self.sync_verdicts(resolver, sink);
        }
        (appeared_pods, gone_pods)
    }

    /// Enforce mode: DENY for cgroups that are not pods or whose pod has no usable
    /// association; ALLOW for pods with one. Pods the directory does not know yet
    /// get no verdict, so a new pod's first call reaches the agent (which decides)
    /// instead of failing in the kernel.
    fn sync_verdicts(&mut self, resolver: &Resolver, sink: &dyn VerdictSink) {
        for (id, uid) in &self.cgroups {
            let want = match uid {
                None => Some(verdict::DENY),
                Some(uid) => {
                    resolver
                        .pods
                        .get(uid)
                        .map(|pod| match resolver.assocs.resolve(&pod) {
                            Ok(_) => verdict::ALLOW,
                            Err(_) => verdict::DENY,
                        })
                }
            };
            let have = self.verdicts.get(id).copied();
            if want != have {
                sink.set(*id, want);
                match want {
                    Some(v) => self.verdicts.insert(*id, v),
                    None => self.verdicts.remove(id),
                };
            }
        }
    }
}

/// Rescan every `interval` until the task is dropped.
pub async fn run<F: Fetch>(
    resolver: Resolver,
    cache: CredentialCache<F>,
    verdicts: Option<Arc<dyn VerdictSink>>,
    interval: Duration,
) {
    let mut state = Lifecycle::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.tick(&resolver, &cache, verdicts.as_deref()).await;
    }
}
