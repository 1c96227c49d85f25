use super::*;
use crate::cli::{check_config_file, parse_from, Cli};
use clap::CommandFactory;

fn no_env(_: &str) -> Option<String> {
    None
}

fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn argv(args: &[&str]) -> Vec<OsString> {
    std::iter::once("pod-identity-agent")
        .chain(args.iter().copied())
        .map(OsString::from)
        .collect()
}

#[test]
fn the_file_sets_what_flags_and_environment_do_not() {
    let (_d, path) = write(
        r#"
agent-addr4 = "10.0.0.9"
cgroup = "/"
cluster-name = "from-file"
max-service-qps = 7
port = 2999
token-cross-check = true
upstream = "sts"
"#,
    );
    let p = path.to_str().unwrap();
    // File only.
    let cli = parse_from(argv(&["--config", p]), no_env).unwrap();
    let cfg = cli.run.unwrap().to_config().unwrap();
    assert_eq!(cfg.kernel.agent_addr4.to_string(), "10.0.0.9");
    assert_eq!(cfg.cache.max_service_qps, 7.0);
    assert_eq!(cfg.kernel.agent_port, 2999);
    assert!(cfg.token_cross_check);
    assert_eq!(cfg.sts.cluster_name, "from-file");
    // A flag beats the file.
    let cli = parse_from(argv(&[&format!("--config={p}"), "--port", "3000"]), no_env).unwrap();
    assert_eq!(cli.run.unwrap().port, 3000);
    // A key whose environment variable is set is left to the environment.
    let env = |k: &str| (k == "POD_IDENTITY_CLUSTER_NAME").then(|| "from-env".to_owned());
    let args = file_args(&path, &Cli::command(), env).unwrap();
    assert!(
        !args
            .iter()
            .any(|a| a.to_str().unwrap().starts_with("--cluster-name")),
        "{args:?}"
    );
    assert!(args.contains(&OsString::from("--port=2999")), "{args:?}");
}

#[test]
fn unknown_keys_wrong_types_and_bad_values_name_the_key() {
    let cmd = Cli::command();
    let p = Path::new("agent.toml");
    let err = args_from_text(p, "cluster-nmae = \"x\"", &cmd, no_env).unwrap_err();
    assert_eq!(
        err.to_string(),
        "agent.toml: unknown key `cluster-nmae` (did you mean `cluster-name`?)"
    );
    let err = args_from_text(p, "kube = \"yes\"", &cmd, no_env).unwrap_err();
    assert_eq!(
        err.to_string(),
        "agent.toml: key `kube`: must be true or false"
    );
    let err = args_from_text(p, "port = [1, 2]", &cmd, no_env).unwrap_err();
    assert!(
        err.to_string()
            .contains("key `port`: must be a string or a number"),
        "{err}"
    );
    let err = args_from_text(p, "port = ", &cmd, no_env).unwrap_err();
    assert!(
        err.to_string().starts_with("agent.toml is not valid TOML"),
        "{err}"
    );
    // Hidden and non-setting flags are not keys.
    assert!(args_from_text(p, "config = \"x\"", &cmd, no_env).is_err());
    assert!(args_from_text(p, "audit-join-window-ms = 5", &cmd, no_env).is_err());

    // A value clap refuses: the check names the flag and the value.
    let (_d, path) = write("port = \"eighty\"\ncluster-name = \"c\"\n");
    let err = check_config_file(&path, no_env).unwrap_err();
    assert!(err.contains("eighty") && err.contains("--port"), "{err}");
    let (_d, path) = write("mode = \"enforcing\"\ncluster-name = \"c\"\n");
    let err = check_config_file(&path, no_env).unwrap_err();
    assert!(err.contains("enforcing") && err.contains("--mode"), "{err}");
    // Valid values, invalid combination: EKS Auth needs a cluster name.
    let (_d, path) = write("upstream = \"eks-auth\"\n");
    let err = check_config_file(&path, no_env).unwrap_err();
    assert!(err.contains("--cluster-name"), "{err}");
}

#[test]
fn the_documented_example_passes_the_check() {
    let (_d, path) = write(include_str!("../../../../docs/config.example.toml"));
    let cfg = check_config_file(&path, no_env).unwrap();
    assert!(cfg.upstream.is_eks_auth());
    assert_eq!(cfg.probe_addr, Some("127.0.0.1:2703".parse().unwrap()));
}

#[test]
fn the_config_path_comes_from_the_flag_or_the_environment() {
    assert_eq!(
        config_path(&argv(&["--config", "/a.toml"]), no_env),
        Some(PathBuf::from("/a.toml"))
    );
    assert_eq!(
        config_path(&argv(&["--port=1", "--config=/b.toml"]), no_env),
        Some(PathBuf::from("/b.toml"))
    );
    let env = |k: &str| (k == "POD_IDENTITY_CONFIG").then(|| "/c.toml".to_owned());
    assert_eq!(config_path(&argv(&[]), env), Some(PathBuf::from("/c.toml")));
    assert_eq!(config_path(&argv(&["--", "--config", "/x"]), no_env), None);
}

#[test]
fn every_setting_can_be_a_key() {
    let cmd = Cli::command();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_SETTINGS.contains(&long) || arg.is_hide_set() {
            continue;
        }
        let value = if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
            "true"
        } else {
            "\"x\""
        };
        args_from_text(Path::new("f"), &format!("{long} = {value}"), &cmd, no_env)
            .unwrap_or_else(|e| panic!("{long}: {e}"));
    }
}
