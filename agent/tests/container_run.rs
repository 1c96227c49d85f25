//! Privileged test of the image and the DaemonSet, run for real: the pod template
//! of deploy/eks/daemonset.yaml, unchanged in what matters (hostNetwork, user,
//! securityContext, capabilities, mounts, args), turned into a Pod and run as
//! one `podman run` with exactly its settings (`TO_RUN`), with runc, in the
//! simulated node's network namespace, with the image `cargo xtask image` builds
//! (`FROM scratch`, static agent). A pod of the node
//! then gets its role's credentials through the containerised agent from the EKS
//! Auth stand-in (backed by moto), as in eks_auth_e2e.rs.
//!
//! What the test changes, and why:
//! * the downward-API and ConfigMap env (`status.hostIP`, `spec.nodeName`,
//!   `cluster-name`) become literals: podman resolves neither; `$(VAR)` in args
//!   is expanded as the kubelet does (podman 4.3 passes it through);
//! * the hostPaths point at the test's cgroup subtree, a bpffs the test mounts
//!   and a temporary audit directory, never the machine's;
//! * `restartPolicy: Never`, so a failing agent shows instead of restarting;
//! * the probes are dropped (the kubelet's job): the test asks /healthz and
//!   /readyz itself;
//! * `podman run`, not `podman kube play`: kube play needs an infra container,
//!   which runc cannot start in this sandbox; the container goes under a cgroup
//!   parent in the test's subtree (the kubelet's kubepods under the host root
//!   the DaemonSet mounts), where the agent finds its own cgroup;
//! * RLIMIT_NPROC 32768 and RLIMIT_NOFILE at the hard limit (containers.conf):
//!   the sandbox withholds CAP_SYS_RESOURCE;
//! * args for this machine are appended (EKS Auth endpoint and region, which
//!   come from IMDS on EC2) with the node role's stand-in credentials in env;
//! * the seccomp profile: podman ignores `seccompProfile: RuntimeDefault` and its
//!   own default allows bpf()/perf_event_open() only with CAP_SYS_ADMIN, so the
//!   test gives podman a copy of its default that allows them for CAP_BPF /
//!   CAP_PERFMON, as containerd's and CRI-O's RuntimeDefault profiles do.
//!
//! Needs podman and runc (`cargo xtask setup`) and the image (`cargo xtask
//! image`). `cargo xtask test-container` builds the image and runs this test
//! (`--features container-test`; `.ci/run` runs it after `cargo xtask test`).
//! Fails, never skips, without them.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use support::*;
use testnode::{Node, NODE_ADDR4};

const ROLE: &str = "s3-eks-pod-identity-role";
const EKS_AUTH_PORT: u16 = 5080;
const IMAGE: &str = "pod-identity-agent:0.1.0";
const PROBES: &str = "127.0.0.1:2703";
const DAEMONSET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/eks/daemonset.yaml");
/// CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39).
const GRANTED: u64 = (1 << 12) | (1 << 38) | (1 << 39);

/// Turn the DaemonSet's pod template into a Pod (stdin: the DaemonSet YAML;
/// argv[1]: a JSON object of the substitutions). Prints the Pod as JSON, which
/// is YAML to `podman kube play`.
const TO_POD: &str = r#"
import json, re, sys, yaml
sub = json.loads(sys.argv[1])
ds = yaml.safe_load(sys.stdin)
assert ds["kind"] == "DaemonSet", ds["kind"]
tpl = ds["spec"]["template"]
spec = tpl["spec"]
spec["restartPolicy"] = "Never"
(c,) = spec["containers"]
for e in c["env"]:
    vf = e.pop("valueFrom", None)
    if vf is None:
        continue
    key = vf.get("fieldRef", {}).get("fieldPath") or vf["configMapKeyRef"]["key"]
    e["value"] = sub["env"][key]
c["env"] += [{"name": k, "value": v} for k, v in sub["extra_env"].items()]
c["args"] += sub["extra_args"]
# The kubelet expands $(VAR) in args from the container's env; podman 4.3 does not.
env = {e["name"]: e["value"] for e in c["env"]}
c["args"] = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), a) for a in c["args"]]
c.pop("livenessProbe"); c.pop("readinessProbe")
for v in spec["volumes"]:
    v["hostPath"]["path"] = sub["volumes"][v["name"]]
pod = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": sub["name"], "labels": tpl["metadata"].get("labels", {}),
                    "annotations": tpl["metadata"].get("annotations", {})},
       "spec": spec}
print(json.dumps(pod, indent=1))
"#;

