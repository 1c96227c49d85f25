//! The machinery behind [`CredentialCache`](super::CredentialCache): one entry per
//! (pod, association) key, bounded (useless entries first, then least recently
//! used), the serve-or-wait decision, and the one coalesced upstream fetch per key
//! whose result every waiter receives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::{background::BackgroundLimiter, CacheError, CacheSettings, Clock, Counters};
use crate::credentials::sts::ErrorChain;
use crate::credentials::types::Credentials;
use crate::credentials::upstream::{Fetch, FetchRequest, Target};
use crate::model::{AssumeMode, PodUid};

/// What makes two requests want the same session.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub(super) pod_uid: PodUid,
    target: KeyTarget,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum KeyTarget {
    /// STS: the parts of the association that change what STS is asked for.
    Association {
        role_arn: String,
        target_role_arn: Option<String>,
        mode: AssumeMode,
        disable_session_tags: bool,
        session_duration_secs: Option<u32>,
        external_id: Option<String>,
        policy: Option<String>,
    },
    /// EKS Auth: the service account the pod's token names (EKS Auth finds the
    /// association; a pod keeps its service account for life, so this is one
    /// entry per pod, whichever token the pod presents).
    PodIdentity {
        namespace: String,
        service_account: String,
    },
}

impl Key {
    pub(super) fn new(req: &FetchRequest) -> Self {
        let target = match &req.target {
            Target::Association(assoc) => KeyTarget::Association {
                role_arn: assoc.role_arn.clone(),
                target_role_arn: assoc.target_role_arn.clone(),
                mode: assoc.mode,
                disable_session_tags: assoc.disable_session_tags,
                session_duration_secs: assoc.session_duration_secs,
                external_id: assoc.external_id.clone(),
                policy: assoc.policy.clone(),
            },
            Target::PodIdentity(token) => KeyTarget::PodIdentity {
                namespace: token.namespace.clone(),
                service_account: token.service_account.clone(),
            },
        };
        Self {
            pod_uid: req.pod.uid.clone(),
            target,
        }
    }
}

type FetchResult = Result<Arc<Credentials>, CacheError>;
pub(super) type Inflight = watch::Receiver<Option<FetchResult>>;

#[derive(Clone)]
pub(super) struct Cached {
    pub(super) creds: Arc<Credentials>,
    fetched_at: SystemTime,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) current: Option<Cached>,
    /// The fetch in progress; joined by every request that needs fresh credentials.
    pub(super) inflight: Option<Inflight>,
    /// When the last fetch failed (retryably); cleared by a success.
    pub(super) last_failure: Option<SystemTime>,
    /// No new fetch before this after a failure (the backoff, with jitter), as
    /// long as old credentials can be served meanwhile.
    retry_at: Option<SystemTime>,
}

pub(super) struct Entry {
    /// What the next fetch asks for: the newest token the pod presented.
    request: Mutex<FetchRequest>,
    pub(super) state: Mutex<State>,
    /// A request now waits for the background fetch of this entry: it must not
    /// wait for its `--max-service-qps` turn any longer.
    urgent: tokio::sync::Notify,
    /// Logical time of the last use, for LRU eviction.
    last_used: AtomicU64,
}

pub(super) struct Inner<F> {
    pub(super) fetcher: F,
    pub(super) settings: CacheSettings,
    pub(super) clock: Clock,
    pub(super) entries: Mutex<HashMap<Key, Arc<Entry>>>,
    pub(super) tick: AtomicU64,
    pub(super) stats: Counters,
    pub(super) background: BackgroundLimiter,
}

/// Locks a std mutex, ignoring poisoning: the guarded data stays consistent
/// because no critical section here can panic halfway through an update.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a request does with the entry as it found it.
pub(super) enum Decision {
    /// Answer with these credentials now; maybe start a background refresh.
    Serve {
        creds: Arc<Credentials>,
        refresh: bool,
        stale: bool,
    },
    /// Wait for a (new or running) fetch.
    Wait,
}

impl<F: Fetch> Inner<F> {
    pub(super) fn now(&self) -> SystemTime {
        (self.clock)()
    }

