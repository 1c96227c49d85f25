//! The pods file parser (`sources::files`): what it accepts is a valid pod
//! directory (canonical, unique UIDs; names present).
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pod_identity_agent::{attribution::cgroup::canonical_pod_uid, sources::files};

fuzz_target!(|data: &[u8]| {
    let Ok(pods) = files::parse_pods_file(Path::new("pods.json"), data) else {
        return;
    };
    let mut uids = HashSet::new();
    for p in &pods {
        assert_eq!(canonical_pod_uid(p.uid.as_str()).as_ref(), Some(&p.uid));
        assert!(uids.insert(p.uid.clone()), "duplicate {}", p.uid);
        assert!(!p.namespace.trim().is_empty() && !p.name.trim().is_empty());
        assert!(!p.service_account.trim().is_empty());
    }
});
