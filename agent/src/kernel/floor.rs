//! The kernel floor: what the agent needs from the kernel, checked before the eBPF
//! object is loaded, so that an old or misconfigured node gets one line naming
//! what is missing instead of a verifier dump or an `EINVAL` from `bpf(2)`.
//!
//! | need | since | why |
//! |---|---|---|
//! | BPF ring buffer (`BPF_MAP_TYPE_RINGBUF`) | 5.8 | kernel audit events |
//! | `cgroup/getpeername4`/`6` | 5.8 | the client keeps seeing 169.254.170.23:80 |
//! | BPF links for cgroup programs | 5.7 | multi-attach next to Cilium; pinned links survive restarts |
//! | `bpf_get_netns_cookie` in `cgroup/connect4`/`6` | 5.7 | host-network callers |
//! | `bpf_get_socket_cookie` in `cgroup/connect` and `sock_ops` | 4.19 | carrying the identity from connect to `sock_ops` |
//! | a cgroup v2 hierarchy mounted, the attach cgroup on it | — | cgroup ids are cgroup2 inodes; programs attach to cgroup2 |
//! | bpffs mounted at the pin directory (unless `--bpffs-dir none`) | — | the redirect survives an agent restart |
//!
//! BTF is not needed: the programs read only the stable context structs (no CO-RE
//! relocations). Checked under QEMU on Debian's 6.1 and 6.12 and on the host by
//! `cargo xtask test-kernels`; the floor is 5.8.
//!
//! Everything here is pure (text in, verdict out) except [`check_host`], which
//! reads `/proc`.

use std::path::{Component, Path, PathBuf};

/// The lowest kernel the agent runs on: ring buffer and `cgroup/getpeername` (5.8).
pub const FLOOR: KernelVersion = KernelVersion {
    major: 5,
    minor: 8,
    patch: 0,
};

/// A kernel release's leading `major.minor[.patch]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.patch != 0 {
            write!(f, ".{}", self.patch)?;
        }
        Ok(())
    }
}

/// Parse `/proc/sys/kernel/osrelease` (`6.1.0-57-amd64`, `6.12.117+deb12-amd64`,
/// `5.10.226-214.880.amzn2.x86_64`, `6.8.0`): the leading numbers only.
pub fn parse_release(release: &str) -> Option<KernelVersion> {
    let release = release.trim();
    let end = release
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(release.len());
    let mut parts = release[..end].split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some(KernelVersion {
        major,
        minor,
        patch,
    })
}

/// What is missing, as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("kernel {release} is older than {FLOOR}, the agent's floor (it needs the BPF ring buffer and cgroup/getpeername hooks, both 5.8)")]
    TooOld { release: String },
    #[error("cannot tell the kernel version from {release:?} (the agent needs {FLOOR} or newer)")]
    UnknownRelease { release: String },
    #[error("no cgroup v2 (cgroup2) filesystem is mounted: the agent needs the unified cgroup hierarchy (mount cgroup2, e.g. boot with systemd.unified_cgroup_hierarchy=1)")]
    NoCgroup2,
    #[error("the attach cgroup {} is not on a cgroup v2 mount (it is on {fstype}); pass --cgroup a cgroup2 directory such as {}", path.display(), suggestion.display())]
    CgroupNotV2 {
        path: PathBuf,
        fstype: String,
        suggestion: PathBuf,
    },
    #[error("the pin directory {} is not on a bpffs mount (it is on {fstype}): mount bpffs there (mount -t bpf bpf /sys/fs/bpf) or pass --bpffs-dir none", path.display())]
    NoBpffs { path: PathBuf, fstype: String },
}

/// One line of `/proc/self/mountinfo`: mount point and filesystem type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// The mounts of a mountinfo text, in order (later mounts shadow earlier ones).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = unescape(pre.split_whitespace().nth(4)?);
            let fstype = post.split_whitespace().next()?.to_owned();
            Some(Mount {
                mount_point: PathBuf::from(mount_point),
                fstype,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount `path` lies on: the last mount whose mount point is the longest
/// component-wise prefix of `path` (`path` absolute and free of `..`).
pub fn mount_of<'m>(mounts: &'m [Mount], path: &Path) -> Option<&'m Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point)
            && best.is_none_or(|b| {
                m.mount_point.components().count() >= b.mount_point.components().count()
            })
        {
            best = Some(m);
        }
    }
    best
}

