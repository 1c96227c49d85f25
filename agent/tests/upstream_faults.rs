//! Privileged tests of the agent against a failing upstream: the real eBPF
//! programs, moto's STS server in the node netns behind a fault-injecting proxy
//! (`support/fault_proxy.rs`: refused and reset connections, a black hole,
//! throttling, 5xx, malformed and truncated bodies, credentials that expire too
//! soon), the same in front of the EKS Auth **stand-in** (the agent's default
//! upstream; EKS Auth itself cannot run here), and clients in the pods (the test
//! client, the AWS CLI, boto3).
//!
//! For every fault: a pod with cached credentials keeps being served; a pod with
//! nothing cached gets a status the SDKs retry, fast (inside the SDKs' 1 s / 2 s
//! budgets); no response carries an expired `Expiration`; the upstream is asked a
//! bounded number of times; and service comes back within about a second of the
//! upstream. Each test prints what the pods saw.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use support::fault_proxy::{Api, Fault, FaultProxy};
use support::*;
use testnode::NODE_ADDR4;

/// The agent's STS client makes at most this many attempts per fetch (its default).
const ATTEMPTS: u64 = 3;
/// Requests a pod without credentials makes while the fault is on.
const NEW_POD_REQUESTS: u64 = 3;
/// Requests a pod with cached credentials makes while the fault is on.
const CACHED_POD_REQUESTS: usize = 8;

/// The faults, in the order the test injects them.
fn faults() -> Vec<Fault> {
    vec![
        Fault::Refuse,
        Fault::Reset,
        Fault::BlackHole,
        Fault::Throttle,
        Fault::ServerError,
        Fault::Malformed,
        Fault::Truncated,
        Fault::ShortLived(Duration::from_secs(300)),
    ]
}

/// Seconds since the epoch of an RFC 3339 `Expiration`.
fn expiration_secs(text: &str) -> i64 {
    aws_smithy_types::DateTime::from_str(text, aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|e| panic!("Expiration {text:?} is not RFC 3339: {e}"))
        .secs()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A 200's access key id, after checking its `Expiration` is in the future (and
/// at least `min_left` away).
fn served_key(rec: &Value, min_left: i64) -> String {
    assert_eq!(rec["status"], 200, "not served: {rec}");
    let b = body(rec);
    let exp = expiration_secs(b["Expiration"].as_str().unwrap_or_default());
    let left = exp - now_secs();
    assert!(
        left > min_left,
        "served credentials with {left} s left (at least {min_left} s expected): {rec}"
    );
    b["AccessKeyId"].as_str().unwrap().to_owned()
}

/// Statuses the SDKs retry (aws-contract.md): botocore retries any non-200,
/// aws-sdk-rust 500/502/503/504. The agent passes STS throttling on as 429, as
/// the stock agent does (botocore retries it, the Rust SDK does not).
fn retryable(fault: Fault, status: u64) -> bool {
    matches!(status, 500 | 502 | 503 | 504) || (fault == Fault::Throttle && status == 429)
}

fn pod_uid_for(n: usize) -> String {
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        0xfa00_0000_u32 + n as u32,
        n
    )
}

/// The scenario with the proxy in front of moto's STS and one (cached, new) pod
/// pair per fault, known to the pod directory from the start; their cgroups
/// appear only when the test gets to them. Returns the scenario, the proxy and
/// the pods' (name, uid) per fault.
fn scenario_behind_proxy(
    faults: usize,
    extra: &[&str],
) -> (Scenario, FaultProxy, Vec<[(String, String); 2]>) {
    let mut s = Scenario::new();
    let proxy = FaultProxy::start(
        &s.node.netns.path(),
        SocketAddr::from((NODE_ADDR4, STS_PORT)),
        Api::Sts,
    );
    s.sts_endpoint = Some(proxy.url());
    let mut pairs = Vec::new();
    for f in 0..faults {
        let pair = [
            (format!("cached-{f}"), pod_uid_for(2 * f)),
            (format!("new-{f}"), pod_uid_for(2 * f + 1)),
        ];
        for (name, uid) in &pair {
            s.pods.push(json!({
                "uid": uid, "namespace": "default", "name": name, "serviceAccount": "app-a",
                "serviceAccountAnnotations": {}, "hostNetwork": false
            }));
        }
        pairs.push(pair);
    }
    write_json(&s.dir.path().join("pods.json"), &json!({"pods": s.pods}));
    // Credentials older than 1 s are renewed in the background on the next
    // request, so a cached pod's request meets the fault upstream.
    let mut args = vec!["--max-credential-retention-before-renewal", "1s"];
    args.extend_from_slice(extra);
    s.start_agent(&args);
    (s, proxy, pairs)
}

