use super::*;

#[test]
fn the_soft_limit_goes_up_to_the_hard_one_never_down() {
    let n = |soft, hard| Nofile { soft, hard };
    assert_eq!(raised(n(Some(1024), Some(524288))), Some(524288));
    assert_eq!(raised(n(Some(4096), Some(4096))), Some(4096));
    // Unlimited stays unlimited; a soft limit under an unlimited hard one becomes
    // unlimited.
    assert_eq!(raised(n(None, None)), None);
    assert_eq!(raised(n(Some(1024), None)), None);
}

#[test]
fn what_the_listeners_need() {
    let limits = ConnectionLimits::default();
    // Two credentials listeners (IPv4, IPv6), the probe port.
    let two = needed(limits, 2, 1);
    assert_eq!(two, 2 * (4096 + 256) + 32 + RESERVE);
    assert!(
        !covers(Some(1024), two),
        "containerd 2's default soft limit"
    );
    assert!(covers(Some(524288), two));
    assert!(covers(None, two));
    assert!(needed(limits, 4, 2) > two);
}
