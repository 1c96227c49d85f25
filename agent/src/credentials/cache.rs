//! Per-pod credential cache (invariants 6 and 7).
//!
//! Keyed by pod UID and the parts of the association that change what STS is asked
//! for, so two pods of one service account never share a session (their session
//! tags differ) and a pod's many processes share one.
//!
//! # Refresh policy
//!
//! For cached credentials with `remaining` time left and `age` since they were fetched:
//!
//! * `remaining >= refresh_ahead` and `age < max_retention`: served as they are (`Hit`).
//! * `min_remaining <= remaining < refresh_ahead`, or `age >= max_retention` (the
//!   stock agent's 3 h renewal): still served at once, and one background refresh
//!   starts. Default `refresh_ahead` is 30 min: with EKS's durations that renews
//!   6 h sessions at 3 h (retention) and 59 min sessions at about half their life,
//!   and always leaves a background refresh 15 min of slack before requests block.
//! * `remaining < min_remaining` (15 min; botocore begins refreshing inside 15 min
//!   and blocks callers inside 10): never served while a refresh succeeds; the
//!   request waits for the refresh.
//!
//! All refreshes of one key, background or not, share one STS call (a spawned
//! task whose result every waiter receives through a `watch` channel), so
//! concurrent misses cost one call, and a request that gives up (client
//! disconnect) does not cancel the call the others wait for.
//!
//! # When STS fails
//!
//! * Retryable errors (throttling, 5xx, timeouts, unreachable): the old credentials
//!   keep being served (`Stale`) while more than `stale_floor` (60 s) of them
//!   remains, even below `min_remaining`: availability beats a 5xx, a client
//!   holding a still-valid key works until it expires, and the stock agent does the
//!   same (it keeps credentials with more than 15 s left). The floor leaves room for
//!   clock skew and the Rust SDK's refresh 5–10 s before expiry; expired
//!   credentials are never served. Set `stale_floor = min_remaining` to keep
//!   invariant 6 strict even during an STS outage. STS is asked again at most every
//!   `retry_backoff` (30 s) per key while stale credentials can be served, so an
//!   outage is not amplified by client retries.
//! * Final errors (AccessDenied, InvalidParameter, a missing IRSA token...): the
//!   entry is dropped at once, credentials included: the association was probably
//!   revoked, and the next request asks STS again.
//!
//! # Bounds
//!
//! At most `max_entries` entries. When full, entries that hold nothing servable
//! (expired, or left empty by a failure) go first, then the least recently used.
//! [`CredentialCache::evict_pod`] drops a pod's entries when its cgroup goes away,
//! so nothing is renewed for dead pods (stock agent issue #171): renewals only ever
//! start from requests or [`CredentialCache::prefetch`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::credentials::sts::{Fetch, StsError};
use crate::credentials::types::Credentials;
use crate::model::{Association, AssumeMode, PodInfo};

/// Time source; tests inject a manual clock.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Tuning of the cache; see the module docs for how the durations interact.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    /// Never serve credentials with less left while a refresh succeeds (invariant 6).
    pub min_remaining: Duration,
    /// Start a background refresh when less than this is left.
    pub refresh_ahead: Duration,
    /// Most entries held.
    pub max_entries: usize,
    /// Renew (in the background) credentials older than this, whatever is left.
    pub max_retention: Duration,
    /// On a retryable STS failure, old credentials are served while more than this is left.
    pub stale_floor: Duration,
    /// After a failed refresh, wait this long before asking STS again for the same
    /// key, as long as old credentials can be served meanwhile.
    pub retry_backoff: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            min_remaining: Duration::from_secs(15 * 60),
            refresh_ahead: Duration::from_secs(30 * 60),
            max_entries: 2000,
            max_retention: Duration::from_secs(3 * 3600),
            stale_floor: Duration::from_secs(60),
            retry_backoff: Duration::from_secs(30),
        }
    }
}

/// How a request was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheOutcome {
    /// Served from the cache.
    Hit,
    /// STS was called for this request (by it or by a concurrent request it joined).
    Miss,
    /// STS failed; still-valid older credentials were served.
    Stale,
}

impl CacheOutcome {
    /// Label for metrics (`pod_identity_cache_state{state=...}`).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Stale => "stale",
        }
    }
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Requests served from the cache.
    pub hits: u64,
    /// Requests that waited for an STS call.
    pub misses: u64,
    /// Requests served older credentials because STS failed.
    pub stale_served: u64,
    /// STS fetches started (a role-chained fetch counts once).
    pub sts_calls: u64,
    /// STS fetches that failed.
    pub sts_errors: u64,
    /// Entries removed: pod gone, final error, or the size bound.
    pub evictions: u64,
}

