//! A simulated node: a node network namespace, pod namespaces joined to it by veth
//! pairs, and a cgroup per pod under a test-made cgroup subtree.
//!
//! ```text
//!  node netns: lo = 169.254.199.1/32, fd00:199::1/128 (agent, STS)
//!     n<i> 169.254.(200+i).1/24 ◀──veth──▶ pod netns <i>: eth0 169.254.(200+i).2/24
//!                                           routes: only 169.254.199.1 and fd00:199::1
//! ```
//!
//! Safety rules this module enforces by construction:
//! * no namespace it makes has a route off the machine (the node netns has no
//!   uplink; pod namespaces have only host routes to the node's dummy address), so
//!   a failed redirect to 169.254.170.23 fails with ENETUNREACH;
//! * cgroups live under `<cgroup2>/pia-test-<pid>-<n>`, never the machine's root;
//! * everything is removed on drop (also when a test panics), and leftovers of dead
//!   test processes are removed by [`cleanup_stale`].
#![forbid(unsafe_code)]

use std::{
    fs,
    io::{self, BufRead, BufReader},
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

/// The node's own address (on a dummy link), where the agent and STS listen.
pub const NODE_ADDR4: Ipv4Addr = Ipv4Addr::new(169, 254, 199, 1);
pub const NODE_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x199, 0, 0, 0, 0, 0, 1);

/// The Python client used by the attribution tests and the demo.
pub const CLIENT_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/py/pia_client.py");

/// The hostile client (raw malformed bytes, slowloris, idle and pipelining floods)
/// of `agent/tests/hostile_input.rs`.
pub const HOSTILE_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/py/hostile_client.py");

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The environment variable that multiplies the tests' waits: `cargo xtask
/// test-kernels` sets it in emulated guests, where every process is many times
/// slower. It stretches how long a test waits for something, never what it asserts.
pub const TIME_SCALE_VAR: &str = "PIA_TEST_TIME_SCALE";

/// `PIA_TEST_TIME_SCALE` (a number ≥ 1), else 1.
pub fn time_scale() -> f64 {
    std::env::var(TIME_SCALE_VAR)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 1.0)
        .unwrap_or(1.0)
}

/// `d` times [`time_scale`].
pub fn scaled(d: Duration) -> Duration {
    d.mul_f64(time_scale())
}

/// Put on the pods' Python AWS clients' `PYTHONPATH` under emulation only: its
/// `sitecustomize.py` stretches botocore's one hard-coded wait (2 s for the
/// container credentials endpoint) by [`time_scale`].
pub const EMULATED_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/py/emulated");

/// Fail loudly (never skip) when privileged tests cannot run.
pub fn require_root() {
    let uid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "privileged test: must run as root (cargo xtask test runs it as root in CI); refusing to skip"
    );
    for tool in ["ip", "nsenter"] {
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            ok,
            "privileged test: `{tool}` not found (cargo xtask setup installs it)"
        );
    }
}

/// The host's cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> PathBuf {
    let mi = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let mut found = Vec::new();
    for line in mi.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = pre.split_whitespace().nth(4) {
                found.push(PathBuf::from(mp));
            }
        }
    }
    for pref in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if let Some(p) = found.iter().find(|p| p.as_os_str() == pref) {
            return p.clone();
        }
    }
    found
        .into_iter()
        .next()
        .expect("no cgroup2 mount in /proc/self/mountinfo")
}

