//! `pod-identity-agent`: the node daemon. This file only parses the command line;
//! [`pod_identity_agent::app`] builds the running agent from one `Config`.
//! `anyhow` is used here only.

use anyhow::Context;
use pod_identity_agent::{
    app, audit,
    cli::{self, Command, ConfigCommand},
    kernel, logging,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = cli::parse();
    match (cli.command, cli.run) {
        (Some(Command::Config(ConfigCommand::Check { file })), _) => {
            match cli::check_config_file(&file, |k| std::env::var(k).ok()) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    Ok(())
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1)
                }
            }
        }
        (Some(Command::Uninstall { dir }), _) => {
            let n = kernel::unpin_all(&dir)?;
            println!("removed {n} pins from {}", dir.display());
            Ok(())
        }
        (Some(Command::Audit(args)), _) => {
            tokio::task::spawn_blocking(move || {
                audit::print_table(&args.file, &args.filter(), args.follow, std::io::stdout())
            })
            .await??;
            Ok(())
        }
        (None, Some(args)) => {
            // Held until main returns, so queued lines are written at exit.
            let _log = logging::init(args.log_json);
            let cfg = args.to_config().context("reading flags")?;
            let agent = app::build(cfg).await?;
            agent.run().await?;
            Ok(())
        }
        (None, None) => {
            // clap requires the agent's flags when no subcommand is given.
            anyhow::bail!("nothing to do: see --help")
        }
    }
}
