use super::*;
use crate::credentials::cache::CacheError;
use crate::testing::{self, access_denied, pod_uid, POD_UID};

fn pod() -> PodInfo {
    testing::pod("shop", "web-6d5f8", "web")
}

fn no_association() -> Refusal {
    Refusal::NoAssociation {
        namespace: "shop".into(),
        service_account: "web".into(),
        pod: "web-6d5f8".into(),
    }
}

fn mismatch() -> Refusal {
    Refusal::Token(TokenError::PodMismatch {
        token_pod: "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d".into(),
        kernel_pod: pod_uid(POD_UID),
    })
}

/// A client for an address nothing listens on: the queue side never calls it.
fn offline_client() -> Client {
    let config = ::kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    Client::try_from(config).unwrap()
}

#[test]
fn refusals_that_get_an_event_and_those_that_do_not() {
    assert_eq!(
        EventReason::of(&no_association()),
        Some(EventReason::NoPodIdentityAssociation)
    );
    assert_eq!(
        EventReason::of(&mismatch()),
        Some(EventReason::TokenMismatch)
    );
    assert_eq!(
        EventReason::of(&Refusal::from(access_denied())),
        Some(EventReason::CredentialsAccessDenied)
    );
    // Not the pod's to fix, or no pod to blame.
    for r in [
        Refusal::Throttled,
        Refusal::Unattributed,
        Refusal::NotAPod {
            path: "/system.slice/x".into(),
        },
        Refusal::Token(TokenError::Empty),
        Refusal::from(testing::throttled()),
        Refusal::credentials(CacheError::FetchAborted),
    ] {
        assert_eq!(EventReason::of(&r), None, "{r:?}");
    }
}

#[test]
fn notes_say_why_and_what_to_do_and_fit_the_api() {
    let n = note(EventReason::NoPodIdentityAssociation, &no_association());
    assert!(n.contains("(404)"), "{n}");
    assert!(n.contains("service account shop/web"), "{n}");
    let n = note(
        EventReason::CredentialsAccessDenied,
        &Refusal::from(access_denied()),
    );
    assert!(
        n.contains("(AccessDenied)") && n.contains("trust policy"),
        "{n}"
    );
    let n = note(EventReason::TokenMismatch, &mismatch());
    assert!(n.contains("(403)") && n.contains("0a1b2c3d-"), "{n}");
    // A huge upstream message is cut at the API's limit, on a char boundary.
    let long = Refusal::from(crate::credentials::StsError::Service {
        code: "AccessDenied".into(),
        message: "é".repeat(2000),
        request_id: None,
        status: 403,
    });
    let n = note(EventReason::CredentialsAccessDenied, &long);
    assert!(n.len() <= 1024 && n.len() > 1000, "{}", n.len());
}

#[tokio::test]
async fn a_token_refusal_names_the_kernels_pod_from_the_pod_directory() {
    let pods = PodStore::new();
    let (queue, mut publisher, _) = event_channel(
        offline_client(),
        "node-1",
        EventSettings::default(),
        pods.clone(),
    );
    // Not in the pod directory: nothing to post on.
    queue.refused(None, &mismatch());
    assert!(publisher.rx.try_recv().is_err());
    pods.upsert(pod());
    queue.refused(None, &mismatch());
    let n = publisher.rx.try_recv().expect("queued");
    assert_eq!(n.pod.name, "web-6d5f8");
    assert_eq!(n.reason, EventReason::TokenMismatch);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let settings = EventSettings {
        queue: 2,
        ..EventSettings::default()
    };
    let (queue, _publisher, stats) =
        event_channel(offline_client(), "node-1", settings, PodStore::new());
    let start = Instant::now();
    for _ in 0..5 {
        queue.refused(Some(&pod()), &no_association());
    }
    // Refusals that get no Event are not queued at all.
    queue.refused(Some(&pod()), &Refusal::Throttled);
    assert!(start.elapsed() < Duration::from_millis(50));
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
}

#[test]
fn reporting_instance_fits_the_api() {
    let long = "n".repeat(300);
    assert_eq!(truncate(long, INSTANCE_LIMIT).len(), 128);
}
