//! Cgroup v2 ids → cgroup paths → (pod UID, container id).
//!
//! The eBPF programs report the caller's cgroup v2 id. On cgroup v2 that id is the
//! inode number of the cgroup's directory in the cgroup2 filesystem, so the agent
//! keeps an index of the host cgroup2 tree ([`CgroupIndex`]) and parses the path it
//! finds ([`parse_cgroup_path`]).
//!
//! Path parsing follows SPIRE's rules (`pkg/common/containerinfo/extract.go`): walk
//! the segments, find `pod<UID>` (with `-` or `_` separators, cgroupfs or systemd
//! form), take the container id from the segment right below it, and fail closed on
//! anything ambiguous (two different pod UIDs, a pod segment under `kubepods` that
//! does not parse). The paths come from the kernel's own tree, never from anything
//! the client sends.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// Where the kernel lists this process's mounts.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Default bound on the depth of the cgroup tree walk (root is depth 0).
///
/// Real pod cgroups sit at depth 5 or so (`kubelet.slice/kubelet-kubepods.slice/
/// …-besteffort.slice/…-pod<uid>.slice/cri-containerd-<id>.scope`), nested kind adds
/// three more. Anything deeper is a container's own delegated sub-tree.
pub const MAX_DEPTH: usize = 16;

/// Default bound on the number of directories one walk may visit.
pub const MAX_DIRS: usize = 200_000;

/// Errors of cgroup path parsing and cgroup id resolution.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Two segments of one path name different pods: refuse rather than guess.
    #[error("cgroup path {path:?} names two pods: {first} and {second}")]
    ConflictingPodUid {
        /// The cgroup path, as given.
        path: String,
        /// Pod UID of the outer pod segment.
        first: String,
        /// Pod UID of the inner pod segment.
        second: String,
    },
    /// A segment under `kubepods` looks like (or should be) a pod segment but does
    /// not carry a valid pod UID.
    #[error("cgroup path {path:?}: segment {segment:?} is not a valid pod segment")]
    MalformedPodSegment {
        /// The cgroup path, as given.
        path: String,
        /// The offending segment.
        segment: String,
    },
    /// The segment right below the pod segment is neither a container nor a known
    /// runtime cgroup, so the process cannot be placed.
    #[error("cgroup path {path:?}: segment {segment:?} below the pod is not a container cgroup")]
    MalformedContainerSegment {
        /// The cgroup path, as given.
        path: String,
        /// The offending segment.
        segment: String,
    },
    /// No cgroup with this id exists in the indexed tree (or the index was rescanned
    /// too recently to look again).
    #[error("no cgroup with id {cgroup_id} under the indexed cgroup2 root")]
    NotFound {
        /// The cgroup v2 id (directory inode) asked for.
        cgroup_id: u64,
    },
    /// A filesystem call failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The cgroup tree has more directories than the walk is allowed to visit.
    #[error("cgroup tree under {root} has more than {limit} directories; refusing to index it")]
    TooLarge {
        /// The indexed root.
        root: PathBuf,
        /// The directory limit that was exceeded.
        limit: usize,
    },
    /// `/proc/self/mountinfo` lists no cgroup2 filesystem (cgroup v1 only host).
    #[error("no cgroup2 filesystem in {MOUNTINFO}; the agent needs cgroup v2")]
    NoCgroup2Mount,
}

// === path parsing ===

/// Where a process sits, as far as its cgroup path tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// Pod UID, canonical form: lowercase, with dashes.
    pub pod_uid: String,
    /// Container id (64 lowercase hex digits); `None` for the pod-level cgroup itself
    /// or a runtime helper (e.g. CRI-O's conmon) that lives in the pod's cgroup.
    pub container_id: Option<String>,
}

/// Canonical pod UID (lowercase, `-` separators) from the forms found in cgroup
/// paths and the API (`_` is systemd's escape for `-`), or `None` if it is not a
/// UUID (8-4-4-4-12 hex digits).
pub fn canonical_pod_uid(raw: &str) -> Option<String> {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    let mut parts = raw.split(['-', '_']);
    for len in GROUPS {
        let part = parts.next()?;
        if part.len() != len || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
    }
    if parts.next().is_some() {
        return None;
    }
    Some(raw.to_ascii_lowercase().replace('_', "-"))
}

