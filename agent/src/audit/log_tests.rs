use std::path::Path;

use super::*;
use crate::audit::test_support::{access, wait_written};

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn access_record_uses_ecs_fields_and_joins_the_kernel_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(
        Target::File {
            path: path.clone(),
            max_bytes: 1 << 20,
            keep: 2,
        },
        "c",
    )
    .unwrap();
    let mut ev = Identity {
        socket_cookie: 555,
        cgroup_id: 4242,
        pid: 77,
        action: action::REDIRECTED,
        ..Default::default()
    };
    ev.comm[..7].copy_from_slice(b"python3");
    log.kernel_event(ev);
    log.record(&access());
    wait_written(&log, 1);
    // The event was joined: a sweep after the window writes nothing more.
    assert!(lock(&log.pending).is_empty());
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 1);
    let v = &lines[0];
    assert_eq!(v["event"]["outcome"], "success");
    assert_eq!(v["process"]["pid"], 77);
    assert_eq!(v["orchestrator"]["resource"]["name"], "web");
    assert_eq!(v["pod_identity"]["access_key_id"], "ASIAEXAMPLE");
    assert_eq!(v["pod_identity"]["session_name"], "eks-c-web-x");
    assert_eq!(v["cloud"]["account"]["id"], "123456789012");
}

#[test]
fn denied_kernel_event_is_written_alone_and_late_events_are_not_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(
        Target::File {
            path: path.clone(),
            max_bytes: 1 << 20,
            keep: 2,
        },
        "c",
    )
    .unwrap();
    log.kernel_event(Identity {
        socket_cookie: 1,
        action: action::DENIED,
        ..Default::default()
    });
    // Request first, kernel event later (ring buffer lag): still one line.
    log.record(&access());
    log.kernel_event(Identity {
        socket_cookie: 555,
        action: action::REDIRECTED,
        ..Default::default()
    });
    wait_written(&log, 2);
    assert!(lock(&log.pending).is_empty());
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["event"]["action"], "connect-denied");
}
