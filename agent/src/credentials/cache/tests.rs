use super::*;
use crate::credentials::sts::StsError;
use crate::credentials::types::Secret;
use crate::credentials::upstream::UpstreamError;
use crate::model::{Association, PodInfo};
use crate::testing::{self, access_denied, throttled};
use std::collections::HashSet;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, UNIX_EPOCH};

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Clone)]
struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    fn new() -> Self {
        Self(Arc::new(AtomicU64::new(1_700_000_000)))
    }
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
    }
    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_secs(), Ordering::SeqCst);
    }
    fn clock(&self) -> Clock {
        let c = self.clone();
        Arc::new(move || c.now())
    }
}

#[derive(Clone, Copy)]
enum Behavior {
    Succeed,
    Fail(fn() -> StsError),
    Panic,
}

/// Fetch double: counts calls, issues `ASIA<n>` keys valid for `lifetime`.
struct Fake {
    clock: ManualClock,
    calls: AtomicUsize,
    lifetime: Mutex<Duration>,
    behavior: Mutex<Behavior>,
    delay: Duration,
    /// Every request fetched, in order.
    requests: Mutex<Vec<FetchRequest>>,
}

impl Fake {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn set(&self, b: Behavior) {
        *lock(&self.behavior) = b;
    }
    fn set_lifetime(&self, d: Duration) {
        *lock(&self.lifetime) = d;
    }
}

impl Fetch for Fake {
    async fn fetch(&self, req: &FetchRequest) -> Result<Credentials, UpstreamError> {
        let pod = &req.pod;
        lock(&self.requests).push(req.clone());
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(self.delay).await;
        let behavior = *lock(&self.behavior);
        match behavior {
            Behavior::Succeed => Ok(Credentials {
                access_key_id: format!("ASIA{n}"),
                secret_access_key: Secret::new(format!("secret{n}")),
                session_token: Secret::new(format!("token{n}")),
                expiration: self.clock.now() + *lock(&self.lifetime),
                account_id: Some("111122223333".into()),
                assumed_role_arn: format!(
                    "arn:aws:sts::111122223333:assumed-role/r/eks-c-{}-x",
                    pod.name
                ),
            }),
            Behavior::Fail(make) => Err(make().into()),
            Behavior::Panic => panic!("fake fetch panicked (expected by the test)"),
        }
    }
}

/// Pod `ns/<name>` (`name` at most 6 bytes) running as `sa`, with a UID of its
/// own: pods of one service account never share a key.
fn pod(name: &str) -> PodInfo {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    PodInfo {
        uid: testing::pod_uid(&format!("00000000-0000-4000-8000-{hex:0>12}")),
        ..testing::pod("ns", name, "sa")
    }
}

/// The STS request for `pod` under `assoc`.
fn req(pod: &PodInfo, assoc: &Association) -> FetchRequest {
    FetchRequest::association(pod.clone(), assoc.clone())
}

/// The association of `ns/sa`.
fn assoc() -> Association {
    testing::association("ns", "sa", "arn:aws:iam::111122223333:role/r")
}

fn setup(
    settings: CacheSettings,
    delay: Duration,
    lifetime: Duration,
) -> (CredentialCache<Fake>, ManualClock) {
    let clock = ManualClock::new();
    let fake = Fake {
        clock: clock.clone(),
        calls: AtomicUsize::new(0),
        lifetime: Mutex::new(lifetime),
        behavior: Mutex::new(Behavior::Succeed),
        delay,
        requests: Mutex::default(),
    };
    (
        CredentialCache::with_clock(fake, settings, clock.clock()),
        clock,
    )
}

/// Waits (real time, briefly) until no fetch is in flight for the key.
async fn settle(cache: &CredentialCache<Fake>, pod: &PodInfo, assoc: &Association) {
    settle_req(cache, &req(pod, assoc)).await
}

