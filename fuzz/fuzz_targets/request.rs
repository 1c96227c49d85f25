//! Request handling, bytes in: what a pod writes on its connection, through the
//! agent's own HTTP/1.1 connection handling (`http::listener::serve_connection`,
//! the listener's bounds) and the credentials endpoint (`http::Service`: host
//! check, routing, token checks, refusals), on a current-thread runtime over an
//! in-memory pipe. The connection is attributed to a pod cgroup of a temp tree
//! standing in for cgroupfs; STS and EKS Auth are `testing`'s in-process fakes.
//! Both modes run every input: STS with the token cross-check, and EKS Auth.
#![no_main]

use std::{path::PathBuf, sync::Arc, time::Duration};

use libfuzzer_sys::fuzz_target;
use pod_identity_agent::{
    audit::TracingSink,
    credentials::{CacheSettings, CredentialCache},
    http::{
        drain::Drain,
        listener::{serve_connection, RequestContext},
        ratelimit::Limits,
        Service, ServiceSettings,
    },
    testing::{self, FakeSts, POD_UID},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CID: &str = "4b3c0a1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b";

struct Fixture {
    rt: tokio::runtime::Runtime,
    services: Vec<Arc<Service<FakeSts>>>,
    pod_cgroup: u64,
}

/// A cgroup tree of empty directories in the temp directory (created once, reused
/// by every run: nothing to clean up), the pod `ns/web` running as `app`.
fn fixture() -> Fixture {
    use std::os::unix::fs::MetadataExt;
    let root: PathBuf = std::env::temp_dir().join("pod-identity-agent-fuzz-request");
    let pod_dir =
        testing::pod_cgroup_dir(&root, POD_UID).join(format!("cri-containerd-{CID}.scope"));
    std::fs::create_dir_all(&pod_dir).expect("fuzz cgroup tree");
    let services = [(true, false), (false, true)]
        .into_iter()
        .map(|(token_cross_check, eks_auth)| {
            let app = testing::association("ns", "app", "arn:aws:iam::111122223333:role/app");
            let resolver = testing::resolver(&root, Duration::ZERO, vec![app]);
            resolver.pods.upsert(testing::pod("ns", "web", "app"));
            let settings = ServiceSettings {
                cred_addr4: "169.254.170.23".into(),
                cred_addr6: "fd00:ec2::23".into(),
                token_cross_check,
                // No request limit: every input gets past it.
                limits: Limits {
                    rate: 0.0,
                    burst: 0.0,
                },
                eks_auth,
            };
            Arc::new(Service::new(
                settings,
                resolver,
                CredentialCache::new(FakeSts, CacheSettings::default()),
                Arc::new(TracingSink),
            ))
        })
        .collect();
    Fixture {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime"),
        services,
        pod_cgroup: std::fs::metadata(&pod_dir).expect("pod cgroup").ino(),
    }
}

fuzz_target!(|data: &[u8]| {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    let f = FIXTURE.get_or_init(fixture);
    for svc in &f.services {
        let ctx = RequestContext {
            peer: "169.254.200.2:40000".parse().unwrap(),
            local: "169.254.199.1:2710".parse().unwrap(),
            caller: Ok(testing::caller(f.pod_cgroup)),
        };
        let out = f.rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let serve = serve_connection(
                hyper_util::rt::TokioIo::new(server),
                ctx,
                svc.clone(),
                true,
                Drain::never(),
            );
            let talk = async {
                // The server may close first (a refused head): then writes fail.
                let _ = client.write_all(data).await;
                let _ = client.shutdown().await;
                let mut out = Vec::new();
                let _ = client.read_to_end(&mut out).await;
                out
            };
            let (_, out) =
                tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(serve, talk) })
                    .await
                    .expect("a connection whose client has closed ends within 10 s");
            out
        });
        // Whatever came in, what goes out is HTTP responses (hyper answers an
        // HTTP/1.0 request in HTTP/1.0).
        if !out.is_empty() {
            assert!(
                out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }
});
