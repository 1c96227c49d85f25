use super::*;

const W: Duration = Duration::from_secs(300);

fn at(start: Instant, secs: u64) -> Instant {
    start + Duration::from_secs(secs)
}

#[test]
fn one_event_per_key_per_window() {
    let t0 = Instant::now();
    let mut l = EventLimiter::new(W, 16);
    assert_eq!(l.observe(&("pod-a", "R"), t0), Verdict::Create);
    l.created(&("pod-a", "R"), "ev-1".into());
    for s in 1..10 {
        assert_eq!(l.observe(&("pod-a", "R"), at(t0, s)), Verdict::Suppressed);
    }
    // Another reason, another pod: their own Events.
    assert_eq!(l.observe(&("pod-a", "S"), at(t0, 5)), Verdict::Create);
    assert_eq!(l.observe(&("pod-b", "R"), at(t0, 5)), Verdict::Create);
    assert_eq!(l.len(), 3);
}

#[test]
fn repeats_become_one_series_update_when_the_window_ends() {
    let t0 = Instant::now();
    let mut l = EventLimiter::new(W, 16);
    let k = ("pod-a", "R");
    assert_eq!(l.observe(&k, t0), Verdict::Create);
    l.created(&k, "ev-1".into());
    l.observe(&k, at(t0, 10));
    l.observe(&k, at(t0, 20));
    assert!(l.due(at(t0, 299)).is_empty(), "not before the window ends");
    let due = l.due(at(t0, 300));
    assert_eq!(
        due,
        vec![SeriesUpdate {
            key: k,
            name: "ev-1".into(),
            count: 3,
            last_seen: at(t0, 20),
        }]
    );
    // A new window: the next repeat is counted on, and published at its end.
    assert_eq!(l.observe(&k, at(t0, 301)), Verdict::Suppressed);
    assert!(l.due(at(t0, 599)).is_empty());
    let due = l.due(at(t0, 600));
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].count, 4, "the series counts every occurrence");
}

#[test]
fn a_quiet_window_forgets_the_key_and_the_next_refusal_creates_again() {
    let t0 = Instant::now();
    let mut l = EventLimiter::new(W, 16);
    let k = ("pod-a", "R");
    l.observe(&k, t0);
    l.created(&k, "ev-1".into());
    assert!(l.due(at(t0, 300)).is_empty());
    assert!(l.is_empty());
    assert_eq!(l.observe(&k, at(t0, 301)), Verdict::Create);
    // Without a `due` pass in between, an ended quiet window also starts over.
    l.created(&k, "ev-2".into());
    assert_eq!(l.observe(&k, at(t0, 700)), Verdict::Create);
}

#[test]
fn a_repeat_after_the_window_but_before_due_is_not_lost() {
    let t0 = Instant::now();
    let mut l = EventLimiter::new(W, 16);
    let k = ("pod-a", "R");
    l.observe(&k, t0);
    l.created(&k, "ev-1".into());
    l.observe(&k, at(t0, 10));
    // The window ended, `due` has not run yet: still folded into the series.
    assert_eq!(l.observe(&k, at(t0, 310)), Verdict::Suppressed);
    assert_eq!(l.due(at(t0, 311))[0].count, 3);
}

#[test]
fn no_update_for_an_event_that_was_never_created() {
    let t0 = Instant::now();
    let mut l = EventLimiter::new(W, 16);
    let k = ("pod-a", "R");
    l.observe(&k, t0);
    // The create failed (no `created`): repeats are still held back for the
    // window (no hammering a failing API server), and nothing is patched.
    assert_eq!(l.observe(&k, at(t0, 1)), Verdict::Suppressed);
    assert!(l.due(at(t0, 300)).is_empty());
    assert!(l.is_empty());
}

#[test]
fn the_number_of_keys_is_bounded() {
    let t0 = Instant::now();
    let mut l = EventLimiter::new(W, 2);
    assert_eq!(l.observe(&1, t0), Verdict::Create);
    assert_eq!(l.observe(&2, t0), Verdict::Create);
    assert_eq!(l.observe(&3, t0), Verdict::Full);
    // Known keys are still counted.
    assert_eq!(l.observe(&1, t0), Verdict::Suppressed);
    // Once a window ends, room again.
    l.due(at(t0, 300));
    assert_eq!(l.observe(&3, at(t0, 300)), Verdict::Create);
}
