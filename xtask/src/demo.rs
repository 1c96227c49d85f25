//! `cargo xtask demo`: one simulated node, a local STS (moto), the agent with its
//! real eBPF programs, and the unmodified AWS CLI in each pod. Prints a transcript
//! of who asked, what the kernel said, and what was served or refused, then cleans
//! up (namespaces, cgroups, processes: all removed when `Node` drops).

use std::{
    path::Path,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use testnode::{Node, NODE_ADDR4, NODE_ADDR6};

const STS_PORT: u16 = 5000;
const ACCOUNT: &str = "123456789012";

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

fn step(s: &str) {
    println!("\n\x1b[1m== {s}\x1b[0m");
}

pub fn run() -> Result<(), String> {
    let agent = crate::target_dir().join("debug/pod-identity-agent");
    let work = std::env::temp_dir().join(format!("pia-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("mkdir {}: {e}", work.display()))?;
    let result = demo(&agent, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn demo(agent: &Path, work: &Path) -> Result<(), String> {
    step("Simulated node: node netns + one netns and cgroup per pod (all removed at the end)");
    let mut node = Node::new();
    let mut pods_json = Vec::new();
    let mut assoc_json = Vec::new();
    for p in PODS {
        let i = node.add_pod(p.name, p.uid, p.host_network);
        let pod = &node.pods[i];
        println!(
            "  pod default/{:<20} sa={:<11} {} cgroup …/{}",
            p.name,
            p.service_account,
            if p.host_network {
                "hostNetwork        ".to_string()
            } else {
                format!("ip {:<15}", pod.addr4)
            },
            pod.cgroup
                .path()
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
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
        std::fs::write(work.join(format!("token-{}", p.name)), token(p))
            .map_err(|e| e.to_string())?;
    }
    let pods_file = work.join("pods.json");
    let assoc_file = work.join("associations.json");
    std::fs::write(
        &pods_file,
        format!(r#"{{"pods":[{}]}}"#, pods_json.join(",")),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(
        &assoc_file,
        format!(r#"{{"associations":[{}]}}"#, assoc_json.join(",")),
    )
    .map_err(|e| e.to_string())?;
    println!("  associations: web→web-reader, worker→queue-worker, monitoring→metrics-writer; batch has none");

    step(&format!("Local STS (moto) on {NODE_ADDR4}:{STS_PORT}"));
    let mut sts = node.node_command("moto_server");
    sts.args(["-H", &NODE_ADDR4.to_string(), "-p", &STS_PORT.to_string()])
        .env("PATH", crate::setup::path_with_python_scripts());
    node.spawn_until(sts, "Running on", Duration::from_secs(30));

    step("Agent: eBPF attached to the node's cgroup subtree, listening on the node address");
    let mut a = node.node_command(agent.to_str().ok_or("agent path")?);
    a.arg("--cgroup")
        .arg(node.cgroup_root.path())
        .args([
            "--agent-addr4",
            &NODE_ADDR4.to_string(),
            "--agent-addr6",
            &NODE_ADDR6.to_string(),
        ])
        .args(["--upstream", "sts"])
        .arg("--pods-file")
        .arg(&pods_file)
        .arg("--associations-file")
        .arg(&assoc_file)
        .args([
            "--sts-endpoint",
            &format!("http://{NODE_ADDR4}:{STS_PORT}"),
            "--region",
            "us-east-1",
        ])
        .args(["--cluster-name", "demo", "--bpffs-dir", "none"])
        .arg("--audit-log")
        .arg(work.join("audit.log"))
        .env("AWS_ACCESS_KEY_ID", "AKIAAGENTDEMO0000001")
        .env("AWS_SECRET_ACCESS_KEY", "demo")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "info");
    node.spawn_until(a, "pod-identity-agent ready", Duration::from_secs(30));

    for (i, p) in PODS.iter().enumerate() {
        step(&format!(
            "pod default/{} runs `aws sts get-caller-identity`",
            p.name
        ));
        // What the kernel says about a process of this pod.
        let mut who = node.pod_command(i, "python3");
        who.arg(testnode::CLIENT_PY);
        let out = who.output().map_err(|e| format!("client: {e}"))?;
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        println!("  kernel says: {}", extract_body(&line));
        let mut cli = node.pod_command(i, "aws");
        cli.args([
            "sts",
            "get-caller-identity",
            "--output",
            "text",
            "--query",
            "Arn",
        ])
        .args(["--endpoint-url", &format!("http://{NODE_ADDR4}:{STS_PORT}")]);
        testnode::sdk_env(
            &mut cli,
            &work.join(format!("token-{}", p.name)),
            work,
            &crate::setup::path_with_python_scripts(),
        );
        let out = cli.output().map_err(|e| format!("aws: {e}"))?;
        if out.status.success() {
            println!(
                "  \x1b[32mserved\x1b[0m: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let why = err
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            println!("  \x1b[31mrefused\x1b[0m: {why}");
        }
    }

    step("a process connects to the agent port directly (no kernel record)");
    let mut direct = node.pod_command(0, "python3");
    direct.arg(testnode::CLIENT_PY).args([
        "--addr",
        &NODE_ADDR4.to_string(),
        "--port",
        "2710",
        "--host",
        "169.254.170.23",
        "--path",
        "/v1/credentials",
    ]);
    let out = direct.output().map_err(|e| format!("client: {e}"))?;
    println!("  {}", String::from_utf8_lossy(&out.stdout).trim());

    step("the audit log, read with `pod-identity-agent audit` (ECS JSON lines underneath)");
    std::thread::sleep(Duration::from_millis(500));
    let table = Command::new(agent)
        .arg("audit")
        .arg("--file")
        .arg(work.join("audit.log"))
        .output()
        .map_err(|e| format!("audit: {e}"))?;
    print!("{}", String::from_utf8_lossy(&table.stdout));

    step("done: removing namespaces, cgroups and processes");
    drop(node);
    Ok(())
}

/// The agent's JSON answer inside a client record line.
fn extract_body(line: &str) -> String {
    // The client prints {"pid":..,"peer":..,"status":..,"body":"<json>"}; show the
    // body (unescaped) for readability.
    match line.find("\"body\": \"") {
        Some(i) => line[i + 9..].trim_end_matches("\"}").replace("\\\"", "\""),
        None => line.to_owned(),
    }
}