/// [`settle`] for any request.
async fn settle_req(cache: &CredentialCache<Fake>, request: &FetchRequest) {
    let idle = testing::eventually(Duration::from_secs(2), || {
        !cache.probe(request).is_some_and(|(_, inflight)| inflight)
    })
    .await;
    assert!(idle, "fetch still in flight after 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_fetch() {
    let (cache, _clock) = setup(
        CacheSettings::default(),
        Duration::from_millis(100),
        6 * HOUR,
    );
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let cache = cache.clone();
        set.spawn(async move { cache.get(&req(&pod("a"), &assoc())).await });
    }
    let mut keys = HashSet::new();
    while let Some(joined) = set.join_next().await {
        let (creds, outcome) = joined.unwrap().unwrap();
        assert_eq!(outcome, CacheOutcome::Miss);
        keys.insert(creds.access_key_id.clone());
    }
    assert_eq!(cache.fetcher().calls(), 1);
    assert_eq!(keys.len(), 1);
    let (creds, outcome) = cache.get(&req(&pod("a"), &assoc())).await.unwrap();
    assert_eq!(
        (creds.access_key_id.as_str(), outcome),
        ("ASIA1", CacheOutcome::Hit)
    );
    let stats = cache.stats();
    assert_eq!(
        (stats.misses, stats.hits, stats.sts_calls, stats.sts_errors),
        (50, 1, 1, 0)
    );
    assert_eq!(cache.len(), 1);
}

#[tokio::test]
async fn concurrent_failures_share_one_fetch() {
    let (cache, _clock) = setup(
        CacheSettings::default(),
        Duration::from_millis(50),
        6 * HOUR,
    );
    cache.fetcher().set(Behavior::Fail(throttled));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let cache = cache.clone();
        set.spawn(async move { cache.get(&req(&pod("a"), &assoc())).await });
    }
    while let Some(joined) = set.join_next().await {
        let err = joined.unwrap().unwrap_err();
        assert_eq!(err.code(), "Throttling");
        assert!(err.is_retryable());
    }
    assert_eq!(cache.fetcher().calls(), 1);
    assert_eq!(cache.stats().sts_errors, 1);
}

#[tokio::test]
async fn pods_do_not_share_sessions() {
    let (cache, _clock) = setup(CacheSettings::default(), Duration::ZERO, 6 * HOUR);
    let (a, _) = cache.get(&req(&pod("a"), &assoc())).await.unwrap();
    let (b, _) = cache.get(&req(&pod("b"), &assoc())).await.unwrap();
    assert_ne!(a.access_key_id, b.access_key_id);
    let mut other_role = assoc();
    other_role.role_arn = "arn:aws:iam::111122223333:role/other".into();
    let (c, outcome) = cache.get(&req(&pod("a"), &other_role)).await.unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    assert_eq!(c.access_key_id, "ASIA3");
    assert_eq!(cache.len(), 3);
}

#[tokio::test]
async fn refresh_ahead_serves_cached_and_refreshes_once_in_background() {
    let (cache, clock) = setup(CacheSettings::default(), Duration::from_millis(30), HOUR);
    let (p, a) = (pod("a"), assoc());
    assert_eq!(cache.get(&req(&p, &a)).await.unwrap().1, CacheOutcome::Miss);
    // 29 min left: inside refresh_ahead (30 min), above min_remaining (15 min).
    clock.advance(31 * MIN);
    for _ in 0..10 {
        let (creds, outcome) = cache.get(&req(&p, &a)).await.unwrap();
        assert_eq!(
            (creds.access_key_id.as_str(), outcome),
            ("ASIA1", CacheOutcome::Hit)
        );
    }
    settle(&cache, &p, &a).await;
    assert_eq!(cache.fetcher().calls(), 2);
    let (creds, outcome) = cache.get(&req(&p, &a)).await.unwrap();
    assert_eq!(
        (creds.access_key_id.as_str(), outcome),
        ("ASIA2", CacheOutcome::Hit)
    );
    assert_eq!(creds.remaining(clock.now()), HOUR);
    assert_eq!(cache.fetcher().calls(), 2);
}

