use super::*;

#[test]
fn strings_are_cut_at_a_character_boundary_with_a_marker() {
    let mut s = "é".repeat(10); // 20 bytes
    assert!(cap_string(&mut s, 5));
    assert_eq!(s, "éé…[truncated, 20 bytes]");
    let mut short = "ok".to_owned();
    assert!(!cap_string(&mut short, 5));
    let mut v = serde_json::json!({"a": ["x".repeat(9), 1], "b": {"c": "y".repeat(3)}});
    assert_eq!(cap_strings(&mut v, 4), 1);
    assert_eq!(v["a"][0], "xxxx…[truncated, 9 bytes]");
    // Cutting again changes nothing (records are capped once built, and once
    // more as JSON values on the flood-controlled path).
    assert_eq!(cap_strings(&mut v, 4), 0);
    assert_eq!(v["a"][0], "xxxx…[truncated, 9 bytes]");
    let mut again = s.clone();
    assert!(!cap_string(&mut again, 5));
    assert_eq!(again, s);
    // A string that only looks like a cut one, but is longer than the bound, is cut.
    let mut fake = format!("{}…[truncated, 3 bytes]", "z".repeat(9));
    assert!(cap_string(&mut fake, 5));
    assert_eq!(fake, "zzzzz…[truncated, 32 bytes]");
}

#[test]
fn ipv6_peers_are_one_source_per_64() {
    let a = Source::peer("2001:db8:1:2:aaaa::1".parse().unwrap());
    let b = Source::peer("2001:db8:1:2:bbbb::2".parse().unwrap());
    assert_eq!(a, b);
    assert_eq!(a.describe(), "peer 2001:db8:1:2::/64");
    assert_eq!(
        Source::peer("::ffff:10.0.0.1".parse().unwrap()),
        Source::peer("10.0.0.1".parse().unwrap())
    );
}

#[test]
fn sources_beyond_the_bound_share_one_summary_and_the_interval_total_holds() {
    let t0 = Instant::now();
    let now = SystemTime::now();
    let mut f = FloodControl::new(t0);
    let mut written = 0u32;
    let sources = MAX_SOURCES as u64 * 4;
    for id in 0..sources {
        for _ in 0..3 {
            if f.admit(
                Source::Cgroup(id),
                "request-refused",
                "",
                now,
                || serde_json::json!({"id": id}),
            ) {
                written += 1;
            }
        }
    }
    assert_eq!(written, RECORDS_PER_INTERVAL);
    assert!(
        f.roll(t0 + SUMMARY_INTERVAL / 2).is_empty(),
        "interval not over"
    );
    let summaries = f.roll(t0 + SUMMARY_INTERVAL);
    assert!(summaries.len() <= MAX_SOURCES + 1, "{}", summaries.len());
    let counted: u64 = summaries.iter().map(|s| s.count).sum();
    assert_eq!(counted + u64::from(written), sources * 3);
    assert!(summaries.iter().any(|s| s.source == Source::Many));
    // A new interval starts empty.
    assert!(f.admit(Source::Cgroup(1), "request-refused", "", now, || {
        Value::Null
    }));
}
