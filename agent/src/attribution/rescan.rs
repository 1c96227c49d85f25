//! Pods coming and going, seen through the cgroup tree: prefetch credentials when a
//! pod's cgroup appears, stop renewing when its last cgroup disappears (stock agent
//! issue #171), and keep the kernel's verdicts current for enforce mode.
//!
//! With the EKS Auth upstream there are no local associations: a pod is prefetched
//! with the token its volume holds (only with `--kubelet-pods-dir`), and in
//! enforce mode every pod is allowed to ask (EKS Auth decides; processes that are
//! not in a pod are still refused).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use agent_ebpf::verdict;

use crate::{
    attribution::{cgroup, Resolver},
    credentials::{eks_auth::prefetch_token, CredentialCache, Fetch, FetchRequest},
    dir_watch::DirWatch,
    kernel::VerdictSink,
    model::{PodInfo, PodUid},
};

/// What the rescan task does besides watching cgroups.
#[derive(Clone, Debug)]
pub struct RescanSettings {
    /// Time between rescans.
    pub interval: Duration,
    /// Credentials from EKS Auth (no local associations).
    pub eks_auth: bool,
    /// EKS Auth: prefetch with the token read from this kubelet pods directory.
    pub prefetch_tokens_dir: Option<PathBuf>,
}

impl RescanSettings {
    /// STS mode, rescanning every `interval`.
    pub fn sts(interval: Duration) -> Self {
        Self {
            interval,
            eks_auth: false,
            prefetch_tokens_dir: None,
        }
    }
}

/// State carried between rescans.
#[derive(Default)]
pub struct Lifecycle {
    /// cgroup id → pod UID (`None`: not a pod, or unparseable).
    cgroups: HashMap<u64, Option<PodUid>>,
    /// Verdicts written to the kernel, to write only changes.
    verdicts: HashMap<u64, u32>,
    /// Pods whose credentials were prefetched already.
    prefetched: HashSet<PodUid>,
    /// Cgroup paths whose entries change when a pod comes or goes (see
    /// [`Lifecycle::watch_dirs`]), as of the last rescan.
    above_pods: Vec<String>,
}

