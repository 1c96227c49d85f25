use std::path::Path;

use super::*;
use crate::audit::flood::SUMMARY_INTERVAL;
use crate::audit::test_support::{access, file_target, wait_written};
use crate::testing::json_lines;

#[test]
fn access_record_uses_ecs_fields_and_joins_the_kernel_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(file_target(&path, 1 << 20, 2), "c").unwrap();
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
    assert!(lock(&log.joins).pending.is_empty());
    let lines = json_lines(&path);
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
    let log = AuditLog::open(file_target(&path, 1 << 20, 2), "c").unwrap();
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
    assert!(lock(&log.joins).pending.is_empty());
    let lines = json_lines(&path);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["event"]["action"], "connect-denied");
}

/// Every line of the current file and the kept rotated ones.
fn all_lines(path: &Path, keep: u32) -> Vec<Value> {
    let mut lines = Vec::new();
    for n in (1..=keep).rev() {
        let old = std::path::PathBuf::from(format!("{}.{n}", path.display()));
        if old.exists() {
            lines.extend(json_lines(&old));
        }
    }
    lines.extend(json_lines(path));
    lines
}

/// Refusals anyone can cause (unattributed connects from the node network,
/// oversized paths and `Host` headers echoed into records) must not rotate real
/// records away: fields are capped, floods are summarised per source.
#[test]
fn a_flood_of_refusals_does_not_rotate_earlier_records_away() {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(file_target(&path, 256 * 1024, 1), "c").unwrap();
    log.record(&access());

    let huge = format!("/{}", "a".repeat(60 * 1024));
    for i in 0..200u64 {
        // An attributed pod asking for 60 KiB paths…
        let mut a = access();
        a.status = 404;
        a.path = huge.clone();
        a.access_key_id = None;
        a.assumed_role_arn = None;
        a.caller.as_mut().unwrap().socket_cookie = 10_000 + i;
        log.record(&a);
        // …and sending a 60 KiB Host header, echoed in the refusal message.
        let mut a = access();
        a.status = 403;
        a.reason = Some("InvalidHost".into());
        a.message = Some(format!(
            "Access Denied. Called agent through invalid address, please use either [169.254.170.23 fd00:ec2::23] address not {}",
            "h".repeat(60 * 1024)
        ));
        a.access_key_id = None;
        a.assumed_role_arn = None;
        a.caller.as_mut().unwrap().socket_cookie = 20_000 + i;
        log.record(&a);
    }
    // Thousands of unattributed connects from four peers on the node network.
    let unattributed = 5000u64;
    for i in 0..unattributed {
        log.record(&Access {
            peer: Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + (i % 4) as u8)),
                30_000 + (i % 20_000) as u16,
            )),
            status: 403,
            reason: Some("Unattributed".into()),
            message: Some("Access Denied. The kernel has no record of this connection".into()),
            ..Access::default()
        });
    }
    // The interval ends: the summaries are written.
    log.sweep_at(Instant::now() + SUMMARY_INTERVAL + Duration::from_secs(1));
    assert!(log.flush(Duration::from_secs(10)), "writer did not drain");

    let lines = all_lines(&path, 1);
    assert!(
        lines
            .iter()
            .any(|v| v["event"]["action"] == "credentials-served"
                && v["pod_identity"]["access_key_id"] == "ASIAEXAMPLE"),
        "the credentials-served record was rotated away by the flood ({} lines left, first: {})",
        lines.len(),
        lines
            .first()
            .map(|v| v["event"]["action"].to_string())
            .unwrap_or_default()
    );
    let longest = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(longest < 8 * 1024, "a line of {longest} bytes was written");
    let capped = lines
        .iter()
        .find(|v| v["http"]["response"]["status_code"] == 404)
        .expect("the first oversized requests are written");
    let p = capped["url"]["path"].as_str().unwrap();
    assert!(p.len() <= 1100 && p.contains("[truncated"), "{p}");

    // Everything not written one by one is counted, in the stats and the records.
    let stats = &log.stats;
    let summarised = stats.summarised.load(Ordering::Relaxed);
    let in_records: u64 = lines
        .iter()
        .filter(|v| v["event"]["action"] == "records-summarised")
        .map(|v| v["pod_identity"]["summary"]["count"].as_u64().unwrap())
        .sum();
    assert!(summarised > unattributed / 2, "summarised {summarised}");
    assert_eq!(in_records, summarised);
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
    assert!(stats.truncated.load(Ordering::Relaxed) > 0);
    let by_peer = lines
        .iter()
        .find(|v| v["event"]["action"] == "records-summarised" && v["source"]["ip"] == "10.0.0.1")
        .expect("a summary for peer 10.0.0.1");
    assert_eq!(by_peer["event"]["reason"], "Unattributed");
    assert_eq!(
        by_peer["pod_identity"]["summary"]["action"],
        "request-refused"
    );
}

