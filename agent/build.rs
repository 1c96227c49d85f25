//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is optional at build time so that `cargo clippy` and unit tests work
//! without the BPF toolchain; an agent built without it says so at start-up.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=POD_IDENTITY_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("POD_IDENTITY_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| manifest.join("../target"));
            target.join("bpfel-unknown-none/release/pod-identity-ebpf")
        });
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("pod-identity-ebpf.o");
    let bytes = fs::read(&object).unwrap_or_default();
    fs::write(&out, bytes).expect("write OUT_DIR object");
}
