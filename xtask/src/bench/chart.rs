//! SVG charts of the results, written by hand: a few rectangles, lines and text
//! elements need no plotting library, and no font or system library either (the
//! viewer renders the text).
//!
//! * P1: p50 and p99 of the agent and the baseline side by side (median over rounds,
//!   whiskers from the lowest to the highest round).
//! * P4: agent RSS against pod count (log scale), with the targets.

use std::{fmt::Write as _, fs, path::Path};

use super::stats::{median, range, Sample};

#[cfg(test)]
mod tests;

const W: f64 = 720.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn open(title: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
"#,
        W / 2.0,
        esc(title)
    );
    s
}

/// Horizontal grid lines and labels for 0..=max on the y axis; returns y(value).
fn y_axis(s: &mut String, max: f64, unit: &str) -> impl Fn(f64) -> f64 {
    let plot_h = H - TOP - BOTTOM;
    let y = move |v: f64| TOP + plot_h * (1.0 - v / max);
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        esc(unit)
    );
    y
}

/// A "nice" axis maximum ≥ `x`: 1, 2 or 5 times a power of ten.
fn nice_max(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&m| m >= x)
        .unwrap_or(10.0 * p)
}

/// P1's latency chart: per variant, a p50 bar and a p99 bar with whiskers.
pub fn latency_svg(variants: &[(&str, &[Sample])]) -> String {
    let mut s =
        open("P1: request latency, agent vs baseline (wrk, median over rounds; whiskers: min–max)");
    let stat = |xs: &[Sample], f: fn(&Sample) -> f64| {
        let v: Vec<f64> = xs.iter().map(f).collect();
        let (lo, hi) = range(&v);
        (median(&v), lo, hi)
    };
    let max = variants
        .iter()
        .map(|(_, xs)| stat(xs, |s| s.p99_us).2)
        .filter(|x| x.is_finite())
        .fold(0.0, f64::max);
    let y = y_axis(&mut s, nice_max(max), "latency, µs");
    let slot = (W - LEFT - RIGHT) / variants.len().max(1) as f64;
    let bar = slot * 0.3;
    for (k, (name, xs)) in variants.iter().enumerate() {
        let x0 = LEFT + slot * k as f64 + slot * 0.2;
        for (j, (f, color, what)) in [
            (p50 as fn(&Sample) -> f64, "#4c78a8", "p50"),
            (p99, "#f58518", "p99"),
        ]
        .into_iter()
        .enumerate()
        {
            let (m, lo, hi) = stat(xs, f);
            if !m.is_finite() {
                continue;
            }
            let x = x0 + bar * j as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} {what}: {m:.0} µs</title></rect>"#,
                y(m),
                bar * 0.9,
                (y(0.0) - y(m)).max(0.0),
                esc(name)
            );
            let cx = x + bar * 0.45;
            let _ = writeln!(
                s,
                r#"<line x1="{cx:.1}" x2="{cx:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/>"#,
                y(lo),
                y(hi)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x0 + bar,
            H - BOTTOM + 18.0,
            esc(name)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{}" y="{}" width="10" height="10" fill="#4c78a8"/><text x="{}" y="{}">p50</text><rect x="{}" y="{}" width="10" height="10" fill="#f58518"/><text x="{}" y="{}">p99</text>"##,
        LEFT,
        H - 22.0,
        LEFT + 14.0,
        H - 13.0,
        LEFT + 60.0,
        H - 22.0,
        LEFT + 74.0,
        H - 13.0
    );
    s.push_str("</svg>\n");
    s
}

fn p50(s: &Sample) -> f64 {
    s.p50_us
}
fn p99(s: &Sample) -> f64 {
    s.p99_us
}

/// P4's memory chart: RSS (MiB) against pods (log scale), targets as red marks.
pub fn memory_svg(points: &[(f64, f64)], targets: &[(f64, f64)]) -> String {
    let mut s =
        open("P4: agent RSS against pod count (each pod: cgroup, record, cached credential)");
    let max = points
        .iter()
        .chain(targets)
        .map(|p| p.1)
        .fold(0.0, f64::max);
    let y = y_axis(&mut s, nice_max(max * 1.1), "VmRSS, MiB");
    let (lo, hi) = (10f64, 100_000f64);
    let x = |pods: f64| {
        LEFT + (W - LEFT - RIGHT) * (pods.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10())
    };
    for d in [10.0, 100.0, 1_000.0, 10_000.0, 100_000.0] {
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{d}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 18.0,
            x = x(d)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">pods (log scale)</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 20.0
    );
    let path: Vec<String> = points
        .iter()
        .map(|&(p, m)| format!("{:.1},{:.1}", x(p), y(m)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#4c78a8" stroke-width="2"/>"##,
        path.join(" ")
    );
    for &(p, m) in points {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#4c78a8"><title>{p} pods: {m:.1} MiB</title></circle><text x="{:.1}" y="{:.1}">{m:.1}</text>"##,
            x(p),
            y(m),
            x(p) + 6.0,
            y(m) - 6.0
        );
    }
    for &(p, m) in targets {
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#d62728" stroke-width="2"/><text x="{:.1}" y="{:.1}" fill="#d62728">target ≤ {m} MiB</text>"##,
            x(p) - 12.0,
            x(p) + 12.0,
            x(p) + 14.0,
            y(m) + 4.0,
            y = y(m)
        );
    }
    s.push_str("</svg>\n");
    s
}

pub fn write(path: &Path, svg: &str) -> Result<(), String> {
    fs::write(path, svg).map_err(|e| format!("write {}: {e}", path.display()))
}