/// Prefixes container runtimes put before the container id in systemd scope names.
const CONTAINER_PREFIXES: &[&str] = &[
    "cri-containerd-",
    "containerd-",
    "crio-",
    "docker-",
    "libpod-",
];

/// CRI-O's monitor process (`conmon_cgroup = "pod"`) lives in `crio-conmon-<id>.scope`
/// beside the container: it belongs to the pod, but is not the container.
const CONMON_PREFIX: &str = "crio-conmon-";

/// What one path segment is, for pod attribution.
#[derive(Debug, PartialEq, Eq)]
enum Segment {
    /// `kubepods`, `kubepods.slice`, `kubelet-kubepods.slice`.
    KubepodsRoot,
    /// `burstable`, `besteffort`, `kubepods-burstable.slice`, ….
    Qos,
    /// A pod-level cgroup, with the canonical UID.
    Pod(String),
    /// Looks like a pod-level cgroup but the UID does not parse.
    MalformedPod,
    /// Anything else.
    Other,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The kubepods hierarchy name without the systemd `.slice` suffix, e.g.
/// `kubepods`, `kubelet-kubepods`, `kubepods-besteffort`.
fn is_kubepods_name(name: &str) -> bool {
    name == "kubepods" || name.ends_with("-kubepods")
}

fn is_qos(name: &str) -> bool {
    name == "burstable" || name == "besteffort"
}

fn classify(segment: &str, in_kubepods: bool) -> Segment {
    if let Some(base) = segment.strip_suffix(".slice") {
        // systemd driver: `<kubepods prefix>[-<qos>][-pod<uid_>].slice`.
        if is_kubepods_name(base) {
            return Segment::KubepodsRoot;
        }
        // A UID has no `-pod` in it ('o' is not a hex digit), so the last `-pod` is
        // the separator.
        if let Some(at) = base.rfind("-pod") {
            let (prefix, uid) = (&base[..at], &base[at + "-pod".len()..]);
            if prefix.contains("kubepods") {
                return match canonical_pod_uid(uid) {
                    Some(uid) => Segment::Pod(uid),
                    None => Segment::MalformedPod,
                };
            }
        }
        if let Some((prefix, qos)) = base.rsplit_once('-') {
            if is_kubepods_name(prefix) && is_qos(qos) {
                return Segment::Qos;
            }
        }
        return Segment::Other;
    }
    // cgroupfs driver: `kubepods/<qos>/pod<uid>`.
    if segment == "kubepods" {
        return Segment::KubepodsRoot;
    }
    if is_qos(segment) {
        return Segment::Qos;
    }
    if let Some(uid) = segment.strip_prefix("pod") {
        if let Some(uid) = canonical_pod_uid(uid) {
            return Segment::Pod(uid);
        }
        // Outside kubepods, `pod…` is just a name (`podman.service`); inside, it can
        // only be a pod the kubelet made, so a bad UID there is an error.
        if in_kubepods {
            return Segment::MalformedPod;
        }
    }
    Segment::Other
}

/// What the segment right below a pod segment says about the container.
enum ContainerSegment {
    Container(String),
    RuntimeHelper,
    Unknown,
}

fn parse_container_segment(segment: &str) -> ContainerSegment {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    if let Some(id) = name.strip_prefix(CONMON_PREFIX) {
        if is_hex64(id) {
            return ContainerSegment::RuntimeHelper;
        }
    }
    let id = CONTAINER_PREFIXES
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    if is_hex64(id) {
        ContainerSegment::Container(id.to_ascii_lowercase())
    } else {
        ContainerSegment::Unknown
    }
}

/// Split a cgroup path into segments, expanding containerd's `cgroupsPath` notation
/// `<slice>:<prefix>:<id>` into the two levels runc makes of it (`<slice>` and
/// `<prefix>-<id>`).
fn segments(path: &str) -> Vec<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    let mut out = Vec::new();
    for seg in path.split('/').filter(|s| !s.is_empty() && *s != ".") {
        let parts: Vec<&str> = seg.split(':').collect();
        match parts.as_slice() {
            [slice, prefix, id] => {
                out.push(Cow::Borrowed(*slice));
                out.push(Cow::Owned(format!("{prefix}-{id}")));
            }
            _ => out.push(Cow::Borrowed(seg)),
        }
    }
    out
}

