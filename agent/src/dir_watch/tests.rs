use std::time::Duration;

use super::*;

async fn changed_within(w: &DirWatch, d: Duration) -> bool {
    tokio::time::timeout(d, w.changed()).await.is_ok()
}

#[tokio::test]
async fn a_new_directory_or_a_replaced_file_wakes_the_watch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = DirWatch::new().unwrap();
    assert_eq!(w.set([tmp.path().to_owned()]), 1);
    assert!(!changed_within(&w, Duration::from_millis(100)).await);

    std::fs::create_dir(tmp.path().join("kubepods-pod1.slice")).unwrap();
    assert!(changed_within(&w, Duration::from_secs(5)).await);

    // An atomic replace (write a temp file, rename over): what ConfigMaps and
    // careful writers do.
    std::fs::write(tmp.path().join("pods.json.tmp"), b"{}").unwrap();
    std::fs::rename(
        tmp.path().join("pods.json.tmp"),
        tmp.path().join("pods.json"),
    )
    .unwrap();
    assert!(changed_within(&w, Duration::from_secs(5)).await);
    // Drained: nothing more pending.
    while changed_within(&w, Duration::from_millis(50)).await {}
    assert!(!changed_within(&w, Duration::from_millis(100)).await);
}

#[tokio::test]
async fn set_follows_the_given_directories_and_skips_missing_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let mut w = DirWatch::new().unwrap();
    assert_eq!(w.set([a.clone(), b.clone(), tmp.path().join("gone")]), 2);
    assert_eq!(w.set([b.clone()]), 1);
    assert!(!w.watches(&a) && w.watches(&b));
    // a is no longer watched: a change there is not seen; one in b is.
    std::fs::create_dir(a.join("x")).unwrap();
    assert!(!changed_within(&w, Duration::from_millis(150)).await);
    std::fs::create_dir(b.join("y")).unwrap();
    assert!(changed_within(&w, Duration::from_secs(5)).await);
    // Bounded.
    let many: Vec<PathBuf> = (0..MAX_WATCHES + 10)
        .map(|i| {
            let d = tmp.path().join(format!("d{i}"));
            std::fs::create_dir(&d).unwrap();
            d
        })
        .collect();
    assert_eq!(w.set(many), MAX_WATCHES);
}
