//! Records shared by the audit tests.

use std::{sync::atomic::Ordering, time::Duration};

use crate::{
    attribution::Caller,
    audit::{Access, AuditLog},
    model::{Association, Source},
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
        pod: Some(crate::testing::pod("ns", "web", "sa")),
        association: Some(Association {
            role_arn: "arn:aws:iam::123456789012:role/r".into(),
            source: Source::File,
            ..Default::default()
        }),
        access_key_id: Some("ASIAEXAMPLE".into()),
        assumed_role_arn: Some("arn:aws:sts::123456789012:assumed-role/r/eks-c-web-x".into()),
        status: 200,
        path: "/v1/credentials".into(),
        method: "GET".into(),
        ..Default::default()
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
