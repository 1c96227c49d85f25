//! `cargo xtask demo`: written once the credentials path lands.
pub fn run() -> Result<(), String> {
    Err("demo not written yet".into())
}
