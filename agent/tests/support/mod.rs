//! What the integration tests share (each test file says `mod support;`).
//!
//! * This module: the privileged tests' set-up, a simulated node (`testnode`)
//!   running the real agent binary with the real eBPF programs attached to the
//!   node's test cgroup subtree; clients in its pods; the credentials scenario
//!   with moto's STS; and the waits every test uses.
//! * [`kube_api`]: a **stand-in** for the Kubernetes API server (in-process, on
//!   loopback), for `kube_standin.rs`.
//! * [`eks_api`]: a **stand-in** for the EKS API (in-process, on loopback), for
//!   `eks_standin.rs`.
//! * [`eks_auth_api`]: a **stand-in** for EKS Auth (`AssumeRoleForPodIdentity`,
//!   in-process, on loopback, backed by moto's IAM and STS), and the test's
//!   service-account token signer, for `eks_auth_standin.rs`.
//! * [`fault_proxy`]: a fault-injecting proxy in front of moto's STS (or the EKS
//!   Auth stand-in) in the node's network namespace, for `upstream_faults.rs`.
//!
//! Fakes of the agent's own parts (STS behind `Fetch`, pod and association
//! builders, pod tokens) are in `pod_identity_agent::testing`, shared with the unit
//! tests.
#![allow(dead_code)]

pub mod eks_api;
pub mod eks_auth_api;
pub mod fault_proxy;
pub mod kube_api;
pub mod moto;

use std::{process::Command, time::Duration};

pub use pod_identity_agent::testing::write_json;
use pod_identity_agent::testing::{fake_pod_token, pod_uid, write_projected_token};
use serde_json::{json, Value};
use testnode::{Node, NODE_ADDR4, NODE_ADDR6};

// === waiting ===

/// How much longer to wait under emulation (`PIA_TEST_TIME_SCALE`, set by `cargo
/// xtask test-kernels`): every wait below and `Node::spawn_until` use it; what a
/// test asserts stays the same.
pub use testnode::{scaled, time_scale};

/// Wait (up to 10 s, [`scaled`]) until `cond` holds; fail the test naming `what` otherwise.
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        pod_identity_agent::testing::eventually(scaled(Duration::from_secs(10)), cond).await,
        "timed out waiting for: {what}"
    );
}

/// Poll `f` (every 200 ms, blocking: the node tests are synchronous) until it
/// returns a value; fail the test naming `what` after `timeout` ([`scaled`]).
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = std::time::Instant::now() + scaled(timeout);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// === loopback HTTP, for the stand-ins ===

pub use pod_identity_agent::testing::serve;

// === the simulated node ===

pub const AGENT: &str = env!("CARGO_BIN_EXE_pod-identity-agent");
pub const AGENT_PORT: u16 = 2710;

/// Pod UIDs used across tests (real UUID shapes).
pub const UIDS: [&str; 6] = [
    "2c48913c-b29f-11e7-9350-020968147796",
    "8a1f0e2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
    "f47ac10b-58cc-4372-a567-0e02b2c3d479",
    "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
    "9b2d3c4e-1f2a-4b3c-9d4e-5f6a7b8c9d0e",
    "0e8d6a1c-7b2f-4c3d-8e9f-a0b1c2d3e4f5",
];

/// The agent command for `node`, attached to the node's cgroup subtree.
pub fn agent_command(node: &Node, extra: &[&str]) -> Command {
    let mut c = node.node_command(AGENT);
    c.arg("--cgroup")
        .arg(node.cgroup_root.path())
        .arg("--agent-addr4")
        .arg(NODE_ADDR4.to_string())
        .arg("--agent-addr6")
        .arg(NODE_ADDR6.to_string())
        .arg("--port")
        .arg(AGENT_PORT.to_string())
        // Pinning is tested with a test-mounted bpffs (restart test); never pin
        // under the machine's /sys/fs/bpf.
        .args(if extra.contains(&"--bpffs-dir") {
            &[][..]
        } else {
            &["--bpffs-dir", "none"][..]
        })
        // The STS upstream with local associations unless a test asks for EKS Auth.
        .args(if extra.contains(&"--upstream") {
            &[][..]
        } else {
            &["--upstream", "sts"][..]
        })
        .args(extra)
        .env("RUST_LOG", "info,pod_identity_agent=debug");
    if time_scale() > 1.0 {
        // Under emulation moto answers its first calls in tens of seconds.
        c.arg("--upstream-timeout-scale")
            .arg(time_scale().to_string());
    }
    c
}

