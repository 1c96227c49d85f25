use super::*;

#[test]
fn spread_of_rounds_and_of_nothing() {
    assert_eq!(
        spread(&[0.9, 1.0, 1.2]),
        json!({"median": 1.0, "min": 0.9, "max": 1.2})
    );
    // No rounds: nulls, never NaN (which JSON cannot carry).
    assert_eq!(
        spread(&[]),
        json!({"median": null, "min": null, "max": null})
    );
    assert!(serde_json::to_string(&spread(&[])).is_ok());
}

#[test]
fn target_verdicts_use_the_median() {
    assert_eq!(
        target_note(&[0.95, 0.80, 0.91], "≥ 0.90"),
        "target ≥ 0.90: holds"
    );
    assert_eq!(
        target_note(&[0.85, 0.99, 0.80], "≥ 0.90"),
        "target ≥ 0.90: MISSED"
    );
    assert_eq!(
        target_note(&[1.3, 1.1, 1.15], "≤ 1.20"),
        "target ≤ 1.20: holds"
    );
    assert_eq!(target_note(&[1.3], "≤ 1.20"), "target ≤ 1.20: MISSED");
    assert_eq!(target_note(&[1.0], ""), "");
}
