//! Directories watched through inotify: a future that resolves when an entry of
//! one of them is created, removed, renamed or rewritten.
//!
//! It only says *that* something changed; callers then look (walk the cgroup
//! tree, stat the file) as their poll would, so a lost or merged event costs
//! nothing but latency, and the poll stays as the fallback. Used for the cgroup
//! tree (a pod's cgroup appearing) and for the pods and associations files.
//!
//! Bounded: at most [`MAX_WATCHES`] directories; a queue overflow reads as a
//! change.

use std::{
    collections::HashMap,
    mem::MaybeUninit,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;
use tokio::sync::Notify;

/// Most directories one watch follows.
pub const MAX_WATCHES: usize = 256;

/// How often the reader thread looks whether its watch was dropped.
const STOP_CHECK: Duration = Duration::from_millis(500);

/// What counts as a change of a directory's entries.
const MASK: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::CLOSE_WRITE)
    .union(WatchFlags::ONLYDIR);

/// An inotify instance, the directories it watches, and the thread that reads
/// its events (a blocking `poll`, so no file descriptor is handed to the async
/// reactor: `unsafe` stays in the loader).
pub struct DirWatch {
    fd: Arc<OwnedFd>,
    watched: HashMap<PathBuf, i32>,
    changed: Arc<Notify>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for DirWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatch")
            .field("watched", &self.watched.len())
            .finish()
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        // The thread ends within STOP_CHECK.
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl DirWatch {
    /// A watch of nothing yet (`inotify_init1`) and its reader thread.
    pub fn new() -> std::io::Result<Self> {
        let fd = Arc::new(inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?);
        let changed = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (f, c, s) = (fd.clone(), changed.clone(), stop.clone());
        std::thread::Builder::new()
            .name("dir-watch".into())
            .spawn(move || read_events(&f, &c, &s))?;
        Ok(DirWatch {
            fd,
            watched: HashMap::new(),
            changed,
            stop,
        })
    }

    /// Watch exactly `dirs` (at most [`MAX_WATCHES`] of them): new ones added,
    /// others dropped. A directory that cannot be watched (gone already) is
    /// skipped; the poll still covers it. Returns how many are watched.
    pub fn set(&mut self, dirs: impl IntoIterator<Item = PathBuf>) -> usize {
        let want: Vec<PathBuf> = dirs.into_iter().take(MAX_WATCHES).collect();
        let stale: Vec<PathBuf> = self
            .watched
            .keys()
            .filter(|p| !want.contains(p))
            .cloned()
            .collect();
        for p in stale {
            if let Some(wd) = self.watched.remove(&p) {
                // Fails if the directory is gone (the kernel dropped the watch).
                let _ = inotify::remove_watch(&*self.fd, wd);
            }
        }
        for p in want {
            if self.watched.contains_key(&p) {
                continue;
            }
            match inotify::add_watch(&*self.fd, p.as_path(), MASK) {
                Ok(wd) => {
                    self.watched.insert(p, wd);
                }
                Err(e) => tracing::debug!(dir = %p.display(), error = %e, "not watched"),
            }
        }
        self.watched.len()
    }

    /// Whether `dir` is watched.
    pub fn watches(&self, dir: &Path) -> bool {
        self.watched.contains_key(dir)
    }

    /// Wait until something changed in a watched directory since the last call
    /// returned (changes in between are not lost; several count as one).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// The reader thread: wait for events, drain them, tell the watch; until the
/// watch is dropped or the descriptor fails.
fn read_events(fd: &OwnedFd, changed: &Notify, stop: &AtomicBool) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let timeout = Timespec {
        tv_sec: STOP_CHECK.as_secs() as i64,
        tv_nsec: i64::from(STOP_CHECK.subsec_nanos()),
    };
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "inotify poll failed; falling back to polling");
                return;
            }
        }
        let mut news = false;
        let mut reader = inotify::Reader::new(fd, &mut buf);
        loop {
            match reader.next() {
                // A removed watch says so (IN_IGNORED): not a change.
                Ok(ev) => news |= !ev.events().contains(ReadFlags::IGNORED),
                Err(Errno::AGAIN) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "inotify read failed; falling back to polling");
                    return;
                }
            }
        }
        if news {
            changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests;
