//! Privileged tests of the node-role guard (`--imds`): the real eBPF programs send
//! pods' connections to instance metadata to the agent's IMDS front. The "real
//! IMDS" is moto's server (it answers `/latest/api/token`, `placement/region` and
//! `iam/security-credentials/<role>` with the node role `default-role`) on
//! 169.254.169.254:80 inside the simulated node's network namespace, which has no
//! route off the machine. Clients are unmodified: boto3 (botocore's IMDS fetcher
//! and credential chain) and the test client.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;
use testnode::Node;

const IMDS: &str = "169.254.169.254";
/// moto's instance profile role.
const NODE_ROLE: &str = "default-role";

/// The credentials scenario plus a "real IMDS" on 169.254.169.254:80 in the node
/// netns.
fn scenario() -> Scenario {
    let mut s = Scenario::new();
    with_real_imds(&mut s);
    s
}

fn start(s: &mut Scenario, mode: &str, extra: &[&str]) {
    let mut args = vec![
        "--imds",
        mode,
        "--imds-endpoint",
        "http://169.254.169.254:80",
    ];
    args.extend_from_slice(extra);
    s.start_agent(&args);
}

/// boto3 in pod `i` with no container-credentials variables (an old SDK, a pod
/// without an association, a tool that only knows IMDS): its region through
/// IMDSv2, and whose credentials its default chain finds.
fn boto3_without_container_vars(node: &Node, i: usize, home: &std::path::Path) -> Value {
    const SCRIPT: &str = r#"
import json, sys
import boto3, botocore.exceptions
from botocore.utils import IMDSFetcher
out = {}
f = IMDSFetcher(timeout=2 * float(sys.argv[2]), num_attempts=2)
token = f._fetch_metadata_token()
out["imdsv2_token"] = bool(token)
out["region"] = f._get_request("latest/meta-data/placement/region", None, token).text
try:
    sts = boto3.client("sts", endpoint_url=sys.argv[1], region_name=out["region"])
    out["arn"] = sts.get_caller_identity()["Arn"]
except botocore.exceptions.NoCredentialsError as e:
    out["error"] = type(e).__name__
print(json.dumps(out))
"#;
    let mut c = node.pod_command(i, "python3");
    // Under emulation botocore's IMDS waits are stretched like every other wait
    // (its own variables; 1 s by default).
    c.args(["-c", SCRIPT, &sts_url(), &time_scale().to_string()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    if time_scale() > 1.0 {
        c.env("AWS_METADATA_SERVICE_TIMEOUT", time_scale().to_string());
    }
    for k in ["PYENV_ROOT", "PYENV_VERSION"] {
        if let Ok(v) = std::env::var(k) {
            c.env(k, v);
        }
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "boto3 in pod {i}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// One GET from pod `i` to IMDS at `addr` (family 4, 6 or mapped).
fn imds_get(node: &Node, i: usize, addr: &str, family: &str, path: &str) -> Value {
    let (_, rec) = client1(
        node,
        i,
        &[
            "--addr", addr, "--family", family, "--port", "80", "--path", path,
        ],
    );
    rec
}

const CREDS_PATH: &str = "/latest/meta-data/iam/security-credentials/";

#[test]
fn block_credentials_keeps_pods_from_the_node_role_but_not_from_metadata() {
    let mut s = scenario();
    start(&mut s, "block-credentials", &[]);
    // pod-a (own association) and pod-c (none), and the hostNetwork pod, all
    // without container variables: metadata yes, node role no.
    for pod in [0, 2, 3] {
        let out = boto3_without_container_vars(&s.node, pod, s.dir.path());
        assert_eq!(out["region"], "us-east-1", "pod {pod}: {out}");
        assert_eq!(out["imdsv2_token"], true, "pod {pod}: {out}");
        assert_eq!(out["error"], "NoCredentialsError", "pod {pod}: {out}");
        assert!(out.get("arn").is_none(), "pod {pod} got {out}");
    }
    // No path the redirect covers reaches the real IMDS's credentials.
    for (addr, family) in [
        (IMDS, "4"),
        ("fd00:ec2::254", "6"),
        ("::ffff:169.254.169.254", "mapped"),
    ] {
        for pod in [0, 3] {
            let rec = imds_get(&s.node, pod, addr, family, CREDS_PATH);
            assert_eq!(rec["status"], 404, "pod {pod} via {addr}: {rec}");
            assert!(
                !rec["body"].as_str().unwrap_or_default().contains(NODE_ROLE),
                "{rec}"
            );
            let rec = imds_get(
                &s.node,
                pod,
                addr,
                family,
                &format!("{CREDS_PATH}{NODE_ROLE}"),
            );
            assert_eq!(rec["status"], 404, "pod {pod} via {addr}: {rec}");
            assert!(
                !rec["body"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("AccessKeyId"),
                "{rec}"
            );
            // The peer the client sees is still IMDS.
            assert_eq!(rec["peer"][1], 80, "{rec}");
        }
    }
    // Tricks on the path are refused, never forwarded.
    for path in [
        "/latest/meta-data/iam//security-credentials/",
        "/latest/meta-data/iam/./security-credentials/default-role",
        "/latest/meta-data/iam/%73ecurity-credentials/",
        "/latest/meta-data/x/../iam/security-credentials/",
        "/2021-07-15/meta-data/iam/security-credentials/",
    ] {
        let rec = imds_get(&s.node, 0, IMDS, "4", path);
        let status = rec["status"].as_u64().unwrap();
        assert!(status == 400 || status == 404, "{path}: {rec}");
    }
}

#[test]
fn node_processes_keep_the_node_role() {
    let mut s = scenario();
    start(&mut s, "block-credentials", &[]);
    // A process of the node (a cgroup in the attach subtree that is not a pod).
    let cg = testnode::Cgroup::create(
        s.node
            .cgroup_root
            .path()
            .join("system.slice/node-agent.scope"),
    );
    // Let the agent's rescan classify it (then the kernel leaves it alone).
    std::thread::sleep(scaled(Duration::from_millis(2500)));
    let mut c = testnode::in_cgroup_and_netns(cg.path(), &s.node.netns.path(), "python3");
    c.args([
        testnode::CLIENT_PY,
        "--addr",
        IMDS,
        "--port",
        "80",
        "--path",
        &format!("{CREDS_PATH}{NODE_ROLE}"),
    ]);
    let out = c.output().unwrap();
    let rec: Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(rec["status"], 200, "{rec}");
    assert!(
        rec["body"].as_str().unwrap().contains("AccessKeyId"),
        "{rec}"
    );
    // The agent never saw it.
    let m = s.metrics();
    assert!(!m.contains("ImdsCredentialsBlocked"), "{m}");
}

#[test]
fn pod_role_serves_each_pod_its_own_role_through_imds() {
    let mut s = scenario();
    start(&mut s, "pod-role", &[]);
    let a = boto3_without_container_vars(&s.node, 0, s.dir.path());
    assert_eq!(a["region"], "us-east-1", "{a}");
    let arn = a["arn"].as_str().unwrap_or_else(|| panic!("{a}"));
    assert!(arn.contains(":assumed-role/role-a/"), "{arn}");
    let h = boto3_without_container_vars(&s.node, 3, s.dir.path());
    let arn = h["arn"].as_str().unwrap_or_else(|| panic!("{h}"));
    assert!(
        arn.contains(":assumed-role/role-h/"),
        "hostNetwork pod: {arn}"
    );
    // A pod without an association: like an instance without a profile.
    let c = boto3_without_container_vars(&s.node, 2, s.dir.path());
    assert_eq!(c["error"], "NoCredentialsError", "{c}");
    // The listing names the pod's role, never the node's.
    let rec = imds_get(&s.node, 0, IMDS, "4", CREDS_PATH);
    assert_eq!(
        (rec["status"].as_u64(), rec["body"].as_str()),
        (Some(200), Some("role-a")),
        "{rec}"
    );
    let rec = imds_get(&s.node, 0, IMDS, "4", &format!("{CREDS_PATH}{NODE_ROLE}"));
    assert_eq!(rec["status"], 404, "{rec}");
}

#[test]
fn deny_in_enforce_mode_refuses_pods_at_connect() {
    let mut s = scenario();
    start(&mut s, "deny", &["--mode", "enforce"]);
    // Until the agent has classified pod-a's cgroup, the front refuses it (403);
    // then the kernel does.
    wait_for(
        "the kernel's verdict for pod-a",
        Duration::from_secs(10),
        || {
            let rec = imds_get(&s.node, 0, IMDS, "4", CREDS_PATH);
            (rec["errno"] == "EPERM").then_some(())
        },
    );
    for (addr, family) in [
        (IMDS, "4"),
        ("fd00:ec2::254", "6"),
        ("::ffff:169.254.169.254", "mapped"),
    ] {
        let rec = imds_get(&s.node, 0, addr, family, CREDS_PATH);
        assert_eq!(rec["errno"], "EPERM", "{addr}: {rec}");
    }
    // The credentials endpoint still serves the pod its role.
    let arn = s.arn(0, Sdk::Cli).unwrap();
    assert!(arn.contains(":assumed-role/role-a/"), "{arn}");
}