#[tokio::test]
async fn max_retention_renews_in_background() {
    let (cache, clock) = setup(CacheSettings::default(), Duration::ZERO, 6 * HOUR);
    let (p, a) = (pod("a"), assoc());
    cache.get(&req(&p, &a)).await.unwrap();
    clock.advance(2 * HOUR);
    assert_eq!(cache.get(&req(&p, &a)).await.unwrap().1, CacheOutcome::Hit);
    settle(&cache, &p, &a).await;
    assert_eq!(cache.fetcher().calls(), 1);
    clock.advance(HOUR + Duration::from_secs(1));
    let (creds, outcome) = cache.get(&req(&p, &a)).await.unwrap();
    assert_eq!(
        (creds.access_key_id.as_str(), outcome),
        ("ASIA1", CacheOutcome::Hit)
    );
    settle(&cache, &p, &a).await;
    assert_eq!(cache.fetcher().calls(), 2);
    assert_eq!(
        cache.get(&req(&p, &a)).await.unwrap().0.access_key_id,
        "ASIA2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_remaining_never_served_when_refresh_succeeds() {
    let (cache, clock) = setup(CacheSettings::default(), Duration::from_millis(50), HOUR);
    let (p, a) = (pod("a"), assoc());
    cache.get(&req(&p, &a)).await.unwrap();
    // 10 min left: below min_remaining; every request waits for the refresh.
    clock.advance(50 * MIN);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (cache, p, a) = (cache.clone(), p.clone(), a.clone());
        set.spawn(async move { cache.get(&req(&p, &a)).await });
    }
    while let Some(joined) = set.join_next().await {
        let (creds, outcome) = joined.unwrap().unwrap();
        assert_eq!(
            (creds.access_key_id.as_str(), outcome),
            ("ASIA2", CacheOutcome::Miss)
        );
        assert!(creds.remaining(clock.now()) >= cache.settings().min_remaining);
    }
    assert_eq!(cache.fetcher().calls(), 2);
}

#[tokio::test]
async fn sts_failure_serves_stale_while_valid_then_errors() {
    let (cache, clock) = setup(CacheSettings::default(), Duration::ZERO, HOUR);
    let (p, a) = (pod("a"), assoc());
    cache.get(&req(&p, &a)).await.unwrap();
    cache.fetcher().set(Behavior::Fail(throttled));
    clock.advance(50 * MIN); // 10 min left
    let (creds, outcome) = cache.get(&req(&p, &a)).await.unwrap();
    assert_eq!(
        (creds.access_key_id.as_str(), outcome),
        ("ASIA1", CacheOutcome::Stale)
    );
    assert_eq!(cache.fetcher().calls(), 2);
    // Within retry_backoff: served without asking STS again.
    assert_eq!(
        cache.get(&req(&p, &a)).await.unwrap().1,
        CacheOutcome::Stale
    );
    assert_eq!(cache.fetcher().calls(), 2);
    // After the backoff (30 s ± 20 %), STS is asked again.
    clock.advance(Duration::from_secs(37));
    assert_eq!(
        cache.get(&req(&p, &a)).await.unwrap().1,
        CacheOutcome::Stale
    );
    assert_eq!(cache.fetcher().calls(), 3);
    // 23 s left, below stale_floor: the error reaches the client.
    clock.advance(9 * MIN);
    let err = cache.get(&req(&p, &a)).await.unwrap_err();
    assert_eq!(err.code(), "Throttling");
    assert!(err.is_retryable());
    // Expired: still an error, never the old key.
    clock.advance(10 * MIN);
    assert!(cache.get(&req(&p, &a)).await.is_err());
    // STS is back.
    cache.fetcher().set(Behavior::Succeed);
    let (creds, outcome) = cache.get(&req(&p, &a)).await.unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    assert_eq!(creds.remaining(clock.now()), HOUR);
    let stats = cache.stats();
    assert_eq!((stats.stale_served, stats.sts_errors), (3, 4));
}

