//! Privileged end-to-end tests of the EKS drop-in (`--upstream eks-auth`) with real
//! parts where they exist: the real eBPF programs, moto's IAM and STS in the node
//! netns, and unmodified clients in the pods (the AWS CLI, boto3, aws-sdk-rust).
//! EKS Auth itself cannot run here: a **stand-in** (`examples/eks_auth_standin.rs`,
//! backed by moto) runs in the node netns; it verifies the pods' RS256 tokens
//! against its own "API server" key and the roles' trust policies in moto's IAM.
//!
//! The agent runs as on EKS: no pods file, no associations, no Kubernetes API. The
//! roles carry the stock EKS Pod Identity trust policy, unchanged, and trust
//! nothing of the agent's.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::*;
use testnode::Node;

const ROLE: &str = "s3-eks-pod-identity-role";
/// The stand-in's port, on 127.0.0.1 in the node netns.
const EKS_AUTH_PORT: u16 = 5080;

/// The pods: `s3` (default/s3-sa, associated), `thief` (default/thief-sa, no
/// association), `host` (hostNetwork, default/s3-sa), `late` (default/s3-sa).
const PODS: [(&str, &str, bool); 4] = [
    ("s3", "s3-sa", false),
    ("thief", "thief-sa", false),
    ("host", "s3-sa", true),
    ("late", "s3-sa", false),
];

struct Eks {
    node: Node,
    dir: tempfile::TempDir,
}

impl Eks {
    fn new() -> Eks {
        let mut node = Node::new();
        let dir = tempfile::tempdir().unwrap();
        for (i, (name, _, host)) in PODS.iter().enumerate() {
            node.add_pod(name, UIDS[i], *host);
        }
        start_sts(&mut node);
        let standin = Path::new(AGENT)
            .parent()
            .unwrap()
            .join("examples/eks_auth_standin");
        assert!(
            standin.exists(),
            "{} missing: cargo test builds examples",
            standin.display()
        );
        let mut c = node.node_command(standin.to_str().unwrap());
        c.args([
            "--listen",
            &format!("127.0.0.1:{EKS_AUTH_PORT}"),
            "--moto",
            &sts_url(),
            "--role",
            ROLE,
            "--associate",
            &format!("default/s3-sa={ROLE}"),
        ])
        .arg("--token-dir")
        .arg(dir.path().join("tokens"));
        for (i, (name, sa, _)) in PODS.iter().enumerate() {
            c.args(["--pod", &format!("{name}:{}:default:{sa}", UIDS[i])]);
        }
        node.spawn_until(c, "EKS Auth stand-in ready", Duration::from_secs(30));
        Eks { node, dir }
    }

    fn token_file(&self, pod: usize) -> PathBuf {
        self.dir.path().join("tokens").join(PODS[pod].0)
    }

    fn token(&self, pod: usize) -> String {
        std::fs::read_to_string(self.token_file(pod)).unwrap()
    }

    fn start_agent(&mut self, extra: &[&str]) {
        let mut c = agent_command(
            &self.node,
            &[
                "--upstream",
                "eks-auth",
                "--cluster-name",
                "test-cluster",
                "--endpoint",
                &format!("http://127.0.0.1:{EKS_AUTH_PORT}"),
                "--region",
                "us-east-1",
                "--probe-addr",
                PROBE,
            ],
        );
        c.args(extra)
            // The node role's stand-in (the stand-in accepts any signature).
            .env("AWS_ACCESS_KEY_ID", "AKIANODEROLEEXAMPLE1")
            .env("AWS_SECRET_ACCESS_KEY", "node-role-secret-never-logged")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        self.node
            .spawn_until(c, "pod-identity-agent ready", Duration::from_secs(20));
    }

    /// `sdk` in `pod` with `token_of`'s token file: Ok(caller ARN) or Err(output).
    fn arn(&self, pod: usize, sdk: Sdk, token_of: usize) -> Result<String, String> {
        sdk_caller_arn(
            &self.node,
            pod,
            sdk,
            &self.token_file(token_of),
            self.dir.path(),
        )
    }

    /// One raw request from `pod` with `token`.
    fn creds(&self, pod: usize, token: &str) -> Value {
        let (_, rec) = client1(
            &self.node,
            pod,
            &["--path", "/v1/credentials", "--token", token],
        );
        rec
    }

    fn metrics(&self) -> String {
        node_get(&self.node, &format!("http://{PROBE}/metrics"))
    }
}

fn assumed(pod: &str) -> String {
    format!("arn:aws:sts::{ACCOUNT}:assumed-role/{ROLE}/eks-test-cluster-{pod}-")
}