fn creds_args(count: usize, interval: &str) -> Vec<String> {
    [
        "--path",
        "/v1/credentials",
        "--count",
        &count.to_string(),
        "--interval",
        interval,
        "--timeout",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_client(node: &testnode::Node, pod: usize, args: &[String]) -> Vec<Value> {
    client(node, pod, &strs(args)).1
}

/// What one fault did, for the report.
struct Figures {
    fault: Fault,
    cached_ok: usize,
    cached_max_ms: f64,
    cached_calls: u64,
    new_statuses: Vec<u64>,
    new_max_ms: f64,
    new_calls: u64,
    recovery: Duration,
}

/// Injects each fault in turn: per fault, a new pod gets credentials and lets
/// them age past the retention (the cached pod), then the fault goes on, the cached
/// pod and a brand-new pod ask, and the fault goes off. `auth(pod name)` adds the
/// pod's `--token` for the client when the upstream needs one. Asserts, and
/// returns what the pods saw.
fn inject_faults(
    node: &mut testnode::Node,
    proxy: &FaultProxy,
    faults: &[Fault],
    pairs: &[[(String, String); 2]],
    auth: &dyn Fn(&str) -> Vec<String>,
) -> Vec<Figures> {
    let mut report = Vec::new();
    for (fault, pair) in faults.iter().copied().zip(pairs) {
        proxy.set(Fault::Pass);
        // A pod whose credentials are cached, older than the retention.
        let cached = node.add_pod(&pair[0].0, &pair[0].1, false);
        let warm = wait_for(
            "the cached pod's first credentials",
            Duration::from_secs(10),
            || {
                let r = client(
                    node,
                    cached,
                    &strs(&with(creds_args(1, "0"), &auth(&pair[0].0))),
                )
                .1
                .remove(0);
                (r["status"] == 200).then_some(r)
            },
        );
        let key = served_key(&warm, 15 * 60);
        // The fault goes on before the retention passes: the renewal it makes due
        // (in the background, or on the next request) meets the fault. (Set after
        // the retention, a renewal racing the switch could still pass, and the
        // cached pod would rightly be served the renewed key.)
        proxy.set(fault);
        let c0 = proxy.calls();
        std::thread::sleep(Duration::from_millis(1100));
        let cached_recs = run_client(
            node,
            cached,
            &with(creds_args(CACHED_POD_REQUESTS, "0.1"), &auth(&pair[0].0)),
        );
        let cached_calls = proxy.calls() - c0;
        let mut cached_max_ms: f64 = 0.0;
        for r in &cached_recs {
            assert_eq!(
                r["status"], 200,
                "{fault:?}: the cached pod was not served: {r}"
            );
            assert_eq!(
                served_key(r, 60),
                key,
                "{fault:?}: the cached pod must keep its still-valid credentials: {r}"
            );
            cached_max_ms = cached_max_ms.max(r["ms"].as_f64().unwrap());
        }
        // One background renewal was tried (with the STS client's own attempts);
        // the failure backs the key off instead of asking again per request.
        assert!(
            cached_calls <= ATTEMPTS,
            "{fault:?}: {cached_calls} upstream calls for {CACHED_POD_REQUESTS} requests of a cached pod"
        );

        // A pod with nothing cached: a status the SDKs retry, inside their budget.
        let new = node.add_pod(&pair[1].0, &pair[1].1, false);
        let c1 = proxy.calls();
        let recs = run_client(
            node,
            new,
            &with(
                creds_args(NEW_POD_REQUESTS as usize, "0.2"),
                &auth(&pair[1].0),
            ),
        );
        let new_calls = proxy.calls() - c1;
        let mut new_statuses = Vec::new();
        let mut new_max_ms: f64 = 0.0;
        for r in &recs {
            let status = r["status"].as_u64().unwrap_or(0);
            let ms = r["ms"].as_f64().unwrap();
            assert!(
                retryable(fault, status),
                "{fault:?}: a pod without credentials got {r}"
            );
            assert!(
                ms < 1000.0,
                "{fault:?}: a pod without credentials waited {ms} ms (SDK budget: 1 s): {r}"
            );
            new_statuses.push(status);
            new_max_ms = new_max_ms.max(ms);
        }
        // The prefetch of its new cgroup plus one fetch per request at most, each
        // with the STS client's attempts: no amplification.
        assert!(
            new_calls <= ATTEMPTS * (NEW_POD_REQUESTS + 1),
            "{fault:?}: {new_calls} upstream calls for {NEW_POD_REQUESTS} requests"
        );

        // The upstream is back: the new pod is served within about a second.
        proxy.set(Fault::Pass);
        let back = Instant::now();
        let ok = wait_for("recovery", Duration::from_secs(10), || {
            let r = client(
                node,
                new,
                &strs(&with(creds_args(1, "0"), &auth(&pair[1].0))),
            )
            .1
            .remove(0);
            (r["status"] == 200).then_some(r)
        });
        let recovery = back.elapsed();
        served_key(&ok, 15 * 60);
        assert!(
            recovery < Duration::from_millis(1500),
            "{fault:?}: {recovery:?} to recover after the upstream came back"
        );
        report.push(Figures {
            fault,
            cached_ok: cached_recs.len(),
            cached_max_ms,
            cached_calls,
            new_statuses,
            new_max_ms,
            new_calls,
            recovery,
        });
    }
    report
}

fn print_report(upstream: &str, report: &[Figures]) {
    eprintln!("{upstream} fault | cached pod: 200s, max ms, upstream calls | new pod: statuses, max ms, upstream calls | recovery");
    for f in report {
        eprintln!(
            "{} | {}/{CACHED_POD_REQUESTS}, {:.0} ms, {} | {:?}, {:.0} ms, {} | {} ms",
            f.fault.name(),
            f.cached_ok,
            f.cached_max_ms,
            f.cached_calls,
            f.new_statuses,
            f.new_max_ms,
            f.new_calls,
            f.recovery.as_millis()
        );
    }
}

fn with(mut args: Vec<String>, more: &[String]) -> Vec<String> {
    args.extend_from_slice(more);
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn every_upstream_fault_keeps_cached_pods_served_and_fails_new_pods_fast() {
    let started = Instant::now();
    let faults = faults();
    let (mut s, proxy, pairs) = scenario_behind_proxy(faults.len(), &[]);
    let report = inject_faults(&mut s.node, &proxy, &faults, &pairs, &|_| Vec::new());
    print_report("STS", &report);
    eprintln!("all faults in {:?}", started.elapsed());
}

/// The EKS Auth stand-in's port, on 127.0.0.1 in the node netns.
const EKS_AUTH_PORT: u16 = 5080;
const EKS_ROLE: &str = "s3-eks-pod-identity-role";

/// The agent's default upstream, EKS Auth (`AssumeRoleForPodIdentity` with the
/// pod's own token), behind the proxy: its error shapes (`ThrottlingException`
/// 429, `InternalServerException` 500), a black hole, a malformed body and
/// credentials expiring too soon. EKS Auth cannot run here: the **stand-in**
/// (`examples/eks_auth_standin.rs`, backed by moto's IAM and STS) answers.
#[test]
fn eks_auth_faults_keep_cached_pods_served_and_fail_new_pods_fast() {
    let faults = [
        Fault::Throttle,
        Fault::ServerError,
        Fault::BlackHole,
        Fault::Malformed,
        Fault::ShortLived(Duration::from_secs(300)),
    ];
    let mut node = testnode::Node::new();
    let dir = tempfile::tempdir().unwrap();
    start_sts(&mut node);
    let pairs: Vec<[(String, String); 2]> = (0..faults.len())
        .map(|f| {
            [
                (format!("cached-{f}"), pod_uid_for(2 * f)),
                (format!("new-{f}"), pod_uid_for(2 * f + 1)),
            ]
        })
        .collect();
    let standin = std::path::Path::new(AGENT)
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
        EKS_ROLE,
        "--associate",
        &format!("default/app={EKS_ROLE}"),
    ])
    .arg("--token-dir")
    .arg(dir.path().join("tokens"));
    for (name, uid) in pairs.iter().flatten() {
        c.args(["--pod", &format!("{name}:{uid}:default:app")]);
    }
    node.spawn_until(c, "EKS Auth stand-in ready", Duration::from_secs(30));
    let proxy = FaultProxy::start(
        &node.netns.path(),
        SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, EKS_AUTH_PORT)),
        Api::EksAuth,
    );
    let mut agent = agent_command(
        &node,
        &[
            "--upstream",
            "eks-auth",
            "--cluster-name",
            "test-cluster",
            "--endpoint",
            &proxy.url(),
            "--region",
            "us-east-1",
            "--probe-addr",
            PROBE,
            "--max-credential-retention-before-renewal",
            "1s",
        ],
    );
    agent
        .env("AWS_ACCESS_KEY_ID", "AKIANODEROLEEXAMPLE1")
        .env("AWS_SECRET_ACCESS_KEY", "node-role-secret-never-logged")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    node.spawn_until(agent, "pod-identity-agent ready", Duration::from_secs(20));
    let tokens = dir.path().join("tokens");
    let auth = |name: &str| {
        let token = std::fs::read_to_string(tokens.join(name)).unwrap();
        vec!["--token".to_owned(), token.trim().to_owned()]
    };
    let report = inject_faults(&mut node, &proxy, &faults, &pairs, &auth);
    print_report("EKS Auth", &report);
}