#[tokio::test]
async fn failed_background_refresh_marks_stale_and_backs_off() {
    let (cache, clock) = setup(CacheSettings::default(), Duration::ZERO, HOUR);
    let (p, a) = (pod("a"), assoc());
    cache.get(&req(&p, &a)).await.unwrap();
    cache.fetcher().set(Behavior::Fail(throttled));
    clock.advance(31 * MIN);
    assert_eq!(cache.get(&req(&p, &a)).await.unwrap().1, CacheOutcome::Hit);
    settle(&cache, &p, &a).await;
    assert_eq!(cache.fetcher().calls(), 2);
    let (creds, outcome) = cache.get(&req(&p, &a)).await.unwrap();
    assert_eq!(
        (creds.access_key_id.as_str(), outcome),
        ("ASIA1", CacheOutcome::Stale)
    );
    assert_eq!(
        cache.fetcher().calls(),
        2,
        "no new call within retry_backoff"
    );
    cache.fetcher().set(Behavior::Succeed);
    // retry_backoff is 30 s ± 20 %.
    clock.advance(Duration::from_secs(37));
    assert_eq!(
        cache.get(&req(&p, &a)).await.unwrap().1,
        CacheOutcome::Stale
    );
    settle(&cache, &p, &a).await;
    let (creds, outcome) = cache.get(&req(&p, &a)).await.unwrap();
    assert_eq!(
        (creds.access_key_id.as_str(), outcome),
        ("ASIA3", CacheOutcome::Hit)
    );
}

#[tokio::test]
async fn final_error_evicts_even_valid_credentials() {
    let (cache, clock) = setup(CacheSettings::default(), Duration::ZERO, HOUR);
    let (p, a) = (pod("a"), assoc());
    cache.get(&req(&p, &a)).await.unwrap();
    cache.fetcher().set(Behavior::Fail(access_denied));
    clock.advance(50 * MIN);
    let err = cache.get(&req(&p, &a)).await.unwrap_err();
    assert_eq!(err.code(), "AccessDenied");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("(AccessDenied)"), "{err}");
    assert_eq!(cache.len(), 0);
    assert_eq!(cache.stats().evictions, 1);
}

#[tokio::test]
async fn final_error_in_background_refresh_evicts() {
    let (cache, clock) = setup(CacheSettings::default(), Duration::ZERO, HOUR);
    let (p, a) = (pod("a"), assoc());
    cache.get(&req(&p, &a)).await.unwrap();
    cache.fetcher().set(Behavior::Fail(access_denied));
    clock.advance(31 * MIN);
    assert_eq!(cache.get(&req(&p, &a)).await.unwrap().1, CacheOutcome::Hit);
    settle(&cache, &p, &a).await;
    assert_eq!(cache.len(), 0);
    assert_eq!(
        cache.get(&req(&p, &a)).await.unwrap_err().code(),
        "AccessDenied"
    );
    assert_eq!(cache.fetcher().calls(), 3);
}

#[tokio::test]
async fn evict_pod_drops_only_that_pod() {
    let (cache, _clock) = setup(CacheSettings::default(), Duration::ZERO, 6 * HOUR);
    let (a, b) = (pod("a"), pod("b"));
    cache.get(&req(&a, &assoc())).await.unwrap();
    cache.get(&req(&b, &assoc())).await.unwrap();
    assert_eq!(cache.evict_pod(&a.uid), 1);
    assert_eq!(cache.len(), 1);
    assert_eq!(
        cache.get(&req(&b, &assoc())).await.unwrap().1,
        CacheOutcome::Hit
    );
    assert_eq!(
        cache.get(&req(&a, &assoc())).await.unwrap().1,
        CacheOutcome::Miss
    );
    assert_eq!(cache.fetcher().calls(), 3);
    assert_eq!(
        cache.evict_pod(&testing::pod_uid("00000000-0000-4000-8000-000000000000")),
        0
    );
}

