//! README.md's flag table against the command line itself (`cli::Cli`, clap): every
//! flag of the agent that `--help` shows is in the table, with its environment
//! variable if it has one, and the table names no flag or variable the agent does
//! not have. Needs nothing (no root).
//!
//! The table is the one under the header `| flag | default | meaning |`. In its
//! first column, each code span is either a flag (`` `--name` ``, optionally with
//! a value placeholder: `` `--name VALUE` ``) or the environment variable of the
//! flag just before it (`` `--name` / `ENV_VAR` ``).

use std::collections::BTreeMap;

use clap::CommandFactory;
use pod_identity_agent::cli::Cli;

const README: &str = include_str!("../../README.md");
const TABLE_HEADER: &str = "| flag | default | meaning |";

/// Long flag → environment variable, of every flag `--help` shows.
fn cli_flags() -> BTreeMap<String, Option<String>> {
    let cmd = Cli::command();
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .filter_map(|a| {
            let long = a.get_long()?;
            let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
            Some((format!("--{long}"), env))
        })
        .collect()
}

/// A flag named by the table: its row (1-based, for messages) and its variable.
#[derive(Debug)]
struct Row {
    line: usize,
    env: Option<String>,
}

/// The README's flag table: flag → where it is and the variable named with it.
fn readme_flags() -> Result<BTreeMap<String, Row>, Vec<String>> {
    let mut lines = README.lines().enumerate();
    lines
        .find(|(_, l)| l.trim() == TABLE_HEADER)
        .unwrap_or_else(|| panic!("README.md has no flag table (header {TABLE_HEADER:?})"));
    let mut flags = BTreeMap::new();
    let mut problems = Vec::new();
    for (i, line) in lines
        .map(|(i, l)| (i + 1, l.trim()))
        .take_while(|(_, l)| l.starts_with('|'))
    {
        let first = line.split('|').nth(1).unwrap_or_default();
        if first.trim().chars().all(|c| c == '-' || c == ':') {
            continue; // the |---| line
        }
        let spans: Vec<&str> = first.split('`').skip(1).step_by(2).collect();
        if spans.is_empty() {
            problems.push(format!("README.md:{i}: no `--flag` in {first:?}"));
        }
        let mut last: Option<String> = None;
        for span in spans {
            let token = span.split_whitespace().next().unwrap_or_default();
            if token.starts_with("--") {
                if flags.contains_key(token) {
                    problems.push(format!("README.md:{i}: {token} is in the table twice"));
                }
                flags.insert(token.to_owned(), Row { line: i, env: None });
                last = Some(token.to_owned());
            } else if !token.is_empty()
                && span.trim() == token
                && token
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                match last.as_deref().and_then(|f| flags.get_mut(f)) {
                    Some(row) if row.env.is_none() => row.env = Some(token.to_owned()),
                    _ => problems.push(format!(
                        "README.md:{i}: variable {token} does not follow a flag of its own"
                    )),
                }
            } else {
                problems.push(format!(
                    "README.md:{i}: `{span}` is neither a flag nor an environment variable"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(flags)
    } else {
        Err(problems)
    }
}

#[test]
fn the_readme_flag_table_lists_every_flag_and_only_those() {
    let cli = cli_flags();
    assert!(!cli.is_empty(), "no flags found in cli::Cli");
    let table = readme_flags().unwrap_or_else(|p| panic!("{}", p.join("\n")));
    assert!(!table.is_empty(), "README.md's flag table is empty");

    let mut problems = Vec::new();
    for (flag, env) in &cli {
        match (table.get(flag), env) {
            (None, None) => problems.push(format!("{flag} is missing from the table")),
            (None, Some(env)) => problems.push(format!("{flag} / {env} is missing from the table")),
            (Some(row), Some(env)) if row.env.as_deref() != Some(env) => problems.push(format!(
                "README.md:{}: {flag} reads {env}: write `{flag}` / `{env}`",
                row.line
            )),
            _ => {}
        }
    }
    for (flag, row) in &table {
        match cli.get(flag) {
            None => problems.push(format!(
                "README.md:{}: {flag} is not a flag of the agent, or is hidden (keep those out)",
                row.line
            )),
            Some(env) if row.env.is_some() && row.env != *env => problems.push(format!(
                "README.md:{}: {flag} does not read {}",
                row.line,
                row.env.as_deref().unwrap_or_default()
            )),
            _ => {}
        }
    }
    assert!(
        problems.is_empty(),
        "README.md's flag table and `pod-identity-agent --help` disagree:\n{}",
        problems.join("\n")
    );
}
