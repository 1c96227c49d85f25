//! Tuning of the cache ([`CacheSettings`]; the module docs of
//! [`cache`](super) say how the durations interact) and its time source ([`Clock`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
    /// key, as long as old credentials can be served meanwhile (± 20 % jitter).
    pub retry_backoff: Duration,
    /// Background fetches (refresh ahead, prefetch) per second, all keys together
    /// (the stock agent's `--max-service-qps`); 0: unlimited. Requests that wait
    /// for credentials are not limited by it.
    pub max_service_qps: f64,
    /// How long a request waits for the upstream before it is answered with a
    /// retryable error (the fetch goes on, and the pod's retry joins it): inside
    /// the SDKs' budgets (botocore gives the endpoint 2 s) whatever the upstream
    /// does (a black hole, retries with back-off).
    pub request_wait: Duration,
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
            max_service_qps: 3.0,
            request_wait: Duration::from_millis(800),
        }
    }
}
