//! Idempotent installation of everything beyond Rust, gcc and Python.

use std::process::{Command, Stdio};

use crate::run;

/// Debian packages: LLVM 22 for bpf-linker, iproute2/util-linux for the simulated
/// node, bpftool for inspection.
const APT: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "util-linux",
    "procps",
    "bpftool",
    "wrk",
    // The container image and its run with a real OCI runtime (`cargo xtask
    // image`, agent/tests/container_run.rs): aws-lc-sys needs a musl C compiler
    // for the static build.
    "podman",
    "buildah",
    "runc",
    // podman builds its pause image from catatonit (a Recommends of podman).
    "catatonit",
    "musl-tools",
];

/// PyPI tools the tests use as real parts (versions checked to work together).
const PIP: &[(&str, &str)] = &[
    ("moto[server]", "5.2.1"),
    ("boto3", "1.43.11"),
    ("awscli", "1.45.11"),
    // Schema validation of deploy/ (xtask/src/manifests.rs). checkov, the other
    // manifest tool, pins an old boto3 and so lives in its own virtualenv there.
    ("kubernetes-validate", "1.37.0"),
    // CEL, to evaluate deploy/'s ValidatingAdmissionPolicies against their cases.
    ("cel-python", "0.5.0"),
];

const LLVM: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn output(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

pub fn apt() -> Result<(), String> {
    apt_install(APT)
}

/// Install the Debian packages of `pkgs` that are not installed yet.
pub fn apt_install(pkgs: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                != "install ok installed"
        })
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: apt packages present");
        return Ok(());
    }
    eprintln!("xtask: installing apt packages: {}", missing.join(" "));
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// What `cargo xtask build-ebpf` needs: nightly rust-src and bpf-linker on LLVM 22.
pub fn toolchain() -> Result<(), String> {
    apt()?;
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let have = output(Command::new("bpf-linker").arg("--version"));
    if !have.contains(BPF_LINKER_VERSION) {
        eprintln!(
            "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about two minutes)"
        );
        let path = format!("{LLVM}/bin:{}", std::env::var("PATH").unwrap_or_default());
        // bpf-linker's build script looks for LLVM_PREFIX (or llvm-config on PATH);
        // llvm-sys for LLVM_SYS_221_PREFIX. Without them the link fails on -lLLVM.
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM)
            .env("LLVM_SYS_221_PREFIX", LLVM)
            .env("PATH", path))?;
    }
    Ok(())
}

/// The target of the static agent in the image.
pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// `rustup target add` the musl target once.
pub fn musl() -> Result<(), String> {
    apt()?;
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]));
    if installed.lines().any(|l| l.trim() == MUSL) {
        return Ok(());
    }
    eprintln!("xtask: adding the {MUSL} target");
    run(Command::new("rustup").args(["target", "add", MUSL]))
}

pub fn python() -> Result<(), String> {
    let want: Vec<String> = PIP.iter().map(|(p, v)| format!("{p}=={v}")).collect();
    let check = PIP
        .iter()
        .map(|(p, v)| format!("('{}','{v}')", p.split('[').next().unwrap_or(p)))
        .collect::<Vec<_>>()
        .join(",");
    let script = format!(
        "import importlib.metadata as m\nfor p, v in [{check}]:\n    assert m.version(p) == v, p\n"
    );
    let found = |tool: &str, arg: &str| {
        ok(Command::new(tool)
            .arg(arg)
            .env("PATH", path_with_python_scripts()))
    };
    if ok(Command::new("python3").args(["-c", &script]))
        && found("moto_server", "--help")
        && found("aws", "--version")
    {
        eprintln!("xtask: python tools present ({})", want.join(", "));
        return Ok(());
    }
    eprintln!("xtask: installing python tools: {}", want.join(" "));
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(&want))?;
    // pyenv only exposes new console scripts (moto_server, aws) after a rehash;
    // `path_with_python_scripts` covers machines without pyenv.
    if ok(Command::new("pyenv").arg("--version")) {
        run(Command::new("pyenv").arg("rehash"))?;
    }
    Ok(())
}

/// PATH with the Python scripts directory first, so `moto_server` and `aws`
/// installed by `python()` are found by the tests whatever the shell's PATH.
pub fn path_with_python_scripts() -> String {
    let scripts = output(Command::new("python3").args([
        "-c",
        "import sysconfig; print(sysconfig.get_path('scripts'))",
    ]));
    let path = std::env::var("PATH").unwrap_or_default();
    match scripts.trim() {
        "" => path,
        s => format!("{s}:{path}"),
    }
}

pub fn all() -> Result<(), String> {
    toolchain()?;
    musl()?;
    python()
}