    /// The entry for the request's key, created if needed (evicting one if full).
    /// An existing entry takes the request's newer token for its next fetch.
    pub(super) fn entry(&self, req: &FetchRequest) -> Arc<Entry> {
        let key = Key::new(req);
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get(&key) {
            entry.last_used.store(tick, Ordering::Relaxed);
            let mut current = lock(&entry.request);
            if current.is_superseded_by(req) {
                *current = req.clone();
            }
            drop(current);
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
            request: Mutex::new(req.clone()),
            state: Mutex::new(State::default()),
            urgent: tokio::sync::Notify::new(),
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

    pub(super) fn decide(&self, state: &State, now: SystemTime) -> Decision {
        let s = &self.settings;
        let Some(cached) = &state.current else {
            return Decision::Wait;
        };
        let remaining = cached.creds.remaining(now);
        let age = now
            .duration_since(cached.fetched_at)
            .unwrap_or(Duration::ZERO);
        let failed_recently = state.retry_at.is_some_and(|t| now < t);
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

    /// Joins the entry's fetch in flight, or spawns one. `None` without a Tokio
    /// runtime. A `background` fetch (refresh ahead, prefetch: nobody waits for
    /// it) waits for its turn under `--max-service-qps`, and is not started with a
    /// pod token that expired since (the pod's next request brings a fresh one).
    pub(super) fn start_fetch(
        this: &Arc<Self>,
        entry: &Arc<Entry>,
        background: bool,
    ) -> Option<Inflight> {
        if background && !lock(&entry.request).usable_at(this.now()) {
            return None;
        }
        let tx = {
            let mut state = lock(&entry.state);
            // A receiver whose sender is gone belongs to a fetch task that died
            // (panic, shutdown) before answering: start over instead of joining it.
            if let Some(rx) = state
                .inflight
                .as_ref()
                .filter(|rx| rx.has_changed().is_ok())
            {
                if !background {
                    // Someone waits now: a paced background fetch goes at once.
                    entry.urgent.notify_one();
                }
                return Some(rx.clone());
            }
            let (tx, rx) = watch::channel(None);
            state.inflight = Some(rx);
            tx
        };
        let rx = tx.subscribe();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(Self::run_fetch(
                    Arc::clone(this),
                    Arc::clone(entry),
                    tx,
                    background,
                ));
                Some(rx)
            }
            Err(_) => {
                tracing::error!("credential fetch requested outside a Tokio runtime");
                lock(&entry.state).inflight = None;
                None
            }
        }
    }

    /// The one upstream call for a key; publishes its result to every waiter.
    async fn run_fetch(
        this: Arc<Self>,
        entry: Arc<Entry>,
        tx: watch::Sender<Option<FetchResult>>,
        background: bool,
    ) {
        if background {
            tokio::select! {
                () = this.background.wait_turn() => {}
                () = entry.urgent.notified() => {}
            }
        }
        // The newest request (token) at the time of the call.
        let req = lock(&entry.request).clone();
        this.stats.sts_calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let fetched = this.fetcher.fetch(&req).await;
        this.stats.upstream.observe(
            match req.target {
                Target::Association(_) => "sts",
                Target::PodIdentity(_) => "eks-auth",
            },
            match &fetched {
                Ok(_) => "ok",
                Err(e) => e.code(),
            },
            started.elapsed(),
        );
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
                Err(CacheError::Upstream(Arc::new(e)))
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
                    state.retry_at = None;
                    false
                }
                Err(e) if e.is_retryable() => {
                    state.last_failure = Some(now);
                    state.retry_at = Some(now + jittered(this.settings.retry_backoff));
                    false
                }
                Err(_) => {
                    state.current = None;
                    true
                }
            }
        };
        if let Err(e) = &result {
            this.stats
                .count_error(if background { "refresh" } else { "fetch" }, e.code());
            tracing::warn!(
                pod_uid = %req.pod.uid,
                namespace = %req.pod.namespace,
                pod = %req.pod.name,
                role_arn = %req.role_for_log(),
                code = e.code(),
                request_id = e.request_id(),
                error = %ErrorChain(e),
                final_error,
                "credential fetch failed"
            );
        }
        if final_error {
            this.remove_if_same(&req, &entry);
        }
        // Waiters may all be gone (background refresh): nothing to do then.
        tx.send_replace(Some(result));
    }

    /// Removes `entry` from the map unless it was already replaced.
    fn remove_if_same(&self, req: &FetchRequest, entry: &Arc<Entry>) {
        let key = Key::new(req);
        let mut entries = lock(&self.entries);
        if entries.get(&key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            entries.remove(&key);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `base` ± 20 %, so entries that failed together do not retry together.
fn jittered(base: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // 0.8 .. 1.2 in steps of 1/1000.
    let factor = 0.8 + (random % 401) as f64 / 1000.0;
    base.mul_f64(factor)
}