pub fn start_agent(node: &mut Node, extra: &[&str]) -> usize {
    let cmd = agent_command(node, extra);
    node.spawn_until(cmd, "pod-identity-agent ready", Duration::from_secs(20))
}

/// Run the test client in pod `i`; returns (client pid, one JSON value per connection).
pub fn client(node: &Node, i: usize, args: &[&str]) -> (u32, Vec<Value>) {
    let mut c = node.pod_command(i, "python3");
    c.arg(testnode::CLIENT_PY).args(args);
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn client");
    let pid = child.id();
    let out = child.wait_with_output().expect("client output");
    assert!(
        out.status.success(),
        "client in pod {i} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad client line {l:?}: {e}")))
        .collect();
    (pid, recs)
}

/// Client arguments for a connection straight to the agent's port, not through
/// the redirect: the kernel has no record of it.
pub const DIRECT_TO_AGENT: [&str; 6] = [
    "--addr",
    "169.254.199.1",
    "--port",
    "2710",
    "--host",
    "169.254.170.23",
];

/// The single record of a one-connection client run.
pub fn client1(node: &Node, i: usize, args: &[&str]) -> (u32, Value) {
    let (pid, mut recs) = client(node, i, args);
    assert_eq!(recs.len(), 1, "{recs:?}");
    (pid, recs.remove(0))
}

/// The agent's JSON body of a record.
pub fn body(rec: &Value) -> Value {
    let b = rec["body"]
        .as_str()
        .unwrap_or_else(|| panic!("no body in {rec}"));
    serde_json::from_str(b).unwrap_or_else(|e| panic!("body not JSON ({e}): {b}"))
}

// === credentials scenario helpers ===

pub const STS_PORT: u16 = 5000;
pub const ACCOUNT: &str = "123456789012";

pub fn sts_url() -> String {
    format!("http://{NODE_ADDR4}:{STS_PORT}")
}

pub fn role(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{name}")
}

/// Start moto's STS server (a real STS implementation) in the node netns, on the
/// node address, so pods can call it with the credentials they were served.
pub fn start_sts(node: &mut Node) -> usize {
    let mut c = node.node_command("moto_server");
    c.args(["-H", &NODE_ADDR4.to_string(), "-p", &STS_PORT.to_string()]);
    let h = node.spawn_until(c, "Running on", Duration::from_secs(30));
    warm_up_moto(node, &sts_url());
    h
}