impl Lifecycle {
    /// One rescan: returns (pods appeared, pods gone).
    pub async fn tick<F: Fetch>(
        &mut self,
        resolver: &Resolver,
        cache: &CredentialCache<F>,
        verdicts: Option<&dyn VerdictSink>,
        settings: &RescanSettings,
    ) -> (usize, usize) {
        // Walk, then diff the index against what *this task* saw last time: a
        // request's rescan-on-miss also walks the tree, and its delta would be lost
        // to us if we used the index's own.
        let index = resolver.index.clone();
        let snapshot =
            match tokio::task::spawn_blocking(move || index.rescan().map(|_| index.snapshot()))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cgroup rescan failed");
                    return (0, 0);
                }
                Err(_) => return (0, 0),
            };
        let now: HashMap<u64, String> = snapshot.into_iter().collect();
        let gone: Vec<u64> = self
            .cgroups
            .keys()
            .filter(|id| !now.contains_key(id))
            .copied()
            .collect();
        for (id, path) in &now {
            if !self.cgroups.contains_key(id) {
                let uid = cgroup::parse_pod_cgroup(path, &resolver.cgroup_prefix)
                    .ok()
                    .flatten()
                    .map(|pc| pc.pod_uid);
                self.cgroups.insert(*id, uid);
            }
        }
        self.above_pods = above_pods(&now, &self.cgroups);
        let mut gone_pods = 0;
        for id in &gone {
            if let Some(Some(uid)) = self.cgroups.remove(id) {
                if !self.cgroups.values().any(|u| u.as_ref() == Some(&uid)) {
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
        let uids: HashSet<PodUid> = self.cgroups.values().flatten().cloned().collect();
        for uid in uids {
            if self.prefetched.contains(&uid) {
                continue;
            }
            // Marked only once prefetched: a pod whose association is added later
            // (or whose token the kubelet writes later) is prefetched then.
            let request = if settings.eks_auth {
                match &settings.prefetch_tokens_dir {
                    Some(dir) => pod_identity_request(dir.clone(), uid.clone(), resolver).await,
                    None => None,
                }
            } else {
                resolver.pods.get(&uid).and_then(|pod| {
                    let assoc = resolver.assocs.resolve(&pod).ok()?;
                    Some(FetchRequest::association(pod, assoc))
                })
            };
            if let Some(request) = request {
                cache.prefetch(&request);
                appeared_pods += 1;
                self.prefetched.insert(uid);
            }
        }
        if let Some(sink) = verdicts {
            self.sync_verdicts(resolver, sink, settings.eks_auth);
        }
        (appeared_pods, gone_pods)
    }

    /// Enforce mode and the IMDS guard: NODE for cgroups that are not pods, DENY
    /// for pods without a usable association, ALLOW for pods with one. Pods the directory does not know yet
    /// get no verdict, so a new pod's first call reaches the agent (which decides)
    /// instead of failing in the kernel.
    fn sync_verdicts(&mut self, resolver: &Resolver, sink: &dyn VerdictSink, eks_auth: bool) {
        for (id, uid) in &self.cgroups {
            let want = match uid {
                // Not a pod: refused credentials in enforce mode, and left alone by
                // the IMDS guard (the node role is the node's).
                None => Some(verdict::NODE),
                // EKS Auth knows the associations: every pod may ask.
                Some(_) if eks_auth => Some(verdict::ALLOW),
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

/// EKS Auth prefetch: the pod's own token from its volume, if it has one that
/// names it.
async fn pod_identity_request(
    dir: PathBuf,
    uid: PodUid,
    resolver: &Resolver,
) -> Option<FetchRequest> {
    let known = resolver.pods.get(&uid);
    let read = {
        let uid = uid.clone();
        tokio::task::spawn_blocking(move || {
            prefetch_token::read_prefetch_token(&dir, &uid, SystemTime::now())
        })
        .await
        .ok()?
    };
    let token = match read {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(pod_uid = %uid, error = %e, "no prefetch for this pod");
            return None;
        }
    };
    let pod = PodInfo {
        uid,
        namespace: token.namespace.clone(),
        name: token.pod_name.clone(),
        service_account: token.service_account.clone(),
        service_account_annotations: Default::default(),
        host_network: known.is_some_and(|p| p.host_network),
    };
    Some(FetchRequest::pod_identity(pod, token))
}

/// The directories to watch, as of the last rescan: the cgroup root and every
/// cgroup on the way to the kubelet's pods (`kubepods`, its QoS classes), where a
/// pod's cgroup is created and removed; never a pod's own sub-tree. Shallow first.
fn above_pods(now: &HashMap<u64, String>, cgroups: &HashMap<u64, Option<PodUid>>) -> Vec<String> {
    let mut dirs: HashSet<String> = HashSet::from(["/".to_owned()]);
    for (id, path) in now {
        let not_a_pod = matches!(cgroups.get(id), Some(None));
        if not_a_pod && path.contains("kubepods") {
            // The path and its ancestors.
            let mut p = path.as_str();
            while !p.is_empty() && dirs.insert(p.to_owned()) {
                p = p.rsplit_once('/').map_or("", |(parent, _)| parent);
            }
        }
    }
    let mut dirs: Vec<String> = dirs.into_iter().collect();
    dirs.sort_by_key(|d| (d.matches('/').count(), d.clone()));
    dirs
}

impl Lifecycle {
    /// Where a pod's cgroup appearing or going shows, under `root` (the cgroup
    /// index's root), shallow first.
    pub fn watch_dirs(&self, root: &std::path::Path) -> Vec<PathBuf> {
        self.above_pods
            .iter()
            .map(|p| root.join(p.trim_start_matches('/')))
            .collect()
    }
}

/// How long a burst of changes settles before a rescan (a pod's cgroups come in
/// a few `mkdir`s; a pods file is written then renamed).
const SETTLE: Duration = Duration::from_millis(10);
/// Rescans that changes may start at once, in a burst (a pod's cgroup, then its
/// record, come within milliseconds: both are seen without waiting) ...
const CHANGE_BURST: f64 = 3.0;
/// ... and per second beyond it: a node creating and removing cgroups without
/// pause costs at most this many walks per second, besides the interval's.
const CHANGE_RATE: f64 = 5.0;

/// The allowance of change-driven rescans (a token bucket).
struct ChangeBudget {
    tokens: f64,
    at: tokio::time::Instant,
}

impl ChangeBudget {
    fn new() -> Self {
        ChangeBudget {
            tokens: CHANGE_BURST,
            at: tokio::time::Instant::now(),
        }
    }

    /// How long to wait before the next change-driven rescan (zero: at once);
    /// takes the token.
    fn take(&mut self, now: tokio::time::Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * CHANGE_RATE).min(CHANGE_BURST);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / CHANGE_RATE)
        }
    }
}

/// Rescan every `settings.interval`, and soon after a pod's cgroup appears or
/// goes (inotify on the directories above the pods, [`DirWatch`]) or the pod
/// directory changes (a few at once, then [`CHANGE_RATE`] per second), until the
/// task is dropped.
pub async fn run<F: Fetch>(
    resolver: Resolver,
    cache: CredentialCache<F>,
    verdicts: Option<Arc<dyn VerdictSink>>,
    settings: RescanSettings,
) {
    let mut state = Lifecycle::default();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pods = resolver.pods.subscribe();
    let mut pods_open = true;
    let mut watch = match DirWatch::new() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "no inotify: new pods are seen by the rescan every {:?}", settings.interval);
            None
        }
    };
    let mut budget = ChangeBudget::new();
    loop {
        let changed = tokio::select! {
            _ = tick.tick() => false,
            _ = async { watch.as_ref().unwrap().changed().await }, if watch.is_some() => true,
            r = pods.changed(), if pods_open => {
                pods_open = r.is_ok();
                true
            }
        };
        if changed {
            let wait = budget.take(tokio::time::Instant::now());
            tokio::time::sleep(wait.max(SETTLE)).await;
        }
        state
            .tick(&resolver, &cache, verdicts.as_deref(), &settings)
            .await;
        if let Some(w) = &mut watch {
            w.set(state.watch_dirs(resolver.index.root()));
        }
    }
}