/// Why no credentials could be served.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CacheError {
    /// STS failed and no credentials can be served in the meantime.
    #[error(transparent)]
    Sts(Arc<StsError>),
    /// STS issued credentials that expire too soon to be served: the association's
    /// session duration is shorter than `min_remaining` allows.
    #[error("STS issued credentials with {remaining:?} left, less than the {min_remaining:?} clients need")]
    ShortLived {
        /// Time left on the new credentials.
        remaining: Duration,
        /// The configured minimum.
        min_remaining: Duration,
    },
    /// The fetch ended without a result (it panicked, or the runtime is shutting
    /// down, or there is no Tokio runtime to run it on).
    #[error("credential fetch aborted")]
    FetchAborted,
}

impl CacheError {
    /// Status for the pod's SDK (see [`StsError::http_status`]).
    pub fn http_status(&self) -> u16 {
        match self {
            CacheError::Sts(e) => e.http_status(),
            CacheError::ShortLived { .. } => 500,
            CacheError::FetchAborted => 503,
        }
    }

    /// Whether asking again may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            CacheError::Sts(e) => e.is_retryable(),
            CacheError::ShortLived { .. } => false,
            CacheError::FetchAborted => true,
        }
    }

    /// Short code for metrics and audit records.
    pub fn code(&self) -> &str {
        match self {
            CacheError::Sts(e) => e.code(),
            CacheError::ShortLived { .. } => "ShortLived",
            CacheError::FetchAborted => "FetchAborted",
        }
    }
}

/// What makes two requests want the same session.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    pod_uid: String,
    role_arn: String,
    target_role_arn: Option<String>,
    mode: AssumeMode,
    disable_session_tags: bool,
    session_duration_secs: Option<u32>,
    external_id: Option<String>,
    policy: Option<String>,
}

impl Key {
    fn new(pod: &PodInfo, assoc: &Association) -> Self {
        Self {
            pod_uid: pod.uid.clone(),
            role_arn: assoc.role_arn.clone(),
            target_role_arn: assoc.target_role_arn.clone(),
            mode: assoc.mode,
            disable_session_tags: assoc.disable_session_tags,
            session_duration_secs: assoc.session_duration_secs,
            external_id: assoc.external_id.clone(),
            policy: assoc.policy.clone(),
        }
    }
}

type FetchResult = Result<Arc<Credentials>, CacheError>;
type Inflight = watch::Receiver<Option<FetchResult>>;

#[derive(Clone)]
struct Cached {
    creds: Arc<Credentials>,
    fetched_at: SystemTime,
}

#[derive(Default)]
struct State {
    current: Option<Cached>,
    /// The fetch in progress; joined by every request that needs fresh credentials.
    inflight: Option<Inflight>,
    /// When the last fetch failed (retryably); cleared by a success.
    last_failure: Option<SystemTime>,
}

struct Entry {
    pod: PodInfo,
    assoc: Association,
    state: Mutex<State>,
    /// Logical time of the last use, for LRU eviction.
    last_used: AtomicU64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    stale_served: AtomicU64,
    sts_calls: AtomicU64,
    sts_errors: AtomicU64,
    evictions: AtomicU64,
}

struct Inner<F> {
    fetcher: F,
    settings: CacheSettings,
    clock: Clock,
    entries: Mutex<HashMap<Key, Arc<Entry>>>,
    tick: AtomicU64,
    stats: Counters,
}

/// Per-pod credential cache in front of a [`Fetch`]. Cheap to clone (shared state).
pub struct CredentialCache<F: Fetch> {
    inner: Arc<Inner<F>>,
}

impl<F: Fetch> Clone for CredentialCache<F> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Locks a std mutex, ignoring poisoning: the guarded data stays consistent
/// because no critical section here can panic halfway through an update.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a request does with the entry as it found it.
enum Decision {
    /// Answer with these credentials now; maybe start a background refresh.
    Serve {
        creds: Arc<Credentials>,
        refresh: bool,
        stale: bool,
    },
    /// Wait for a (new or running) fetch.
    Wait,
}

impl<F: Fetch> CredentialCache<F> {
    /// Cache using the system clock.
    pub fn new(fetcher: F, settings: CacheSettings) -> Self {
        Self::with_clock(fetcher, settings, Arc::new(SystemTime::now))
    }