/// Pod UID and container id from a cgroup path.
///
/// `Ok(None)`: not a pod cgroup (`/`, `/system.slice/…`, `/user.slice/…`, the
/// `kubepods` and QoS levels themselves). `Err`: fail closed; the path is in pod
/// territory but cannot be attributed to exactly one pod.
///
/// Handles cgroupfs and systemd drivers, containerd/CRI-O/docker scope names,
/// containerd's `slice:prefix:id` notation, nesting (kind: `/docker/<id>/kubepods/…`,
/// where the outer id is the node container, not ours) and cgroup-namespace views
/// (`/../../burstable/pod<uid>/<id>`).
///
/// ```
/// use pod_identity_agent::cgroup::parse_cgroup_path;
/// let p = parse_cgroup_path(
///     "/kubepods/besteffort/pod2c48913c-b29f-11e7-9350-020968147796",
/// ).unwrap().unwrap();
/// assert_eq!(p.pod_uid, "2c48913c-b29f-11e7-9350-020968147796");
/// assert_eq!(p.container_id, None);
/// ```
/// [`parse_cgroup_path`] anchored at the kubelet's hierarchy: the path (relative to
/// the host cgroup2 root, after an optional configured `prefix` such as
/// `/docker/<id>` on a nested kind node) must *start* with a kubepods root
/// (`/kubepods`, `/kubepods.slice`, `/kubelet.slice/kubelet-kubepods.slice`).
///
/// This is what the agent uses: a process that can make cgroups elsewhere (a
/// systemd user session, a service with `Delegate=yes`, a plain docker container)
/// could otherwise create `…/kubepods/besteffort/pod<victim uid>/…` under its own
/// cgroup and be taken for the victim pod. Anything not anchored is "not a pod".
pub fn parse_pod_cgroup(path: &str, prefix: &str) -> Result<Option<PodCgroup>, CgroupError> {
    let prefix = prefix.trim_end_matches('/');
    let rest = if prefix.is_empty() {
        path
    } else {
        match path.strip_prefix(prefix) {
            Some(r) if r.is_empty() || r.starts_with('/') => r,
            _ => return Ok(None),
        }
    };
    let segs = segments(rest);
    let anchored = match segs.first().map(|s| classify(s, false)) {
        Some(Segment::KubepodsRoot) => true,
        _ => {
            segs.first().is_some_and(|s| s == "kubelet.slice")
                && matches!(
                    segs.get(1).map(|s| classify(s, false)),
                    Some(Segment::KubepodsRoot)
                )
        }
    };
    if !anchored {
        return Ok(None);
    }
    parse_cgroup_path(rest)
}

pub fn parse_cgroup_path(path: &str) -> Result<Option<PodCgroup>, CgroupError> {
    let segs = segments(path);
    // A cgroup-namespace view (`/../..`) has lost its kubepods prefix; the only
    // processes that see their cgroup that way are containers, so be strict.
    let mut in_kubepods = segs.first().is_some_and(|s| s == "..");
    // Index just past the last kubepods/QoS level seen, to check what sits below it.
    let mut below_kubepods: Option<usize> = None;
    let mut pod: Option<(usize, String)> = None;

    for (i, seg) in segs.iter().enumerate() {
        match classify(seg, in_kubepods) {
            Segment::KubepodsRoot | Segment::Qos => {
                in_kubepods = true;
                below_kubepods = Some(i + 1);
            }
            Segment::Pod(uid) => {
                in_kubepods = true;
                if let Some((_, first)) = &pod {
                    if *first != uid {
                        return Err(CgroupError::ConflictingPodUid {
                            path: path.to_owned(),
                            first: first.clone(),
                            second: uid,
                        });
                    }
                }
                pod = Some((i, uid));
            }
            Segment::MalformedPod => {
                return Err(CgroupError::MalformedPodSegment {
                    path: path.to_owned(),
                    segment: seg.to_string(),
                });
            }
            Segment::Other => {}
        }
    }

    let Some((pod_at, pod_uid)) = pod else {
        // Below `kubepods[/qos]` the kubelet makes nothing but pod cgroups; anything
        // else there is not something we can attribute, and must not read as "not a
        // pod" (a caller might treat that as the node).
        if let Some(seg) = below_kubepods.and_then(|i| segs.get(i)) {
            return Err(CgroupError::MalformedPodSegment {
                path: path.to_owned(),
                segment: seg.to_string(),
            });
        }
        return Ok(None);
    };
    let container_id = match segs.get(pod_at + 1) {
        None => None,
        Some(seg) => match parse_container_segment(seg) {
            ContainerSegment::Container(id) => Some(id),
            ContainerSegment::RuntimeHelper => None,
            ContainerSegment::Unknown => {
                return Err(CgroupError::MalformedContainerSegment {
                    path: path.to_owned(),
                    segment: seg.to_string(),
                })
            }
        },
    };
    Ok(Some(PodCgroup {
        pod_uid,
        container_id,
    }))
}

