//! Privileged: the agent's programs beside another vendor's (issue #13, item 7).
//!
//! The other vendor is a Cilium-like socket load balancer, a test fixture built by
//! `cargo xtask build-ebpf` (`agent-ebpf/src/vendor_socklb.rs`): `cgroup/connect4`
//! rewrites the Service VIP 10.96.0.10:80 to a backend on the simulated node
//! (169.254.199.1:8080), `cgroup/getpeername4` reports the VIP back, `sock_ops`
//! counts established connections. The test loads it with aya, pins it in a bpffs
//! it mounted, and attaches it as Cilium does: `BPF_PROG_ATTACH` with
//! `BPF_F_ALLOW_MULTI` (`bpftool cgroup attach … multi`), on the node's cgroup
//! subtree, the parent of the pods' cgroups, where the agent's links are too.
//! Programs on one cgroup run in attach order, so both orders are checked: the
//! VIP reaches its backend, the credentials address reaches the agent with the
//! pod's identity, each side's getpeername answer is its own, and a vendor
//! attaching exclusively cannot evict the agent.

mod support;

use std::path::{Path, PathBuf};

use aya::{
    maps::Array,
    programs::{CgroupSockAddr, SockOps},
    Ebpf,
};
use serde_json::json;
use support::*;
use testnode::{BpfFs, Node};

const VIP: &str = "10.96.0.10";
const BACKEND_PORT: u16 = 8080;

/// The fixture's programs and the `bpftool cgroup attach` type of each.
const PROGRAMS: [(&str, &str); 3] = [
    ("vendor_connect4", "connect4"),
    ("vendor_getpeername4", "getpeername4"),
    ("vendor_sockops", "sock_ops"),
];

/// `vendor-socklb` next to the agent's eBPF object.
fn vendor_object() -> PathBuf {
    let object = match std::env::var_os("POD_IDENTITY_EBPF_OBJECT") {
        Some(o) => PathBuf::from(o).with_file_name("vendor-socklb"),
        // target/debug/pod-identity-agent → target/bpfel-unknown-none/release/…
        None => Path::new(AGENT)
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .join("bpfel-unknown-none/release/vendor-socklb"),
    };
    assert!(
        object.exists(),
        "{} missing: run `cargo xtask build-ebpf` (it builds the test fixture too)",
        object.display()
    );
    object
}

/// The other vendor's programs: loaded, pinned in a test-mounted bpffs, attached
/// with bpftool; detached and unpinned on drop.
struct Vendor {
    ebpf: Ebpf,
    fs: BpfFs,
    attached: Vec<(PathBuf, &'static str, PathBuf)>,
}

impl Vendor {
    fn load() -> Vendor {
        let fs = BpfFs::mount();
        let mut ebpf = Ebpf::load_file(vendor_object()).expect("load vendor-socklb");
        for (name, _) in PROGRAMS {
            let pin = fs.path().join(name);
            let prog = ebpf.program_mut(name).expect(name);
            if name == "vendor_sockops" {
                let p: &mut SockOps = prog.try_into().expect(name);
                p.load().expect(name);
                p.pin(&pin).expect(name);
            } else {
                let p: &mut CgroupSockAddr = prog.try_into().expect(name);
                p.load().expect(name);
                p.pin(&pin).expect(name);
            }
        }
        Vendor {
            ebpf,
            fs,
            attached: Vec::new(),
        }
    }

