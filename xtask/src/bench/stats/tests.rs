use super::*;

#[test]
fn median_odd_even_empty() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    assert!(median(&[]).is_nan());
}

#[test]
fn summary_is_median_and_range() {
    assert_eq!(summary(&[0.9, 1.1, 1.0], 2), "1.00 [0.90–1.10]");
    assert_eq!(range(&[2.0, -1.0]), (-1.0, 2.0));
}

#[test]
fn ratios_are_paired_by_round() {
    assert_eq!(ratios(&[2.0, 9.0], &[4.0, 3.0]), vec![0.5, 3.0]);
}

#[test]
fn wrk_report_line() {
    let s = parse_report(
        "BENCH requests=2000 duration_us=2000000 p50_us=250.5 p99_us=900.0 max_us=1500 connect=1 read=2 write=0 status=3 timeout=4",
    )
    .unwrap();
    assert_eq!(s.requests, 2000);
    assert_eq!(s.rps, 1000.0);
    assert_eq!(s.p50_us, 250.5);
    assert_eq!(s.p99_us, 900.0);
    assert_eq!(s.max_us, 1500.0);
    assert_eq!(s.socket_errors, 7);
    assert_eq!(s.non2xx, 3);
}

#[test]
fn tool_report_line_and_errors() {
    let s =
        parse_report("BENCH requests=10 duration_us=500000 p50_us=1 p99_us=2 errors=1").unwrap();
    assert_eq!((s.rps, s.socket_errors, s.non2xx), (20.0, 1, 0));
    assert!(s.max_us.is_nan());
    let e = parse_report("BENCH requests=10 p50_us=1 p99_us=2").unwrap_err();
    assert!(e.contains("duration_us"), "{e}");
    let e = parse_report("BENCH requests=10 duration_us=0 p50_us=1 p99_us=2").unwrap_err();
    assert!(e.contains("no duration"), "{e}");
}