/// Under emulation only: moto loads a service's code and models on its first call
/// of that service, which takes tens of seconds in a TCG guest (under 0.1 s on the
/// host). One read-only call of each service the tests use (STS
/// GetCallerIdentity, IAM ListRoles: no state changes) makes the first calls of
/// the agent, the stand-ins and the pods take what later ones take.
pub fn warm_up_moto(node: &Node, url: &str) {
    if time_scale() <= 1.0 {
        return;
    }
    const WARM_UP: &str = r#"
import sys, urllib.request
for service, body in (("sts", "Action=GetCallerIdentity&Version=2011-06-15"),
                      ("iam", "Action=ListRoles&Version=2010-05-08")):
    auth = ("AWS4-HMAC-SHA256 Credential=AKIAWARMUPEXAMPLE000/20260101/us-east-1/%s/aws4_request, "
            "SignedHeaders=host, Signature=0" % service)
    req = urllib.request.Request(sys.argv[1] + "/", data=body.encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded", "Authorization": auth})
    urllib.request.urlopen(req, timeout=float(sys.argv[2])).read()
"#;
    let t = std::time::Instant::now();
    let mut c = node.node_command("python3");
    c.args(["-c", WARM_UP, url])
        .arg(scaled(Duration::from_secs(30)).as_secs().to_string());
    let out = c.output().expect("python3");
    assert!(
        out.status.success(),
        "warming moto up at {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("moto at {url} warmed up in {:?}", t.elapsed());
}

/// A pod entry of the agent's pods file.
pub fn pod_json(node: &Node, i: usize, namespace: &str, sa: &str, annotations: Value) -> Value {
    let p = &node.pods[i];
    serde_json::json!({
        "uid": p.uid, "namespace": namespace, "name": p.name, "serviceAccount": sa,
        "serviceAccountAnnotations": annotations, "hostNetwork": p.netns.is_none()
    })
}

/// Which client runs in the pod.
#[derive(Clone, Copy, Debug)]
pub enum Sdk {
    /// `aws sts get-caller-identity` (the AWS CLI, botocore).
    Cli,
    /// boto3.
    Boto3,
    /// aws-sdk-rust (`examples/sdk_client.rs`).
    Rust,
}

pub fn sdk_client_bin() -> std::path::PathBuf {
    std::path::Path::new(AGENT)
        .parent()
        .unwrap()
        .join("examples/sdk_client")
}

/// Run `sdk` in pod `i`: Ok(caller ARN) or Err(stderr).
pub fn sdk_caller_arn(
    node: &Node,
    i: usize,
    sdk: Sdk,
    token_file: &std::path::Path,
    home: &std::path::Path,
) -> Result<String, String> {
    let out = sdk_command(node, i, sdk, token_file, home)
        .output()
        .expect("run sdk client");
    sdk_result(out)
}

/// The caller ARN an SDK client printed, or its output when it failed.
pub fn sdk_result(out: std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The command running `sdk` in pod `i` (`sts get-caller-identity` against moto).
pub fn sdk_command(
    node: &Node,
    i: usize,
    sdk: Sdk,
    token_file: &std::path::Path,
    home: &std::path::Path,
) -> Command {
    let mut c = match sdk {
        Sdk::Cli => {
            let mut c = node.pod_command(i, "aws");
            c.args([
                "sts",
                "get-caller-identity",
                "--output",
                "text",
                "--query",
                "Arn",
                "--endpoint-url",
                &sts_url(),
            ]);
            c
        }
        Sdk::Boto3 => {
            let mut c = node.pod_command(i, "python3");
            c.args([
                "-c",
                "import boto3,sys; print(boto3.client('sts', endpoint_url=sys.argv[1], region_name='us-east-1').get_caller_identity()['Arn'])",
                &sts_url(),
            ]);
            c
        }
        Sdk::Rust => {
            let bin = sdk_client_bin();
            assert!(
                bin.exists(),
                "{} missing: cargo test builds examples",
                bin.display()
            );
            let mut c = node.pod_command(i, bin.to_str().unwrap());
            c.arg(sts_url());
            c
        }
    };
    testnode::sdk_env(
        &mut c,
        token_file,
        home,
        &std::env::var("PATH").unwrap_or_default(),
    );
    c
}

/// GET a URL from inside the node netns: (status, body) whatever the status.
pub fn node_get_status(node: &Node, url: &str) -> (u16, String) {
    const GET: &str = "import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=5); print(r.status); print(r.read().decode(), end='')
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode(), end='')";
    let mut c = node.node_command("python3");
    c.args(["-c", GET, url]);
    let out = c.output().expect("python3");
    assert!(
        out.status.success(),
        "GET {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// GET a URL from inside the node netns (metrics on the probe port).
pub fn node_get(node: &Node, url: &str) -> String {
    let mut c = node.node_command("python3");
    c.args(["-c", "import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())", url]);
    let out = c.output().expect("python3");
    assert!(
        out.status.success(),
        "GET {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A counter's value from Prometheus text.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok()))
        .unwrap_or_else(|| panic!("metric {name} not in:\n{text}"))
}

/// The agent's log without terminal colour codes.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// === the credentials scenario ===

pub const PROBE: &str = "127.0.0.1:2711";

pub struct Scenario {
    pub node: Node,
    pub dir: tempfile::TempDir,
    pub pods: Vec<Value>,
    pub tokens: Vec<std::path::PathBuf>,
    pub sts: usize,
    /// The agent's STS endpoint when not moto's directly (a fault proxy).
    pub sts_endpoint: Option<String>,
}

impl Scenario {
    /// pod-a (sa app-a → role-a), pod-b (app-b → role-b), pod-c (no association),
    /// host-net (hostNetwork, host-sa → role-h), pod-irsa (IRSA annotation),
    /// pod-chain (role-first → target role-target).
    pub fn new() -> Scenario {
        let mut node = Node::new();
        let dir = tempfile::tempdir().unwrap();
        let specs: [(&str, &str, bool, Value); 6] = [
            ("pod-a", "app-a", false, json!({})),
            ("pod-b", "app-b", false, json!({})),
            ("pod-c", "no-role", false, json!({})),
            ("host-net", "host-sa", true, json!({})),
            (
                "pod-irsa",
                "irsa-sa",
                false,
                json!({"eks.amazonaws.com/role-arn": role("role-irsa")}),
            ),
            ("pod-chain", "chain-sa", false, json!({})),
        ];
        let mut pods = Vec::new();
        let mut tokens = Vec::new();
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 86400;
        for (i, (name, sa, host, ann)) in specs.into_iter().enumerate() {
            node.add_pod(name, UIDS[i], host);
            pods.push(pod_json(&node, i, "default", sa, ann));
            let t = dir.path().join(format!("token-{name}"));
            std::fs::write(&t, fake_pod_token("default", sa, name, UIDS[i], exp)).unwrap();
            tokens.push(t);
        }
        // IRSA: the projected token where the kubelet puts it.
        write_projected_token(
            &dir.path().join("kubelet"),
            &pod_uid(UIDS[4]),
            "aws-iam-token",
            "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsic3RzLmFtYXpvbmF3cy5jb20iXSwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50OmRlZmF1bHQ6aXJzYS1zYSJ9.c2ln",
        );
        write_json(&dir.path().join("pods.json"), &json!({"pods": pods}));
        write_json(
            &dir.path().join("associations.json"),
            &json!({"associations": [
                {"namespace": "default", "serviceAccount": "app-a", "roleArn": role("role-a")},
                {"namespace": "default", "serviceAccount": "app-b", "roleArn": role("role-b")},
                {"namespace": "default", "serviceAccount": "host-sa", "roleArn": role("role-h")},
                {"namespace": "default", "serviceAccount": "chain-sa", "roleArn": role("role-first"), "targetRoleArn": role("role-target")},
            ]}),
        );
        let sts = start_sts(&mut node);
        Scenario {
            node,
            dir,
            pods,
            tokens,
            sts,
            sts_endpoint: None,
        }
    }

    pub fn start_agent(&mut self, extra: &[&str]) -> usize {
        let c = self.agent_command(extra);
        self.node
            .spawn_until(c, "pod-identity-agent ready", Duration::from_secs(20))
    }

    pub fn agent_command(&self, extra: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = agent_command(&self.node, extra);
        c.arg("--pods-file")
            .arg(d.join("pods.json"))
            .arg("--associations-file")
            .arg(d.join("associations.json"))
            .arg("--kubelet-pods-dir")
            .arg(d.join("kubelet"))
            .args([
                "--sts-endpoint",
                &self.sts_endpoint.clone().unwrap_or_else(sts_url),
                "--region",
                "us-east-1",
                "--cluster-name",
                "demo",
            ])
            .args(["--probe-addr", PROBE])
            // The agent's own credentials (moto accepts any).
            .env("AWS_ACCESS_KEY_ID", "AKIAAGENTEXAMPLE0001")
            .env("AWS_SECRET_ACCESS_KEY", "agent-secret-never-logged")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        c
    }

    pub fn arn(&self, pod: usize, sdk: Sdk) -> Result<String, String> {
        self.arn_with_token(pod, sdk, pod)
    }

    pub fn arn_with_token(&self, pod: usize, sdk: Sdk, token_of: usize) -> Result<String, String> {
        sdk_caller_arn(
            &self.node,
            pod,
            sdk,
            &self.tokens[token_of],
            self.dir.path(),
        )
    }

    pub fn creds(&self, pod: usize) -> Value {
        let (_, rec) = client1(&self.node, pod, &["--path", "/v1/credentials"]);
        rec
    }

    pub fn metrics(&self) -> String {
        node_get(&self.node, &format!("http://{PROBE}/metrics"))
    }
}

/// Instance metadata's address.
pub const IMDS_ADDR: &str = "169.254.169.254";

/// A "real IMDS" for `s`: moto's server (it answers `/latest/api/token`,
/// `placement/region` and `iam/security-credentials/<role>` with the node role
/// `default-role`) on 169.254.169.254:80 in the node netns, which has no route off
/// the machine.
pub fn with_real_imds(s: &mut Scenario) {
    let out = Command::new("ip")
        .args([
            "-n",
            s.node.netns.name(),
            "addr",
            "add",
            &format!("{IMDS_ADDR}/32"),
            "dev",
            "lo",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut c = s.node.node_command("moto_server");
    c.args(["-H", IMDS_ADDR, "-p", "80"]);
    s.node.spawn_until(c, "Running on", Duration::from_secs(30));
}