fn run(cmd: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(cmd).args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn ip(args: &[&str]) {
    run("ip", args).unwrap_or_else(|e| panic!("{e}"));
}

// === netns ===

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> Netns {
        ip(&["netns", "add", name]);
        let ns = Netns {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

// === cgroup ===

/// A cgroup v2 directory made by a test, removed on drop (its processes killed).
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn create(path: PathBuf) -> Cgroup {
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup { path }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// cgroup v2 id: the inode of the directory.
    pub fn id(&self) -> u64 {
        fs::metadata(&self.path).expect("stat cgroup").ino()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.path);
    }
}

/// Kill every process in the tree and remove it bottom-up.
pub fn remove_cgroup_tree(path: &Path) {
    let Ok(entries) = fs::read_dir(path) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_cgroup_tree(&e.path());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<&str> = procs.split_whitespace().collect();
        if pids.is_empty() {
            break;
        }
        // cgroup.kill (5.14+) kills the whole cgroup at once; fall back to kill(1).
        if fs::write(path.join("cgroup.kill"), "1").is_err() {
            let _ = Command::new("kill").arg("-9").args(&pids).status();
        }
        if Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..100 {
        if fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// === node ===

/// A simulated pod.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    /// Kubernetes pod UID (canonical, dashes).
    pub uid: String,
    /// 64-hex container id of the pod's one container.
    pub container_id: String,
    /// `None` for a hostNetwork pod (it lives in the node netns).
    pub netns: Option<Netns>,
    /// The container's cgroup, shaped like systemd + containerd.
    pub cgroup: Cgroup,
    /// The pod's address (the node address for a hostNetwork pod).
    pub addr4: Ipv4Addr,
    pub addr6: Ipv6Addr,
}

/// The simulated node. Drop order removes processes, then namespaces, then cgroups.
#[derive(Debug)]
pub struct Node {
    pub id: String,
    pub netns: Netns,
    pub pods: Vec<Pod>,
    /// The test's cgroup subtree: attach eBPF here.
    pub cgroup_root: Cgroup,
    children: Vec<Child>,
    /// Lines printed by processes started with `spawn_until`, by handle.
    logs: std::collections::HashMap<usize, std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
}

impl Node {
    /// A node netns with the node address on a dummy link, and the test cgroup root.
    pub fn new() -> Node {
        require_root();
        cleanup_stale();
        let id = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let cgroup_root = Cgroup::create(cgroup2_mount().join(format!("pia-test-{id}")));
        let netns = Netns::create(&format!("pia-{id}-node"));
        let n = netns.name().to_owned();
        // On `lo`: not every kernel has the dummy link type.
        ip(&[
            "-n",
            &n,
            "addr",
            "add",
            &format!("{NODE_ADDR4}/32"),
            "dev",
            "lo",
        ]);
        ip(&[
            "-n",
            &n,
            "-6",
            "addr",
            "add",
            &format!("{NODE_ADDR6}/128"),
            "dev",
            "lo",
            "nodad",
        ]);
        Node {
            id,
            netns,
            pods: Vec::new(),
            cgroup_root,
            children: Vec::new(),
            logs: Default::default(),
        }
    }

    /// Add a pod with its own netns (or the node's, for `host_network`) and cgroup.
    /// `uid` must be a UUID; the cgroup is shaped like systemd + containerd.
    pub fn add_pod(&mut self, name: &str, uid: &str, host_network: bool) -> usize {
        let i = self.pods.len();
        assert!(i < 50, "at most 50 pods");
        let seq: u64 = self.id.replace('-', "").parse().unwrap_or(0);
        let container_id = format!(
            "{:016x}{:016x}{:016x}{:016x}",
            0xc0ffee_u64,
            seq,
            i,
            std::process::id()
        );
        let uid_ = uid.replace('-', "_");
        let cg = self.cgroup_root.path().join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{container_id}.scope"
        ));
        let cgroup = Cgroup::create(cg);
        let (netns, addr4, addr6) = if host_network {
            (None, NODE_ADDR4, NODE_ADDR6)
        } else {
            let ns = Netns::create(&format!("pia-{}-p{i}", self.id));
            let (n, p) = (self.netns.name(), ns.name());
            let node4 = format!("169.254.{}.1", 200 + i);
            let pod4: Ipv4Addr = format!("169.254.{}.2", 200 + i).parse().unwrap();
            let node6 = format!("fd00:200:{i:x}::1");
            let pod6: Ipv6Addr = format!("fd00:200:{i:x}::2").parse().unwrap();
            let veth = format!("n{i}");
            ip(&[
                "-n", n, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", p,
            ]);
            ip(&["-n", n, "addr", "add", &format!("{node4}/24"), "dev", &veth]);
            ip(&[
                "-n",
                n,
                "-6",
                "addr",
                "add",
                &format!("{node6}/64"),
                "dev",
                &veth,
                "nodad",
            ]);
            ip(&["-n", n, "link", "set", &veth, "up"]);
            ip(&["-n", p, "addr", "add", &format!("{pod4}/24"), "dev", "eth0"]);
            ip(&[
                "-n",
                p,
                "-6",
                "addr",
                "add",
                &format!("{pod6}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ip(&["-n", p, "link", "set", "eth0", "up"]);
            // Host routes only: the node address, nothing else, no default route.
            ip(&[
                "-n",
                p,
                "route",
                "add",
                &format!("{NODE_ADDR4}/32"),
                "via",
                &node4,
            ]);
            ip(&[
                "-n",
                p,
                "-6",
                "route",
                "add",
                &format!("{NODE_ADDR6}/128"),
                "via",
                &node6,
            ]);
            (Some(ns), pod4, pod6)
        };
        self.pods.push(Pod {
            name: name.to_owned(),
            uid: uid.to_owned(),
            container_id,
            netns,
            cgroup,
            addr4,
            addr6,
        });
        i
    }

    /// Delete pod `i` and create it again with the same name, network namespace
    /// and addresses but a new UID (and container id): its old cgroup is removed
    /// with every process in it, a new one is made for `new_uid`.
    pub fn recreate_pod(&mut self, i: usize, new_uid: &str) {
        let pod = &mut self.pods[i];
        remove_cgroup_tree(pod.cgroup.path());
        let container_id = format!(
            "{}{:016x}{:016x}",
            new_uid.replace('-', ""),
            i,
            std::process::id()
        );
        let uid_ = new_uid.replace('-', "_");
        let cg = self.cgroup_root.path().join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{container_id}.scope"
        ));
        // The old pod's `pod…slice` parent goes too, as the kubelet removes it.
        if let Some(parent) = pod.cgroup.path().parent() {
            remove_cgroup_tree(parent);
        }
        pod.cgroup = Cgroup::create(cg);
        pod.uid = new_uid.to_owned();
        pod.container_id = container_id;
    }

    /// A command that runs in pod `i`'s cgroup and network namespace.
    pub fn pod_command(&self, i: usize, program: &str) -> Command {
        let pod = &self.pods[i];
        let ns = pod.netns.as_ref().unwrap_or(&self.netns).path();
        in_cgroup_and_netns(pod.cgroup.path(), &ns, program)
    }

    /// A command in the node netns, in a cgroup outside the attach subtree (the
    /// runner's own), e.g. the agent or STS.
    pub fn node_command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns.path()))
            .arg("--")
            .arg(program);
        c
    }

    /// Start a long-running process owned by the node (killed on drop).
    pub fn spawn(&mut self, mut cmd: Command) -> usize {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        self.children.push(child);
        self.children.len() - 1
    }

    /// Start a process and wait until a line of its stderr or stdout contains
    /// `ready` (within `timeout` times [`time_scale`]); other lines are passed
    /// through to our stderr.
    pub fn spawn_until(&mut self, mut cmd: Command, ready: &str, timeout: Duration) -> usize {
        let timeout = scaled(timeout);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("  | {line}");
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(ready) => break,
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    panic!("{cmd:?} did not print {ready:?} within {timeout:?} (exit: {status:?})");
                }
            }
        }
        self.children.push(child);
        self.logs.insert(self.children.len() - 1, log);
        self.children.len() - 1
    }

    /// Everything a `spawn_until` process printed so far (stdout and stderr).
    pub fn output_of(&self, handle: usize) -> String {
        self.logs
            .get(&handle)
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).join("\n"))
            .unwrap_or_default()
    }

    /// Stop a process started with [`Node::spawn`] or [`Node::spawn_until`].
    pub fn kill(&mut self, handle: usize) {
        let c = &mut self.children[handle];
        let _ = c.kill();
        let _ = c.wait();
    }

    /// The process id of a process started with [`Node::spawn`] or [`Node::spawn_until`].
    pub fn pid(&self, handle: usize) -> u32 {
        self.children[handle].id()
    }

    /// Whether a spawned process is still running.
    pub fn is_running(&mut self, handle: usize) -> bool {
        matches!(self.children[handle].try_wait(), Ok(None))
    }
}

