//! The cgroup id → path index: a bounded walk of the cgroup2 tree, redone on a
//! miss at most once per interval.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use super::CgroupError;

/// Default bound on the depth of the cgroup tree walk (root is depth 0).
///
/// Real pod cgroups sit at depth 5 or so (`kubelet.slice/kubelet-kubepods.slice/
/// …-besteffort.slice/…-pod<uid>.slice/cri-containerd-<id>.scope`), nested kind adds
/// three more. Anything deeper is a container's own delegated sub-tree.
pub const MAX_DEPTH: usize = 16;

/// Default bound on the number of directories one walk may visit.
pub const MAX_DIRS: usize = 200_000;

/// Change between two walks of the cgroup tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanDelta {
    /// Cgroups (id, path relative to the root) that are new since the last walk.
    pub appeared: Vec<(u64, String)>,
    /// Cgroups that were there in the last walk and are not any more.
    pub gone: Vec<(u64, String)>,
    /// Directories deeper than the depth bound, which were not indexed.
    pub skipped_too_deep: usize,
}

#[derive(Default)]
struct IndexState {
    by_id: HashMap<u64, String>,
    /// When the last walk started; `None` before the first one.
    last_scan: Option<Instant>,
    /// Bumped by every completed walk, so a waiter can tell someone else walked.
    generation: u64,
}

/// Index cgroup v2 id → cgroup path (relative to a root, starting with `/`).
///
/// Refreshed on demand: a miss triggers a walk of the tree, but at most once per
/// `min_rescan_interval`, so a flood of unknown ids (a process in a cgroup created
/// after the last walk, or made-up ids) cannot make the agent walk the tree in a
/// loop. Calls are short and synchronous; async callers use `spawn_blocking` or
/// accept the block.
pub struct CgroupIndex {
    root: PathBuf,
    min_rescan_interval: Duration,
    max_depth: usize,
    max_dirs: usize,
    state: RwLock<IndexState>,
    /// Serialises walks: concurrent misses wait for one walk instead of each doing one.
    scan: Mutex<()>,
}

impl std::fmt::Debug for CgroupIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupIndex")
            .field("root", &self.root)
            .field("min_rescan_interval", &self.min_rescan_interval)
            .field("len", &self.len())
            .finish()
    }
}

impl CgroupIndex {
    /// An empty index of the tree under `root` (e.g.
    /// [`host_cgroup2_root`](super::host_cgroup2_root)); the first
    /// [`resolve`](Self::resolve) or [`rescan`](Self::rescan) walks it.
    pub fn new(root: PathBuf, min_rescan_interval: Duration) -> Self {
        Self::with_limits(root, min_rescan_interval, MAX_DEPTH, MAX_DIRS)
    }

    /// Like [`new`](Self::new), with other bounds on the walk.
    pub fn with_limits(
        root: PathBuf,
        min_rescan_interval: Duration,
        max_depth: usize,
        max_dirs: usize,
    ) -> Self {
        Self {
            root,
            min_rescan_interval,
            max_depth,
            max_dirs,
            state: RwLock::new(IndexState::default()),
            scan: Mutex::new(()),
        }
    }

    /// The indexed root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every indexed cgroup (id, path), as of the last walk by anyone.
    pub fn snapshot(&self) -> Vec<(u64, String)> {
        self.read_state()
            .by_id
            .iter()
            .map(|(id, p)| (*id, p.clone()))
            .collect()
    }

    /// Number of cgroups in the index.
    pub fn len(&self) -> usize {
        self.read_state().by_id.len()
    }

    /// Whether the index is empty (never walked, or the walk found nothing).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        // A panic while holding the lock cannot leave the map half-updated (we only
        // swap whole values), so a poisoned lock is still safe to use.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, IndexState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Walk the tree now (not rate limited) and return what changed since the last
    /// walk. On error the previous index is kept.
    pub fn rescan(&self) -> Result<ScanDelta, CgroupError> {
        let _walking = self.scan.lock().unwrap_or_else(|e| e.into_inner());
        self.rescan_locked()
    }

