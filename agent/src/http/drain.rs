//! Graceful shutdown of the listeners (SIGTERM): stop accepting, let the requests
//! in flight finish (keep-alive connections close after their current request),
//! bounded in time. The pinned redirect stays: the next agent takes over.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// What listeners and their connections watch.
#[derive(Clone, Debug)]
pub struct Drain {
    stop: watch::Receiver<bool>,
    inflight: Arc<AtomicUsize>,
}

/// Starts the drain.
#[derive(Debug)]
pub struct DrainHandle {
    stop: watch::Sender<bool>,
    inflight: Arc<AtomicUsize>,
}

/// Counts one open connection until dropped.
#[derive(Debug)]
pub struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl DrainHandle {
    /// A new drain, not started.
    pub fn new() -> (DrainHandle, Drain) {
        let (tx, rx) = watch::channel(false);
        let inflight = Arc::new(AtomicUsize::new(0));
        (
            DrainHandle {
                stop: tx,
                inflight: inflight.clone(),
            },
            Drain { stop: rx, inflight },
        )
    }

    /// Stops accepting and waits until no connection is open, at most `timeout`.
    /// Returns the connections still open when it gave up.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let open = self.inflight.load(Ordering::Acquire);
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
}

impl Drain {
    /// A drain that never starts (tests, listeners without shutdown).
    pub fn never() -> Drain {
        let (handle, drain) = DrainHandle::new();
        // Keep the sender alive forever: `stopped` must never resolve.
        std::mem::forget(handle);
        drain
    }

    /// Counts a connection until the guard drops.
    pub fn track(&self) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.inflight.clone())
    }

    /// Resolves once the drain has started.
    pub async fn stopped(&self) {
        let mut rx = self.stop.clone();
        if rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether the drain has started.
    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_open_connections_within_the_bound() {
        let (handle, drain) = DrainHandle::new();
        let guard = drain.track();
        assert_eq!(handle.open(), 1);
        let d = drain.clone();
        let stopped = tokio::spawn(async move { d.stopped().await });
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(guard);
        });
        let started = std::time::Instant::now();
        assert_eq!(handle.drain(Duration::from_secs(5)).await, 0);
        assert!(started.elapsed() >= Duration::from_millis(80));
        stopped.await.unwrap();
        release.await.unwrap();
        assert!(drain.is_stopping());
        // A connection that never ends: the drain gives up at the bound.
        let _stuck = drain.track();
        let started = std::time::Instant::now();
        assert_eq!(handle.drain(Duration::from_millis(200)).await, 1);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