/// The Pod (stdin, JSON) as one `podman run` (argv as JSON): exactly its
/// hostNetwork, user, capabilities, read-only root, no-new-privileges, mounts
/// (with their propagation), env, command and args. Anything else in the
/// container spec fails here, so a field added to the DaemonSet is never
/// silently left out of the run.
const TO_RUN: &str = r#"
import json, os, sys
pod = json.load(sys.stdin)
name, cgroup_parent = sys.argv[1], sys.argv[2]
spec = pod["spec"]
(c,) = spec["containers"]
known = {"name", "image", "imagePullPolicy", "args", "command", "env", "securityContext",
         "volumeMounts", "resources", "terminationMessagePolicy"}
assert set(c) <= known, f"container fields not mapped to podman run: {set(c) - known}"
argv = ["run", "--detach", "--name", name, "--pull", "never", "--cgroup-parent", cgroup_parent]
if spec.get("hostNetwork"):
    argv += ["--network", "host"]
psc = spec.get("securityContext", {})
sc = c.get("securityContext", {})
user = sc.get("runAsUser", psc.get("runAsUser"))
group = sc.get("runAsGroup", psc.get("runAsGroup"))
if user is not None:
    argv += ["--user", f"{user}:{group if group is not None else user}"]
assert not sc.get("privileged"), "the agent must not be privileged"
caps = sc.get("capabilities", {})
argv += [x for d in caps.get("drop", []) for x in ("--cap-drop", d)]
argv += [x for a in caps.get("add", []) for x in ("--cap-add", a)]
if sc.get("readOnlyRootFilesystem"):
    argv += ["--read-only"]
if sc.get("allowPrivilegeEscalation") is False:
    argv += ["--security-opt", "no-new-privileges"]
vols = {v["name"]: v for v in spec.get("volumes", [])}
for m in c.get("volumeMounts", []):
    v = vols[m["name"]]
    if "emptyDir" in v:
        argv += ["--tmpfs", m["mountPath"]]
        continue
    hp = v["hostPath"]
    if hp.get("type") == "DirectoryOrCreate":
        os.makedirs(hp["path"], exist_ok=True)
    opts = ["ro" if m.get("readOnly") else "rw"]
    prop = {"HostToContainer": "rslave", "Bidirectional": "rshared"}.get(m.get("mountPropagation"))
    if prop:
        opts.append(prop)
    argv += ["--volume", f"{hp['path']}:{m['mountPath']}:{','.join(opts)}"]
argv += [x for e in c.get("env", []) for x in ("--env", f"{e['name']}={e['value']}")]
if c.get("command"):
    argv += ["--entrypoint", json.dumps(c["command"])]
argv.append(c["image"])
argv += c.get("args", [])
print(json.dumps(argv))
"#;

/// `podman ...` with the test's containers.conf.
fn podman(conf: &Path) -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", conf);
    c
}

fn out(c: &mut Command) -> std::process::Output {
    c.output()
        .unwrap_or_else(|e| panic!("{c:?}: {e} (cargo xtask setup installs podman and runc)"))
}

