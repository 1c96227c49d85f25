//! Per-pod credential cache (invariants 6 and 7).
//!
//! Keyed by pod UID and the parts of the association that change what the upstream
//! is asked for (with EKS Auth: the service account the pod's token names), so two
//! pods of one service account never share a session (their session tags differ)
//! and a pod's many processes share one. An entry refreshes with the newest token
//! its pod presented.
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
//! All refreshes of one key, background or not, share one upstream call (a spawned
//! task whose result every waiter receives through a `watch` channel), so
//! concurrent misses cost one call, and a request that gives up (client
//! disconnect) does not cancel the call the others wait for. Background calls
//! (refresh ahead, prefetch) are paced by `max_service_qps` ([`background`]).
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
//!   `retry_backoff` (30 s, ± 20 % jitter) per key while stale credentials can be
//!   served, so an outage is not amplified by client retries.
//! * A request waits at most `request_wait` (800 ms) for the upstream: then it is
//!   answered with a retryable 503 (or the still-valid old credentials) while the
//!   fetch goes on, and the pod's retry joins it. A black-holed upstream, or the
//!   upstream client's own retries and back-off, never push a pod past the SDKs'
//!   budgets (botocore gives the endpoint 2 s).
//! * Credentials that expire too soon to serve (`ShortLived`) count as a retryable
//!   failure: never served, still-valid old ones kept, the key backed off.
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
//!
//! * [`settings`]: [`CacheSettings`] and the [`Clock`].
//! * [`outcome`]: how a request was answered, or why it got nothing.
//! * [`stats`]: counters since start.
//! * `entries`: the keyed entries, eviction, the serve-or-wait decision, and the
//!   coalesced fetch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::credentials::types::Credentials;
use crate::credentials::upstream::{Fetch, FetchRequest};
use crate::model::PodUid;

pub mod background;
mod entries;
pub mod outcome;
pub mod settings;
pub mod stats;

pub use outcome::{CacheError, CacheOutcome};
pub use settings::{CacheSettings, Clock};
pub use stats::{CacheStats, UpstreamLatency};

#[cfg(test)]
use entries::Key;
use entries::{lock, Decision, Inner};
use stats::Counters;

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
                background: background::BackgroundLimiter::new(settings.max_service_qps),
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

    /// Credentials for the request, from the cache or the upstream (see the module
    /// docs for the policy). Never returns expired credentials.
    pub async fn get(
        &self,
        req: &FetchRequest,
    ) -> Result<(Arc<Credentials>, CacheOutcome), CacheError> {
        let inner = &self.inner;
        let entry = inner.entry(req);
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
                Inner::start_fetch(inner, &entry, true);
            }
            return Ok(if stale {
                inner.stats.stale_served.fetch_add(1, Ordering::Relaxed);
                (creds, CacheOutcome::Stale)
            } else {
                inner.stats.hits.fetch_add(1, Ordering::Relaxed);
                (creds, CacheOutcome::Hit)
            });
        }

        let wait = inner.settings.request_wait;
        let result = match Inner::start_fetch(inner, &entry, false) {
            Some(mut rx) => {
                match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
                    Ok(Ok(value)) => value.clone().unwrap_or(Err(CacheError::FetchAborted)),
                    Ok(Err(_)) => Err(CacheError::FetchAborted),
                    // The fetch goes on (it is its own task); the pod's retry joins it.
                    Err(_) => Err(CacheError::UpstreamSlow { waited: wait }),
                }
            }
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
    pub fn evict_pod(&self, pod_uid: &PodUid) -> usize {
        let mut entries = lock(&self.inner.entries);
        let before = entries.len();
        entries.retain(|key, _| key.pod_uid != *pod_uid);
        let evicted = before - entries.len();
        self.inner
            .stats
            .evictions
            .fetch_add(evicted as u64, Ordering::Relaxed);
        evicted
    }

    /// Starts fetching credentials in the background if none are cached or being
    /// fetched (a pod's cgroup appeared: its first request should be a hit).
    pub fn prefetch(&self, req: &FetchRequest) {
        let entry = self.inner.entry(req);
        let idle = {
            let state = lock(&entry.state);
            state.current.is_none() && state.inflight.is_none()
        };
        if idle {
            Inner::start_fetch(&self.inner, &entry, true);
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

    /// Failed fetches since start by (`fetch` | `refresh`, error code).
    pub fn error_counts(&self) -> Vec<((&'static str, String), u64)> {
        let m = lock(&self.inner.stats.errors);
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Upstream call latency by API and outcome (shared: it moves as calls end).
    pub fn upstream_latency(&self) -> UpstreamLatency {
        self.inner.stats.upstream.0.clone()
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

#[cfg(test)]
impl<F: Fetch> CredentialCache<F> {
    /// (credentials cached, fetch in flight) for the key, or `None` without an entry.
    fn probe(&self, req: &FetchRequest) -> Option<(bool, bool)> {
        let entries = lock(&self.inner.entries);
        let entry = entries.get(&Key::new(req))?;
        let state = lock(&entry.state);
        Some((state.current.is_some(), state.inflight.is_some()))
    }
}

#[cfg(test)]
mod tests;
