use std::sync::{Arc, Mutex};

use super::*;

/// A writer tests can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn events_reach_the_output_whole_and_in_order_once_the_guard_drops() {
    let out = Shared::default();
    let dropped = Arc::new(AtomicU64::new(0));
    let (queue, guard) = start(out.clone(), dropped.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .without_time()
        .with_writer(queue)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..500 {
            tracing::info!(i, "access");
        }
    });
    drop(guard);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 500, "{text}");
    for (i, l) in lines.iter().enumerate() {
        assert!(l.ends_with(&format!("access i={i}")), "{l}");
    }
    assert_eq!(dropped.load(Ordering::Relaxed), 0);
}

/// stderr that never takes a byte (a blocked pipe).
struct Stuck;

impl Write for Stuck {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_secs(3600));
        Ok(0)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_blocked_stderr_drops_and_counts_instead_of_blocking_the_caller() {
    let dropped = Arc::new(AtomicU64::new(0));
    let (queue, guard) = start(Stuck, dropped.clone());
    let subscriber = tracing_subscriber::fmt().with_writer(queue).finish();
    let n = MAX_QUEUED_LINES + 2 * MAX_BATCH + 100;
    let started = std::time::Instant::now();
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..n {
            // Long enough to overflow the BufWriter: the log thread is stuck
            // in write and the queue fills.
            tracing::info!(i, pad = %"x".repeat(200), "access");
        }
    });
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the caller waited on stderr"
    );
    let lost = dropped.load(Ordering::Relaxed);
    assert!(lost >= 100, "dropped {lost} of {n}");
    // The guard waits at most a second for the stuck thread.
    std::mem::forget(guard);
}
