//! Test fixtures shared by the STS tests: a pod, and a projected token on disk.

use std::path::Path;

use crate::model::PodInfo;

pub(super) fn pod() -> PodInfo {
    PodInfo {
        uid: "2c48913c-b29f-11e7-9350-020968147796".into(),
        namespace: "team-a".into(),
        name: "web-7d4b9c8f6-x2x9z".into(),
        service_account: "web".into(),
        ..Default::default()
    }
}

pub(super) fn write_token(root: &Path, uid: &str, volume: &str, token: &str) {
    let dir = root
        .join(uid)
        .join("volumes/kubernetes.io~projected")
        .join(volume);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), token).unwrap();
}
