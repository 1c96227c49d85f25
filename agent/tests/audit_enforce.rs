//! Privileged tests of the kernel audit log and kernel enforcement, on the simulated
//! node with the real eBPF programs, moto STS and the real agent binary.

mod support;

use std::time::Duration;

use pod_identity_agent::testing::json_lines;
use serde_json::Value;
use support::*;

#[test]
fn every_connect_is_audited_with_the_real_process_and_no_secret_is_logged() {
    let mut s = Scenario::new();
    let audit = s.dir.path().join("audit.log");
    let a = audit.to_str().unwrap().to_owned();
    let window = scaled(Duration::from_millis(1000)).as_millis().to_string();
    let agent = s.start_agent(&["--audit-log", &a, "--audit-join-window-ms", &window]);

    let mut served = Vec::new();
    let mut pids_a = Vec::new();
    for _ in 0..3 {
        let (pid, rec) = client1(&s.node, 0, &["--path", "/v1/credentials"]);
        assert_eq!(rec["status"], 200, "{rec}");
        served.push(body(&rec));
        pids_a.push(pid);
    }
    // pod-c has no association: in audit mode the kernel lets it through (no EPERM).
    let mut pids_c = Vec::new();
    for _ in 0..2 {
        let (pid, rec) = client1(&s.node, 2, &["--path", "/v1/credentials"]);
        assert!(
            rec.get("errno").is_none(),
            "audit mode must not refuse in the kernel: {rec}"
        );
        assert_eq!(rec["status"], 404, "{rec}");
        pids_c.push(pid);
    }
    // A direct connection (no kernel record) and a connect that sends no request.
    let (_, rec) = client1(&s.node, 1, &DIRECT_TO_AGENT);
    assert_eq!(rec["status"], 403);
    let (silent_pid, _) = client1(&s.node, 1, &["--no-http"]);

    let lines = wait_for("audit lines", Duration::from_secs(10), || {
        let l = json_lines(&audit);
        (l.iter()
            .filter(|v| {
                v["event"]["action"] != "connect-without-request"
                    || v["process"]["pid"] == silent_pid
            })
            .count()
            >= 7
            && l.iter()
                .any(|v| v["event"]["action"] == "connect-without-request"))
        .then_some(l)
    });
    let by_action = |a: &str| {
        lines
            .iter()
            .filter(|v| v["event"]["action"] == a)
            .collect::<Vec<_>>()
    };

    let ok = by_action("credentials-served");
    assert_eq!(ok.len(), 3, "{lines:#?}");
    for (v, pid) in ok.iter().zip(&pids_a) {
        assert_eq!(v["process"]["pid"], *pid, "{v}");
        assert_eq!(v["process"]["name"], "python3");
        assert_eq!(
            v["pod_identity"]["kernel"]["cgroup_id"],
            s.node.pods[0].cgroup.id()
        );
        assert_eq!(v["orchestrator"]["resource"]["name"], "pod-a");
        assert_eq!(v["orchestrator"]["namespace"], "default");
        assert_eq!(v["container"]["id"], s.node.pods[0].container_id.as_str());
        assert_eq!(v["pod_identity"]["role_arn"], role("role-a"));
        assert!(v["pod_identity"]["access_key_id"]
            .as_str()
            .unwrap()
            .starts_with("ASIA"));
        assert!(v["pod_identity"]["session_name"]
            .as_str()
            .unwrap()
            .starts_with("eks-demo-pod-a-"));
        assert_eq!(v["http"]["response"]["status_code"], 200);
    }
    let refused = by_action("credentials-refused");
    let no_assoc: Vec<_> = refused
        .iter()
        .filter(|v| v["event"]["reason"] == "NoAssociation")
        .collect();
    assert_eq!(no_assoc.len(), 2, "{refused:#?}");
    for (v, pid) in no_assoc.iter().zip(&pids_c) {
        assert_eq!(v["process"]["pid"], *pid);
        assert_eq!(
            v["pod_identity"]["kernel"]["cgroup_id"],
            s.node.pods[2].cgroup.id()
        );
    }
    assert!(
        lines
            .iter()
            .any(|v| v["event"]["reason"] == "Unattributed" && v["event"]["outcome"] == "failure"),
        "{lines:#?}"
    );
    let silent = by_action("connect-without-request");
    assert_eq!(silent.len(), 1, "{silent:#?}");
    assert_eq!(silent[0]["process"]["pid"], silent_pid);

    // No secret key or session token anywhere in the audit log or the agent's logs.
    let text = std::fs::read_to_string(&audit).unwrap() + &s.node.output_of(agent);
    assert!(
        s.node.output_of(agent).contains("access"),
        "agent logs captured"
    );
    for b in &served {
        for k in ["SecretAccessKey", "Token"] {
            let secret = b[k].as_str().unwrap();
            assert!(secret.len() > 10);
            assert!(
                !text.contains(secret),
                "{k} leaked into the audit or agent log"
            );
        }
    }
    assert!(!text.contains("agent-secret-never-logged"));
}

