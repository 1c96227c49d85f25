//! Cgroup v2 ids → cgroup paths → (pod UID, container id).
//!
//! The eBPF programs report the caller's cgroup v2 id. On cgroup v2 that id is the
//! inode number of the cgroup's directory in the cgroup2 filesystem, so the agent
//! keeps an index of the host cgroup2 tree ([`CgroupIndex`]) and parses the path it
//! finds ([`parse_pod_cgroup`]).
//!
//! Path parsing follows SPIRE's rules (`pkg/common/containerinfo/extract.go`): walk
//! the segments, find `pod<UID>` (with `-` or `_` separators, cgroupfs or systemd
//! form), take the container id from the segment right below it, and fail closed on
//! anything ambiguous (two different pod UIDs, a pod segment under `kubepods` that
//! does not parse). The paths come from the kernel's own tree, never from anything
//! the client sends.
//!
//! Layout:
//!
//! * `pod_path`: pod UID and container id from a cgroup path, anchored at the
//!   kubelet's hierarchy (cgroupfs, systemd with containerd/CRI-O/docker,
//!   kubelet-prefixed, nested kind).
//! * `mount`: the cgroup2 mount (from mountinfo) and the agent's own cgroup id.
//! * `index`: the cgroup id → path index, rescanned on a miss, bounded and rate
//!   limited.

use std::path::PathBuf;

use crate::model::PodUid;

mod index;
mod mount;
mod pod_path;

pub use index::{CgroupIndex, ScanDelta, MAX_DEPTH, MAX_DIRS};
use mount::MOUNTINFO;
pub use mount::{
    cgroup2_mount_from_mountinfo, host_cgroup2_root, own_cgroup_dir, own_cgroup_id, own_cgroup_path,
};
pub use pod_path::{canonical_pod_uid, parse_pod_cgroup, PodCgroup};

/// Errors of cgroup path parsing and cgroup id resolution.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Two segments of one path name different pods: refuse rather than guess.
    #[error("cgroup path {path:?} names two pods: {first} and {second}")]
    ConflictingPodUid {
        /// The cgroup path, as given.
        path: String,
        /// Pod UID of the outer pod segment.
        first: PodUid,
        /// Pod UID of the inner pod segment.
        second: PodUid,
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
