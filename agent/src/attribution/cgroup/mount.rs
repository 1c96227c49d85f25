//! The cgroup2 mount (from `/proc/self/mountinfo`) and this process's own cgroup.

use std::path::{Path, PathBuf};

use super::CgroupError;

/// Where the kernel lists this process's mounts.
pub(super) const MOUNTINFO: &str = "/proc/self/mountinfo";

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

#[cfg(test)]
mod tests {
    use super::*;

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
