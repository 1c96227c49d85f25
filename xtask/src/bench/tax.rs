//! P2: what the hook costs the node's other traffic. The same generator from the
//! same netns, its cgroup inside the attach subtree (the `connect4` program runs and
//! lets the connection through unchanged) or outside it (no program runs), against
//! an unrelated address (the baseline server on the node address, port 8080).

use std::path::Path;

use serde_json::{json, Value};
use testnode::NODE_ADDR4;

use super::{
    per, print_table, report, rps, stats::ratios, stats::summary, variants_json, Bench, Load,
    Place, Sample, Variant, BASE_PORT, POD_TAX, ROUNDS, SECS,
};

pub struct Tax {
    variants: Vec<Variant>,
    samples: Vec<Vec<Sample>>,
    /// (label, per-round ratios attached / detached).
    ratios: Vec<(String, Vec<f64>)>,
}

const TARGET: &str = "≥ 0.98";

pub fn run(b: &Bench, report_lua: &Path) -> Result<Tax, String> {
    let to = format!("{NODE_ADDR4}:{BASE_PORT}");
    let url = format!("http://{to}/");
    let mut variants = Vec::new();
    // Pairs: (attached, detached) next to each other.
    for (attached, detached) in [
        (Place::Pod(POD_TAX), Place::PodDetached(POD_TAX)),
        (Place::NodeAttached, Place::NodeDetached),
    ] {
        for place in [attached, detached] {
            variants.push(Variant {
                name: format!("connect(), {}", place.label()),
                place,
                load: Load::Connect { to: to.clone() },
                server: None,
            });
        }
        for place in [attached, detached] {
            variants.push(Variant {
                name: format!("request, new conn, {}", place.label()),
                place,
                load: Load::Wrk {
                    conns: 1,
                    url: url.clone(),
                    script: report_lua.to_path_buf(),
                    headers: &["Connection: close"],
                },
                server: None,
            });
        }
    }
    let samples = b.interleave("P2", &variants, ROUNDS, SECS)?;
    let mut r = Vec::new();
    for k in (0..variants.len()).step_by(2) {
        let what = variants[k]
            .name
            .rsplit_once(", ")
            .map(|x| x.0)
            .unwrap_or("");
        let what = what.trim_end_matches(", pod").trim_end_matches(", node");
        let from = if matches!(variants[k].place, Place::Pod(_)) {
            "pod"
        } else {
            "node"
        };
        r.push((
            format!("{what} from a {from}: attached / detached, rate"),
            ratios(&per(&samples[k], rps), &per(&samples[k + 1], rps)),
        ));
    }
    Ok(Tax {
        variants,
        samples,
        ratios: r,
    })
}

pub fn print(t: &Tax) {
    println!();
    println!("== P2: tax on the node's other traffic ({ROUNDS} rounds × {SECS} s, interleaved; one client, sequential)");
    println!("   attached: the client's cgroup is inside the attach subtree (connect4/6 run); detached: outside (they do not)");
    print_table(&t.variants, &t.samples, "per second");
    println!();
    for (label, xs) in &t.ratios {
        println!(
            "   {label:<60} {:<22} {}",
            summary(xs, 3),
            report::target_note(xs, TARGET)
        );
    }
}

pub fn json(t: &Tax) -> Value {
    json!({
        "variants": variants_json(&t.variants, &t.samples),
        "ratios": t.ratios.iter().map(|(label, xs)| json!({
            "name": label, "per_round": xs, "spread": report::spread(xs), "target": TARGET,
        })).collect::<Vec<_>>(),
    })
}
