//! Reading the log: `pod-identity-agent audit` prints its matching lines as a table.

use std::{fs::File, io::Write, path::Path, time::Duration};

use serde_json::Value;

use super::AuditError;

/// Filters of the `audit` subcommand.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub role: Option<String>,
    /// `success`, `failure` or `unknown`.
    pub outcome: Option<String>,
}

impl Filter {
    pub fn matches(&self, v: &Value) -> bool {
        let s = |x: &Value| x.as_str().unwrap_or("").to_owned();
        let contains = |want: &Option<String>, have: String| {
            want.as_ref().is_none_or(|w| have.contains(w.as_str()))
        };
        contains(&self.pod, s(&v["orchestrator"]["resource"]["name"]))
            && self
                .namespace
                .as_ref()
                .is_none_or(|n| s(&v["orchestrator"]["namespace"]) == *n)
            && contains(&self.role, s(&v["pod_identity"]["role_arn"]))
            && self
                .outcome
                .as_ref()
                .is_none_or(|o| s(&v["event"]["outcome"]) == *o)
    }
}

/// `s` safe to print on a terminal: control characters (ESC, CR, LF, BEL, …),
/// line and paragraph separators, bidirectional overrides and zero-width
/// characters are written as Rust escapes (`\u{1b}`, `\r`, `\n`). Every field
/// of a record can come from a caller: a process sets its own comm.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let hidden = c.is_control()
            || matches!(c,
                '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}');
        if hidden {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One table row for a log line; every cell [`escape`]d.
pub fn table_row(v: &Value) -> String {
    let s = |x: &Value| match x {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let pod = match (
        v["orchestrator"]["namespace"].as_str(),
        v["orchestrator"]["resource"]["name"].as_str(),
    ) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        _ => match (
            &v["pod_identity"]["kernel"]["cgroup_id"],
            v["source"]["ip"].as_str(),
        ) {
            // No kernel record: the peer is all there is.
            (Value::Null, Some(ip)) => format!("peer:{ip}"),
            (cgroup, _) => format!("cgroup:{}", s(cgroup)),
        },
    };
    let role = v["pod_identity"]["role_arn"]
        .as_str()
        .map(|r| r.rsplit('/').next().unwrap_or(r).to_owned())
        .unwrap_or("-".into());
    // A summary says what it counted in its reason column.
    let reason = match v["pod_identity"]["summary"]["count"].as_u64() {
        Some(count) => format!(
            "{count}× {} {}",
            s(&v["pod_identity"]["summary"]["action"]),
            v["event"]["reason"].as_str().unwrap_or("")
        ),
        None => v["event"]["reason"].as_str().unwrap_or("").to_owned(),
    };
    format!(
        "{:<24} {:<32} {:>7} {:<15} {:<22} {:<18} {:>4} {:<20} {}",
        escape(&s(&v["@timestamp"])),
        escape(&pod),
        escape(&s(&v["process"]["pid"])),
        escape(&s(&v["process"]["name"])),
        escape(&s(&v["event"]["action"])),
        escape(&role),
        escape(&s(&v["http"]["response"]["status_code"])),
        escape(v["pod_identity"]["access_key_id"].as_str().unwrap_or("-")),
        escape(reason.trim_end()),
    )
}

pub const TABLE_HEADER: &str = "TIME                     POD                                  PID COMM            ACTION                 ROLE               HTTP KEY                  REASON";

/// Print matching lines of `path` as a table; with `follow`, keep reading as it grows.
pub fn print_table(
    path: &Path,
    filter: &Filter,
    follow: bool,
    mut out: impl Write,
) -> Result<usize, AuditError> {
    use std::io::{BufRead, BufReader, Seek};
    let io = |source| AuditError::Io {
        path: path.to_owned(),
        source,
    };
    let f = File::open(path).map_err(io)?;
    let mut r = BufReader::new(f);
    let _ = writeln!(out, "{TABLE_HEADER}");
    let mut n = 0;
    let mut line = String::new();
    loop {
        line.clear();
        let read = r.read_line(&mut line).map_err(io)?;
        if read == 0 {
            if !follow {
                return Ok(n);
            }
            // Rotation: the path now names a new, shorter file.
            let pos = r.stream_position().map_err(io)?;
            if std::fs::metadata(path)
                .map(|m| m.len() < pos)
                .unwrap_or(false)
            {
                r = BufReader::new(File::open(path).map_err(io)?);
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if filter.matches(&v) {
                n += 1;
                let _ = writeln!(out, "{}", table_row(&v));
                let _ = out.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests;
