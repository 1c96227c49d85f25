//! `cargo xtask image`: the agent image, offline. A static (musl) agent with the
//! eBPF object embedded (agent/build.rs), copied into an image `FROM scratch`
//! (deploy/Containerfile.scratch) with `podman build --pull=never`: no registry is
//! involved. deploy/Dockerfile builds the same image from source, for users.

use std::process::Command;

use crate::{root, run, setup, target_dir};

/// The DaemonSet's image (deploy/daemonset.yaml, deploy/eks/daemonset.yaml);
/// agent/tests/container_run.rs plays the pod template with it.
pub const TAG: &str = "pod-identity-agent:0.1.0";

pub fn build() -> Result<(), String> {
    let bin = static_agent()?;
    // The build context holds the binary only.
    let ctx = target_dir().join("image-context");
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx).map_err(|e| format!("{}: {e}", ctx.display()))?;
    std::fs::copy(&bin, ctx.join("pod-identity-agent"))
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    run(Command::new("podman")
        .args(["build", "--pull=never", "--file"])
        .arg(root().join("deploy/Containerfile.scratch"))
        .args(["--tag", TAG])
        .arg(&ctx))
}

/// The agent binary the image ships: static (musl), release, the eBPF object
/// embedded. `cargo xtask bench` measures this one too.
pub fn static_agent() -> Result<std::path::PathBuf, String> {
    setup::musl()?;
    crate::build_ebpf()?;
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root())
        // aws-lc-sys (rustls) compiles C: musl-gcc (musl-tools) for this target.
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            setup::MUSL,
            "--package",
            "pod-identity-agent",
            "--bin",
            "pod-identity-agent",
        ]);
    run(&mut c)?;
    Ok(target_dir()
        .join(setup::MUSL)
        .join("release/pod-identity-agent"))
}

/// `cargo xtask test-container`: the image, then agent/tests/container_run.rs
/// (behind the `container-test` feature, so `cargo test --workspace` leaves it to
/// this command; `.ci/run` runs both).
pub fn test_container() -> Result<(), String> {
    build()?;
    // The test runs the EKS Auth stand-in (an example) in the node netns.
    run(crate::cargo().args(["build", "--package", "pod-identity-agent", "--examples"]))?;
    run(crate::cargo().args([
        "test",
        "--package",
        "pod-identity-agent",
        "--features",
        "container-test",
        "--test",
        "container_run",
    ]))
}
