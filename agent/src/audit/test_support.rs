//! Records and logs shared by the audit tests.

use std::{path::Path, sync::atomic::Ordering, time::Duration};

use crate::{
    attribution::Caller,
    audit::{Access, AuditLog, Target},
    model::{Association, Source},
    testing,
};

fn caller() -> Caller {
    Caller {
        cgroup_id: 4242,
        pid: 77,
        tid: 78,
        uid: 1000,
        gid: 1000,
        comm: "python3".into(),
        netns_cookie: 9,
        socket_cookie: 555,
        original_destination: "169.254.170.23:80".parse().unwrap(),
        connect_ktime_ns: 1_000_000,
    }
}

pub(super) fn access() -> Access {
    Access {
        caller: Some(caller()),
        pod: Some(testing::pod("ns", "web", "sa")),
        association: Some(Association {
            source: Source::File,
            ..testing::association("ns", "sa", "arn:aws:iam::123456789012:role/r")
        }),
        access_key_id: Some("ASIAEXAMPLE".into()),
        assumed_role_arn: Some("arn:aws:sts::123456789012:assumed-role/r/eks-c-web-x".into()),
        status: 200,
        path: "/v1/credentials".into(),
        method: "GET".into(),
        ..Default::default()
    }
}

/// The file `path`, rotated at `max_bytes`, keeping `keep` old files.
pub(super) fn file_target(path: &Path, max_bytes: u64, keep: u32) -> Target {
    Target::File {
        path: path.to_owned(),
        max_bytes,
        keep,
    }
}

pub(super) fn wait_written(log: &AuditLog, n: u64) {
    for _ in 0..200 {
        if log.stats.written.load(Ordering::Relaxed) >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("audit lines not written");
}
