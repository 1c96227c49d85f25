//! Pod UID and container id from a cgroup path.
//!
//! [`parse_pod_cgroup`] (anchored at the kubelet's hierarchy) is the only way in;
//! the unanchored `parse_cgroup_path` underneath it stays private to this module.
//! The shapes handled (cgroupfs, systemd with containerd/CRI-O/docker,
//! kubelet-prefixed, nested kind, containerd's `slice:prefix:id`, cgroup-namespace
//! views) are listed in the tests.

use super::CgroupError;
use crate::model::PodUid;

/// Where a process sits, as far as its cgroup path tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// Pod UID.
    pub pod_uid: PodUid,
    /// Container id (64 lowercase hex digits); `None` for the pod-level cgroup itself
    /// or a runtime helper (e.g. CRI-O's conmon) that lives in the pod's cgroup.
    pub container_id: Option<String>,
}

/// Canonical pod UID (lowercase, `-` separators) from the forms found in cgroup
/// paths and the API (`_` is systemd's escape for `-`), or `None` if it is not a
/// UUID (8-4-4-4-12 hex digits). [`PodUid::parse`], without the reason.
pub fn canonical_pod_uid(raw: &str) -> Option<PodUid> {
    PodUid::parse(raw).ok()
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
    /// A pod-level cgroup, with its UID.
    Pod(PodUid),
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

/// `parse_cgroup_path` anchored at the kubelet's hierarchy: the path (relative to
/// the host cgroup2 root, after an optional configured `prefix` such as
/// `/docker/<id>` on a nested kind node) must *start* with a kubepods root
/// (`/kubepods`, `/kubepods.slice`, `/kubelet.slice/kubelet-kubepods.slice`).
///
/// This is what the agent uses: a process that can make cgroups elsewhere (a
/// systemd user session, a service with `Delegate=yes`, a plain docker container)
/// could otherwise create `…/kubepods/besteffort/pod<victim uid>/…` under its own
/// cgroup and be taken for the victim pod. Anything not anchored is "not a pod".
///
/// ```
/// use pod_identity_agent::attribution::cgroup::parse_pod_cgroup;
/// let p = parse_pod_cgroup(
///     "/kubepods/besteffort/pod2c48913c-b29f-11e7-9350-020968147796",
///     "",
/// ).unwrap().unwrap();
/// assert_eq!(p.pod_uid, "2c48913c-b29f-11e7-9350-020968147796");
/// assert_eq!(p.container_id, None);
/// ```
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
/// Unanchored: a path that merely *contains* a kubepods hierarchy is parsed too, so
/// only [`parse_pod_cgroup`] may decide what is a pod.
fn parse_cgroup_path(path: &str) -> Result<Option<PodCgroup>, CgroupError> {
    let segs = segments(path);
    // A cgroup-namespace view (`/../..`) has lost its kubepods prefix; the only
    // processes that see their cgroup that way are containers, so be strict.
    let mut in_kubepods = segs.first().is_some_and(|s| s == "..");
    // Index just past the last kubepods/QoS level seen, to check what sits below it.
    let mut below_kubepods: Option<usize> = None;
    let mut pod: Option<(usize, PodUid)> = None;

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

#[cfg(test)]
mod tests;
