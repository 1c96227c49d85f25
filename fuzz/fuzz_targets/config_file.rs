//! The config file (`cli::config_file` and `config check`): TOML → the agent's
//! flags → clap → a validated `Config`, as `pod-identity-agent config check` does.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pod_identity_agent::cli;

fuzz_target!(|data: &[u8]| {
    // The agent reads the file with `read_to_string`: non-UTF-8 is an I/O error.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = cli::check_config_text(Path::new("config.toml"), text, |_| None);
});
