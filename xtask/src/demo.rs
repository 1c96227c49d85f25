//! `cargo xtask demo [--sts]`: one simulated node, a local AWS (moto), the agent
//! with its real eBPF programs, and the unmodified AWS CLI in each pod. Prints a
//! transcript of who asked, what the kernel said, and what was served or refused,
//! then cleans up (namespaces, cgroups, processes: all removed when `Node` drops).
//!
//! * default, [`eks`]: the EKS mode (`--upstream eks-auth`): the agent passes each
//!   pod's own token to EKS Auth (here the stand-in `examples/eks_auth_standin.rs`).
//! * `--sts`, [`sts`]: the agent assumes the roles of its own associations.

mod eks;
mod sts;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use testnode::{Node, NODE_ADDR4, NODE_ADDR6};

/// moto (IAM and STS) listens on the node address, where pods reach it too.
const MOTO_PORT: u16 = 5000;
const ACCOUNT: &str = "123456789012";

/// Which walkthrough `cargo xtask demo` runs.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// `--upstream eks-auth` (the agent's default).
    EksAuth,
    /// `--upstream sts`.
    Sts,
}

impl Mode {
    /// The demo's flags: none (EKS mode), `--eks-auth` or `--sts`.
    pub fn parse(args: &[String]) -> Result<Mode, String> {
        match args {
            [] => Ok(Mode::EksAuth),
            [a] if a == "--eks-auth" => Ok(Mode::EksAuth),
            [a] if a == "--sts" => Ok(Mode::Sts),
            _ => Err(format!(
                "unexpected arguments {args:?}: cargo xtask demo [--sts]"
            )),
        }
    }
}

pub fn run(mode: Mode) -> Result<(), String> {
    // `cargo xtask build` (`--all-targets`) built both, examples included.
    let bin = crate::target_dir().join("debug");
    let agent = bin.join("pod-identity-agent");
    let work = WorkDir::create()?;
    match mode {
        Mode::EksAuth => eks::demo(&agent, &bin.join("examples/eks_auth_standin"), &work.0),
        Mode::Sts => sts::demo(&agent, &work.0),
    }
}

/// The demo's files (pods' tokens, the audit log), removed on drop, even when a
/// step panics.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<WorkDir, String> {
        let work = std::env::temp_dir().join(format!("pia-demo-{}", std::process::id()));
        std::fs::create_dir_all(&work).map_err(|e| format!("mkdir {}: {e}", work.display()))?;
        Ok(WorkDir(work))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn step(s: &str) {
    println!("\n\x1b[1m== {s}\x1b[0m");
}

fn moto_url() -> String {
    format!("http://{NODE_ADDR4}:{MOTO_PORT}")
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// One line about pod `i`: name, service account, address, cgroup.
fn show_pod(node: &Node, i: usize, service_account: &str) {
    let pod = &node.pods[i];
    println!(
        "  pod default/{:<20} sa={:<11} {} cgroup …/{}",
        pod.name,
        service_account,
        if pod.netns.is_none() {
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
}

/// moto's server (IAM, STS, …) in the node netns, on the node address.
fn start_moto(node: &mut Node) {
    step(&format!("Local AWS (moto: IAM, STS) on {}", moto_url()));
    let mut moto = node.node_command("moto_server");
    moto.args(["-H", &NODE_ADDR4.to_string(), "-p", &MOTO_PORT.to_string()])
        .env("PATH", crate::setup::path_with_python_scripts());
    node.spawn_until(moto, "Running on", Duration::from_secs(30));
}

/// The agent in the node netns, attached to the node's cgroup subtree, listening
/// on the node address, with static credentials of its own; the caller adds the
/// upstream's flags.
fn agent_command(node: &Node, agent: &Path, work: &Path) -> Result<Command, String> {
    let mut a = node.node_command(agent.to_str().ok_or("agent path")?);
    a.arg("--cgroup")
        .arg(node.cgroup_root.path())
        .args([
            "--agent-addr4",
            &NODE_ADDR4.to_string(),
            "--agent-addr6",
            &NODE_ADDR6.to_string(),
        ])
        .args(["--region", "us-east-1", "--bpffs-dir", "none"])
        .arg("--audit-log")
        .arg(work.join("audit.log"))
        .env("AWS_ACCESS_KEY_ID", "AKIAAGENTDEMO0000001")
        .env("AWS_SECRET_ACCESS_KEY", "demo")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "info");
    Ok(a)
}

/// What the kernel says about a process of pod `i` (the agent's /v1/whoami).
fn kernel_says(node: &Node, i: usize) -> Result<(), String> {
    let mut who = node.pod_command(i, "python3");
    who.arg(testnode::CLIENT_PY);
    let out = who.output().map_err(|e| format!("client: {e}"))?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    println!("  kernel says: {}", extract_body(&line));
    Ok(())
}

/// The unmodified AWS CLI in pod `i`, with the EKS webhook's environment
/// (`AWS_CONTAINER_CREDENTIALS_FULL_URI`, `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`),
/// runs `aws sts get-caller-identity` against moto; prints the ARN it got or the
/// CLI's error.
fn caller_identity(node: &Node, i: usize, token_file: &Path, home: &Path) -> Result<(), String> {
    let mut cli = node.pod_command(i, "aws");
    cli.args([
        "sts",
        "get-caller-identity",
        "--output",
        "text",
        "--query",
        "Arn",
    ])
    .args(["--endpoint-url", &moto_url()]);
    testnode::sdk_env(
        &mut cli,
        token_file,
        home,
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
    Ok(())
}

/// A process of pod 0 connects to the agent's port itself, not through the redirect.
fn direct_connection(node: &Node) -> Result<(), String> {
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
    Ok(())
}

fn audit_log(agent: &Path, work: &Path) -> Result<(), String> {
    step("the audit log, read with `pod-identity-agent audit` (ECS JSON lines underneath)");
    std::thread::sleep(Duration::from_millis(500));
    let table = Command::new(agent)
        .arg("audit")
        .arg("--file")
        .arg(work.join("audit.log"))
        .output()
        .map_err(|e| format!("audit: {e}"))?;
    print!("{}", String::from_utf8_lossy(&table.stdout));
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
