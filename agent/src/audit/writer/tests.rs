use crate::audit::test_support::{access, file_target, wait_written};
use crate::audit::{AccessSink, AuditLog};

#[test]
fn rotation_bounds_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(file_target(&path, 4096, 2), "c").unwrap();
    for _ in 0..100 {
        log.record(&access());
    }
    wait_written(&log, 100);
    assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
    assert!(dir.path().join("audit.log.1").exists());
    assert!(dir.path().join("audit.log.2").exists());
    assert!(!dir.path().join("audit.log.3").exists());
}