#[cfg(test)]
mod tests {
    //! A temp directory tree stands in for cgroupfs (ids are inodes either way).
    use super::*;
    use crate::{
        credentials::CacheSettings,
        model::PodInfo,
        testing::{self, pod_cgroup_dir, pod_uid, CountingSts},
    };
    use std::{os::unix::fs::MetadataExt, sync::Mutex};

    fn sts_mode() -> RescanSettings {
        RescanSettings::sts(Duration::from_secs(1))
    }

    const UID_A: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const UID_B: &str = "8a1f0e2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";

    #[derive(Default)]
    struct Verdicts(Mutex<HashMap<u64, u32>>);
    impl VerdictSink for Verdicts {
        fn set(&self, id: u64, v: Option<u32>) {
            let mut m = self.0.lock().unwrap();
            match v {
                Some(v) => m.insert(id, v),
                None => m.remove(&id),
            };
        }
    }

    /// With an hour between rescans, a pod whose cgroup appears (the pod known
    /// already) and a pod whose record arrives (its cgroup there already) are
    /// both prefetched at once: inotify above the pods, and the pod directory's
    /// changes, wake the rescan. A pod's own sub-tree is not watched.
    #[tokio::test]
    async fn new_pods_are_prefetched_without_waiting_for_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("system.slice/sshd.service")).unwrap();
        // The QoS class directory exists (the kubelet makes it at start).
        let a = pod_cgroup_dir(dir.path(), UID_A);
        std::fs::create_dir_all(a.parent().unwrap()).unwrap();
        let app = testing::association("ns", "app", "arn:aws:iam::111122223333:role/app");
        let resolver = testing::resolver(dir.path(), Duration::ZERO, vec![app]);
        resolver.pods.upsert(PodInfo {
            uid: pod_uid(UID_A),
            ..testing::pod("ns", "a", "app")
        });
        let sts = CountingSts::default();
        let cache = CredentialCache::new(sts.clone(), CacheSettings::default());
        let task = tokio::spawn(run(
            resolver.clone(),
            cache.clone(),
            None,
            RescanSettings::sts(Duration::from_secs(3600)),
        ));
        // The first tick (at once) walks the tree and sets the watches.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(sts.calls(), 0);

        // Pod A's cgroup appears.
        std::fs::create_dir_all(a.join("cri-containerd-0123.scope")).unwrap();
        assert!(
            testing::eventually(Duration::from_secs(3), || sts.calls() == 1).await,
            "pod A not prefetched"
        );

        // Pod B's cgroup is there before its record: prefetched once the record comes.
        let b = pod_cgroup_dir(dir.path(), UID_B);
        std::fs::create_dir_all(&b).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(sts.calls(), 1, "pod B has no record yet");
        resolver.pods.upsert(PodInfo {
            uid: pod_uid(UID_B),
            ..testing::pod("ns", "b", "app")
        });
        assert!(
            testing::eventually(Duration::from_secs(3), || sts.calls() == 2).await,
            "pod B not prefetched"
        );
        task.abort();
    }

    #[test]
    fn change_driven_rescans_come_in_small_bursts_then_at_a_bounded_rate() {
        let t0 = tokio::time::Instant::now();
        let mut b = ChangeBudget {
            tokens: CHANGE_BURST,
            at: t0,
        };
        for _ in 0..3 {
            assert_eq!(b.take(t0), Duration::ZERO);
        }
        // The fourth at once waits a fifth of a second; a steady flood gets 5/s.
        assert_eq!(b.take(t0), Duration::from_millis(200));
        assert_eq!(b.take(t0), Duration::from_millis(400));
        // Idle for a while: the burst is back, no more.
        let later = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(b.take(later), Duration::ZERO);
        }
        assert!(b.take(later) > Duration::ZERO);
    }

    #[test]
    fn the_watched_directories_stop_above_the_pods() {
        let uid = pod_uid(UID_A);
        let paths = [
            (1, "/", None),
            (2, "/system.slice", None),
            (3, "/kubepods.slice", None),
            (4, "/kubepods.slice/kubepods-besteffort.slice", None),
            (5, "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2c48913c_b29f_11e7_9350_020968147796.slice", Some(uid.clone())),
            (6, "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2c48913c_b29f_11e7_9350_020968147796.slice/cri-containerd-0123.scope", Some(uid)),
            (7, "/docker/abc/kubepods/burstable", None),
        ];
        let now: HashMap<u64, String> = paths.iter().map(|(i, p, _)| (*i, p.to_string())).collect();
        let cgroups: HashMap<u64, Option<PodUid>> =
            paths.iter().map(|(i, _, u)| (*i, u.clone())).collect();
        assert_eq!(
            above_pods(&now, &cgroups),
            [
                "/",
                "/docker",
                "/kubepods.slice",
                "/docker/abc",
                "/kubepods.slice/kubepods-besteffort.slice",
                "/docker/abc/kubepods",
                "/docker/abc/kubepods/burstable",
            ]
        );
    }

    #[tokio::test]
    async fn prefetches_new_pods_evicts_gone_ones_and_keeps_verdicts() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("system.slice/sshd.service");
        std::fs::create_dir_all(&host).unwrap();
        let a = pod_cgroup_dir(dir.path(), UID_A);
        std::fs::create_dir_all(&a).unwrap();
        let b = pod_cgroup_dir(dir.path(), UID_B);
        std::fs::create_dir_all(&b).unwrap();

        let app = testing::association("ns", "app", "arn:aws:iam::111122223333:role/app");
        let resolver = testing::resolver(dir.path(), Duration::ZERO, vec![app]);
        resolver.pods.upsert(PodInfo {
            uid: pod_uid(UID_A),
            ..testing::pod("ns", "app", "app")
        });
        resolver.pods.upsert(PodInfo {
            uid: pod_uid(UID_B),
            ..testing::pod("ns", "no-role", "no-role")
        });
        let sts = CountingSts::default();
        let cache = CredentialCache::new(sts.clone(), CacheSettings::default());
        let verdicts = Verdicts::default();
        let mut lc = Lifecycle::default();

        lc.tick(&resolver, &cache, Some(&verdicts), &sts_mode())
            .await;
        let prefetched = testing::eventually(Duration::from_secs(1), || sts.calls() == 1).await;
        assert!(
            prefetched && sts.calls() == 1,
            "pod A prefetched, pod B has no association: {} calls",
            sts.calls()
        );
        assert_eq!(cache.len(), 1);
        let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
        {
            let v = verdicts.0.lock().unwrap();
            assert_eq!(v.get(&ino(&a)), Some(&verdict::ALLOW));
            assert_eq!(v.get(&ino(&b)), Some(&verdict::DENY));
            assert_eq!(v.get(&ino(&host)), Some(&verdict::NODE), "not a pod");
        }
        // A second tick changes nothing and fetches nothing.
        lc.tick(&resolver, &cache, Some(&verdicts), &sts_mode())
            .await;
        assert_eq!(sts.calls(), 1);

        // Pod A's cgroup goes away: its credentials are dropped (no renewals for
        // dead pods) and its verdict removed.
        let a_id = ino(&a);
        std::fs::remove_dir(&a).unwrap();
        let (_, gone) = lc
            .tick(&resolver, &cache, Some(&verdicts), &sts_mode())
            .await;
        assert_eq!(gone, 1);
        assert_eq!(cache.len(), 0);
        assert!(!verdicts.0.lock().unwrap().contains_key(&a_id));
    }

    #[tokio::test]
    async fn eks_auth_mode_prefetches_with_the_pods_own_token_and_allows_every_pod() {
        use crate::credentials::eks_auth::prefetch_token::token_path;
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("system.slice/sshd.service");
        std::fs::create_dir_all(&host).unwrap();
        let a = pod_cgroup_dir(dir.path(), UID_A);
        std::fs::create_dir_all(&a).unwrap();
        let b = pod_cgroup_dir(dir.path(), UID_B);
        std::fs::create_dir_all(&b).unwrap();
        // No pod directory, no associations: only the kubelet's token files.
        let resolver = testing::resolver(dir.path(), Duration::ZERO, vec![]);
        let kubelet = dir.path().join("kubelet-pods");
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let path = token_path(&kubelet, &pod_uid(UID_A));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, testing::fake_pod_token("ns", "app", "a", UID_A, exp)).unwrap();
        let settings = RescanSettings {
            interval: Duration::from_secs(1),
            eks_auth: true,
            prefetch_tokens_dir: Some(kubelet.clone()),
        };
        let sts = CountingSts::default();
        let cache = CredentialCache::new(sts.clone(), CacheSettings::default());
        let verdicts = Verdicts::default();
        let mut lc = Lifecycle::default();
        lc.tick(&resolver, &cache, Some(&verdicts), &settings).await;
        assert!(testing::eventually(Duration::from_secs(1), || sts.calls() == 1).await);
        assert_eq!(cache.len(), 1, "pod A prefetched; pod B has no token file");
        let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
        {
            let v = verdicts.0.lock().unwrap();
            assert_eq!(v.get(&ino(&a)), Some(&verdict::ALLOW));
            assert_eq!(v.get(&ino(&b)), Some(&verdict::ALLOW), "EKS Auth decides");
            assert_eq!(v.get(&ino(&host)), Some(&verdict::NODE), "not a pod");
        }
        // Pod B's token appears later (the kubelet writes it): prefetched then.
        let path = token_path(&kubelet, &pod_uid(UID_B));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, testing::fake_pod_token("ns", "db", "b", UID_B, exp)).unwrap();
        lc.tick(&resolver, &cache, Some(&verdicts), &settings).await;
        assert!(testing::eventually(Duration::from_secs(2), || sts.calls() == 2).await);
        lc.tick(&resolver, &cache, Some(&verdicts), &settings).await;
        assert_eq!(sts.calls(), 2, "each pod prefetched once");
    }
}
