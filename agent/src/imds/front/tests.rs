//! The front without root: a temp directory tree stands in for cgroupfs, a fake
//! STS issues the pods' credentials, a fake IMDS on 127.0.0.1 is the real one.
use super::*;
use crate::{
    credentials::CacheSettings,
    imds::{settings::ImdsMode, test_support::FakeImds},
    sources::pods::PodStore,
    testing::{self, FakeSts, POD_UID},
};
use http_body_util::BodyExt;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;
use std::time::Duration;

const CID: &str = "4b3c0a1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b";
const CREDS: &str = "/latest/meta-data/iam/security-credentials/";

#[derive(Default)]
struct Recording(Mutex<Vec<Access>>);

impl AccessSink for Recording {
    fn record(&self, access: &Access) {
        self.0.lock().unwrap().push(access.clone());
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    pod_cgroup: u64,
    node_cgroup: u64,
    pods: PodStore,
    imds: FakeImds,
    sink: Arc<Recording>,
    front: Arc<ImdsFront<FakeSts>>,
}

async fn fixture(mode: ImdsMode) -> Fixture {
    fixture_with(mode, None).await
}

async fn fixture_with(mode: ImdsMode, upstream: Option<String>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let pod_dir =
        testing::pod_cgroup_dir(dir.path(), POD_UID).join(format!("cri-containerd-{CID}.scope"));
    // A node process in a cgroup the rescan has not marked yet.
    let node_dir = dir.path().join("system.slice/new-daemon.service");
    std::fs::create_dir_all(&pod_dir).unwrap();
    std::fs::create_dir_all(&node_dir).unwrap();
    let app = testing::association("ns", "app", "arn:aws:iam::111122223333:role/app");
    let resolver = testing::resolver(dir.path(), Duration::from_millis(50), vec![app]);
    let pods = resolver.pods.clone();
    let imds = FakeImds::start().await;
    let sink = Arc::new(Recording::default());
    let settings = ImdsSettings {
        mode,
        upstream: upstream.unwrap_or_else(|| imds.url.clone()),
        timeout: Duration::from_secs(2),
        ..ImdsSettings::default()
    };
    let front = ImdsFront::new(
        settings,
        resolver,
        CredentialCache::new(FakeSts, CacheSettings::default()),
        sink.clone(),
        false,
        None,
    );
    Fixture {
        pod_cgroup: std::fs::metadata(&pod_dir).unwrap().ino(),
        node_cgroup: std::fs::metadata(&node_dir).unwrap().ino(),
        _dir: dir,
        pods,
        imds,
        sink,
        front: Arc::new(front),
    }
}

/// A caller in `cgroup` that connected to the IMDS address.
fn imds_caller(cgroup: u64) -> Caller {
    Caller {
        original_destination: "169.254.169.254:80".parse().unwrap(),
        ..testing::caller(cgroup)
    }
}

fn ctx(caller: Result<Caller, Unattributed>) -> RequestContext {
    RequestContext {
        peer: "169.254.200.2:40000".parse().unwrap(),
        local: "169.254.199.1:2712".parse().unwrap(),
        caller,
    }
}

struct Answer {
    status: u16,
    body: String,
    access: Access,
}

async fn call_ctx(f: &Fixture, ctx: &RequestContext, req: Request<()>) -> Answer {
    let (resp, access) = f.front.respond(ctx, &req).await;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        body: String::from_utf8(body.to_vec()).unwrap(),
        access,
    }
}

async fn call(f: &Fixture, cgroup: u64, req: Request<()>) -> Answer {
    call_ctx(f, &ctx(Ok(imds_caller(cgroup))), req).await
}

fn get(path: &str) -> Request<()> {
    Request::get(path)
        .header("host", "169.254.169.254")
        .body(())
        .unwrap()
}

fn token_put(xff: bool) -> Request<()> {
    let mut b = Request::put("/latest/api/token")
        .header("host", "169.254.169.254")
        .header("x-aws-ec2-metadata-token-ttl-seconds", "21600");
    if xff {
        b = b.header("x-forwarded-for", "10.1.2.3");
    }
    b.body(()).unwrap()
}

#[tokio::test]
async fn unattributed_callers_are_refused() {
    let f = fixture(ImdsMode::BlockCredentials).await;
    let a = call_ctx(
        &f,
        &ctx(Err(Unattributed::NoRecord)),
        get("/latest/meta-data/"),
    )
    .await;
    assert_eq!(
        (a.status, a.access.reason.as_deref()),
        (403, Some("Unattributed"))
    );
    let a = call_ctx(
        &f,
        &ctx(Err(Unattributed::LookupFailed("map".into()))),
        get("/latest/meta-data/"),
    )
    .await;
    assert_eq!(
        (a.status, a.access.reason.as_deref()),
        (500, Some("LookupFailed"))
    );
    assert_eq!(f.imds.count(), 0);
}

