//! The pace of fetches nobody waits for (refresh ahead, prefetch): at most
//! `max_service_qps` per second (the stock agent's `--max-service-qps`, default 3),
//! so a node full of pods whose credentials come due together, or an agent start
//! with hundreds of pods, does not burst the upstream. Requests that wait for
//! their credentials are never held back by it.
//!
//! Each background fetch reserves the next free slot (`1 / qps` apart) and sleeps
//! until it. The slots are not a queue that can grow on its own: at most one
//! background fetch per cache entry is ever in flight, and entries are bounded.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Spaces background fetches `1 / qps` apart.
#[derive(Debug)]
pub struct BackgroundLimiter {
    interval: Option<Duration>,
    next: Mutex<Option<Instant>>,
}

impl BackgroundLimiter {
    /// At most `qps` background fetches per second; `qps <= 0` (or not finite):
    /// no limit.
    pub fn new(qps: f64) -> Self {
        let interval = (qps.is_finite() && qps > 0.0).then(|| Duration::from_secs_f64(1.0 / qps));
        Self {
            interval,
            next: Mutex::new(None),
        }
    }

    /// How long the caller must wait for its slot, reserving it.
    pub fn reserve(&self, now: Instant) -> Duration {
        let Some(interval) = self.interval else {
            return Duration::ZERO;
        };
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let slot = next.map_or(now, |n| n.max(now));
        *next = Some(slot + interval);
        slot - now
    }

    /// Waits for this fetch's slot.
    pub async fn wait_turn(&self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spaced_by_the_rate_and_idle_time_is_not_banked() {
        let l = BackgroundLimiter::new(4.0);
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..5).map(|_| l.reserve(t0)).collect();
        assert_eq!(
            waits,
            [0, 250, 500, 750, 1000].map(Duration::from_millis).to_vec()
        );
        // After a long idle spell, the next one goes at once (no burst credit).
        let later = t0 + Duration::from_secs(60);
        assert_eq!(l.reserve(later), Duration::ZERO);
        assert_eq!(l.reserve(later), Duration::from_millis(250));
    }

    #[test]
    fn zero_means_unlimited() {
        let l = BackgroundLimiter::new(0.0);
        let t0 = Instant::now();
        assert!((0..100).all(|_| l.reserve(t0).is_zero()));
    }
}
