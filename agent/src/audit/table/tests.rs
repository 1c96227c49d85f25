use super::*;
use crate::audit::test_support::{access, file_target, wait_written};
use crate::audit::{AccessSink, AuditLog};

#[test]
fn filter_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(file_target(&path, 1 << 20, 1), "c").unwrap();
    log.record(&access());
    let mut refused = access();
    refused.status = 404;
    refused.reason = Some("NoAssociation".into());
    refused.pod.as_mut().unwrap().name = "batch".into();
    log.record(&refused);
    wait_written(&log, 2);
    let mut out = Vec::new();
    let f = Filter {
        outcome: Some("failure".into()),
        ..Default::default()
    };
    assert_eq!(print_table(&path, &f, false, &mut out).unwrap(), 1);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("ns/batch") && text.contains("NoAssociation"),
        "{text}"
    );
    let f = Filter {
        pod: Some("web".into()),
        ..Default::default()
    };
    assert_eq!(print_table(&path, &f, false, std::io::sink()).unwrap(), 1);
}

#[test]
fn a_summary_row_says_what_it_counted() {
    let v = serde_json::json!({
        "event": {"action": "records-summarised", "reason": "Unattributed"},
        "source": {"ip": "10.0.0.1"},
        "pod_identity": {"summary": {"action": "request-refused", "count": 1240}},
    });
    let row = table_row(&v);
    assert!(
        row.contains("peer:10.0.0.1")
            && row.contains("records-summarised")
            && row.ends_with("1240× request-refused Unattributed"),
        "{row}"
    );
}

/// Any process sets its own comm, and pods choose their names' look in the log:
/// nothing in a row may drive the terminal or break the row.
#[test]
fn control_characters_are_escaped_in_every_cell() {
    let evil = "py\x1b[2J\rthon\n3\u{202e}\x07";
    let v = serde_json::json!({
        "@timestamp": format!("2026-01-01T00:00:00Z{evil}"),
        "orchestrator": {"namespace": evil, "resource": {"name": evil}},
        "process": {"pid": 77, "name": evil},
        "event": {"action": evil, "reason": evil},
        "pod_identity": {"role_arn": format!("arn:aws:iam::123456789012:role/{evil}"), "access_key_id": evil},
        "http": {"response": {"status_code": evil}},
    });
    let row = table_row(&v);
    for c in ['\x1b', '\r', '\n', '\u{202e}', '\x07'] {
        assert!(!row.contains(c), "{c:?} printed raw in {row:?}");
    }
    assert!(row.contains(r"py\u{1b}[2J\rthon\n3\u{202e}\u{7}"), "{row}");

    // Through the file reader too: one line per record, nothing raw.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    std::fs::write(&path, format!("{v}\n")).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        print_table(&path, &Filter::default(), false, &mut out).unwrap(),
        1
    );
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 2, "{text:?}");
    assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
}
