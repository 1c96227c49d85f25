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
    let path = format!("/kubepods/burstable/pod{UID}/{CID}/kubepods/besteffort/pod{UID2}/{CID}");
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
    let canonical = |raw: &str| canonical_pod_uid(raw).map(|u| u.as_str().to_owned());
    assert_eq!(canonical(UID_).as_deref(), Some(UID));
    assert_eq!(canonical(&UID.to_uppercase()).as_deref(), Some(UID));
    assert_eq!(canonical("2c48913c-b29f-11e7-9350"), None);
    assert_eq!(canonical(&format!("{UID}-0")), None);
    assert_eq!(canonical("2c48913cb29f11e79350020968147796"), None);
    assert_eq!(canonical(""), None);

    // `PodUid`: the same parse, with the reason; the canonical text everywhere.
    use crate::model::{PodUid, PodUidError};
    let uid = PodUid::parse(UID_).unwrap();
    assert_eq!((uid.as_str(), uid.to_string().as_str()), (UID, UID));
    assert_eq!(uid, PodUid::parse(&UID.to_uppercase()).unwrap());
    assert_eq!(PodUid::parse(""), Err(PodUidError::Empty));
    assert_eq!(
        PodUid::parse("x").unwrap_err().to_string(),
        r#"pod UID "x" is not a UUID (8-4-4-4-12 hex digits)"#
    );
    // JSON: the plain string out; in through the parse.
    assert_eq!(serde_json::to_string(&uid).unwrap(), format!("\"{UID}\""));
    let read: PodUid = serde_json::from_str(&format!("\"{UID_}\"")).unwrap();
    assert_eq!(read, uid);
    let err = serde_json::from_str::<PodUid>(r#""../etc""#).unwrap_err();
    assert!(
        err.to_string()
            .contains(r#"pod UID "../etc" is not a UUID"#),
        "{err}"
    );
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
        format!("/user.slice/user-1000.slice/user@1000.service/kubepods/besteffort/pod{uid}/{cid}"),
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