    /// Cache with an injected clock (tests).
    pub fn with_clock(fetcher: F, settings: CacheSettings, clock: Clock) -> Self {
        Self {
            inner: Arc::new(Inner {
                fetcher,
                settings,
                clock,
                entries: Mutex::new(HashMap::new()),
                tick: AtomicU64::new(0),
                stats: Counters::default(),
            }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &CacheSettings {
        &self.inner.settings
    }

    /// The fetcher behind the cache.
    pub fn fetcher(&self) -> &F {
        &self.inner.fetcher
    }

    /// Credentials for `pod` under `assoc`, from the cache or STS (see the module
    /// docs for the policy). Never returns expired credentials.
    pub async fn get(
        &self,
        pod: &PodInfo,
        assoc: &Association,
    ) -> Result<(Arc<Credentials>, CacheOutcome), CacheError> {
        let inner = &self.inner;
        let entry = inner.entry(pod, assoc);
        let decision = {
            let state = lock(&entry.state);
            inner.decide(&state, inner.now())
        };
        if let Decision::Serve {
            creds,
            refresh,
            stale,
        } = decision
        {
            if refresh {
                Inner::start_fetch(inner, &entry);
            }
            return Ok(if stale {
                inner.stats.stale_served.fetch_add(1, Ordering::Relaxed);
                (creds, CacheOutcome::Stale)
            } else {
                inner.stats.hits.fetch_add(1, Ordering::Relaxed);
                (creds, CacheOutcome::Hit)
            });
        }

        let result = match Inner::start_fetch(inner, &entry) {
            Some(mut rx) => match rx.wait_for(Option::is_some).await {
                Ok(value) => value.clone().unwrap_or(Err(CacheError::FetchAborted)),
                Err(_) => Err(CacheError::FetchAborted),
            },
            None => Err(CacheError::FetchAborted),
        };
        match result {
            Ok(creds) => {
                inner.stats.misses.fetch_add(1, Ordering::Relaxed);
                Ok((creds, CacheOutcome::Miss))
            }
            Err(err) => {
                if err.is_retryable() {
                    let now = inner.now();
                    let old = lock(&entry.state)
                        .current
                        .as_ref()
                        .map(|c| Arc::clone(&c.creds));
                    if let Some(old) = old.filter(|c| c.remaining(now) > inner.settings.stale_floor)
                    {
                        inner.stats.stale_served.fetch_add(1, Ordering::Relaxed);
                        return Ok((old, CacheOutcome::Stale));
                    }
                }
                Err(err)
            }
        }
    }

    /// Drops every entry of the pod (its cgroup is gone). Returns how many.
    pub fn evict_pod(&self, pod_uid: &str) -> usize {
        let mut entries = lock(&self.inner.entries);
        let before = entries.len();
        entries.retain(|key, _| key.pod_uid != pod_uid);
        let evicted = before - entries.len();
        self.inner
            .stats
            .evictions
            .fetch_add(evicted as u64, Ordering::Relaxed);
        evicted
    }

    /// Starts fetching credentials in the background if none are cached or being
    /// fetched (a pod's cgroup appeared: its first request should be a hit).
    pub fn prefetch(&self, pod: PodInfo, assoc: Association) {
        let entry = self.inner.entry(&pod, &assoc);
        let idle = {
            let state = lock(&entry.state);
            state.current.is_none() && state.inflight.is_none()
        };
        if idle {
            Inner::start_fetch(&self.inner, &entry);
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        lock(&self.inner.entries).len()
    }

    /// Whether no entries are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters since start.
    pub fn stats(&self) -> CacheStats {
        let s = &self.inner.stats;
        CacheStats {
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            stale_served: s.stale_served.load(Ordering::Relaxed),
            sts_calls: s.sts_calls.load(Ordering::Relaxed),
            sts_errors: s.sts_errors.load(Ordering::Relaxed),
            evictions: s.evictions.load(Ordering::Relaxed),
        }
    }
}

impl<F: Fetch> Inner<F> {
    fn now(&self) -> SystemTime {
        (self.clock)()
    }

    /// The entry for (pod, association), created if needed (evicting one if full).
    fn entry(&self, pod: &PodInfo, assoc: &Association) -> Arc<Entry> {
        let key = Key::new(pod, assoc);
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get(&key) {
            entry.last_used.store(tick, Ordering::Relaxed);
            return Arc::clone(entry);
        }
        let max = self.settings.max_entries.max(1);
        while entries.len() >= max {
            let now = self.now();
            let Some(victim) = self.pick_victim(&entries, now) else {
                break;
            };
            entries.remove(&victim);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        let entry = Arc::new(Entry {
            pod: pod.clone(),
            assoc: assoc.clone(),
            state: Mutex::new(State::default()),
            last_used: AtomicU64::new(tick),
        });
        entries.insert(key, Arc::clone(&entry));
        entry
    }

    /// Useless entries first (nothing servable, nothing in flight), then the LRU one.
    fn pick_victim(&self, entries: &HashMap<Key, Arc<Entry>>, now: SystemTime) -> Option<Key> {
        entries
            .iter()
            .min_by_key(|(_, entry)| {
                let useless = {
                    let state = lock(&entry.state);
                    state.inflight.is_none()
                        && state
                            .current
                            .as_ref()
                            .is_none_or(|c| c.creds.remaining(now) <= self.settings.stale_floor)
                };
                (!useless, entry.last_used.load(Ordering::Relaxed))
            })
            .map(|(key, _)| key.clone())
    }

    fn decide(&self, state: &State, now: SystemTime) -> Decision {
        let s = &self.settings;
        let Some(cached) = &state.current else {
            return Decision::Wait;
        };
        let remaining = cached.creds.remaining(now);
        let age = now
            .duration_since(cached.fetched_at)
            .unwrap_or(Duration::ZERO);
        let failed_recently = state
            .last_failure
            .is_some_and(|t| now.duration_since(t).unwrap_or(Duration::ZERO) < s.retry_backoff);
        if remaining >= s.min_remaining {
            let due = remaining < s.refresh_ahead || age >= s.max_retention;
            return Decision::Serve {
                creds: Arc::clone(&cached.creds),
                refresh: due && state.inflight.is_none() && !failed_recently,
                stale: state.last_failure.is_some(),
            };
        }
        // Too little left to serve normally. If STS just failed and nobody is
        // retrying, serve what we have rather than call STS on every request.
        if failed_recently && state.inflight.is_none() && remaining > s.stale_floor {
            return Decision::Serve {
                creds: Arc::clone(&cached.creds),
                refresh: false,
                stale: true,
            };
        }
        Decision::Wait
    }

    /// Joins the entry's fetch in flight, or spawns one. `None` without a Tokio runtime.
    fn start_fetch(this: &Arc<Self>, entry: &Arc<Entry>) -> Option<Inflight> {
        let tx = {
            let mut state = lock(&entry.state);
            // A receiver whose sender is gone belongs to a fetch task that died
            // (panic, shutdown) before answering: start over instead of joining it.
            if let Some(rx) = state
                .inflight
                .as_ref()
                .filter(|rx| rx.has_changed().is_ok())
            {
                return Some(rx.clone());
            }
            let (tx, rx) = watch::channel(None);
            state.inflight = Some(rx);
            tx
        };
        let rx = tx.subscribe();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(Self::run_fetch(Arc::clone(this), Arc::clone(entry), tx));
                Some(rx)
            }
            Err(_) => {
                tracing::error!("credential fetch requested outside a Tokio runtime");
                lock(&entry.state).inflight = None;
                None
            }
        }
    }

    /// The one STS call for a key; publishes its result to every waiter.
    async fn run_fetch(this: Arc<Self>, entry: Arc<Entry>, tx: watch::Sender<Option<FetchResult>>) {
        this.stats.sts_calls.fetch_add(1, Ordering::Relaxed);
        let fetched = this.fetcher.fetch(&entry.pod, &entry.assoc).await;
        let now = this.now();
        let result = match fetched {
            Ok(creds) => {
                let remaining = creds.remaining(now);
                if remaining < this.settings.min_remaining {
                    Err(CacheError::ShortLived {
                        remaining,
                        min_remaining: this.settings.min_remaining,
                    })
                } else {
                    Ok(Arc::new(creds))
                }
            }
            Err(e) => {
                this.stats.sts_errors.fetch_add(1, Ordering::Relaxed);
                Err(CacheError::Sts(Arc::new(e)))
            }
        };
        let final_error = {
            let mut state = lock(&entry.state);
            state.inflight = None;
            match &result {
                Ok(creds) => {
                    state.current = Some(Cached {
                        creds: Arc::clone(creds),
                        fetched_at: now,
                    });
                    state.last_failure = None;
                    false
                }
                Err(e) if e.is_retryable() => {
                    state.last_failure = Some(now);
                    false
                }
                Err(_) => {
                    state.current = None;
                    true
                }
            }
        };
        if let Err(e) = &result {
            tracing::warn!(
                pod_uid = %entry.pod.uid,
                namespace = %entry.pod.namespace,
                pod = %entry.pod.name,
                role_arn = %entry.assoc.effective_role_arn(),
                code = e.code(),
                error = %e,
                final_error,
                "credential fetch failed"
            );
        }
        if final_error {
            this.remove_if_same(&entry);
        }
        // Waiters may all be gone (background refresh): nothing to do then.
        tx.send_replace(Some(result));
    }

    /// Removes `entry` from the map unless it was already replaced.
    fn remove_if_same(&self, entry: &Arc<Entry>) {
        let key = Key::new(&entry.pod, &entry.assoc);
        let mut entries = lock(&self.entries);
        if entries.get(&key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            entries.remove(&key);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
impl<F: Fetch> CredentialCache<F> {
    /// (credentials cached, fetch in flight) for the key, or `None` without an entry.
    fn probe(&self, pod: &PodInfo, assoc: &Association) -> Option<(bool, bool)> {
        let entries = lock(&self.inner.entries);
        let entry = entries.get(&Key::new(pod, assoc))?;
        let state = lock(&entry.state);
        Some((state.current.is_some(), state.inflight.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::types::Secret;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicUsize;
    use std::time::UNIX_EPOCH;

    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    #[derive(Clone)]
    struct ManualClock(Arc<AtomicU64>);

    impl ManualClock {
        fn new() -> Self {
            Self(Arc::new(AtomicU64::new(1_700_000_000)))
        }
        fn now(&self) -> SystemTime {
            UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
        }
        fn advance(&self, d: Duration) {
            self.0.fetch_add(d.as_secs(), Ordering::SeqCst);
        }
        fn clock(&self) -> Clock {
            let c = self.clone();
            Arc::new(move || c.now())
        }
    }

    #[derive(Clone, Copy)]
    enum Behavior {
        Succeed,
        Fail(fn() -> StsError),
        Panic,
    }

    /// Fetch double: counts calls, issues `ASIA<n>` keys valid for `lifetime`.
    struct Fake {
        clock: ManualClock,
        calls: AtomicUsize,
        lifetime: Mutex<Duration>,
        behavior: Mutex<Behavior>,
        delay: Duration,
    }

    impl Fake {
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
        fn set(&self, b: Behavior) {
            *lock(&self.behavior) = b;
        }
        fn set_lifetime(&self, d: Duration) {
            *lock(&self.lifetime) = d;
        }
    }

    impl Fetch for Fake {
        async fn fetch(
            &self,
            pod: &PodInfo,
            _assoc: &Association,
        ) -> Result<Credentials, StsError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(self.delay).await;
            let behavior = *lock(&self.behavior);
            match behavior {
                Behavior::Succeed => Ok(Credentials {
                    access_key_id: format!("ASIA{n}"),
                    secret_access_key: Secret::new(format!("secret{n}")),
                    session_token: Secret::new(format!("token{n}")),
                    expiration: self.clock.now() + *lock(&self.lifetime),
                    account_id: Some("111122223333".into()),
                    assumed_role_arn: format!(
                        "arn:aws:sts::111122223333:assumed-role/r/eks-c-{}-x",
                        pod.name
                    ),
                }),
                Behavior::Fail(make) => Err(make()),
                Behavior::Panic => panic!("fake fetch panicked (expected by the test)"),
            }
        }
    }

    fn throttled() -> StsError {
        StsError::Service {
            code: "Throttling".into(),
            message: "Rate exceeded".into(),
            request_id: Some("r-1".into()),
            status: 400,
        }
    }

    fn denied() -> StsError {
        StsError::Service {
            code: "AccessDenied".into(),
            message: "not authorized to perform sts:AssumeRole".into(),
            request_id: Some("r-2".into()),
            status: 403,
        }
    }

    fn pod(name: &str) -> PodInfo {
        PodInfo {
            uid: format!("uid-{name}"),
            namespace: "ns".into(),
            name: name.into(),
            service_account: "sa".into(),
            ..Default::default()
        }
    }

    fn assoc() -> Association {
        Association {
            namespace: "ns".into(),
            service_account: "sa".into(),
            role_arn: "arn:aws:iam::111122223333:role/r".into(),
            ..Default::default()
        }
    }

    fn setup(
        settings: CacheSettings,
        delay: Duration,
        lifetime: Duration,
    ) -> (CredentialCache<Fake>, ManualClock) {
        let clock = ManualClock::new();
        let fake = Fake {
            clock: clock.clone(),
            calls: AtomicUsize::new(0),
            lifetime: Mutex::new(lifetime),
            behavior: Mutex::new(Behavior::Succeed),
            delay,
        };
        (
            CredentialCache::with_clock(fake, settings, clock.clock()),
            clock,
        )
    }

    /// Waits (real time, briefly) until no fetch is in flight for the key.
    async fn settle(cache: &CredentialCache<Fake>, pod: &PodInfo, assoc: &Association) {
        for _ in 0..400 {
            if !cache
                .probe(pod, assoc)
                .is_some_and(|(_, inflight)| inflight)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("fetch still in flight after 2 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_fetch() {
        let (cache, _clock) = setup(
            CacheSettings::default(),
            Duration::from_millis(100),
            6 * HOUR,
        );
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let cache = cache.clone();
            set.spawn(async move { cache.get(&pod("a"), &assoc()).await });
        }
        let mut keys = HashSet::new();
        while let Some(joined) = set.join_next().await {
            let (creds, outcome) = joined.unwrap().unwrap();
            assert_eq!(outcome, CacheOutcome::Miss);
            keys.insert(creds.access_key_id.clone());
        }
        assert_eq!(cache.fetcher().calls(), 1);
        assert_eq!(keys.len(), 1);
        let (creds, outcome) = cache.get(&pod("a"), &assoc()).await.unwrap();
        assert_eq!(
            (creds.access_key_id.as_str(), outcome),
            ("ASIA1", CacheOutcome::Hit)
        );
        let stats = cache.stats();
        assert_eq!(
            (stats.misses, stats.hits, stats.sts_calls, stats.sts_errors),
            (50, 1, 1, 0)
        );
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn concurrent_failures_share_one_fetch() {
        let (cache, _clock) = setup(
            CacheSettings::default(),
            Duration::from_millis(50),
            6 * HOUR,
        );
        cache.fetcher().set(Behavior::Fail(throttled));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let cache = cache.clone();
            set.spawn(async move { cache.get(&pod("a"), &assoc()).await });
        }
        while let Some(joined) = set.join_next().await {
            let err = joined.unwrap().unwrap_err();
            assert_eq!(err.http_status(), 429);
            assert!(err.is_retryable());
        }
        assert_eq!(cache.fetcher().calls(), 1);
        assert_eq!(cache.stats().sts_errors, 1);
    }

    #[tokio::test]
    async fn pods_do_not_share_sessions() {
        let (cache, _clock) = setup(CacheSettings::default(), Duration::ZERO, 6 * HOUR);
        let (a, _) = cache.get(&pod("a"), &assoc()).await.unwrap();
        let (b, _) = cache.get(&pod("b"), &assoc()).await.unwrap();
        assert_ne!(a.access_key_id, b.access_key_id);
        let mut other_role = assoc();
        other_role.role_arn = "arn:aws:iam::111122223333:role/other".into();
        let (c, outcome) = cache.get(&pod("a"), &other_role).await.unwrap();
        assert_eq!(outcome, CacheOutcome::Miss);
        assert_eq!(c.access_key_id, "ASIA3");
        assert_eq!(cache.len(), 3);
    }

    #[tokio::test]
    async fn refresh_ahead_serves_cached_and_refreshes_once_in_background() {
        let (cache, clock) = setup(CacheSettings::default(), Duration::from_millis(30), HOUR);
        let (p, a) = (pod("a"), assoc());
        assert_eq!(cache.get(&p, &a).await.unwrap().1, CacheOutcome::Miss);
        // 29 min left: inside refresh_ahead (30 min), above min_remaining (15 min).
        clock.advance(31 * MIN);
        for _ in 0..10 {
            let (creds, outcome) = cache.get(&p, &a).await.unwrap();
            assert_eq!(
                (creds.access_key_id.as_str(), outcome),
                ("ASIA1", CacheOutcome::Hit)
            );
        }
        settle(&cache, &p, &a).await;
        assert_eq!(cache.fetcher().calls(), 2);
        let (creds, outcome) = cache.get(&p, &a).await.unwrap();
        assert_eq!(
            (creds.access_key_id.as_str(), outcome),
            ("ASIA2", CacheOutcome::Hit)
        );
        assert_eq!(creds.remaining(clock.now()), HOUR);
        assert_eq!(cache.fetcher().calls(), 2);
    }

    #[tokio::test]
    async fn max_retention_renews_in_background() {
        let (cache, clock) = setup(CacheSettings::default(), Duration::ZERO, 6 * HOUR);
        let (p, a) = (pod("a"), assoc());
        cache.get(&p, &a).await.unwrap();
        clock.advance(2 * HOUR);
        assert_eq!(cache.get(&p, &a).await.unwrap().1, CacheOutcome::Hit);
        settle(&cache, &p, &a).await;
        assert_eq!(cache.fetcher().calls(), 1);
        clock.advance(HOUR + Duration::from_secs(1));
        let (creds, outcome) = cache.get(&p, &a).await.unwrap();
        assert_eq!(
            (creds.access_key_id.as_str(), outcome),
            ("ASIA1", CacheOutcome::Hit)
        );
        settle(&cache, &p, &a).await;
        assert_eq!(cache.fetcher().calls(), 2);
        assert_eq!(cache.get(&p, &a).await.unwrap().0.access_key_id, "ASIA2");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn below_min_remaining_never_served_when_refresh_succeeds() {
        let (cache, clock) = setup(CacheSettings::default(), Duration::from_millis(50), HOUR);
        let (p, a) = (pod("a"), assoc());
        cache.get(&p, &a).await.unwrap();
        // 10 min left: below min_remaining; every request waits for the refresh.
        clock.advance(50 * MIN);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (cache, p, a) = (cache.clone(), p.clone(), a.clone());
            set.spawn(async move { cache.get(&p, &a).await });
        }
        while let Some(joined) = set.join_next().await {
            let (creds, outcome) = joined.unwrap().unwrap();
            assert_eq!(
                (creds.access_key_id.as_str(), outcome),
                ("ASIA2", CacheOutcome::Miss)
            );
            assert!(creds.remaining(clock.now()) >= cache.settings().min_remaining);
        }
        assert_eq!(cache.fetcher().calls(), 2);
    }

    #[tokio::test]
    async fn sts_failure_serves_stale_while_valid_then_errors() {
        let (cache, clock) = setup(CacheSettings::default(), Duration::ZERO, HOUR);
        let (p, a) = (pod("a"), assoc());
        cache.get(&p, &a).await.unwrap();
        cache.fetcher().set(Behavior::Fail(throttled));
        clock.advance(50 * MIN); // 10 min left
        let (creds, outcome) = cache.get(&p, &a).await.unwrap();
        assert_eq!(
            (creds.access_key_id.as_str(), outcome),
            ("ASIA1", CacheOutcome::Stale)
        );
        assert_eq!(cache.fetcher().calls(), 2);
        // Within retry_backoff: served without asking STS again.
        assert_eq!(cache.get(&p, &a).await.unwrap().1, CacheOutcome::Stale);
        assert_eq!(cache.fetcher().calls(), 2);
        // After the backoff, STS is asked again.
        clock.advance(Duration::from_secs(31));
        assert_eq!(cache.get(&p, &a).await.unwrap().1, CacheOutcome::Stale);
        assert_eq!(cache.fetcher().calls(), 3);
        // 29 s left, below stale_floor: the error reaches the client.
        clock.advance(9 * MIN);
        let err = cache.get(&p, &a).await.unwrap_err();
        assert_eq!((err.http_status(), err.code()), (429, "Throttling"));
        // Expired: still an error, never the old key.
        clock.advance(10 * MIN);
        assert!(cache.get(&p, &a).await.is_err());
        // STS is back.
        cache.fetcher().set(Behavior::Succeed);
        let (creds, outcome) = cache.get(&p, &a).await.unwrap();
        assert_eq!(outcome, CacheOutcome::Miss);
        assert_eq!(creds.remaining(clock.now()), HOUR);
        let stats = cache.stats();
        assert_eq!((stats.stale_served, stats.sts_errors), (3, 4));
    }

    #[tokio::test]
    async fn failed_background_refresh_marks_stale_and_backs_off() {
        let (cache, clock) = setup(CacheSettings::default(), Duration::ZERO, HOUR);
        let (p, a) = (pod("a"), assoc());
        cache.get(&p, &a).await.unwrap();
        cache.fetcher().set(Behavior::Fail(throttled));
        clock.advance(31 * MIN);
        assert_eq!(cache.get(&p, &a).await.unwrap().1, CacheOutcome::Hit);
        settle(&cache, &p, &a).await;
        assert_eq!(cache.fetcher().calls(), 2);
        let (creds, outcome) = cache.get(&p, &a).await.unwrap();
        assert_eq!(
            (creds.access_key_id.as_str(), outcome),
            ("ASIA1", CacheOutcome::Stale)
        );
        assert_eq!(
            cache.fetcher().calls(),
            2,
            "no new call within retry_backoff"
        );
        cache.fetcher().set(Behavior::Succeed);
        clock.advance(Duration::from_secs(31));
        assert_eq!(cache.get(&p, &a).await.unwrap().1, CacheOutcome::Stale);
        settle(&cache, &p, &a).await;
        let (creds, outcome) = cache.get(&p, &a).await.unwrap();
        assert_eq!(
            (creds.access_key_id.as_str(), outcome),
            ("ASIA3", CacheOutcome::Hit)
        );
    }

    #[tokio::test]
    async fn final_error_evicts_even_valid_credentials() {
        let (cache, clock) = setup(CacheSettings::default(), Duration::ZERO, HOUR);
        let (p, a) = (pod("a"), assoc());
        cache.get(&p, &a).await.unwrap();
        cache.fetcher().set(Behavior::Fail(denied));
        clock.advance(50 * MIN);
        let err = cache.get(&p, &a).await.unwrap_err();
        assert_eq!(err.http_status(), 400);
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("(AccessDenied)"), "{err}");
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.stats().evictions, 1);
    }

    #[tokio::test]
    async fn final_error_in_background_refresh_evicts() {
        let (cache, clock) = setup(CacheSettings::default(), Duration::ZERO, HOUR);
        let (p, a) = (pod("a"), assoc());
        cache.get(&p, &a).await.unwrap();
        cache.fetcher().set(Behavior::Fail(denied));
        clock.advance(31 * MIN);
        assert_eq!(cache.get(&p, &a).await.unwrap().1, CacheOutcome::Hit);
        settle(&cache, &p, &a).await;
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.get(&p, &a).await.unwrap_err().http_status(), 400);
        assert_eq!(cache.fetcher().calls(), 3);
    }

    #[tokio::test]
    async fn evict_pod_drops_only_that_pod() {
        let (cache, _clock) = setup(CacheSettings::default(), Duration::ZERO, 6 * HOUR);
        let (a, b) = (pod("a"), pod("b"));
        cache.get(&a, &assoc()).await.unwrap();
        cache.get(&b, &assoc()).await.unwrap();
        assert_eq!(cache.evict_pod(&a.uid), 1);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&b, &assoc()).await.unwrap().1, CacheOutcome::Hit);
        assert_eq!(cache.get(&a, &assoc()).await.unwrap().1, CacheOutcome::Miss);
        assert_eq!(cache.fetcher().calls(), 3);
        assert_eq!(cache.evict_pod("no-such-pod"), 0);
    }

    #[tokio::test]
    async fn bounded_lru() {
        let settings = CacheSettings {
            max_entries: 3,
            ..Default::default()
        };
        let (cache, _clock) = setup(settings, Duration::ZERO, 6 * HOUR);
        for name in ["p0", "p1", "p2"] {
            cache.get(&pod(name), &assoc()).await.unwrap();
        }
        cache.get(&pod("p0"), &assoc()).await.unwrap(); // p1 is now least recently used
        cache.get(&pod("p3"), &assoc()).await.unwrap();
        assert_eq!(cache.len(), 3);
        assert_eq!(
            cache.get(&pod("p0"), &assoc()).await.unwrap().1,
            CacheOutcome::Hit
        );
        assert_eq!(
            cache.get(&pod("p3"), &assoc()).await.unwrap().1,
            CacheOutcome::Hit
        );
        assert_eq!(
            cache.get(&pod("p2"), &assoc()).await.unwrap().1,
            CacheOutcome::Hit
        );
        assert_eq!(
            cache.get(&pod("p1"), &assoc()).await.unwrap().1,
            CacheOutcome::Miss
        );
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.stats().evictions, 2);
    }

    #[tokio::test]
    async fn bound_evicts_useless_entries_before_lru() {
        let settings = CacheSettings {
            max_entries: 2,
            ..Default::default()
        };
        let (cache, _clock) = setup(settings, Duration::ZERO, 6 * HOUR);
        cache.get(&pod("y"), &assoc()).await.unwrap();
        cache.fetcher().set(Behavior::Fail(throttled));
        assert!(cache.get(&pod("x"), &assoc()).await.is_err()); // most recent, but empty
        cache.fetcher().set(Behavior::Succeed);
        cache.get(&pod("z"), &assoc()).await.unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(
            cache.get(&pod("y"), &assoc()).await.unwrap().1,
            CacheOutcome::Hit
        );
        assert!(cache.probe(&pod("x"), &assoc()).is_none());
    }

    #[tokio::test]
    async fn prefetch_makes_first_request_a_hit() {
        let (cache, _clock) = setup(
            CacheSettings::default(),
            Duration::from_millis(10),
            6 * HOUR,
        );
        let (p, a) = (pod("a"), assoc());
        cache.prefetch(p.clone(), a.clone());
        cache.prefetch(p.clone(), a.clone()); // already in flight: no second call
        settle(&cache, &p, &a).await;
        cache.prefetch(p.clone(), a.clone()); // already cached: no call
        assert_eq!(cache.get(&p, &a).await.unwrap().1, CacheOutcome::Hit);
        assert_eq!(cache.fetcher().calls(), 1);
    }

    #[tokio::test]
    async fn short_lived_credentials_are_refused() {
        let (cache, _clock) = setup(CacheSettings::default(), Duration::ZERO, 10 * MIN);
        let err = cache.get(&pod("a"), &assoc()).await.unwrap_err();
        assert!(matches!(err, CacheError::ShortLived { .. }), "{err}");
        assert_eq!(err.http_status(), 500);
        assert_eq!(cache.len(), 0);
        cache.fetcher().set_lifetime(HOUR);
        assert_eq!(
            cache.get(&pod("a"), &assoc()).await.unwrap().1,
            CacheOutcome::Miss
        );
    }

    #[tokio::test]
    async fn panicking_fetch_does_not_wedge_the_key() {
        let (cache, _clock) = setup(CacheSettings::default(), Duration::ZERO, HOUR);
        cache.fetcher().set(Behavior::Panic);
        let err = cache.get(&pod("a"), &assoc()).await.unwrap_err();
        assert!(matches!(err, CacheError::FetchAborted), "{err}");
        assert_eq!(err.http_status(), 503);
        cache.fetcher().set(Behavior::Succeed);
        assert_eq!(
            cache.get(&pod("a"), &assoc()).await.unwrap().1,
            CacheOutcome::Miss
        );
    }

    #[test]
    fn outcome_labels() {
        assert_eq!(CacheOutcome::Hit.as_str(), "hit");
        assert_eq!(CacheOutcome::Miss.as_str(), "miss");
        assert_eq!(CacheOutcome::Stale.as_str(), "stale");
    }
}
