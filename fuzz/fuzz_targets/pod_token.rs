//! The pod token decoder: `http::token` (decode, cross-check) and EKS Auth's
//! `check_pod_token`, with the kernel's pod UID set to the token's own so the
//! checks past the pod match are reached too.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use pod_identity_agent::{
    attribution::cgroup::canonical_pod_uid, credentials::eks_auth::check_pod_token, http::token,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let other = canonical_pod_uid("2c48913c-b29f-11e7-9350-020968147796").expect("uid");
    let own = token::decode(text)
        .ok()
        .and_then(|c| c.pod_uid)
        .and_then(|u| canonical_pod_uid(&u));
    for kernel in own.iter().chain([&other]) {
        let crossed = token::cross_check(Some(text), kernel, now);
        match check_pod_token(Some(text), kernel, now) {
            Ok(t) => {
                assert!(crossed.is_ok(), "{text:?}");
                assert_eq!(t.pod_uid, kernel.as_str());
                // `Debug` never shows the bearer token.
                assert!(!format!("{t:?}").contains(text.trim()), "{text:?}");
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