    /// `bpftool cgroup attach <cgroup> <type> pinned <prog> <mode>` for every
    /// program (`mode`: `multi`, `override`, or "" for an exclusive attach).
    fn attach(&mut self, cgroup: &Path, mode: &str) -> Result<(), String> {
        for (name, typ) in PROGRAMS {
            let pin = self.fs.path().join(name);
            let out = std::process::Command::new("bpftool")
                .args(["cgroup", "attach"])
                .arg(cgroup)
                .args([typ, "pinned"])
                .arg(&pin)
                .args((!mode.is_empty()).then_some(mode))
                .output()
                .expect("bpftool (cargo xtask setup installs it)");
            if !out.status.success() {
                return Err(format!(
                    "bpftool cgroup attach {typ} {mode}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            self.attached.push((cgroup.to_owned(), typ, pin));
        }
        Ok(())
    }

    /// STATS: VIP connects rewritten, getpeername translated, backend and agent
    /// connections established.
    fn stats(&self) -> [u64; 4] {
        let map: Array<_, u64> =
            Array::try_from(self.ebpf.map("STATS").expect("STATS")).expect("STATS array");
        std::array::from_fn(|i| map.get(&(i as u32), 0).expect("STATS slot"))
    }
}

impl Drop for Vendor {
    fn drop(&mut self) {
        for (cgroup, typ, pin) in self.attached.drain(..).rev() {
            let _ = std::process::Command::new("bpftool")
                .args(["cgroup", "detach"])
                .arg(&cgroup)
                .args([typ, "pinned"])
                .arg(&pin)
                .output();
        }
        // The bpffs (and the pins) go with `fs`.
    }
}

/// The node, one pod, and the VIP's backend: an HTTP server on the node address.
fn node_with_backend() -> (Node, tempfile::TempDir) {
    let mut node = Node::new();
    node.add_pod("pod-a", UIDS[0], false);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("backend.txt"), "the VIP's backend\n").unwrap();
    let mut c = node.node_command("python3");
    c.args(["-u", "-m", "http.server", &BACKEND_PORT.to_string()])
        .args(["--bind", &testnode::NODE_ADDR4.to_string(), "--directory"])
        .arg(dir.path());
    node.spawn_until(c, "Serving HTTP", std::time::Duration::from_secs(20));
    (node, dir)
}

fn vip_get(node: &Node) -> serde_json::Value {
    let (_, rec) = client1(
        node,
        0,
        &[
            "--addr",
            VIP,
            "--port",
            "80",
            "--path",
            "/backend.txt",
            "--host",
            VIP,
        ],
    );
    rec
}

/// Both programs do their job for the pod: the VIP reaches its backend and reads
/// as the VIP; the credentials address reaches the agent, which sees the pod; the
/// vendor's sock_ops saw both connections established.
fn assert_both_work(node: &Node, vendor: &Vendor, order: &str) {
    let before = vendor.stats();
    let rec = vip_get(node);
    assert_eq!(rec["status"], 200, "{order}: VIP through the vendor: {rec}");
    assert_eq!(rec["body"], "the VIP's backend\n", "{order}: {rec}");
    assert_eq!(
        rec["peer"],
        json!([VIP, 80]),
        "{order}: vendor's getpeername: {rec}"
    );

    let (pid, rec) = client1(node, 0, &[]);
    assert_eq!(rec["status"], 200, "{order}: the agent's redirect: {rec}");
    let b = body(&rec);
    assert_eq!(b["cgroupId"], node.pods[0].cgroup.id(), "{order}: {b}");
    assert_eq!(b["pid"], pid, "{order}: {b}");
    assert_eq!(
        rec["peer"],
        json!(["169.254.170.23", 80]),
        "{order}: the agent's getpeername: {rec}"
    );

    let after = vendor.stats();
    eprintln!("{order}: vendor STATS {before:?} -> {after:?}");
    assert!(
        after[0] > before[0],
        "{order}: VIP connect not rewritten by the vendor: {after:?}"
    );
    assert!(
        after[1] > before[1],
        "{order}: vendor's getpeername not run: {after:?}"
    );
    assert!(
        after[2] > before[2],
        "{order}: vendor's sock_ops missed the backend: {after:?}"
    );
    assert!(
        after[3] > before[3],
        "{order}: vendor's sock_ops missed the redirected connection: {after:?}"
    );
}

/// Without the vendor the VIP has no route from the pod: what reaches the
/// backend later is the vendor's rewrite.
fn assert_vip_unreachable(node: &Node) {
    let rec = vip_get(node);
    assert_eq!(rec["errno"], "ENETUNREACH", "{rec}");
}

#[test]
fn vendor_attached_first_then_the_agent_both_work() {
    let (mut node, _dir) = node_with_backend();
    assert_vip_unreachable(&node);
    let mut vendor = Vendor::load();
    vendor
        .attach(node.cgroup_root.path(), "multi")
        .expect("vendor attach");
    let rec = vip_get(&node);
    assert_eq!(rec["status"], 200, "the vendor alone: {rec}");
    start_agent(&mut node, &[]);
    assert_both_work(&node, &vendor, "vendor first");
}

#[test]
fn agent_attached_first_then_the_vendor_both_work() {
    let (mut node, _dir) = node_with_backend();
    start_agent(&mut node, &[]);
    assert_vip_unreachable(&node);
    let (_, rec) = client1(&node, 0, &[]);
    assert_eq!(rec["status"], 200, "the agent alone: {rec}");
    let mut vendor = Vendor::load();
    // A vendor attaching exclusively (no flag) or with override cannot take the
    // cgroup from the agent's links: the kernel refuses, the agent keeps working.
    for mode in ["", "override"] {
        let e = vendor
            .attach(node.cgroup_root.path(), mode)
            .expect_err("an exclusive attach beside the agent's links");
        eprintln!("vendor attach {mode:?} refused: {e}");
        let (_, rec) = client1(&node, 0, &[]);
        assert_eq!(rec["status"], 200, "after a refused {mode:?} attach: {rec}");
    }
    vendor
        .attach(node.cgroup_root.path(), "multi")
        .expect("vendor attach");
    assert_both_work(&node, &vendor, "agent first");
}