/// Unmodified SDK clients through the faults: the AWS CLI in a pod with cached
/// credentials keeps working while STS is a black hole; boto3 in a pod with
/// nothing cached gets 5xx while STS fails, retries, and succeeds once STS is back.
#[test]
fn sdk_clients_ride_out_upstream_faults() {
    let (mut s, proxy, pairs) = scenario_behind_proxy(1, &[]);
    let cached = s.node.add_pod(&pairs[0][0].0, &pairs[0][0].1, false);
    let token = s.dir.path().join("token-faults");
    std::fs::write(
        &token,
        pod_identity_agent::testing::fake_pod_token(
            "default",
            "app-a",
            &pairs[0][0].0,
            &pairs[0][0].1,
            now_secs() as u64 + 86400,
        ),
    )
    .unwrap();
    let arn = |s: &Scenario, pod: usize, sdk: Sdk| {
        sdk_caller_arn(&s.node, pod, sdk, &token, s.dir.path())
    };
    let role_a = format!("arn:aws:sts::{ACCOUNT}:assumed-role/role-a/");
    let first = arn(&s, cached, Sdk::Cli).expect("the AWS CLI before the fault");
    assert!(first.starts_with(&role_a), "{first}");

    // STS black-holed: the CLI still works from the cache.
    proxy.set(Fault::BlackHole);
    let t = Instant::now();
    let during = arn(&s, cached, Sdk::Cli);
    let cli_time = t.elapsed();
    let during = during.unwrap_or_else(|e| panic!("the AWS CLI during a black hole: {e}"));
    assert!(during.starts_with(&role_a), "{during}");

    // STS answering 503: boto3 in a pod with nothing cached gets the agent's
    // 5xx, retries (botocore: 3 attempts, 1 s apart); STS comes back after its
    // first failure, and boto3 succeeds.
    proxy.set(Fault::ServerError);
    let new = s.node.add_pod(&pairs[0][1].0, &pairs[0][1].1, false);
    let before = five_xx(&s);
    let t = Instant::now();
    let boto3 = sdk_command(&s.node, new, Sdk::Boto3, &token, s.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn boto3");
    wait_for("boto3's first 5xx", Duration::from_secs(10), || {
        (five_xx(&s) > before).then_some(())
    });
    proxy.set(Fault::Pass);
    let result = sdk_result(boto3.wait_with_output().expect("boto3 output"));
    let boto3_time = t.elapsed();
    let seen = five_xx(&s) - before;
    let arn_b = result.unwrap_or_else(|e| panic!("boto3 after STS came back: {e}"));
    assert!(arn_b.starts_with(&role_a), "{arn_b}");
    eprintln!(
        "AWS CLI (cached pod, black hole): ok in {cli_time:?}; boto3 (new pod, 503 then back): \
         {seen} 5xx seen, then ok, {boto3_time:?} in all"
    );
}

/// 5xx answers of the agent so far (`pod_identity_http_response`).
fn five_xx(s: &Scenario) -> u64 {
    let m = s.metrics();
    ["500", "502", "503", "504"]
        .iter()
        .map(|c| {
            let name = format!("pod_identity_http_response{{code=\"{c}\"}}");
            m.lines()
                .find_map(|l| {
                    l.strip_prefix(&name)
                        .and_then(|r| r.trim().parse::<u64>().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}