#[tokio::test]
async fn bounded_lru() {
    let settings = CacheSettings {
        max_entries: 3,
        ..Default::default()
    };
    let (cache, _clock) = setup(settings, Duration::ZERO, 6 * HOUR);
    for name in ["p0", "p1", "p2"] {
        cache.get(&req(&pod(name), &assoc())).await.unwrap();
    }
    cache.get(&req(&pod("p0"), &assoc())).await.unwrap(); // p1 is now least recently used
    cache.get(&req(&pod("p3"), &assoc())).await.unwrap();
    assert_eq!(cache.len(), 3);
    assert_eq!(
        cache.get(&req(&pod("p0"), &assoc())).await.unwrap().1,
        CacheOutcome::Hit
    );
    assert_eq!(
        cache.get(&req(&pod("p3"), &assoc())).await.unwrap().1,
        CacheOutcome::Hit
    );
    assert_eq!(
        cache.get(&req(&pod("p2"), &assoc())).await.unwrap().1,
        CacheOutcome::Hit
    );
    assert_eq!(
        cache.get(&req(&pod("p1"), &assoc())).await.unwrap().1,
        CacheOutcome::Miss
    );
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.stats().evictions, 2);
}

#[tokio::test]
async fn bound_evicts_useless_entries_before_lru() {
    let settings = CacheSettings {
        max_entries: 2,
        ..Default::default()
    };
    let (cache, _clock) = setup(settings, Duration::ZERO, 6 * HOUR);
    cache.get(&req(&pod("y"), &assoc())).await.unwrap();
    cache.fetcher().set(Behavior::Fail(throttled));
    assert!(cache.get(&req(&pod("x"), &assoc())).await.is_err()); // most recent, but empty
    cache.fetcher().set(Behavior::Succeed);
    cache.get(&req(&pod("z"), &assoc())).await.unwrap();
    assert_eq!(cache.len(), 2);
    assert_eq!(
        cache.get(&req(&pod("y"), &assoc())).await.unwrap().1,
        CacheOutcome::Hit
    );
    assert!(cache.probe(&req(&pod("x"), &assoc())).is_none());
}

#[tokio::test]
async fn prefetch_makes_first_request_a_hit() {
    let (cache, _clock) = setup(
        CacheSettings::default(),
        Duration::from_millis(10),
        6 * HOUR,
    );
    let (p, a) = (pod("a"), assoc());
    cache.prefetch(&req(&p, &a));
    cache.prefetch(&req(&p, &a)); // already in flight: no second call
    settle(&cache, &p, &a).await;
    cache.prefetch(&req(&p, &a)); // already cached: no call
    assert_eq!(cache.get(&req(&p, &a)).await.unwrap().1, CacheOutcome::Hit);
    assert_eq!(cache.fetcher().calls(), 1);
}

#[tokio::test]
async fn short_lived_credentials_are_refused() {
    let (cache, _clock) = setup(CacheSettings::default(), Duration::ZERO, 10 * MIN);
    let err = cache.get(&req(&pod("a"), &assoc())).await.unwrap_err();
    assert!(matches!(err, CacheError::ShortLived { .. }), "{err}");
    // Retryable: the SDKs get a 5xx and ask again.
    assert!(err.is_retryable());
    cache.fetcher().set_lifetime(HOUR);
    assert_eq!(
        cache.get(&req(&pod("a"), &assoc())).await.unwrap().1,
        CacheOutcome::Miss
    );
}

