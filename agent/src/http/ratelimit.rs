//! Per-caller request limits: one noisy pod cannot starve the others (the stock
//! agent has one global limit, 1000 rps with a burst of 500, shared by every pod).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Token-bucket settings.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Sustained requests per second per key; 0 disables limiting.
    pub rate: f64,
    /// Bucket size.
    pub burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate: 200.0,
            burst: 400.0,
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets by key (the caller's cgroup id). Buckets idle for a minute are
/// dropped, so the map stays as small as the set of active callers.
pub struct RateLimiter {
    limits: Limits,
    buckets: Mutex<HashMap<u64, Bucket>>,
    last_sweep: Mutex<Instant>,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> Self {
        RateLimiter {
            limits,
            buckets: Mutex::new(HashMap::new()),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Take one token for `key` at `now`; false when the caller is over its limit.
    pub fn allow_at(&self, key: u64, now: Instant) -> bool {
        if self.limits.rate <= 0.0 {
            return true;
        }
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
            if now.duration_since(*last) > Duration::from_secs(60) {
                b.retain(|_, v| now.duration_since(v.last) < Duration::from_secs(60));
                *last = now;
            }
        }
        let bucket = b.entry(key).or_insert(Bucket {
            tokens: self.limits.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.limits.rate).min(self.limits.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn allow(&self, key: u64) -> bool {
        self.allow_at(key, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_per_key() {
        let l = RateLimiter::new(Limits {
            rate: 10.0,
            burst: 5.0,
        });
        let t = Instant::now();
        assert_eq!((0..10).filter(|_| l.allow_at(1, t)).count(), 5);
        // Another caller is unaffected.
        assert!(l.allow_at(2, t));
        // 100 ms later one more token for caller 1.
        let t2 = t + Duration::from_millis(100);
        assert!(l.allow_at(1, t2));
        assert!(!l.allow_at(1, t2));
    }
}
