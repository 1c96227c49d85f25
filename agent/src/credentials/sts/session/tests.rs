use super::*;
use crate::credentials::sts::fixtures::pod;

fn id() -> uuid::Uuid {
    uuid::Uuid::parse_str("a1b2c3d4-e5f6-4789-8abc-def012345678").unwrap()
}

fn name_ok(name: &str) -> bool {
    name.len() <= SESSION_NAME_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
}

#[test]
fn session_name_short_inputs_kept_whole() {
    let n = session_name("prod", "web-1", &id());
    assert_eq!(n, "eks-prod-web-1-a1b2c3d4-e5f6-4789-8abc-def012345678");
    assert!(name_ok(&n));
}

#[test]
fn session_name_cuts_pod_part_to_64() {
    let n = session_name("prod", &pod().name, &id());
    assert_eq!(n.len(), SESSION_NAME_MAX, "{n}");
    assert!(n.starts_with("eks-prod-web-7d4b9c8f6-x2x9-"), "{n}");
    assert!(n.ends_with("-a1b2c3d4-e5f6-4789-8abc-def012345678"), "{n}");
    assert!(name_ok(&n));
}

#[test]
fn session_name_long_cluster_and_odd_chars() {
    let n = session_name(&"c".repeat(100), "p", &id());
    assert_eq!(n.len(), SESSION_NAME_MAX, "{n}");
    assert!(n.starts_with("eks-cccc"), "{n}");
    assert!(name_ok(&n), "{n}");

    let n = session_name("my cluster/é", "pod:x*y", &id());
    assert!(name_ok(&n), "{n}");
    assert!(n.starts_with("eks-my-cluster--"), "{n}");
    assert!(n.contains("-pod-x-y-"), "{n}");
}

#[test]
fn session_names_are_unique_per_fetch() {
    let a = session_name("c", "p", &uuid::Uuid::new_v4());
    let b = session_name("c", "p", &uuid::Uuid::new_v4());
    assert_ne!(a, b);
}

#[test]
fn tags_are_the_six_eks_tags() {
    let settings = StsSettings {
        cluster_name: "prod".into(),
        cluster_arn: Some("arn:aws:eks:us-east-1:111122223333:cluster/prod".into()),
        ..Default::default()
    };
    let tags = session_tags(&settings, &pod());
    let keys: Vec<_> = tags.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        [
            "eks-cluster-arn",
            "eks-cluster-name",
            "kubernetes-namespace",
            "kubernetes-service-account",
            "kubernetes-pod-name",
            "kubernetes-pod-uid"
        ]
    );
    assert_eq!(tags[0].1, "arn:aws:eks:us-east-1:111122223333:cluster/prod");
    assert_eq!(tags[1].1, "prod");
    assert_eq!(tags[2].1, "team-a");
    assert_eq!(tags[3].1, "web");
    assert_eq!(tags[4].1, "web-7d4b9c8f6-x2x9z");
    assert_eq!(tags[5].1, "2c48913c-b29f-11e7-9350-020968147796");

    let no_arn = StsSettings {
        cluster_name: "prod".into(),
        ..Default::default()
    };
    let tags = session_tags(&no_arn, &pod());
    assert_eq!(tags.len(), 5);
    assert_eq!(tags[0].0, "eks-cluster-name");
}

#[test]
fn durations() {
    let mut a = Association {
        role_arn: "arn:aws:iam::111122223333:role/r".into(),
        ..Default::default()
    };
    assert_eq!(session_duration_secs(&a), 21_600);
    a.session_duration_secs = Some(60);
    assert_eq!(session_duration_secs(&a), 900);
    a.session_duration_secs = Some(100_000);
    assert_eq!(session_duration_secs(&a), 43_200);
    a.target_role_arn = Some("arn:aws:iam::444455556666:role/t".into());
    assert_eq!(session_duration_secs(&a), 3_600);
    a.session_duration_secs = None;
    assert_eq!(session_duration_secs(&a), 3_540);
    a.target_role_arn = None;
    a.mode = AssumeMode::WebIdentity;
    assert_eq!(session_duration_secs(&a), 3_600);
}
