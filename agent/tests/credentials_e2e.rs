//! Privileged end-to-end tests of the credentials path with real parts: the real
//! eBPF programs, moto's STS server (a real STS implementation) in the node netns,
//! and unmodified clients in the pods: the AWS CLI, boto3 and aws-sdk-rust.
//!
//! The pod directory is the agent's file source (there is no API server here);
//! tokens are unsigned JWTs shaped like the kubelet's projected tokens.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

fn assumed(role: &str) -> String {
    format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/")
}

#[test]
fn every_sdk_gets_its_own_pods_role_and_nothing_else() {
    let mut s = Scenario::new();
    s.start_agent(&[]);
    for sdk in [Sdk::Cli, Sdk::Boto3, Sdk::Rust] {
        let a = s
            .arn(0, sdk)
            .unwrap_or_else(|e| panic!("{sdk:?} in pod-a: {e}"));
        assert!(a.starts_with(&assumed("role-a")), "{sdk:?}: {a}");
        assert!(a.contains("/eks-demo-pod-a-"), "EKS-like session name: {a}");
        let b = s
            .arn(1, sdk)
            .unwrap_or_else(|e| panic!("{sdk:?} in pod-b: {e}"));
        assert!(b.starts_with(&assumed("role-b")), "{sdk:?}: {b}");
    }
    // The hostNetwork pod gets its own role, not the node's.
    let h = s.arn(3, Sdk::Cli).unwrap();
    assert!(h.starts_with(&assumed("role-h")), "{h}");
    // IRSA: AssumeRoleWithWebIdentity with the pod's projected token.
    let i = s.arn(4, Sdk::Boto3).unwrap();
    assert!(i.starts_with(&assumed("role-irsa")), "{i}");
    // Role chaining: the pod ends up in the target role.
    let c = s.arn(5, Sdk::Rust).unwrap();
    assert!(c.starts_with(&assumed("role-target")), "{c}");

    // The raw response is the stock agent's JSON.
    let rec = s.creds(0);
    assert_eq!(rec["status"], 200, "{rec}");
    let body = rec["body"].as_str().unwrap();
    let v: Value = serde_json::from_str(body).unwrap();
    // Field order as the stock agent writes it (serde_json::Value would sort keys).
    let pos: Vec<usize> = [
        "AccessKeyId",
        "SecretAccessKey",
        "Token",
        "AccountId",
        "Expiration",
    ]
    .iter()
    .map(|k| {
        body.find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("{k} missing: {body}"))
    })
    .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "field order: {body}");
    assert!(body.starts_with("{\"AccessKeyId\":\"ASIA"), "{body}");
    assert_eq!(v["AccountId"], ACCOUNT);
    assert!(v["Expiration"].as_str().unwrap().ends_with('Z'));
    assert!(!body.ends_with('\n'));
}

#[test]
fn another_pods_token_never_yields_the_other_pods_role() {
    let mut s = Scenario::new();
    s.start_agent(&[]);
    // pod-a presents pod-b's token: identity still comes from the kernel.
    for sdk in [Sdk::Cli, Sdk::Rust] {
        let a = s.arn_with_token(0, sdk, 1).unwrap();
        assert!(a.starts_with(&assumed("role-a")), "{sdk:?}: {a}");
    }
}

#[test]
fn cross_check_mode_refuses_a_foreign_token() {
    let mut s = Scenario::new();
    s.start_agent(&["--token-cross-check"]);
    let ok = s.arn(0, Sdk::Cli).unwrap();
    assert!(ok.starts_with(&assumed("role-a")), "{ok}");
    let err = s.arn_with_token(0, Sdk::Rust, 1).unwrap_err();
    assert!(
        err.contains("403") || err.contains("belongs to pod"),
        "{err}"
    );
    let (_, rec) = client1(
        &s.node,
        0,
        &[
            "--path",
            "/v1/credentials",
            "--token",
            &std::fs::read_to_string(&s.tokens[1]).unwrap(),
        ],
    );
    assert_eq!(rec["status"], 403, "{rec}");
    assert!(rec["body"].as_str().unwrap().contains(UIDS[1]), "{rec}");
}

#[test]
fn a_pod_without_association_gets_a_clear_404() {
    let mut s = Scenario::new();
    s.start_agent(&[]);
    let rec = s.creds(2);
    assert_eq!(rec["status"], 404, "{rec}");
    assert!(
        rec["body"]
            .as_str()
            .unwrap()
            .contains("No Pod Identity association for service account default/no-role"),
        "{rec}"
    );
    let err = s.arn(2, Sdk::Cli).unwrap_err();
    assert!(
        err.contains("No Pod Identity association") || err.contains("404"),
        "{err}"
    );
    // Counted like the stock agent's metric, and by reason.
    let m = s.metrics();
    assert!(
        metric(&m, "pod_identity_http_response{code=\"404\"}") >= 2,
        "{m}"
    );
    assert!(
        metric(&m, "pod_identity_refusals_total{reason=\"NoAssociation\"}") >= 2,
        "{m}"
    );
}