/// The writer queue is bounded in bytes, not only in lines: lines beyond the
/// bound are dropped and counted, never held.
#[test]
fn the_writer_queue_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let target = file_target(&path, 1 << 20, 1);
    // A bound smaller than any line: nothing may be queued.
    let log = AuditLog::open_with_queue(target, "c", JOIN_WINDOW, 64).unwrap();
    for _ in 0..10 {
        log.record(&access());
    }
    assert!(log.flush(Duration::from_secs(10)));
    assert_eq!(log.stats.dropped.load(Ordering::Relaxed), 10);
    assert_eq!(log.stats.written.load(Ordering::Relaxed), 0);
    assert_eq!(log.stats.queued_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
}

fn open_file_log(path: &Path, window: Duration) -> Arc<AuditLog> {
    AuditLog::open_with_window(file_target(path, 1 << 20, 1), "c", window).unwrap()
}

fn redirected(cookie: u64) -> Identity {
    Identity {
        socket_cookie: cookie,
        cgroup_id: 4242,
        pid: 77,
        action: action::REDIRECTED,
        ..Default::default()
    }
}

/// The join window is for connections that never reach a request: once the
/// listener has accepted the connection, its kernel event waits for the request
/// however long the request takes (a slow first STS call), and is written with it.
#[test]
fn an_accepted_connection_waits_for_its_request_beyond_the_join_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let window = Duration::from_millis(1000);
    let log = open_file_log(&path, window);
    let start = Instant::now();
    log.kernel_event(redirected(555));
    log.connection(555, ConnectionEvent::Accepted);
    // The sweeps of two windows pass while the request waits for STS.
    log.sweep_at(start + window + Duration::from_millis(10));
    log.sweep_at(start + window * 2 + Duration::from_millis(10));
    log.record(&access());
    log.connection(555, ConnectionEvent::Closed);
    log.sweep_at(start + window * 3);
    assert!(log.flush(Duration::from_secs(10)));
    let lines = json_lines(&path);
    let actions: Vec<_> = lines.iter().map(|v| v["event"]["action"].clone()).collect();
    assert_eq!(
        actions,
        ["credentials-served"],
        "expected one joined record: {lines:#?}"
    );
    assert_eq!(lines[0]["pod_identity"]["kernel"]["socket_cookie"], 555);
}

/// An accepted connection that closes without a request is written as
/// `connect-without-request` when it closes; one the listener never reported is
/// still written after the join window; neither is held for good.
#[test]
fn connections_without_a_request_are_written_at_close_or_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let window = Duration::from_millis(1000);
    let log = open_file_log(&path, window);
    let start = Instant::now();
    // Accepted before its kernel event arrived (ring buffer lag), then closed.
    log.connection(1, ConnectionEvent::Accepted);
    log.kernel_event(redirected(1));
    log.connection(1, ConnectionEvent::Closed);
    // Never accepted (closed over a limit, or someone else's socket).
    log.kernel_event(redirected(2));
    // Accepted, then nothing: the listener's lifetime bounds the wait.
    log.kernel_event(redirected(3));
    log.connection(3, ConnectionEvent::Accepted);
    assert!(log.flush(Duration::from_secs(10)));
    let cookies = |lines: &[Value]| -> Vec<u64> {
        let mut c: Vec<u64> = lines
            .iter()
            .filter(|v| v["event"]["action"] == "connect-without-request")
            .map(|v| {
                v["pod_identity"]["kernel"]["socket_cookie"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        c.sort();
        c
    };
    assert_eq!(cookies(&json_lines(&path)), [1], "written at close");
    log.sweep_at(start + window * 2);
    assert!(log.flush(Duration::from_secs(10)));
    assert_eq!(cookies(&json_lines(&path)), [1, 2], "after the window");
    log.sweep_at(start + crate::http::listener::CONNECTION_LIFETIME + window * 2);
    assert!(log.flush(Duration::from_secs(10)));
    assert_eq!(cookies(&json_lines(&path)), [1, 2, 3], "after the lifetime");
}

/// Records are serialised from typed structs straight into their line; the
/// fields are declared in alphabetical order, which is the order lines had when
/// they were built as JSON maps: same bytes for whoever parses them by position.
#[test]
fn access_lines_keep_their_key_order_and_cap_what_callers_choose() {
    let log = AuditLog::open(Target::Stdout, "c").unwrap();
    let mut a = access();
    a.cache = Some(crate::credentials::CacheOutcome::Hit);
    a.container_id = Some("c0ffee".into());
    a.cgroup_path = Some("/kubepods/x".into());
    a.peer = Some("169.254.200.2:40000".parse().unwrap());
    a.message = Some("m".repeat(5000));
    a.method = "G".repeat(100);
    let before = log.stats.truncated.load(Ordering::Relaxed);
    let record = log.access_record(&a);
    let line = record.to_line();
    // serde_json's maps are sorted by key.
    assert_eq!(line, record.to_value().to_string());
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        v["message"],
        format!("{}…[truncated, 5000 bytes]", "m".repeat(1024))
    );
    assert_eq!(
        v["http"]["request"]["method"],
        format!("{}…[truncated, 100 bytes]", "G".repeat(32))
    );
    assert_eq!(log.stats.truncated.load(Ordering::Relaxed), before + 1);
    assert_eq!(v["pod_identity"]["association"]["id"], Value::Null);
    assert_eq!(v["pod_identity"]["cache"], "hit");
    assert_eq!(v["event"]["type"], serde_json::json!(["access", "allowed"]));
}