#[test]
fn the_seed_walkthrough_works_with_every_sdk_and_no_iam_change() {
    let mut e = Eks::new();
    e.start_agent(&[]);
    for sdk in [Sdk::Cli, Sdk::Boto3, Sdk::Rust] {
        let arn = e
            .arn(0, sdk, 0)
            .unwrap_or_else(|err| panic!("{sdk:?} in pod s3: {err}"));
        assert!(arn.starts_with(&assumed("s3")), "{sdk:?}: {arn}");
    }
    // A hostNetwork pod is attributed by its cgroup like any other.
    let arn = e.arn(2, Sdk::Cli, 2).unwrap();
    assert!(arn.starts_with(&assumed("host")), "{arn}");
    // One EKS Auth call per pod: the other SDKs were served from the cache.
    let m = e.metrics();
    assert_eq!(metric(&m, "pod_identity_sts_calls_total"), 2, "{m}");
    assert_eq!(metric(&m, "pod_identity_cache_hits_total"), 2, "{m}");
    // The stock agent's metric names.
    assert!(
        m.contains("pod_identity_cache_state{state=\"hit\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("pod_identity_http_response{code=\"200\"} 4"),
        "{m}"
    );
}

#[test]
fn a_token_copied_into_another_pod_gets_a_403_and_nothing_leaves_the_node() {
    let mut e = Eks::new();
    e.start_agent(&[]);
    // pod thief holds pod s3's (valid, signed) token.
    for sdk in [Sdk::Cli, Sdk::Boto3, Sdk::Rust] {
        let err = e.arn(1, sdk, 0).unwrap_err();
        assert!(!err.contains(ROLE), "{sdk:?} got the role: {err}");
    }
    let rec = e.creds(1, &e.token(0));
    assert_eq!(rec["status"], 403, "{rec}");
    let body = rec["body"].as_str().unwrap();
    assert!(
        body.starts_with(&format!(
            "Service account token belongs to pod {}, but the connection comes from pod {}",
            UIDS[0], UIDS[1]
        )),
        "{body}"
    );
    // Refused before any upstream call.
    let m = e.metrics();
    assert_eq!(metric(&m, "pod_identity_sts_calls_total"), 0, "{m}");
    // Its own token: EKS Auth has no association for thief-sa; its 404 and text
    // pass through as the stock agent's.
    let rec = e.creds(1, &e.token(1));
    assert_eq!(rec["status"], 404, "{rec}");
    let body = rec["body"].as_str().unwrap();
    assert!(
        body.contains("(ResourceNotFoundException): No Pod Identity Association found for service account thief-sa")
            && body.ends_with("fault: client\n"),
        "{body}"
    );
    let m = e.metrics();
    assert!(
        m.contains(
            "pod_identity_cache_errors{type=\"fetch\",code=\"ResourceNotFoundException\"} 1"
        ),
        "{m}"
    );
    // No token, or garbage: the stock agent's 400s.
    let (_, rec) = client1(&e.node, 0, &["--path", "/v1/credentials"]);
    assert_eq!(rec["status"], 400, "{rec}");
    let rec = e.creds(0, "not-a-jwt");
    assert_eq!(rec["status"], 400, "{rec}");
}

#[test]
fn prefetch_from_the_kubelet_directory_makes_the_first_request_a_hit() {
    let mut e = Eks::new();
    // The kubelet's directory holds only pod s3's EKS Pod Identity token; pod late
    // has an IRSA-audience token where its pod identity token would be, which must
    // never be forwarded.
    let kubelet = e.dir.path().join("kubelet");
    let volume = |uid: &str| {
        kubelet
            .join(uid)
            .join("volumes/kubernetes.io~projected/eks-pod-identity-token")
    };
    std::fs::create_dir_all(volume(UIDS[0])).unwrap();
    std::fs::write(volume(UIDS[0]).join("eks-pod-identity-token"), e.token(0)).unwrap();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    std::fs::create_dir_all(volume(UIDS[3])).unwrap();
    std::fs::write(
        volume(UIDS[3]).join("eks-pod-identity-token"),
        pod_identity_agent::testing::pod_identity_token(
            "sts.amazonaws.com",
            "default",
            "s3-sa",
            "late",
            UIDS[3],
            exp,
        ),
    )
    .unwrap();
    e.start_agent(&["--kubelet-pods-dir", kubelet.to_str().unwrap()]);
    let m = wait_for("the prefetch", Duration::from_secs(10), || {
        let m = e.metrics();
        (metric(&m, "pod_identity_sts_calls_total") == 1).then_some(m)
    });
    assert_eq!(metric(&m, "pod_identity_cache_entries"), 1, "{m}");
    let rec = e.creds(0, &e.token(0));
    assert_eq!(rec["status"], 200, "{rec}");
    let m = e.metrics();
    assert_eq!(metric(&m, "pod_identity_cache_hits_total"), 1, "{m}");
    assert_eq!(metric(&m, "pod_identity_sts_calls_total"), 1, "{m}");
}