#[test]
fn sts_outage_serves_cached_credentials_and_recovers() {
    let mut s = Scenario::new();
    s.start_agent(&[]);
    let before = s.creds(0);
    assert_eq!(before["status"], 200, "{before}");
    let key = |r: &Value| {
        serde_json::from_str::<Value>(r["body"].as_str().unwrap()).unwrap()["AccessKeyId"].clone()
    };

    s.node.kill(s.sts);
    // Cached credentials are still served...
    let during = s.creds(0);
    assert_eq!(during["status"], 200, "{during}");
    assert_eq!(key(&during), key(&before));
    // ...but a pod that appears now cannot get any: a retryable 5xx, not a 4xx.
    let i = s
        .node
        .add_pod("pod-new", UIDS[5].replace("0e8d", "1e8d").as_str(), false);
    s.pods
        .push(pod_json(&s.node, i, "default", "app-b", json!({})));
    write_json(&s.dir.path().join("pods.json"), &json!({"pods": s.pods}));
    std::thread::sleep(scaled(Duration::from_millis(2500)));
    let fresh = s.creds(i);
    let status = fresh["status"].as_u64().unwrap();
    assert!((500..600).contains(&status), "{fresh}");

    // STS back: the new pod recovers.
    s.sts = start_sts(&mut s.node);
    let mut ok = None;
    for _ in 0..20 {
        let r = s.creds(i);
        if r["status"] == 200 {
            ok = Some(r);
            break;
        }
        std::thread::sleep(scaled(Duration::from_millis(500)));
    }
    assert!(ok.is_some(), "no recovery after STS came back");
}

#[test]
fn concurrent_first_requests_from_one_pod_make_one_sts_call() {
    let mut s = Scenario::new();
    s.start_agent(&[]);
    // Let start-up prefetching settle, then add a brand-new pod.
    std::thread::sleep(scaled(Duration::from_millis(1500)));
    let i = s
        .node
        .add_pod("pod-burst", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", false);
    s.pods
        .push(pod_json(&s.node, i, "default", "app-a", json!({})));
    let calls_before = metric(&s.metrics(), "pod_identity_sts_calls_total");
    write_json(&s.dir.path().join("pods.json"), &json!({"pods": s.pods}));
    let node = std::sync::Arc::new(s.node);
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let node = node.clone();
            std::thread::spawn(move || client1(&node, i, &["--path", "/v1/credentials"]).1)
        })
        .collect();
    let recs: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let keys: std::collections::HashSet<String> = recs
        .iter()
        .map(|r| {
            assert_eq!(r["status"], 200, "{r}");
            serde_json::from_str::<Value>(r["body"].as_str().unwrap()).unwrap()["AccessKeyId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        keys.len(),
        1,
        "all 16 processes share one session: {keys:?}"
    );
    let calls_after = metric(
        &node_get(&node, &format!("http://{PROBE}/metrics")),
        "pod_identity_sts_calls_total",
    );
    assert_eq!(
        calls_after - calls_before,
        1,
        "one STS call for 16 concurrent first requests"
    );
}

#[test]
fn the_agent_never_redirects_its_own_connections() {
    // Make the agent's own STS traffic look exactly like a credentials request:
    // the credentials address *is* the STS address, and the agent runs in a cgroup
    // under the attach point. If the programs redirected the agent's own sockets,
    // its STS calls would loop back into itself and no pod would get credentials.
    let mut s = Scenario::new();
    let agent_cg = testnode::Cgroup::create(
        s.node
            .cgroup_root
            .path()
            .join("system.slice/pod-identity-agent.service"),
    );
    let sts_port = STS_PORT.to_string();
    let cmd = s.agent_command(&["--cred-addr4", "169.254.199.1", "--cred-port", &sts_port]);
    let wrapped = testnode::in_cgroup(agent_cg.path(), &cmd);
    let agent = s
        .node
        .spawn_until(wrapped, "pod-identity-agent ready", Duration::from_secs(20));
    let (pid, rec) = client1(
        &s.node,
        0,
        &[
            "--addr",
            "169.254.199.1",
            "--port",
            &sts_port,
            "--path",
            "/v1/credentials",
            "--host",
            "169.254.199.1",
        ],
    );
    assert_eq!(rec["status"], 200, "{rec}");
    let v: Value = serde_json::from_str(rec["body"].as_str().unwrap()).unwrap();
    assert!(
        v["AccessKeyId"].as_str().unwrap().starts_with("ASIA"),
        "{v}"
    );
    // ...and the pod's request really went through the redirect: the agent (not
    // moto, which listens on the same address and port) answered it, attributed
    // to the client's process by the kernel. (The peer name alone proves nothing
    // here: the credentials address is the STS address.)
    let log = strip_ansi(&s.node.output_of(agent));
    assert!(
        log.lines().any(|l| l.contains(" access ")
            && l.contains("status=200")
            && l.contains(&format!("pid={pid} "))),
        "no attributed access by pid {pid} in the agent's log:\n{log}"
    );
    drop(agent_cg);
}
