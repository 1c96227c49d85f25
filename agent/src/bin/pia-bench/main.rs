//! `pia-bench`: helpers for `cargo xtask bench`, built with the agent (release, same
//! dependencies and allocator) so that the comparisons are fair. Not part of the
//! agent; nothing here talks to anything but the addresses it is given.
//!
//! * `serve --listen ADDR --body FILE`: the **baseline** of P1, a minimal hyper
//!   server answering every request with the bytes of FILE as `application/json`
//!   (the agent's credentials response, captured by the bench): no eBPF, no
//!   attribution, no cache — what the machine can do.
//! * `connect --to ADDR --secs N`: P2's `connect()` rate, one blocking connect after
//!   another (closed with RST, so no TIME_WAIT piles up); prints one `BENCH` line.
//! * `sweep --to ADDR --cgroups FILE`: P4, one credentials request from each cgroup
//!   listed in FILE (the process moves itself into each in turn); prints one `BENCH`
//!   line with the latencies.
//! * `burst --to ADDR --cgroup DIR --conns N --at UNIX_MS`: P3, N concurrent first
//!   requests from one pod's cgroup at the same instant; prints one `BURST` line.
#![forbid(unsafe_code)]

mod burst;
mod connect;
mod serve;
mod sweep;

fn usage(why: &str) -> ! {
    eprintln!(
        "pia-bench: {why}\nusage: pia-bench serve --listen ADDR --body FILE\n       pia-bench burst --to ADDR --cgroup DIR --conns N --at UNIX_MS\n       pia-bench connect --to ADDR --secs N\n       pia-bench sweep --to ADDR --cgroups FILE"
    );
    std::process::exit(2)
}

/// `--flag value` pairs after the subcommand.
fn flags(args: &[String]) -> std::collections::HashMap<String, String> {
    let mut map = std::collections::HashMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(name) = flag.strip_prefix("--") else {
            usage(&format!("unexpected argument {flag}"))
        };
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        map.insert(name.to_owned(), value.clone());
    }
    map
}

fn required<'a>(f: &'a std::collections::HashMap<String, String>, name: &str) -> &'a str {
    f.get(name)
        .map(String::as_str)
        .unwrap_or_else(|| usage(&format!("--{name} is required")))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        usage("no subcommand")
    };
    let f = flags(rest);
    let result = match cmd.as_str() {
        "serve" => serve::run(required(&f, "listen"), required(&f, "body")),
        "connect" => {
            let secs = required(&f, "secs")
                .parse()
                .unwrap_or_else(|_| usage("--secs: a number of seconds"));
            connect::run(required(&f, "to"), secs)
        }
        "sweep" => sweep::run(required(&f, "to"), required(&f, "cgroups")),
        "burst" => {
            let num = |name: &str| -> u64 {
                required(&f, name)
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("--{name}: a number")))
            };
            burst::run(
                required(&f, "to"),
                required(&f, "cgroup"),
                num("conns") as usize,
                num("at"),
            )
        }
        other => usage(&format!("unknown subcommand {other}")),
    };
    if let Err(e) = result {
        eprintln!("pia-bench {cmd}: {e}");
        std::process::exit(1);
    }
}