// === cgroup2 mount ===

/// Undo the octal escapes (`\040` for space, …) the kernel uses in mountinfo.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(&[b'\\', a, b, c]) = bytes.get(i..i + 4) {
            if [a, b, c].iter().all(|d| (b'0'..=b'7').contains(d)) {
                // Three octal digits fit in a u8 for the escapes the kernel emits
                // (at most \377); wrapping keeps a malformed one harmless.
                out.push(
                    ((a - b'0') << 6)
                        .wrapping_add((b - b'0') << 3)
                        .wrapping_add(c - b'0'),
                );
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount point of the cgroup2 filesystem, from the text of `/proc/self/mountinfo`.
///
/// If several cgroup2 filesystems are mounted, prefer `/sys/fs/cgroup` (pure v2
/// hosts: EKS AL2023, Bottlerocket), then `/sys/fs/cgroup/unified` (hybrid hosts),
/// then the first one listed.
pub fn cgroup2_mount_from_mountinfo(mountinfo: &str) -> Option<PathBuf> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional…] - fstype source super
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = fields.iter().skip(6).position(|f| *f == "-") else {
            continue;
        };
        if fields.get(6 + sep + 1) == Some(&"cgroup2") {
            mounts.push(PathBuf::from(unescape_mountinfo(fields[4])));
        }
    }
    let rank = |p: &PathBuf| match p.to_str() {
        Some("/sys/fs/cgroup") => 0,
        Some("/sys/fs/cgroup/unified") => 1,
        _ => 2,
    };
    // min_by_key keeps the first of equal ranks.
    mounts.into_iter().min_by_key(rank)
}

/// Mount point of the host's cgroup2 filesystem, from `/proc/self/mountinfo`.
///
/// The agent runs in the host mount namespace (hostPID / host /sys), so this is the
/// tree in which the cgroup ids the kernel reports are directory inodes.
pub fn host_cgroup2_root() -> Result<PathBuf, CgroupError> {
    let text = std::fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::Io {
        path: PathBuf::from(MOUNTINFO),
        source,
    })?;
    cgroup2_mount_from_mountinfo(&text).ok_or(CgroupError::NoCgroup2Mount)
}

/// The cgroup v2 path of this process, from `/proc/self/cgroup` text (the `0::`
/// line), relative to the root of its cgroup namespace.
pub fn own_cgroup_path(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The directory of this process's cgroup, from `/proc/self/mountinfo` and
/// `/proc/self/cgroup` text: the cgroup2 mount whose root (mountinfo field 4) is the
/// longest prefix of our cgroup path, joined with the rest of the path. Works inside
/// a container with a cgroup namespace (`0::/`, the container's own mount), without
/// one (runc bind-mounts the container's cgroup, root = its path), and on hosts.
pub fn own_cgroup_dir(mountinfo: &str, proc_self_cgroup: &str) -> Option<PathBuf> {
    let path = own_cgroup_path(proc_self_cgroup)?;
    let mut best: Option<(usize, PathBuf)> = None;
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let f: Vec<&str> = pre.split_whitespace().collect();
        let (Some(root), Some(mount)) = (f.get(3), f.get(4)) else {
            continue;
        };
        let rest = if *root == "/" {
            Some(path)
        } else {
            path.strip_prefix(root)
                .filter(|r| r.is_empty() || r.starts_with('/'))
        };
        if let Some(rest) = rest {
            let len = if *root == "/" { 1 } else { root.len() };
            if best.as_ref().is_none_or(|(l, _)| len > *l) {
                best = Some((len, Path::new(mount).join(rest.trim_start_matches('/'))));
            }
        }
    }
    best.map(|(_, p)| p)
}