#[tokio::test]
async fn connections_not_made_to_imds_are_refused() {
    let f = fixture(ImdsMode::BlockCredentials).await;
    for dst in [
        "169.254.170.23:80",
        "169.254.169.254:8080",
        "[fd00:ec2::23]:80",
    ] {
        let c = Caller {
            original_destination: dst.parse().unwrap(),
            ..testing::caller(f.node_cgroup)
        };
        let a = call_ctx(&f, &ctx(Ok(c)), get("/latest/meta-data/")).await;
        assert_eq!(
            (a.status, a.access.reason.as_deref()),
            (403, Some("ImdsWrongDestination")),
            "{dst}"
        );
    }
    // IPv6 and IPv4-mapped forms of the IMDS address are fine.
    for dst in ["[fd00:ec2::254]:80", "[::ffff:169.254.169.254]:80"] {
        let c = Caller {
            original_destination: dst.parse().unwrap(),
            ..testing::caller(f.node_cgroup)
        };
        let a = call_ctx(&f, &ctx(Ok(c)), get("/latest/meta-data/")).await;
        assert_eq!(a.status, 200, "{dst}: {}", a.body);
    }
    assert_eq!(f.imds.count(), 2);
}

#[tokio::test]
async fn node_processes_get_the_real_imds_untouched() {
    for mode in [
        ImdsMode::BlockCredentials,
        ImdsMode::PodRole,
        ImdsMode::Deny,
    ] {
        let f = fixture(mode).await;
        for path in [
            "/latest/meta-data/iam/security-credentials/node-role",
            "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
            "/latest/meta-data/%69am/",
        ] {
            let a = call(&f, f.node_cgroup, get(path)).await;
            assert_eq!(a.status, 200, "{mode:?} {path}: {}", a.body);
            assert_eq!(a.body, format!("GET {path}"));
            assert_eq!(a.access.reason, None);
            assert!(a.access.pod.is_none());
            assert!(a
                .access
                .cgroup_path
                .as_deref()
                .is_some_and(|p| p.contains("new-daemon.service")));
        }
        let a = call(&f, f.node_cgroup, token_put(false)).await;
        assert_eq!((a.status, a.body.as_str()), (200, "TOKEN"));
        // Even for the node, a token PUT with X-Forwarded-For is IMDS's 403.
        let a = call(&f, f.node_cgroup, token_put(true)).await;
        assert_eq!(
            (a.status, a.access.reason.as_deref()),
            (403, Some("ImdsForwardedForRefused"))
        );
        assert_eq!(f.imds.count(), 4, "{mode:?}");
    }
}

#[tokio::test]
async fn pods_get_metadata_but_not_the_node_role() {
    let f = fixture(ImdsMode::BlockCredentials).await;
    f.pods.upsert(testing::pod("ns", "web", "app"));

    let a = call(&f, f.pod_cgroup, get("/latest/meta-data/instance-id")).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (200, "GET /latest/meta-data/instance-id")
    );
    assert_eq!(a.access.reason, None);
    assert_eq!(a.access.pod.as_ref().unwrap().name, "web");
    assert_eq!(a.access.container_id.as_deref(), Some(CID));
    let a = call(&f, f.pod_cgroup, token_put(false)).await;
    assert_eq!((a.status, a.body.as_str()), (200, "TOKEN"));
    let seen = f.imds.count();

    for path in [
        CREDS,
        "/latest/meta-data/iam/security-credentials/node-role",
        "/2021-07-15/meta-data/iam/security-credentials",
        "/latest/Meta-Data/IAM/security-credentials/",
    ] {
        let a = call(&f, f.pod_cgroup, get(path)).await;
        assert_eq!(
            (a.status, a.access.reason.as_deref()),
            (404, Some("ImdsCredentialsBlocked")),
            "{path}"
        );
        assert!(a.body.starts_with("Not Found"), "{}", a.body);
        assert_eq!(a.access.pod.as_ref().unwrap().name, "web");
    }
    let a = call(
        &f,
        f.pod_cgroup,
        get("/latest/meta-data/identity-credentials/ec2/info"),
    )
    .await;
    assert_eq!(
        (a.status, a.access.reason.as_deref()),
        (404, Some("ImdsIdentityCredentialsBlocked"))
    );
    for (req, status, reason) in [
        (
            get("/latest/meta-data/%69am/security-credentials/"),
            400,
            "ImdsBadPath",
        ),
        (
            get("/latest//meta-data/iam/security-credentials/"),
            400,
            "ImdsBadPath",
        ),
        (
            get("/latest/meta-data/iam/../iam/security-credentials/"),
            400,
            "ImdsBadPath",
        ),
        (
            Request::post("/latest/api/token").body(()).unwrap(),
            405,
            "ImdsMethodNotAllowed",
        ),
        (token_put(true), 403, "ImdsForwardedForRefused"),
    ] {
        let path = req.uri().to_string();
        let a = call(&f, f.pod_cgroup, req).await;
        assert_eq!(
            (a.status, a.access.reason.as_deref()),
            (status, Some(reason)),
            "{path}"
        );
    }
    assert_eq!(f.imds.count(), seen, "none of these reached the real IMDS");
}

