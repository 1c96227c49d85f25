use super::*;
use crate::audit::test_support::{access, wait_written};
use crate::audit::{AccessSink, AuditLog, Target};

#[test]
fn filter_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(
        Target::File {
            path: path.clone(),
            max_bytes: 1 << 20,
            keep: 1,
        },
        "c",
    )
    .unwrap();
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