/// A refresh that brings credentials expiring too soon keeps the still-valid
/// ones (found by tests/upstream_faults.rs: they used to be dropped, and the pod
/// got 500s until the upstream mended).
#[tokio::test]
async fn short_lived_refresh_keeps_the_still_valid_credentials() {
    let (cache, clock) = setup(CacheSettings::default(), Duration::ZERO, HOUR);
    let (p, a) = (pod("a"), assoc());
    cache.get(&req(&p, &a)).await.unwrap();
    cache.fetcher().set_lifetime(5 * MIN);
    clock.advance(31 * MIN); // refresh ahead: the background refresh is too short
    assert_eq!(cache.get(&req(&p, &a)).await.unwrap().1, CacheOutcome::Hit);
    settle(&cache, &p, &a).await;
    assert_eq!(cache.fetcher().calls(), 2);
    let (creds, outcome) = cache.get(&req(&p, &a)).await.unwrap();
    assert_eq!(
        (creds.access_key_id.as_str(), outcome),
        ("ASIA1", CacheOutcome::Stale)
    );
    assert_eq!(cache.fetcher().calls(), 2, "backed off");
}

/// A request waits `request_wait` at most; the fetch goes on and the next
/// request gets its result.
#[tokio::test]
async fn a_slow_upstream_answers_the_request_in_time_and_the_fetch_goes_on() {
    let settings = CacheSettings {
        request_wait: Duration::from_millis(50),
        ..CacheSettings::default()
    };
    let (cache, _clock) = setup(settings, Duration::from_millis(300), HOUR);
    let (p, a) = (pod("a"), assoc());
    let started = std::time::Instant::now();
    let err = cache.get(&req(&p, &a)).await.unwrap_err();
    assert!(matches!(err, CacheError::UpstreamSlow { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_millis(250));
    settle(&cache, &p, &a).await;
    assert_eq!(cache.get(&req(&p, &a)).await.unwrap().1, CacheOutcome::Hit);
    assert_eq!(cache.fetcher().calls(), 1, "one fetch, not one per request");
}

#[tokio::test]
async fn panicking_fetch_does_not_wedge_the_key() {
    let (cache, _clock) = setup(CacheSettings::default(), Duration::ZERO, HOUR);
    cache.fetcher().set(Behavior::Panic);
    let err = cache.get(&req(&pod("a"), &assoc())).await.unwrap_err();
    assert!(matches!(err, CacheError::FetchAborted), "{err}");
    assert!(err.is_retryable());
    cache.fetcher().set(Behavior::Succeed);
    assert_eq!(
        cache.get(&req(&pod("a"), &assoc())).await.unwrap().1,
        CacheOutcome::Miss
    );
}

#[test]
fn outcome_labels() {
    assert_eq!(CacheOutcome::Hit.as_str(), "hit");
    assert_eq!(CacheOutcome::Miss.as_str(), "miss");
    assert_eq!(CacheOutcome::Stale.as_str(), "stale");
}

/// EKS Auth request for `p` with a token of `ns/sa` expiring at `exp` (secs).
fn pod_identity_req(p: &PodInfo, sa: &str, exp: u64) -> FetchRequest {
    use crate::credentials::eks_auth::check_pod_token;
    let raw = testing::fake_pod_token("ns", sa, &p.name, p.uid.as_str(), exp);
    // Checked against the real clock (the manual one starts in 2023).
    let token = check_pod_token(Some(&raw), &p.uid, SystemTime::now()).unwrap();
    FetchRequest::pod_identity(p.clone(), token)
}

fn far_future(offset: u64) -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
        + offset
}

#[tokio::test]
async fn pod_identity_entries_refresh_with_the_newest_token() {
    let (cache, clock) = setup(CacheSettings::default(), Duration::ZERO, HOUR);
    let p = pod("a");
    let old = pod_identity_req(&p, "sa", far_future(0));
    let (_, outcome) = cache.get(&old).await.unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    // The kubelet rotated the token: same entry (a hit), and the next refresh
    // uses the new token.
    let new = pod_identity_req(&p, "sa", far_future(3600));
    assert_eq!(cache.get(&new).await.unwrap().1, CacheOutcome::Hit);
    // An older token presented afterwards does not replace the newer one.
    assert_eq!(cache.get(&old).await.unwrap().1, CacheOutcome::Hit);
    assert_eq!(cache.len(), 1, "one entry per pod and service account");
    clock.advance(31 * MIN);
    assert_eq!(cache.get(&old).await.unwrap().1, CacheOutcome::Hit);
    assert!(testing::eventually(Duration::from_secs(2), || cache.fetcher().calls() == 2).await);
    settle_req(&cache, &old).await;
    let requests = lock(&cache.fetcher().requests).clone();
    assert_eq!(requests.len(), 2, "first fetch and one refresh ahead");
    assert_eq!(requests[0], old);
    assert_eq!(requests[1], new, "refresh ahead with the newest token");
    // Another pod with a token of the same service account: its own entry.
    let other = pod_identity_req(&pod("b"), "sa", far_future(0));
    assert_eq!(cache.get(&other).await.unwrap().1, CacheOutcome::Miss);
    assert_eq!(cache.len(), 2);
}

#[tokio::test]
async fn background_fetches_are_paced_by_max_service_qps() {
    let settings = CacheSettings {
        max_service_qps: 5.0,
        ..CacheSettings::default()
    };
    let (cache, _clock) = setup(settings, Duration::ZERO, HOUR);
    let pods: Vec<PodInfo> = (0..6).map(|i| pod(&format!("q{i}"))).collect();
    let start = std::time::Instant::now();
    for p in &pods {
        cache.prefetch(&req(p, &assoc()));
    }
    // 6 background fetches at 5/s: the last one starts ~1 s after the first.
    assert!(testing::eventually(Duration::from_secs(5), || cache.fetcher().calls() == 6).await);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    // A request that waits for its credentials is not held back.
    let start = std::time::Instant::now();
    for i in 0..5 {
        cache
            .get(&req(&pod(&format!("w{i}")), &assoc()))
            .await
            .unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_request_joining_a_paced_prefetch_does_not_wait_for_its_turn() {
    let settings = CacheSettings {
        max_service_qps: 1.0,
        ..CacheSettings::default()
    };
    let (cache, _clock) = setup(settings, Duration::ZERO, HOUR);
    let pods: Vec<PodInfo> = (0..4).map(|i| pod(&format!("j{i}"))).collect();
    for p in &pods {
        cache.prefetch(&req(p, &assoc()));
    }
    // The last prefetch's turn is ~3 s away; its pod asks now.
    let start = std::time::Instant::now();
    let (_, outcome) = cache.get(&req(&pods[3], &assoc())).await.unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "waited {:?} for the prefetch's turn",
        start.elapsed()
    );
}

#[tokio::test]
async fn upstream_latency_is_observed_by_api_and_outcome() {
    let (cache, _clock) = setup(
        CacheSettings::default(),
        Duration::from_millis(20),
        6 * HOUR,
    );
    let latency = cache.upstream_latency();
    cache.get(&req(&pod("a"), &assoc())).await.unwrap();
    cache.fetcher().set(Behavior::Fail(access_denied));
    cache.get(&req(&pod("b"), &assoc())).await.unwrap_err();
    // A hit calls nobody.
    cache.get(&req(&pod("a"), &assoc())).await.unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("up", "upstream latency", latency);
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
    let value = |series: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    assert_eq!(
        value("up_count{api=\"sts\",outcome=\"ok\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("up_count{api=\"sts\",outcome=\"AccessDenied\"}"),
        Some(1.0),
        "{text}"
    );
    let sum = value("up_sum{api=\"sts\",outcome=\"ok\"}").unwrap();
    assert!(sum >= 0.02, "{text}");
    assert!(!text.contains("eks-auth"), "{text}");
}