#[tokio::test]
async fn deny_mode_refuses_pods_everything() {
    let f = fixture(ImdsMode::Deny).await;
    for req in [get("/latest/meta-data/instance-id"), token_put(false)] {
        let a = call(&f, f.pod_cgroup, req).await;
        assert_eq!(
            (a.status, a.access.reason.as_deref()),
            (403, Some("ImdsDenied"))
        );
    }
    assert_eq!(f.imds.count(), 0);
}

#[tokio::test]
async fn pod_role_mode_serves_the_pods_own_role() {
    let f = fixture(ImdsMode::PodRole).await;
    f.pods.upsert(testing::pod("ns", "web", "app"));
    let a = call(&f, f.pod_cgroup, get(CREDS)).await;
    assert_eq!((a.status, a.body.as_str()), (200, "app"));
    assert_eq!(a.access.reason, None);
    let a = call(&f, f.pod_cgroup, get(&format!("{CREDS}app"))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(
        (v["Code"].as_str(), v["AccessKeyId"].as_str()),
        (Some("Success"), Some("ASIAFAKE"))
    );
    assert_eq!(a.access.access_key_id.as_deref(), Some("ASIAFAKE"));
    assert!(a.access.association.is_some());

    let a = call(&f, f.pod_cgroup, get(&format!("{CREDS}node-role"))).await;
    assert_eq!(
        (a.status, a.access.reason.as_deref()),
        (404, Some("ImdsNotPodRole"))
    );
    let a = call(
        &f,
        f.pod_cgroup,
        get("/latest/meta-data/identity-credentials/ec2/"),
    )
    .await;
    assert_eq!(a.status, 404);
    // Everything else is still the real IMDS's.
    let a = call(&f, f.pod_cgroup, get("/latest/meta-data/local-ipv4")).await;
    assert_eq!(a.status, 200);
    assert_eq!(f.imds.count(), 1);

    // A pod without an association: as an instance without a profile.
    f.pods.upsert(testing::pod("ns", "web", "other"));
    let a = call(&f, f.pod_cgroup, get(CREDS)).await;
    assert_eq!(
        (a.status, a.access.reason.as_deref()),
        (404, Some("NoAssociation"))
    );
}

#[tokio::test]
async fn unknown_cgroups_are_retryable_and_upstream_trouble_is_a_gateway_error() {
    let f = fixture(ImdsMode::BlockCredentials).await;
    let a = call(&f, u64::MAX, get("/latest/meta-data/")).await;
    assert_eq!(
        (a.status, a.access.reason.as_deref()),
        (503, Some("CgroupNotFound"))
    );

    let f = fixture_with(
        ImdsMode::BlockCredentials,
        Some(crate::imds::test_support::closed_url()),
    )
    .await;
    for cgroup in [f.pod_cgroup, f.node_cgroup] {
        let a = call(&f, cgroup, get("/latest/meta-data/")).await;
        assert_eq!(
            (a.status, a.access.reason.as_deref()),
            (502, Some("ImdsUpstreamUnreachable"))
        );
    }
}

/// The listener and the front together: each request one record, with its
/// answer's status.
#[tokio::test]
async fn through_the_listener_each_request_is_audited_once() {
    use crate::http::{conn_limit::ConnectionLimits, listener};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Stand-in for the kernel: every connection comes from one cgroup.
    struct OneCgroup(u64);
    impl listener::Attribute for OneCgroup {
        fn caller(&self, _: SocketAddr, _: SocketAddr) -> Result<Option<Caller>, String> {
            Ok(Some(imds_caller(self.0)))
        }
    }

    let f = fixture(ImdsMode::BlockCredentials).await;
    f.pods.upsert(testing::pod("ns", "web", "app"));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(listener::serve(
        l,
        Arc::new(OneCgroup(f.pod_cgroup)),
        f.front.clone(),
        ConnectionLimits {
            total: 8,
            per_caller: 8,
        },
    ));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET /latest/meta-data/instance-id HTTP/1.1\r\nhost: 169.254.169.254\r\n\r\n\
             GET {CREDS} HTTP/1.1\r\nhost: 169.254.169.254\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("HTTP/1.1 404 Not Found"), "{out}");
    let records = f.sink.0.lock().unwrap().clone();
    let got: Vec<_> = records
        .iter()
        .map(|a| (a.status, a.path.as_str(), a.reason.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (200, "/latest/meta-data/instance-id", None),
            (404, CREDS, Some("ImdsCredentialsBlocked")),
        ]
    );
    server.abort();
}