impl Default for Node {
    fn default() -> Self {
        Node::new()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Pods (netns, cgroups), then the node netns, then the cgroup root: fields
        // drop in declaration order after this.
        self.pods.clear();
    }
}

/// `program` in `cgroup` and the netns at `netns_path`, without `unsafe`: a shell
/// moves itself into the cgroup, then execs nsenter, then the program (same pid).
pub fn in_cgroup_and_netns(cgroup: &Path, netns_path: &str, program: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"cg=$0; ns=$1; shift; echo $$ > "$cg/cgroup.procs" && exec nsenter --net="$ns" -- "$@""#)
        .arg(cgroup)
        .arg(netns_path)
        .arg(program);
    c
}

/// Remove namespaces and cgroups left by test processes that no longer exist
/// (a test killed with SIGKILL cannot run its destructors).
pub fn cleanup_stale() {
    // Only names this module makes: `pia-<pid>-<n>…`, `pia-test-<pid>-<n>`.
    let is_pid = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    let alive = |pid: &str| Path::new(&format!("/proc/{pid}")).exists();
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if let Some(rest) = name.strip_prefix("pia-") {
                let pid = rest.split('-').next().unwrap_or("");
                if is_pid(pid) && !alive(pid) {
                    let _ = run("ip", &["netns", "del", name]);
                }
            }
        }
    }
    let root = cgroup2_mount();
    if let Ok(entries) = fs::read_dir(&root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("pia-test-") {
                let pid = rest.split('-').next().unwrap_or("");
                if is_pid(pid) && !alive(pid) {
                    remove_cgroup_tree(&e.path());
                }
            }
        }
    }
}

