//! Counters since start: the snapshot callers read ([`CacheStats`]) and the
//! atomics the cache bumps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::{
    family::Family,
    histogram::{exponential_buckets, Histogram},
};

/// Distinct (type, code) error counters kept; codes come from the upstream, so
/// the set is capped.
const MAX_ERROR_KINDS: usize = 64;

/// Distinct (api, outcome) upstream latency series kept (outcomes are upstream
/// error codes, so the set is capped; past the cap a new code is `other`).
const MAX_UPSTREAM_SERIES: usize = 64;

/// Upstream call latency by `api` (`sts` | `eks-auth`) and `outcome` (`ok` or the
/// error code), in seconds: `pod_identity_upstream_request_duration_seconds`.
/// Cheap to clone (shared).
pub type UpstreamLatency = Family<Vec<(&'static str, String)>, Histogram, fn() -> Histogram>;

/// Buckets from 5 ms to ~20 s: STS and EKS Auth answer in tens to hundreds of
/// milliseconds; the SDK's retries and timeouts make the long tail.
fn upstream_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// The upstream latency histograms, shared with the metrics registry.
pub(super) struct Upstream(pub(super) UpstreamLatency, AtomicUsize);

impl Default for Upstream {
    fn default() -> Self {
        Self(
            Family::new_with_constructor(upstream_histogram),
            AtomicUsize::new(0),
        )
    }
}

impl Upstream {
    pub(super) fn observe(&self, api: &'static str, outcome: &str, took: Duration) {
        let mut labels = vec![("api", api.to_owned()), ("outcome", outcome.to_owned())];
        if self.0.get(&labels).is_none()
            && self.1.fetch_add(1, Ordering::Relaxed) >= MAX_UPSTREAM_SERIES
        {
            labels[1].1 = "other".to_owned();
        }
        self.0.get_or_create(&labels).observe(took.as_secs_f64());
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

/// The live counters behind [`CacheStats`].
#[derive(Default)]
pub(super) struct Counters {
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) stale_served: AtomicU64,
    pub(super) sts_calls: AtomicU64,
    pub(super) sts_errors: AtomicU64,
    pub(super) evictions: AtomicU64,
    /// Failed fetches by (`fetch` | `refresh`, upstream error code), for the stock
    /// agent's `pod_identity_cache_errors{type,code}`.
    pub(super) errors: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// Upstream call latency, observed where the call is made (`run_fetch`).
    pub(super) upstream: Upstream,
}

impl Counters {
    pub(super) fn count_error(&self, kind: &'static str, code: &str) {
        let mut m = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let key = (kind, code.to_owned());
        if m.len() < MAX_ERROR_KINDS || m.contains_key(&key) {
            *m.entry(key).or_default() += 1;
        }
    }
}