#[test]
fn enforce_mode_refuses_in_the_kernel_with_eperm() {
    let mut s = Scenario::new();
    let audit = s.dir.path().join("audit.log");
    let a = audit.to_str().unwrap().to_owned();
    // A host process under the attach point that is not in any pod.
    let host_cg =
        testnode::Cgroup::create(s.node.cgroup_root.path().join("system.slice/sshd.service"));
    s.start_agent(&["--mode", "enforce", "--audit-log", &a]);

    // pod-c (no association) is refused by connect() itself, once the agent has
    // marked its cgroup (first rescan).
    let (pid_c, rec) = wait_for("EPERM for pod-c", Duration::from_secs(10), || {
        let (pid, rec) = client1(&s.node, 2, &["--path", "/v1/credentials"]);
        (rec["errno"] == "EPERM").then_some((pid, rec))
    });
    assert!(rec.get("status").is_none(), "no HTTP round trip: {rec}");
    // A non-pod process too.
    let mut c = testnode::in_cgroup_and_netns(host_cg.path(), &s.node.netns.path(), "python3");
    c.arg(testnode::CLIENT_PY);
    let out = c.output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errno"], "EPERM", "{v}");
    // Pods with an association are not affected, IPv6 included.
    let (_, rec) = client1(&s.node, 0, &["--path", "/v1/credentials"]);
    assert_eq!(rec["status"], 200, "{rec}");
    let (_, rec) = client1(
        &s.node,
        0,
        &[
            "--path",
            "/v1/credentials",
            "--family",
            "6",
            "--addr",
            "fd00:ec2::23",
        ],
    );
    assert_eq!(rec["status"], 200, "{rec}");
    let (_, rec) = client1(&s.node, 2, &["--family", "6", "--addr", "fd00:ec2::23"]);
    assert_eq!(rec["errno"], "EPERM", "{rec}");

    // The kernel's refusals are in the audit log with the real process.
    let lines = wait_for("denied audit lines", Duration::from_secs(10), || {
        let l = json_lines(&audit);
        (l.iter()
            .filter(|v| v["event"]["action"] == "connect-denied")
            .count()
            >= 3)
            .then_some(l)
    });
    let denied: Vec<_> = lines
        .iter()
        .filter(|v| v["event"]["action"] == "connect-denied")
        .collect();
    assert!(
        denied.iter().any(|v| v["process"]["pid"] == pid_c
            && v["pod_identity"]["kernel"]["cgroup_id"] == s.node.pods[2].cgroup.id()
            && v["process"]["name"] == "python3"),
        "{denied:#?}"
    );
    drop(host_cg);
}

#[test]
fn ten_thousand_connects_lose_no_event_or_count_every_loss() {
    let mut node = testnode::Node::new();
    for (i, uid) in UIDS.iter().take(4).enumerate() {
        node.add_pod(&format!("pod-{i}"), uid, false);
    }
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let window = scaled(Duration::from_millis(500)).as_millis().to_string();
    let mut c = agent_command(
        &node,
        &["--probe-addr", PROBE, "--audit-join-window-ms", &window],
    );
    c.arg("--audit-log").arg(&audit);
    node.spawn_until(c, "pod-identity-agent ready", Duration::from_secs(20));
    let node = std::sync::Arc::new(node);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let node = node.clone();
            std::thread::spawn(move || client(&node, i, &["--no-http", "--count", "2500"]).1)
        })
        .collect();
    for h in handles {
        let recs = h.join().unwrap();
        assert_eq!(recs.len(), 2500);
        assert!(
            recs.iter().all(|r| r["peer"][0] == "169.254.170.23"),
            "every connect redirected"
        );
    }
    let (events, lost) = wait_for(
        "10,000 events accounted for",
        Duration::from_secs(60),
        || {
            let m = node_get(&node, &format!("http://{PROBE}/metrics"));
            let (e, l) = (
                metric(&m, "pod_identity_kernel_events_total"),
                metric(&m, "pod_identity_kernel_events_lost_total"),
            );
            (e + l >= 10_000).then_some((e, l))
        },
    );
    assert_eq!(events + lost, 10_000, "events {events} + lost {lost}");
    eprintln!("10,000 connects: {events} events delivered, {lost} lost (counted)");
    // Every delivered event ends up in the audit log (as connect-without-request),
    // written alone or, past each pod's share, counted in a summary record.
    let lines = wait_for("audit lines", Duration::from_secs(30), || {
        let n: u64 = json_lines(&audit)
            .iter()
            .map(|v| v["pod_identity"]["summary"]["count"].as_u64().unwrap_or(1))
            .sum();
        (n >= events).then_some(n)
    });
    assert_eq!(lines, events);
}