/// A bpffs mounted by a test at a temporary directory; unmounted (which drops every
/// pin in it) and removed on drop. Tests never pin under the machine's /sys/fs/bpf.
#[derive(Debug)]
pub struct BpfFs {
    path: PathBuf,
}

impl BpfFs {
    pub fn mount() -> BpfFs {
        let path = std::env::temp_dir().join(format!(
            "pia-bpffs-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&path).expect("mkdir bpffs mountpoint");
        run(
            "mount",
            &["-t", "bpf", "bpf", path.to_str().expect("utf-8 path")],
        )
        .unwrap_or_else(|e| panic!("mount bpffs: {e}"));
        BpfFs { path }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", self.path.to_str().unwrap_or_default()]);
        let _ = fs::remove_dir(&self.path);
    }
}

/// Wrap `cmd` so that it runs in `cgroup` (program, arguments and environment
/// are carried over).
pub fn in_cgroup(cgroup: &Path, cmd: &Command) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"cg=$0; echo $$ > "$cg/cgroup.procs" && exec "$@""#)
        .arg(cgroup)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// The environment of an unmodified AWS SDK client in a pod, as EKS's webhook sets
/// it, and nothing else: no static keys, no shared config, no IMDS fallback, so the
/// client can only get credentials through the credentials endpoint.
pub fn sdk_env(cmd: &mut Command, token_file: &Path, home: &Path, path: &str) {
    cmd.env_clear()
        .env("PATH", path)
        .env("HOME", home)
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://169.254.170.23/v1/credentials",
        )
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_file)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_REGION", "us-east-1");
    for k in ["PYENV_ROOT", "PYENV_VERSION"] {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    if time_scale() > 1.0 {
        cmd.env(TIME_SCALE_VAR, time_scale().to_string())
            .env("PYTHONPATH", EMULATED_PY);
    }
}
