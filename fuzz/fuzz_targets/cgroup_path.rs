//! The cgroup path parser (`attribution::cgroup`): `/proc/<pid>/cgroup` text →
//! the cgroup v2 path → pod UID and container id, with and without a prefix.
//! Paths come from the kernel's tree, but a pod names its own container's cgroups.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pod_identity_agent::attribution::cgroup::{
    canonical_pod_uid, cgroup2_mount_from_mountinfo, own_cgroup_dir, own_cgroup_path,
    parse_pod_cgroup,
};

fn check(path: &str, prefix: &str) {
    if let Ok(Some(p)) = parse_pod_cgroup(path, prefix) {
        // A pod UID that comes out is canonical (what the pod directory keys on).
        assert_eq!(
            canonical_pod_uid(p.pod_uid.as_str()).as_ref(),
            Some(&p.pod_uid),
            "{path:?}"
        );
        if let Some(id) = &p.container_id {
            assert!(!id.is_empty() && !id.contains('/'), "{path:?}: {id:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text, "");
    check(text, "/kubelet.slice");
    if let Some(own) = own_cgroup_path(text) {
        check(own, "");
    }
    let _ = cgroup2_mount_from_mountinfo(text);
    let _ = own_cgroup_dir(text, text);
});