/// Check a kernel release, the mounts, the attach cgroup and the pin directory
/// (`None` with `--bpffs-dir none`). Paths as [`resolve`] gives them.
pub fn check(
    release: &str,
    mountinfo: &str,
    cgroup: &Path,
    pin_dir: Option<&Path>,
) -> Result<(), Missing> {
    let version = parse_release(release).ok_or_else(|| Missing::UnknownRelease {
        release: release.trim().to_owned(),
    })?;
    if version < FLOOR {
        return Err(Missing::TooOld {
            release: release.trim().to_owned(),
        });
    }
    let mounts = parse_mountinfo(mountinfo);
    let cgroup2 = mounts.iter().rev().find(|m| m.fstype == "cgroup2");
    let Some(cgroup2) = cgroup2 else {
        return Err(Missing::NoCgroup2);
    };
    match mount_of(&mounts, cgroup) {
        Some(m) if m.fstype == "cgroup2" => {}
        other => {
            return Err(Missing::CgroupNotV2 {
                path: cgroup.to_owned(),
                fstype: other.map_or_else(|| "no mount".to_owned(), |m| m.fstype.clone()),
                suggestion: cgroup2.mount_point.clone(),
            })
        }
    }
    if let Some(dir) = pin_dir {
        match mount_of(&mounts, dir) {
            Some(m) if m.fstype == "bpf" => {}
            other => {
                return Err(Missing::NoBpffs {
                    path: dir.to_owned(),
                    fstype: other.map_or_else(|| "no mount".to_owned(), |m| m.fstype.clone()),
                })
            }
        }
    }
    Ok(())
}

/// `path` made absolute with its deepest existing ancestor's symlinks resolved
/// (the pin directory may not exist yet: the loader creates it).
pub fn resolve(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut p = c;
            for r in rest.iter().rev() {
                p.push(r);
            }
            return p;
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return lexical(path),
        }
    }
}

fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// [`check`] against this host's `/proc`.
pub fn check_host(cgroup: &Path, pin_dir: Option<&Path>) -> Result<(), Missing> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    check(
        &release,
        &mountinfo,
        &resolve(cgroup),
        pin_dir.map(resolve).as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hybrid host (the development machines): v1 controllers, cgroup2 at
    /// /sys/fs/cgroup/unified, bpffs at /sys/fs/bpf.
    const HYBRID: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 22 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
31 22 0:29 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:15 - bpf bpf rw,mode=700
";
    /// cgroup v1 only (no unified hierarchy), no bpffs.
    const V1_ONLY: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 22 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
";
    /// What virtme-ng gives a guest: pure cgroup2, no bpffs.
    const PURE_V2_NO_BPFFS: &str = "\
17 1 0:17 / / ro,relatime - 9p /dev/root ro,trans=virtio
22 17 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
24 22 0:23 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw
40 17 0:35 / /tmp rw,relatime - tmpfs tmpfs rw
";

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    #[test]
    fn releases_parse_to_their_leading_numbers() {
        let v = |s| parse_release(s).map(|v| (v.major, v.minor, v.patch));
        assert_eq!(v("6.1.0-57-amd64\n"), Some((6, 1, 0)));
        assert_eq!(v("6.12.117+deb12-amd64"), Some((6, 12, 117)));
        assert_eq!(v("5.10.226-214.880.amzn2.x86_64"), Some((5, 10, 226)));
        assert_eq!(v("6.18"), Some((6, 18, 0)));
        assert_eq!(v("4.19.0-27-cloud-amd64"), Some((4, 19, 0)));
        assert_eq!(v("5.8.0-rc1"), Some((5, 8, 0)));
        assert_eq!(v(""), None);
        assert_eq!(v("linux"), None);
        assert_eq!(v("6"), None);
    }

    #[test]
    fn the_floor_is_5_8() {
        let ok = |r| check(r, HYBRID, p("/sys/fs/cgroup/unified"), None);
        assert_eq!(ok("5.8.0"), Ok(()));
        assert_eq!(ok("5.10.226-214.880.amzn2.x86_64"), Ok(()));
        assert_eq!(ok("6.1.0-57-amd64"), Ok(()));
        assert_eq!(ok("10.0.1"), Ok(()));
        for old in ["5.7.19", "4.19.0-27-amd64", "4.14.355-275.582.amzn2.x86_64"] {
            let e = ok(old).unwrap_err();
            assert_eq!(
                e,
                Missing::TooOld {
                    release: old.into()
                }
            );
            let line = e.to_string();
            assert!(!line.contains('\n'), "{line}");
            assert!(line.contains(old) && line.contains("5.8"), "{line}");
        }
        assert!(matches!(ok("weird"), Err(Missing::UnknownRelease { .. })));
    }

    #[test]
    fn a_cgroup_v1_only_host_is_refused_in_one_line() {
        let e = check("6.1.0", V1_ONLY, p("/sys/fs/cgroup"), None).unwrap_err();
        assert_eq!(e, Missing::NoCgroup2);
        let line = e.to_string();
        assert!(line.contains("cgroup v2") && !line.contains('\n'), "{line}");
    }

    #[test]
    fn the_attach_cgroup_must_be_on_cgroup2() {
        assert_eq!(
            check("6.1.0", HYBRID, p("/sys/fs/cgroup/unified/kubepods"), None),
            Ok(())
        );
        // A v1 controller hierarchy of a hybrid host.
        let e = check(
            "6.1.0",
            HYBRID,
            p("/sys/fs/cgroup/cpu,cpuacct/kubepods"),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e,
            Missing::CgroupNotV2 {
                path: "/sys/fs/cgroup/cpu,cpuacct/kubepods".into(),
                fstype: "cgroup".into(),
                suggestion: "/sys/fs/cgroup/unified".into(),
            }
        );
        assert!(e.to_string().contains("/sys/fs/cgroup/unified"), "{e}");
        // The tmpfs a hybrid host has at /sys/fs/cgroup itself.
        let e = check("6.1.0", HYBRID, p("/sys/fs/cgroup"), None).unwrap_err();
        assert!(
            matches!(e, Missing::CgroupNotV2 { ref fstype, .. } if fstype == "tmpfs"),
            "{e}"
        );
        assert_eq!(
            check("6.1.0", PURE_V2_NO_BPFFS, p("/sys/fs/cgroup"), None),
            Ok(())
        );
    }

    #[test]
    fn pinning_needs_bpffs_at_the_pin_directory() {
        let pin = Some(p("/sys/fs/bpf/pod-identity"));
        assert_eq!(
            check(
                "6.12.117+deb12-amd64",
                HYBRID,
                p("/sys/fs/cgroup/unified"),
                pin
            ),
            Ok(())
        );
        let e = check("6.12.117", PURE_V2_NO_BPFFS, p("/sys/fs/cgroup"), pin).unwrap_err();
        assert_eq!(
            e,
            Missing::NoBpffs {
                path: "/sys/fs/bpf/pod-identity".into(),
                fstype: "sysfs".into()
            }
        );
        let line = e.to_string();
        assert!(
            line.contains("--bpffs-dir none") && !line.contains('\n'),
            "{line}"
        );
        // Without pinning, no bpffs is needed.
        assert_eq!(
            check("6.12.117", PURE_V2_NO_BPFFS, p("/sys/fs/cgroup"), None),
            Ok(())
        );
        // A test-mounted bpffs anywhere counts.
        let with = format!("{PURE_V2_NO_BPFFS}50 40 0:40 / /tmp/pia-bpffs-1 rw - bpf bpf rw\n");
        assert_eq!(
            check(
                "6.1.0",
                &with,
                p("/sys/fs/cgroup"),
                Some(p("/tmp/pia-bpffs-1/x"))
            ),
            Ok(())
        );
        assert!(check("6.1.0", &with, p("/sys/fs/cgroup"), Some(p("/tmp/other"))).is_err());
    }

    #[test]
    fn the_latest_mount_on_a_path_wins() {
        // bpffs mounted over a directory of a tmpfs, then tmpfs over it again.
        let mi = "\
1 0 0:1 / / rw - ext4 /dev/sda1 rw
2 1 0:2 / /run rw - tmpfs tmpfs rw
3 2 0:3 / /run/bpf rw - bpf bpf rw
4 2 0:4 / /run/bpf rw - tmpfs tmpfs rw
";
        let mounts = parse_mountinfo(mi);
        assert_eq!(mount_of(&mounts, p("/run/bpf/x")).unwrap().fstype, "tmpfs");
        assert_eq!(mount_of(&mounts, p("/run/bpfx")).unwrap().fstype, "tmpfs");
        assert_eq!(mount_of(&mounts, p("/run")).unwrap().mount_point, p("/run"));
        assert_eq!(mount_of(&mounts, p("/usr")).unwrap().fstype, "ext4");
    }

    #[test]
    fn mount_points_are_unescaped() {
        let mi = "5 1 0:5 / /mnt/with\\040space rw - bpf bpf rw\n";
        assert_eq!(
            parse_mountinfo(mi)[0].mount_point,
            PathBuf::from("/mnt/with space")
        );
    }

    #[test]
    fn resolve_keeps_a_missing_tail() {
        let r = resolve(&std::env::temp_dir().join("pia-floor-not/yet"));
        assert!(r.ends_with("pia-floor-not/yet"), "{}", r.display());
        assert!(r.is_absolute());
        assert_eq!(lexical(p("/a/b/../c")), PathBuf::from("/a/c"));
    }

    #[test]
    fn this_host_passes() {
        // The development machines and CI are above the floor, with cgroup2.
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let cg = parse_mountinfo(&mi)
            .into_iter()
            .rev()
            .find(|m| m.fstype == "cgroup2")
            .expect("a cgroup2 mount on this machine")
            .mount_point;
        assert_eq!(check_host(&cg, None), Ok(()));
    }
}