/// This process's cgroup id (the inode of its cgroup directory), see [`own_cgroup_dir`].
pub fn own_cgroup_id() -> Result<u64, CgroupError> {
    use std::os::unix::fs::MetadataExt;
    const SELF: &str = "/proc/self/cgroup";
    let read = |p: &str| {
        std::fs::read_to_string(p).map_err(|source| CgroupError::Io {
            path: PathBuf::from(p),
            source,
        })
    };
    let (mi, own) = (read(MOUNTINFO)?, read(SELF)?);
    let dir = own_cgroup_dir(&mi, &own).ok_or(CgroupError::NoCgroup2Mount)?;
    std::fs::metadata(&dir)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Io { path: dir, source })
}

// === id index ===

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
    /// An empty index of the tree under `root` (e.g. [`host_cgroup2_root`]); the
    /// first [`resolve`](Self::resolve) or [`rescan`](Self::rescan) walks it.
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

    /// Cached path for `cgroup_id`, if it still names a directory with that inode.
    fn lookup_fresh(&self, cgroup_id: u64) -> Option<String> {
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

    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const UID_: &str = "2c48913c_b29f_11e7_9350_020968147796";
    const UID2: &str = "daa5c7ee-3484-4533-af39-3591564fd03e";
    const CID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
    const OUTER: &str = "8d461fa5765781bcf5f7eb192f101bc3103d4b932e26236f43feecfa20664f96";

    #[test]
    fn parses_real_shapes() {
        let cases: Vec<(String, &str, Option<&str>)> = vec![
            // cgroupfs driver
            (format!("/kubepods/burstable/pod{UID}/{CID}"), UID, Some(CID)),
            (format!("/kubepods/besteffort/pod{UID}/{CID}"), UID, Some(CID)),
            // Guaranteed QoS has no QoS level
            (format!("/kubepods/pod{UID}/{CID}"), UID, Some(CID)),
            // pod-level cgroup itself
            (format!("/kubepods/burstable/pod{UID}"), UID, None),
            (format!("/kubepods/burstable/pod{UID}/"), UID, None),
            // systemd + containerd
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"),
                UID,
                Some(CID),
            ),
            // systemd + CRI-O
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope"),
                UID,
                Some(CID),
            ),
            // CRI-O's conmon sits in the pod, but is not the container
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{CID}.scope"),
                UID,
                None,
            ),
            // systemd + docker
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{CID}.scope"),
                UID,
                Some(CID),
            ),
            // Guaranteed QoS, systemd
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"),
                UID,
                Some(CID),
            ),
            (format!("/kubepods.slice/kubepods-pod{UID_}.slice"), UID, None),
            // kubelet-prefixed
            (
                format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"),
                UID,
                Some(CID),
            ),
            // nested (kind): the outer id is the node container
            (
                format!("/docker/{OUTER}/kubepods/besteffort/pod{UID}/{CID}"),
                UID,
                Some(CID),
            ),
            (
                format!("/system.slice/docker-{OUTER}.scope/kubepods/besteffort/pod{UID}/{CID}"),
                UID,
                Some(CID),
            ),
            // kind with the systemd driver inside the node container
            (
                format!("/system.slice/docker-{OUTER}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"),
                UID,
                Some(CID),
            ),
            // containerd cgroupsPath notation
            (
                format!("/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{CID}"),
                UID,
                Some(CID),
            ),
            // cgroup-namespace views
            (format!("/../../burstable/pod{UID}/{CID}"), UID, Some(CID)),
            (format!("/../../pod{UID}/{CID}"), UID, Some(CID)),
            // UID with dashes in systemd form, uppercase hex
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/{}", UID.to_uppercase(), CID.to_uppercase()),
                UID,
                Some(CID),
            ),
            // a container's own sub-cgroups (delegated): still that container
            (format!("/kubepods/burstable/pod{UID}/{CID}/init.scope"), UID, Some(CID)),
            // podman-style libpod scope
            (format!("/kubepods/burstable/pod{UID}/libpod-{CID}.scope"), UID, Some(CID)),
        ];
        assert!(cases.len() >= 15);
        for (path, uid, cid) in cases {
            let got = parse_cgroup_path(&path)
                .unwrap_or_else(|e| panic!("{path}: {e}"))
                .unwrap_or_else(|| panic!("{path}: not a pod"));
            assert_eq!(got.pod_uid, uid, "{path}");
            assert_eq!(got.container_id.as_deref(), cid, "{path}");
        }
    }

    #[test]
    fn non_pod_paths_are_none() {
        for path in [
            "/",
            "",
            "/system.slice/containerd.service",
            "/system.slice/podman.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/init.scope",
            "/kubepods",
            "/kubepods/burstable",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-besteffort.slice",
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice",
            &format!("/docker/{OUTER}"),
            &format!("/system.slice/docker-{OUTER}.scope"),
            &format!("/docker/{OUTER}/system.slice/containerd.service"),
            &format!("/user.slice/pod{UID}x"),
        ] {
            assert_eq!(parse_cgroup_path(path).unwrap(), None, "{path:?}");
        }
    }

    #[test]
    fn two_pod_uids_fail_closed() {
        let path =
            format!("/kubepods/burstable/pod{UID}/{CID}/kubepods/besteffort/pod{UID2}/{CID}");
        match parse_cgroup_path(&path) {
            Err(CgroupError::ConflictingPodUid { first, second, .. }) => {
                assert_eq!((first.as_str(), second.as_str()), (UID, UID2));
            }
            other => panic!("{other:?}"),
        }
        // The same pod twice (dash and underscore form) is not a conflict.
        let same = format!("/kubepods.slice/kubepods-pod{UID_}.slice/pod{UID}/{CID}");
        assert_eq!(parse_cgroup_path(&same).unwrap().unwrap().pod_uid, UID);
    }

    #[test]
    fn malformed_pod_segments_fail_closed() {
        for (path, bad) in [
            ("/kubepods/besteffort/podzzzz".to_owned(), "podzzzz"),
            (format!("/kubepods/besteffort/podzzzz/{CID}"), "podzzzz"),
            (
                "/kubepods/burstable/pod2c48913c-b29f-11e7-9350".to_owned(),
                "pod2c48913c-b29f-11e7-9350",
            ),
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podnothex.slice"
                    .to_owned(),
                "kubepods-burstable-podnothex.slice",
            ),
            ("/kubepods/burstable/something".to_owned(), "something"),
            ("/kubepods.slice/foo.slice".to_owned(), "foo.slice"),
            ("/../../podzzzz/x".to_owned(), "podzzzz"),
        ] {
            match parse_cgroup_path(&path) {
                Err(CgroupError::MalformedPodSegment { segment, .. }) => {
                    assert_eq!(segment, bad, "{path}")
                }
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_segment_below_pod_fails_closed() {
        let path = format!("/kubepods/burstable/pod{UID}/not-a-container");
        assert!(matches!(
            parse_cgroup_path(&path),
            Err(CgroupError::MalformedContainerSegment { segment, .. }) if segment == "not-a-container"
        ));
        // 63 hex digits is not a container id either
        let path = format!("/kubepods/burstable/pod{UID}/{}", &CID[1..]);
        assert!(parse_cgroup_path(&path).is_err());
    }

    #[test]
    fn canonical_uid() {
        assert_eq!(canonical_pod_uid(UID_).as_deref(), Some(UID));
        assert_eq!(canonical_pod_uid(&UID.to_uppercase()).as_deref(), Some(UID));
        assert_eq!(canonical_pod_uid("2c48913c-b29f-11e7-9350"), None);
        assert_eq!(canonical_pod_uid(&format!("{UID}-0")), None);
        assert_eq!(canonical_pod_uid("2c48913cb29f11e79350020968147796"), None);
        assert_eq!(canonical_pod_uid(""), None);
    }

    const PURE_V2: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 28 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
26 22 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
27 22 0:25 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:5 - bpf bpf rw,mode=700
";

    const HYBRID: &str = "\
23 1 0:22 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mountinfo_pure_v2_and_hybrid() {
        assert_eq!(
            cgroup2_mount_from_mountinfo(PURE_V2),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount_from_mountinfo(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        // v1 only
        let v1: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(cgroup2_mount_from_mountinfo(&v1), None);
        assert_eq!(cgroup2_mount_from_mountinfo(""), None);
    }

    #[test]
    fn mountinfo_preference_and_escapes() {
        // A test's own mount listed first, the host mount later: the host mount wins.
        let text = "\
90 22 0:50 / /tmp/my\\040cgroup rw,relatime shared:40 - cgroup2 none rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
26 22 0:24 / /sys/fs/cgroup rw,nosuid shared:4 master:1 - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount_from_mountinfo(text),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let only_test = text.lines().next().unwrap();
        assert_eq!(
            cgroup2_mount_from_mountinfo(only_test),
            Some(PathBuf::from("/tmp/my cgroup"))
        );
        // The fstype is the field after the separator, not the source or options.
        let decoy = "50 22 0:60 / /mnt/x rw - tmpfs cgroup2 rw\n";
        assert_eq!(cgroup2_mount_from_mountinfo(decoy), None);
    }

    #[test]
    fn host_root_is_readable() {
        // Every machine the tests run on has cgroup2 (pure v2 or hybrid).
        let root = host_cgroup2_root().unwrap();
        assert!(root.is_dir(), "{root:?}");
    }

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

    #[test]
    fn anchored_parsing_ignores_kubepods_lookalikes_outside_the_kubelet_tree() {
        let uid = "2c48913c-b29f-11e7-9350-020968147796";
        let cid = "a".repeat(64);
        let real = format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{cid}.scope", uid.replace('-', "_"));
        assert_eq!(parse_pod_cgroup(&real, "").unwrap().unwrap().pod_uid, uid);
        let kubelet = format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{}.slice/cri-containerd-{cid}.scope", uid.replace('-', "_"));
        assert_eq!(
            parse_pod_cgroup(&kubelet, "").unwrap().unwrap().pod_uid,
            uid
        );
        // Forged under a delegated user session, a service, or another container.
        for forged in [
            format!(
                "/user.slice/user-1000.slice/user@1000.service/kubepods/besteffort/pod{uid}/{cid}"
            ),
            format!("/system.slice/docker-{cid}.scope/kubepods/besteffort/pod{uid}/{cid}"),
            format!("/system.slice/foo.service{real}"),
        ] {
            assert_eq!(parse_pod_cgroup(&forged, "").unwrap(), None, "{forged}");
        }
        // Nested (kind): only with the configured node prefix.
        let nested = format!("/docker/{cid}/kubepods/besteffort/pod{uid}/{cid}");
        assert_eq!(parse_pod_cgroup(&nested, "").unwrap(), None);
        let prefix = format!("/docker/{cid}");
        assert_eq!(
            parse_pod_cgroup(&nested, &prefix).unwrap().unwrap().pod_uid,
            uid
        );
        assert_eq!(
            parse_pod_cgroup(
                &format!("/docker/{cid}x/kubepods/besteffort/pod{uid}"),
                &prefix
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn own_cgroup_dir_in_containers_and_on_hosts() {
        let host = "25 30 0:22 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_cgroup_dir(host, "12:cpu:/x\n0::/user.slice/session-1.scope\n").unwrap(),
            PathBuf::from("/sys/fs/cgroup/unified/user.slice/session-1.scope")
        );
        // Container with a cgroup namespace: its own mount, path "/"; the host tree
        // mounted elsewhere has a root outside the namespace.
        let ns = "100 90 0:30 / /sys/fs/cgroup ro - cgroup2 cgroup rw\n\
                  101 90 0:30 /../../.. /host/sys/fs/cgroup ro - cgroup2 cgroup rw\n";
        assert_eq!(
            own_cgroup_dir(ns, "0::/\n").unwrap(),
            PathBuf::from("/sys/fs/cgroup")
        );
        // No cgroup namespace: runc bind-mounts the container's cgroup directory.
        let c = "/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab.scope";
        let bind = format!(
            "100 90 0:30 {c} /sys/fs/cgroup ro - cgroup2 cgroup rw\n\
             101 90 0:30 / /host/sys/fs/cgroup ro - cgroup2 cgroup rw\n"
        );
        assert_eq!(
            own_cgroup_dir(&bind, &format!("0::{c}\n")).unwrap(),
            PathBuf::from("/sys/fs/cgroup")
        );
        assert!(own_cgroup_dir("", "0::/\n").is_none());
    }
}
