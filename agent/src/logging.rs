//! The agent's own log (stderr): `tracing` lines, access lines among them, written
//! by a dedicated thread so a request never waits on a `write` to stderr.
//!
//! Each line goes through a bounded queue ([`MAX_QUEUED_LINES`]) to the log
//! thread, which writes lines buffered, in batches ([`crate::batched`]). If the
//! queue is full (stderr blocked, or a flood) the line is dropped and counted
//! (`pod_identity_log_lines_dropped_total`); the audit log, which has its own
//! queue, still has every access.

use std::{
    io::{BufWriter, IsTerminal, Write},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

use crate::batched;

/// Lines waiting for the log thread, at most.
pub const MAX_QUEUED_LINES: usize = 16_384;
/// Lines written between two flushes, at most.
const MAX_BATCH: usize = 256;

enum Msg {
    Line(Vec<u8>),
    /// Answer once every line queued before is written.
    Flush(mpsc::Sender<()>),
}

/// The `tracing` writer: one queued message per event.
#[derive(Clone)]
struct Queue {
    tx: mpsc::SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

/// One event's bytes, queued when `tracing` is done with it.
struct Line<'a> {
    queue: &'a Queue,
    buf: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        if self.queue.tx.try_send(Msg::Line(line)).is_err() {
            self.queue.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<'a> MakeWriter<'a> for Queue {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            queue: self,
            buf: Vec::new(),
        }
    }
}

/// The log thread's side.
struct Out<W: Write>(BufWriter<W>);

impl<W: Write> batched::Consumer<Msg> for Out<W> {
    fn take(&mut self, msg: Msg) {
        match msg {
            // Nobody to tell if stderr is gone.
            Msg::Line(line) => drop(self.0.write_all(&line)),
            Msg::Flush(done) => {
                let _ = self.0.flush();
                let _ = done.send(());
            }
        }
    }

    fn flush(&mut self) {
        let _ = self.0.flush();
    }
}

/// Keeps the log thread's queue; dropping it (at exit) waits up to a second for
/// what is queued to be written.
#[must_use = "queued log lines are lost at exit unless the guard is dropped"]
pub struct LogGuard(Queue);

impl Drop for LogGuard {
    fn drop(&mut self) {
        let (done, wait) = mpsc::channel();
        if self.0.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(1));
        }
    }
}

/// Start the log thread on `out`: the `tracing` writer and its guard.
fn start<W: Write + Send + 'static>(out: W, dropped: Arc<AtomicU64>) -> (Queue, LogGuard) {
    let (tx, rx) = mpsc::sync_channel(MAX_QUEUED_LINES);
    let queue = Queue { tx, dropped };
    let mut out = Out(BufWriter::new(out));
    // Without the thread, lines are dropped and counted, as for a full queue.
    let _ = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || batched::drain(&rx, &mut out, MAX_BATCH));
    (queue.clone(), LogGuard(queue))
}

/// Install the global subscriber: `RUST_LOG` (default `info`), text (colour only
/// on a terminal) or JSON lines, on stderr through the log thread.
pub fn init(json: bool) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let dropped = Arc::new(AtomicU64::new(0));
    let (queue, guard) = start(std::io::stderr(), dropped.clone());
    COUNTER.get_or_init(|| dropped);
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(queue);
    if json {
        b.json().init();
    } else {
        b.init();
    }
    guard
}

static COUNTER: std::sync::OnceLock<Arc<AtomicU64>> = std::sync::OnceLock::new();

/// Log lines dropped because the queue was full, since [`init`] (0 without it).
pub fn dropped_lines() -> u64 {
    COUNTER.get().map_or(0, |c| c.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests;
