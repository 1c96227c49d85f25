use super::*;

fn sample(p50_us: f64, p99_us: f64) -> Sample {
    Sample {
        p50_us,
        p99_us,
        ..Sample::default()
    }
}

#[test]
fn nice_axis_maxima() {
    assert_eq!(nice_max(730.0), 1000.0);
    assert_eq!(nice_max(150.0), 200.0);
    assert_eq!(nice_max(0.3), 0.5);
    assert_eq!(nice_max(f64::NAN), 1.0);
}

#[test]
fn latency_chart_has_a_bar_per_variant_and_percentile() {
    let a = [sample(100.0, 400.0), sample(120.0, 500.0)];
    let b = [sample(90.0, 300.0)];
    let svg = latency_svg(&[("agent <keep-alive>", &a), ("baseline", &b)]);
    assert!(svg.starts_with("<svg "), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<rect x=").count(), 4 + 2, "{svg}"); // bars + legend
    assert!(svg.contains("agent &lt;keep-alive&gt;"));
    assert!(!svg.contains("NaN"));
}

#[test]
fn memory_chart_marks_points_and_targets() {
    let svg = memory_svg(
        &[(50.0, 12.0), (1000.0, 20.0), (10000.0, 70.0)],
        &[(1000.0, 32.0), (10000.0, 64.0)],
    );
    assert_eq!(svg.matches("<circle").count(), 3);
    assert!(svg.contains("target ≤ 64 MiB"));
    assert!(!svg.contains("NaN"));
}
