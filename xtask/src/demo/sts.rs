//! `cargo xtask demo --sts`: the agent with `--upstream sts` assumes the roles of
//! its own associations (a file here) for the pods of its pods file, with its own
//! AWS identity; pods' tokens are not checked by anyone but the agent.

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use testnode::Node;

use super::{
    agent_command, audit_log, caller_identity, direct_connection, kernel_says, moto_url, show_pod,
    start_moto, step, write, ACCOUNT,
};

struct DemoPod {
    name: &'static str,
    uid: &'static str,
    service_account: &'static str,
    host_network: bool,
    role: Option<&'static str>,
}

const PODS: &[DemoPod] = &[
    DemoPod {
        name: "web-7d4b9",
        uid: "2c48913c-b29f-11e7-9350-020968147796",
        service_account: "web",
        host_network: false,
        role: Some("web-reader"),
    },
    DemoPod {
        name: "worker-5f6c8",
        uid: "8a1f0e2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
        service_account: "worker",
        host_network: false,
        role: Some("queue-worker"),
    },
    DemoPod {
        name: "batch-x2k9p",
        uid: "f47ac10b-58cc-4372-a567-0e02b2c3d479",
        service_account: "batch",
        host_network: false,
        role: None,
    },
    DemoPod {
        name: "node-exporter-abcde",
        uid: "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        service_account: "monitoring",
        host_network: true,
        role: Some("metrics-writer"),
    },
];

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A token shaped like the kubelet's projected pod identity token (unsigned: the
/// agent never trusts it for identity).
fn token(p: &DemoPod) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 86400;
    let payload = format!(
        r#"{{"aud":["pods.eks.amazonaws.com"],"exp":{exp},"kubernetes.io":{{"namespace":"default","pod":{{"name":"{}","uid":"{}"}},"serviceaccount":{{"name":"{}"}}}},"sub":"system:serviceaccount:default:{}"}}"#,
        p.name, p.uid, p.service_account, p.service_account
    );
    format!(
        "{}.{}.c2ln",
        b64url(br#"{"alg":"RS256"}"#),
        b64url(payload.as_bytes())
    )
}

pub(super) fn demo(agent: &Path, work: &Path) -> Result<(), String> {
    step("Simulated node: node netns + one netns and cgroup per pod (all removed at the end)");
    let mut node = Node::new();
    let mut pods_json = Vec::new();
    let mut assoc_json = Vec::new();
    for p in PODS {
        let i = node.add_pod(p.name, p.uid, p.host_network);
        show_pod(&node, i, p.service_account);
        pods_json.push(format!(
            r#"{{"uid":"{}","namespace":"default","name":"{}","serviceAccount":"{}","hostNetwork":{}}}"#,
            p.uid, p.name, p.service_account, p.host_network
        ));
        if let Some(r) = p.role {
            assoc_json.push(format!(
                r#"{{"namespace":"default","serviceAccount":"{}","roleArn":"arn:aws:iam::{ACCOUNT}:role/{r}"}}"#,
                p.service_account
            ));
        }
        write(&work.join(format!("token-{}", p.name)), &token(p))?;
    }
    let pods_file = work.join("pods.json");
    let assoc_file = work.join("associations.json");
    write(
        &pods_file,
        &format!(r#"{{"pods":[{}]}}"#, pods_json.join(",")),
    )?;
    write(
        &assoc_file,
        &format!(r#"{{"associations":[{}]}}"#, assoc_json.join(",")),
    )?;
    println!("  associations: web→web-reader, worker→queue-worker, monitoring→metrics-writer; batch has none");

    start_moto(&mut node);

    step("Agent (--upstream sts): eBPF attached to the node's cgroup subtree, listening on the node address");
    let mut a = agent_command(&node, agent, work)?;
    a.args(["--upstream", "sts"])
        .arg("--pods-file")
        .arg(&pods_file)
        .arg("--associations-file")
        .arg(&assoc_file)
        .args(["--sts-endpoint", &moto_url()])
        .args(["--cluster-name", "demo"]);
    node.spawn_until(a, "pod-identity-agent ready", Duration::from_secs(30));

    for (i, p) in PODS.iter().enumerate() {
        step(&format!(
            "pod default/{} runs `aws sts get-caller-identity`",
            p.name
        ));
        kernel_says(&node, i)?;
        caller_identity(&node, i, &work.join(format!("token-{}", p.name)), work)?;
    }

    direct_connection(&node)?;
    audit_log(agent, work)?;

    step("done: removing namespaces, cgroups and processes");
    drop(node);
    Ok(())
}
