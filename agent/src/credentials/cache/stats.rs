//! Counters since start: the snapshot callers read ([`CacheStats`]) and the
//! atomics the cache bumps.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

/// Distinct (type, code) error counters kept; codes come from the upstream, so
/// the set is capped.
const MAX_ERROR_KINDS: usize = 64;

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