    fn rescan_locked(&self) -> Result<ScanDelta, CgroupError> {
        let started = Instant::now();
        // Count the attempt even if it fails, so a broken tree is not walked per miss.
        self.write_state().last_scan = Some(started);
        let (fresh, skipped_too_deep) = self.walk()?;

        let mut state = self.write_state();
        let mut delta = ScanDelta {
            skipped_too_deep,
            ..ScanDelta::default()
        };
        for (id, path) in &fresh {
            if state.by_id.get(id) != Some(path) {
                delta.appeared.push((*id, path.clone()));
            }
        }
        for (id, path) in &state.by_id {
            if fresh.get(id) != Some(path) {
                delta.gone.push((*id, path.clone()));
            }
        }
        delta.appeared.sort();
        delta.gone.sort();
        state.by_id = fresh;
        state.generation += 1;
        Ok(delta)
    }

    /// Walk the tree: directories only, symlinks not followed, bounded in depth and
    /// size. Returns the id → path map and the number of directories too deep to index.
    fn walk(&self) -> Result<(HashMap<u64, String>, usize), CgroupError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CgroupError::Io { path, source }
        };
        let meta = std::fs::symlink_metadata(&self.root).map_err(io(&self.root))?;
        let mut map = HashMap::new();
        map.insert(meta.ino(), "/".to_owned());
        let mut skipped = 0;
        // (absolute dir, relative path, depth)
        let mut stack = vec![(self.root.clone(), String::new(), 0usize)];
        while let Some((dir, rel, depth)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                // Cgroups come and go while we walk; a vanished one is just gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && depth > 0 => continue,
                Err(e) => return Err(io(&dir)(e)),
            };
            for entry in entries {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&dir)(e)),
                };
                // file_type() and metadata() do not follow symlinks.
                let is_dir = match entry.file_type() {
                    Ok(t) => t.is_dir(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&entry.path())(e)),
                };
                if !is_dir {
                    continue;
                }
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    // The kubelet and runtimes only make UTF-8 names; an id we cannot
                    // name resolves as not found, which fails closed.
                    tracing::debug!(path = ?entry.path(), "skipping non-UTF-8 cgroup name");
                    continue;
                };
                if depth + 1 > self.max_depth {
                    // Deeper than any kubelet-made cgroup: a container's own delegated
                    // sub-tree. Skipping (rather than failing the whole walk) keeps one
                    // pod from breaking resolution for every other pod.
                    skipped += 1;
                    continue;
                }
                let ino = match entry.metadata() {
                    Ok(m) => m.ino(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&entry.path())(e)),
                };
                // The root counts as one directory.
                if map.len() >= self.max_dirs {
                    return Err(CgroupError::TooLarge {
                        root: self.root.clone(),
                        limit: self.max_dirs,
                    });
                }
                let child_rel = format!("{rel}/{name}");
                map.insert(ino, child_rel.clone());
                stack.push((entry.path(), child_rel, depth + 1));
            }
        }
        if skipped > 0 {
            tracing::debug!(root = ?self.root, skipped, max_depth = self.max_depth,
                "cgroup directories below the depth bound were not indexed");
        }
        Ok((map, skipped))
    }

    /// Cached path for `cgroup_id`, if it still names a directory with that inode:
    /// a map lookup and one `stat`, never a walk, so async code may call it inline
    /// (the hot path of every request) and leave [`resolve`](Self::resolve) to a
    /// blocking thread for misses.
    pub fn lookup_fresh(&self, cgroup_id: u64) -> Option<String> {
        let path = self.read_state().by_id.get(&cgroup_id).cloned()?;
        let full = self.root.join(path.trim_start_matches('/'));
        // Cgroup ids are not reused, but a cached path can be stale: the directory
        // may have been removed and another made under the same name.
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() && m.ino() == cgroup_id => Some(path),
            _ => None,
        }
    }

    /// Cgroup path (relative to the root, starting with `/`) of `cgroup_id`.
    ///
    /// On a miss (or a stale entry) the tree is walked again, unless the last walk
    /// started less than `min_rescan_interval` ago: then the miss is reported at once.
    pub fn resolve(&self, cgroup_id: u64) -> Result<String, CgroupError> {
        let generation = self.read_state().generation;
        if let Some(path) = self.lookup_fresh(cgroup_id) {
            return Ok(path);
        }
        let not_found = CgroupError::NotFound { cgroup_id };
        {
            let _walking = self.scan.lock().unwrap_or_else(|e| e.into_inner());
            let (current, last_scan) = {
                let state = self.read_state();
                (state.generation, state.last_scan)
            };
            // Someone else walked while we waited for the lock: use their result.
            if current == generation {
                if last_scan.is_some_and(|t| t.elapsed() < self.min_rescan_interval) {
                    return Err(not_found);
                }
                self.rescan_locked()?;
            }
        }
        self.lookup_fresh(cgroup_id).ok_or(not_found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ino(p: &Path) -> u64 {
        std::fs::symlink_metadata(p).unwrap().ino()
    }

    #[test]
    fn resolve_and_delta() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("kubepods/burstable/poda")).unwrap();
        std::fs::create_dir_all(root.join("system.slice")).unwrap();
        std::fs::write(root.join("kubepods/cgroup.procs"), "").unwrap();
        let index = CgroupIndex::new(root.to_path_buf(), Duration::ZERO);
        assert!(index.is_empty());

        let first = index.rescan().unwrap();
        assert_eq!(first.appeared.len(), 5, "{first:?}"); // root + 4 dirs, no files
        assert!(first.gone.is_empty());
        assert_eq!(index.len(), 5);
        assert_eq!(index.resolve(ino(root)).unwrap(), "/");
        assert_eq!(
            index
                .resolve(ino(&root.join("kubepods/burstable/poda")))
                .unwrap(),
            "/kubepods/burstable/poda"
        );

        // A new directory resolves on first use (the miss triggers a walk).
        std::fs::create_dir(root.join("kubepods/burstable/podb")).unwrap();
        let b = ino(&root.join("kubepods/burstable/podb"));
        assert_eq!(index.resolve(b).unwrap(), "/kubepods/burstable/podb");

        // Delta after removing: gone, and no longer resolvable.
        let a = ino(&root.join("kubepods/burstable/poda"));
        std::fs::remove_dir(root.join("kubepods/burstable/poda")).unwrap();
        let delta = index.rescan().unwrap();
        assert!(delta.appeared.is_empty(), "{delta:?}");
        assert_eq!(delta.gone, vec![(a, "/kubepods/burstable/poda".to_owned())]);
        assert!(
            matches!(index.resolve(a), Err(CgroupError::NotFound { cgroup_id }) if cgroup_id == a)
        );

        // Delta after adding. (A plain filesystem may hand the freed inode number to
        // the new directory, unlike cgroupfs; the delta reports that as a new path.)
        std::fs::create_dir(root.join("system.slice/c.service")).unwrap();
        let c = ino(&root.join("system.slice/c.service"));
        let delta = index.rescan().unwrap();
        assert_eq!(
            delta.appeared,
            vec![(c, "/system.slice/c.service".to_owned())]
        );
        assert!(delta.gone.is_empty(), "{delta:?}");
        let nothing = index.rescan().unwrap();
        assert_eq!(nothing, ScanDelta::default());
    }

    #[test]
    fn vanished_directory_is_not_found_even_if_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pod");
        std::fs::create_dir(&dir).unwrap();
        let id = ino(&dir);
        // Rate limit high: the stale entry must not be served, and no walk happens.
        let index = CgroupIndex::new(tmp.path().to_path_buf(), Duration::from_secs(3600));
        index.rescan().unwrap();
        assert_eq!(index.resolve(id).unwrap(), "/pod");
        std::fs::remove_dir(&dir).unwrap();
        assert!(matches!(
            index.resolve(id),
            Err(CgroupError::NotFound { .. })
        ));
    }

    #[test]
    fn misses_are_rate_limited() {
        let tmp = tempfile::tempdir().unwrap();
        let index = CgroupIndex::new(tmp.path().to_path_buf(), Duration::from_secs(3600));
        // First miss walks (never walked before).
        assert!(matches!(
            index.resolve(1),
            Err(CgroupError::NotFound { cgroup_id: 1 })
        ));
        assert_eq!(index.len(), 1);
        // A directory made now is not found: the next walk is an hour away.
        std::fs::create_dir(tmp.path().join("new")).unwrap();
        let id = ino(&tmp.path().join("new"));
        assert!(matches!(
            index.resolve(id),
            Err(CgroupError::NotFound { .. })
        ));
        assert_eq!(index.len(), 1, "no walk inside the interval");
        // An explicit rescan is not rate limited.
        index.rescan().unwrap();
        assert_eq!(index.resolve(id).unwrap(), "/new");

        // With a short interval, the miss walks again once the interval has passed.
        let index = CgroupIndex::new(tmp.path().to_path_buf(), Duration::from_millis(50));
        index.rescan().unwrap();
        std::fs::create_dir(tmp.path().join("later")).unwrap();
        let later = ino(&tmp.path().join("later"));
        assert!(index.resolve(later).is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(index.resolve(later).unwrap(), "/later");
    }

    #[test]
    fn walk_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..10 {
            std::fs::create_dir(tmp.path().join(format!("d{i}"))).unwrap();
        }
        let index =
            CgroupIndex::with_limits(tmp.path().to_path_buf(), Duration::ZERO, MAX_DEPTH, 5);
        match index.rescan() {
            Err(CgroupError::TooLarge { limit, root }) => {
                assert_eq!(limit, 5);
                assert_eq!(root, tmp.path());
            }
            other => panic!("{other:?}"),
        }
        assert!(
            index.is_empty(),
            "a failed walk keeps the previous (empty) index"
        );
        let index =
            CgroupIndex::with_limits(tmp.path().to_path_buf(), Duration::ZERO, MAX_DEPTH, 11);
        assert_eq!(index.rescan().unwrap().appeared.len(), 11);

        // Depth: directories below the bound are not indexed (and not followed).
        let deep = tmp.path().join("a/b/c/d");
        std::fs::create_dir_all(&deep).unwrap();
        let index = CgroupIndex::with_limits(tmp.path().to_path_buf(), Duration::ZERO, 2, MAX_DIRS);
        let delta = index.rescan().unwrap();
        assert_eq!(delta.skipped_too_deep, 1); // c (d is below c, never read)
        assert_eq!(index.resolve(ino(&tmp.path().join("a/b"))).unwrap(), "/a/b");
        assert!(index.resolve(ino(&deep)).is_err());
    }

    #[test]
    fn symlinks_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("secret")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("link")).unwrap();
        let index = CgroupIndex::new(tmp.path().to_path_buf(), Duration::ZERO);
        let delta = index.rescan().unwrap();
        assert_eq!(delta.appeared.len(), 1, "only the root: {delta:?}");
        assert!(index.resolve(ino(outside.path())).is_err());
    }

    #[test]
    fn missing_root_is_an_io_error_naming_it() {
        let index = CgroupIndex::new(PathBuf::from("/nonexistent/cgroup/root"), Duration::ZERO);
        let err = index.rescan().unwrap_err();
        assert!(
            matches!(&err, CgroupError::Io { path, .. } if path == Path::new("/nonexistent/cgroup/root"))
        );
        assert!(err.to_string().contains("/nonexistent/cgroup/root"));
    }
}