fn check(c: &mut Command) -> String {
    let o = out(c);
    assert!(
        o.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The hard limit of a resource from /proc/self/limits (the runtime may not raise
/// limits here: the sandbox withholds CAP_SYS_RESOURCE).
fn hard_limit(name: &str) -> String {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} not in /proc/self/limits"));
    line[name.len()..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

/// Podman's default seccomp profile, with bpf() allowed to CAP_BPF holders and
/// perf_event_open() to CAP_PERFMON holders (as containerd's and CRI-O's
/// defaults) instead of only to CAP_SYS_ADMIN holders.
fn seccomp_profile(path: &Path) {
    let src = "/usr/share/containers/seccomp.json";
    let mut p: Value = serde_json::from_str(
        &std::fs::read_to_string(src)
            .unwrap_or_else(|e| panic!("{src}: {e} (cargo xtask setup installs podman)")),
    )
    .unwrap();
    let rules = p["syscalls"].as_array_mut().unwrap();
    // The refusal of the CAP_SYS_ADMIN-only calls to everyone else: drop these two.
    for r in rules.iter_mut() {
        if r["action"] == "SCMP_ACT_ERRNO" {
            if let Some(names) = r["names"].as_array_mut() {
                names.retain(|n| n != "bpf" && n != "perf_event_open");
            }
        }
    }
    rules.push(
        json!({"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_BPF"]}}),
    );
    rules.push(json!({"names": ["perf_event_open"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_PERFMON"]}}));
    write_json(path, &p);
}

/// A bpffs mounted by the test (the machine's /sys/fs/bpf may not be one, and is
/// never the test's to pin in); unmounted on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount(dir: PathBuf) -> Bpffs {
        std::fs::create_dir_all(&dir).unwrap();
        check(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir));
        Bpffs(dir)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("--lazy").arg(&self.0).status();
    }
}

/// The agent's container; removed (stopped first) on drop, also when the test
/// fails.
struct Played {
    conf: PathBuf,
    name: String,
    /// `--cgroup-parent`, relative to each hierarchy's root.
    parent: String,
}

impl Played {
    fn container(&self) -> String {
        format!("{}-agent", self.name)
    }

    fn logs(&self) -> String {
        let o = out(podman(&self.conf).args(["logs", &self.container()]));
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }
}

impl Drop for Played {
    fn drop(&mut self) {
        let _ = podman(&self.conf)
            .args([
                "rm",
                "--force",
                "--ignore",
                "--time",
                "10",
                &self.container(),
            ])
            .status();
        // podman made the parent (and a `conmon` child) in every hierarchy, the
        // cgroup v1 controllers of a hybrid host too: remove them, deepest first,
        // for as long as conmon takes to exit; the node removes its own subtree of
        // the cgroup2 hierarchy.
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let top = self
            .parent
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("");
        let mut left: Vec<PathBuf> = hierarchies
            .flatten()
            .map(|h| h.path().join(top))
            .filter(|d| !top.is_empty() && d.is_dir())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !left.is_empty() && Instant::now() < deadline {
            left.retain(|d| !remove_cgroup_tree(d));
            if !left.is_empty() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// `rmdir` a cgroup directory and its child cgroups, deepest first; true once gone.
fn remove_cgroup_tree(dir: &Path) -> bool {
    if let Ok(children) = std::fs::read_dir(dir) {
        for c in children.flatten() {
            if c.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&c.path());
            }
        }
    }
    std::fs::remove_dir(dir).is_ok() || !dir.exists()
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

#[test]
fn the_eks_daemonset_template_serves_a_pod_from_a_scratch_image_under_runc() {
    let started = Instant::now();
    let mut node = Node::new();
    let dir = tempfile::tempdir().unwrap();
    let uid = UIDS[0];
    node.add_pod("s3", uid, false);

    // The image must be there: `cargo xtask image` builds it.
    let conf = dir.path().join("containers.conf");
    let seccomp = dir.path().join("seccomp.json");
    seccomp_profile(&seccomp);
    std::fs::write(
        &conf,
        format!(
            "[containers]\n\
             default_ulimits = [\"nofile={n}:{n}\", \"nproc={p}:{p}\"]\n\
             seccomp_profile = \"{s}\"\n\
             [engine]\n\
             runtime = \"runc\"\n",
            n = hard_limit("Max open files"),
            // runc here refuses RLIMIT_NPROC at the hard limit itself (EPERM);
            // 32768 is plenty for one agent.
            p = hard_limit("Max processes")
                .parse::<u64>()
                .map_or(32768, |h| h.min(32768)),
            s = seccomp.display()
        ),
    )
    .unwrap();
    let exists = out(podman(&conf).args(["image", "exists", IMAGE]));
    assert!(
        exists.status.success(),
        "image {IMAGE} missing: run `cargo xtask image` (cargo xtask test-container does)"
    );

    // moto and the EKS Auth stand-in in the node netns, as eks_auth_e2e.rs.
    start_sts(&mut node);
    let standin = Path::new(AGENT)
        .parent()
        .unwrap()
        .join("examples/eks_auth_standin");
    assert!(standin.exists(), "{} missing", standin.display());
    let tokens = dir.path().join("tokens");
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
        "--pod",
        &format!("s3:{uid}:default:s3-sa"),
    ])
    .arg("--token-dir")
    .arg(&tokens);
    node.spawn_until(c, "EKS Auth stand-in ready", Duration::from_secs(30));

    // Host paths made by the test.
    let bpffs = Bpffs::mount(dir.path().join("bpffs"));
    let audit = dir.path().join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    let name = format!("pia-test-{}", std::process::id());
    let sub = json!({
        "name": name,
        "env": {
            "status.hostIP": NODE_ADDR4.to_string(),
            "spec.nodeName": "test-node",
            "cluster-name": "test-cluster",
        },
        "extra_env": {
            "AWS_ACCESS_KEY_ID": "AKIANODEROLEEXAMPLE1",
            "AWS_SECRET_ACCESS_KEY": "node-role-secret-never-logged",
            "AWS_EC2_METADATA_DISABLED": "true",
            "RUST_LOG": "info,pod_identity_agent=debug",
        },
        "extra_args": [
            format!("--endpoint=http://127.0.0.1:{EKS_AUTH_PORT}"),
            "--region=us-east-1",
        ],
        "volumes": {
            "host-cgroup": node.cgroup_root.path(),
            "bpffs": bpffs.0,
            "audit-log": audit,
        },
    });
    let mut py = Command::new("python3");
    py.args(["-c", TO_POD, &sub.to_string()])
        .stdin(std::fs::File::open(DAEMONSET).unwrap());
    let pod_yaml = check(&mut py);
    let yaml = dir.path().join("pod.yaml");
    std::fs::write(&yaml, &pod_yaml).unwrap();
    eprintln!("container_run: playing\n{pod_yaml}");

    // `podman kube play` needs an infra container, and runc cannot start it here
    // (podman gives it RLIMIT_NPROC above this sandbox's hard limit): the Pod runs
    // as one `podman run` with exactly its settings (TO_RUN), in the node netns
    // (hostNetwork means the netns podman runs in).
    // The kubelet puts the agent's pod in the node's kubepods cgroup, under the
    // host cgroup2 root the DaemonSet mounts; here the test's subtree plays that
    // root, so the container goes under it (the agent must find its own cgroup
    // there: its bind guard names it).
    let parent = format!(
        "/{}/kubepods",
        node.cgroup_root
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
    );
    let played = Played {
        conf: conf.clone(),
        name: name.clone(),
        parent: parent.clone(),
    };
    let mut to_run = Command::new("python3");
    to_run
        .args(["-c", TO_RUN, &played.container(), &parent])
        .stdin(std::fs::File::open(&yaml).unwrap());
    let argv: Vec<String> = serde_json::from_str(&check(&mut to_run)).unwrap();
    eprintln!("container_run: podman {}", argv.join(" "));
    let t = Instant::now();
    let mut play = Command::new("nsenter");
    play.arg(format!("--net={}", node.netns.path()))
        .args(["--", "podman"])
        .args(&argv)
        .env("CONTAINERS_CONF", &conf);
    check(&mut play);

    let ready = wait_for(
        "the containerised agent's /readyz",
        Duration::from_secs(30),
        || {
            let running = check(podman(&conf).args([
                "inspect",
                "--format",
                "{{.State.Status}}",
                &played.container(),
            ]));
            assert!(
                running.trim() == "running",
                "agent container {}: {}",
                running.trim(),
                played.logs()
            );
            let (code, body) = node_get_status(&node, &format!("http://{PROBES}/readyz"));
            (code == 200).then_some(body)
        },
    );
    eprintln!("container_run: ready {:?} after play: {ready}", t.elapsed());
    let (code, _) = node_get_status(&node, &format!("http://{PROBES}/healthz"));
    assert_eq!(code, 200, "{}", played.logs());

    // Only the granted capabilities, as root, no new privileges, seccomp on, the
    // root filesystem read-only.
    let pid: u32 =
        check(podman(&conf).args(["inspect", "--format", "{{.State.Pid}}", &played.container()]))
            .trim()
            .parse()
            .unwrap();
    let cap = |f: &str| u64::from_str_radix(&status_field(pid, f), 16).unwrap();
    eprintln!(
        "container_run: agent pid {pid}: CapEff {:016x} CapPrm {:016x} CapBnd {:016x} CapAmb {:016x} CapInh {:016x}",
        cap("CapEff:"),
        cap("CapPrm:"),
        cap("CapBnd:"),
        cap("CapAmb:"),
        cap("CapInh:")
    );
    assert_eq!(cap("CapEff:"), GRANTED);
    assert_eq!(cap("CapPrm:"), GRANTED);
    assert_eq!(cap("CapBnd:"), GRANTED);
    assert_eq!(cap("CapAmb:"), 0);
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    assert!(
        status_field(pid, "Uid:")
            .split_whitespace()
            .all(|u| u == "0"),
        "{}",
        status_field(pid, "Uid:")
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap();
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .unwrap();
    assert!(
        root.split_whitespace()
            .nth(3)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{root}"
    );
    // Its network namespace is the node's (hostNetwork).
    let netns = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    assert_eq!(
        netns(&format!("/proc/{pid}/ns/net")).unwrap(),
        netns(&node.netns.path()).unwrap()
    );

    // A pod of the node gets its role through the container.
    let arn = sdk_caller_arn(&node, 0, Sdk::Cli, &tokens.join("s3"), dir.path())
        .unwrap_or_else(|e| panic!("aws in pod s3: {e}\nagent:\n{}", played.logs()));
    assert!(
        arn.starts_with(&format!(
            "arn:aws:sts::{ACCOUNT}:assumed-role/{ROLE}/eks-test-cluster-s3-"
        )),
        "{arn}"
    );
    // Pinned in the test's bpffs (through the hostPath), audited in its directory.
    assert!(
        std::fs::read_dir(&bpffs.0).unwrap().next().is_some(),
        "nothing pinned in {}",
        bpffs.0.display()
    );
    let audit_log = std::fs::read_to_string(audit.join("audit.jsonl")).unwrap_or_default();
    assert!(
        !audit_log.trim().is_empty(),
        "nothing in {}",
        audit.display()
    );

    drop(played);
    // Removing the container stopped the agent: its pinned links stay (a restart keeps the
    // redirect), so the test's bpffs goes after it, then the node.
    drop(bpffs);
    eprintln!("container_run: whole test {:?}", started.elapsed());
}
