//! The pods file and the associations file, each with its own helpers.

mod pods_file {
    use super::super::*;
    use crate::testing::{eventually, pod_uid};

    const UID_A: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const UID_B: &str = "daa5c7ee-3484-4533-af39-3591564fd03e";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn parses_pods_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(
            tmp.path(),
            "pods.json",
            &format!(
                r#"{{"pods": [
                  {{"uid": "{}", "namespace": "team-a", "name": "web-0", "serviceAccount": "web",
                    "serviceAccountAnnotations": {{"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/web"}},
                    "hostNetwork": true}},
                  {{"uid": "{UID_B}", "namespace": "team-b", "name": "job", "serviceAccount": "default"}}
                ]}}"#,
                UID_A.replace('-', "_").to_uppercase()
            ),
        );
        let pods = load_pods_file(&path).unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[0].uid, UID_A, "canonicalised");
        assert!(pods[0].host_network);
        assert_eq!(
            pods[0].service_account_annotations["eks.amazonaws.com/role-arn"],
            "arn:aws:iam::123456789012:role/web"
        );
        assert_eq!(pods[1].service_account, "default");
        assert!(!pods[1].host_network);
        assert!(pods[1].service_account_annotations.is_empty());
    }

    #[test]
    fn pods_file_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing.json");
        assert!(
            matches!(load_pods_file(&missing), Err(PodError::Io { path, .. }) if path == missing)
        );

        let entry = |uid: &str, ns: &str, name: &str, sa: &str| {
            format!(
                r#"{{"uid": "{uid}", "namespace": "{ns}", "name": "{name}", "serviceAccount": "{sa}"}}"#
            )
        };
        let pods_file = |entry: String| format!(r#"{{"pods": [{entry}]}}"#);
        for (text, want) in [
            ("{".to_owned(), "invalid JSON"),
            (r#"{"pods": [{"uid": "x"}]}"#.to_owned(), "invalid JSON"), // missing fields
            (r#"{"pod": []}"#.to_owned(), "invalid JSON"),              // typo in the key
            // A UID is checked as it is read (`PodUid`), at its line and column.
            (
                pods_file(entry("", "ns", "n", "sa")),
                "invalid JSON: pod UID is empty at line 1",
            ),
            (
                pods_file(entry("not-a-uuid", "ns", "n", "sa")),
                "invalid JSON: pod UID \"not-a-uuid\" is not a UUID (8-4-4-4-12 hex digits) at line 1",
            ),
        ] {
            let path = write(tmp.path(), "bad.json", &text);
            let err = load_pods_file(&path).unwrap_err();
            assert!(matches!(err, PodError::Parse { .. }), "{text}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(want) && msg.contains("bad.json"), "{msg}");
        }

        for (pods, want) in [
            (
                vec![entry(UID_A, "", "n", "sa")],
                "pods[0].namespace is empty",
            ),
            (vec![entry(UID_A, "ns", " ", "sa")], "pods[0].name is empty"),
            (
                vec![entry(UID_A, "ns", "n", "")],
                "pods[0].serviceAccount is empty",
            ),
            (
                vec![
                    entry(UID_A, "ns", "one", "sa"),
                    entry(UID_B, "ns", "x", "sa"),
                    entry(&UID_A.replace('-', "_"), "ns", "two", "sa"),
                ],
                "pods[0] (ns/one) and pods[2] (ns/two) have the same uid",
            ),
        ] {
            let path = write(
                tmp.path(),
                "invalid.json",
                &format!(r#"{{"pods": [{}]}}"#, pods.join(",")),
            );
            let err = load_pods_file(&path).unwrap_err();
            assert!(matches!(err, PodError::Invalid { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(want) && msg.contains("invalid.json"), "{msg}");
        }
    }

    /// A pods file holding one pod of service account `ns/sa`.
    fn one_pod(uid: &str, name: &str) -> String {
        format!(
            r#"{{"pods": [{{"uid": "{uid}", "namespace": "ns", "name": "{name}", "serviceAccount": "sa"}}]}}"#
        )
    }

    #[tokio::test]
    async fn watch_reloads_and_survives_a_broken_file() {
        let tmp = tempfile::tempdir().unwrap();
        let one = one_pod(UID_A, "a");
        let path = write(tmp.path(), "pods.json", &one);
        let store = PodStore::new();
        let task = tokio::spawn(watch_pods_file(
            path.clone(),
            store.clone(),
            Duration::from_millis(10),
        ));

        let (uid_a, uid_b) = (pod_uid(UID_A), pod_uid(UID_B));
        let loaded = eventually(Duration::from_secs(2), || {
            store.is_synced() && store.get(&uid_a).is_some()
        });
        assert!(loaded.await, "store: {store:?}");

        // Broken edit: the previous snapshot stays.
        std::fs::write(&path, "{ not json").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.get(&uid_a).unwrap().name, "a");
        assert_eq!(store.len(), 1);

        // Fixed edit (atomic replace, as ConfigMap updates do): reloaded.
        let two = one_pod(UID_B, "b");
        let tmp_file = write(tmp.path(), "pods.json.new", &two);
        std::fs::rename(&tmp_file, &path).unwrap();
        let reloaded = eventually(Duration::from_secs(2), || {
            store.get(&uid_b).is_some() && store.get(&uid_a).is_none()
        });
        assert!(reloaded.await, "store: {store:?}");

        assert!(!task.is_finished());
        task.abort();
    }

    /// The poll is the fallback: with an hour between polls, an atomic replace is
    /// still seen at once, through inotify on the file's directory.
    #[tokio::test]
    async fn a_replaced_pods_file_is_seen_without_waiting_for_the_poll() {
        let tmp = tempfile::tempdir().unwrap();
        let one = one_pod(UID_A, "a");
        let path = write(tmp.path(), "pods.json", &one);
        let store = PodStore::new();
        let task = tokio::spawn(watch_pods_file(
            path.clone(),
            store.clone(),
            Duration::from_secs(3600),
        ));
        let uid_b = pod_uid(UID_B);
        assert!(eventually(Duration::from_secs(2), || store.is_synced()).await);
        // Let the watch start before the change.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let two = one_pod(UID_B, "b");
        let started = std::time::Instant::now();
        let tmp_file = write(tmp.path(), "pods.json.new", &two);
        std::fs::rename(&tmp_file, &path).unwrap();
        let reloaded = eventually(Duration::from_secs(5), || store.get(&uid_b).is_some());
        assert!(reloaded.await, "store: {store:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        task.abort();
    }

    #[tokio::test]
    async fn watch_returns_the_first_load_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), "pods.json", "[]");
        let store = PodStore::new();
        let err = watch_pods_file(path, store.clone(), Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(matches!(err, PodError::Parse { .. }));
        assert!(!store.is_synced());
    }
}

mod associations_file {
    use super::super::*;
    use crate::sources::associations::AssociationStore;

    const ROLE_A: &str = "arn:aws:iam::123456789012:role/a";
    const ROLE_B: &str = "arn:aws:iam::123456789012:role/service-role/b";
    const ROLE_C: &str = "arn:aws-cn:iam::210987654321:role/c";

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("associations.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn parses_associations_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(
            tmp.path(),
            &format!(
                r#"{{"associations": [
                  {{"namespace": "team-a", "serviceAccount": "web", "roleArn": "{ROLE_A}"}},
                  {{"namespace": "team-b", "serviceAccount": "etl", "roleArn": "{ROLE_B}",
                    "targetRoleArn": "{ROLE_C}", "disableSessionTags": true,
                    "sessionDurationSecs": 3600, "mode": "pod-identity"}},
                  {{"namespace": "team-c", "serviceAccount": "legacy", "roleArn": "{ROLE_A}",
                    "sessionDurationSecs": 43200, "mode": "web-identity"}}
                ]}}"#
            ),
        );
        let assocs = load_associations_file(&path).unwrap();
        assert_eq!(assocs.len(), 3);
        assert!(assocs.iter().all(|a| a.source == Source::File));
        assert_eq!(assocs[0].mode, AssumeMode::PodIdentity);
        assert_eq!(assocs[0].session_duration_secs, None);
        assert!(!assocs[0].disable_session_tags);
        assert_eq!(assocs[1].target_role_arn.as_deref(), Some(ROLE_C));
        assert_eq!(assocs[1].effective_role_arn(), ROLE_C);
        assert!(assocs[1].disable_session_tags);
        assert_eq!(assocs[2].mode, AssumeMode::WebIdentity);

        let store = AssociationStore::new();
        store.replace_source(Source::File, assocs).unwrap();
        assert_eq!(
            store
                .resolve(&crate::testing::pod("team-b", "p", "etl"))
                .unwrap()
                .session_duration_secs,
            Some(3600)
        );
    }

    #[test]
    fn associations_file_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope.json");
        assert!(
            matches!(load_associations_file(&missing), Err(AssociationError::Io { path, .. }) if path == missing)
        );

        let entry = |extra: &str| {
            format!(
                r#"{{"associations": [{{"namespace": "ns", "serviceAccount": "sa", "roleArn": "{ROLE_A}"{extra}}}]}}"#
            )
        };
        for text in [
            "{".to_owned(),
            r#"{"associations": [{"namespace": "ns"}]}"#.to_owned(), // missing fields
            entry(r#", "targetRolearn": "x""#),                      // typo
            entry(r#", "mode": "irsa""#),                            // unknown mode
            entry(r#", "sessionDurationSecs": -1"#),
        ] {
            let path = write(tmp.path(), &text);
            let err = load_associations_file(&path).unwrap_err();
            assert!(
                matches!(err, AssociationError::Parse { .. }),
                "{text}: {err}"
            );
            assert!(err.to_string().contains("associations.json"));
        }

        let in_file = |text: String| {
            let path = write(tmp.path(), &text);
            match load_associations_file(&path).unwrap_err() {
                AssociationError::InFile { path: p, error } => {
                    assert_eq!(p, path);
                    *error
                }
                other => panic!("{other:?}"),
            }
        };
        assert!(matches!(
            in_file(entry(r#", "sessionDurationSecs": 43201"#)),
            AssociationError::InvalidSessionDuration { secs: 43201, .. }
        ));
        assert!(matches!(
            in_file(entry(r#", "sessionDurationSecs": 600"#)),
            AssociationError::InvalidSessionDuration { secs: 600, .. }
        ));
        assert!(matches!(
            in_file(entry(r#", "targetRoleArn": "role/x""#)),
            AssociationError::InvalidRoleArn { .. }
        ));
        assert!(matches!(
            in_file(r#"{"associations": [{"namespace": "ns", "serviceAccount": "sa", "roleArn": "x"}]}"#.to_owned()),
            AssociationError::InvalidRoleArn { .. }
        ));
        assert!(matches!(
            in_file(
                r#"{"associations": [{"namespace": "", "serviceAccount": "sa", "roleArn": "x"}]}"#
                    .to_owned()
            ),
            AssociationError::EmptyField {
                field: "namespace",
                ..
            }
        ));
        let two = format!(
            r#"{{"associations": [
              {{"namespace": "ns", "serviceAccount": "sa", "roleArn": "{ROLE_A}"}},
              {{"namespace": "ns", "serviceAccount": "sa", "roleArn": "{ROLE_B}"}}]}}"#
        );
        let err = in_file(two);
        assert!(matches!(err, AssociationError::Conflict { .. }), "{err}");
    }

    #[tokio::test]
    async fn watch_reloads_an_edited_associations_file_and_keeps_the_last_good_one() {
        let tmp = tempfile::tempdir().unwrap();
        let entry = |sa: &str, role: &str| {
            format!(r#"{{"namespace": "ns", "serviceAccount": "{sa}", "roleArn": "{role}"}}"#)
        };
        let path = write(
            tmp.path(),
            &format!(r#"{{"associations": [{}]}}"#, entry("web", ROLE_A)),
        );
        let store = AssociationStore::new();
        let task = tokio::spawn(watch_associations_file(
            path.clone(),
            store.clone(),
            Duration::from_millis(10),
        ));
        let web = crate::testing::pod("ns", "p", "web");
        let etl = crate::testing::pod("ns", "q", "etl");
        let role_of = |pod: &PodInfo| store.resolve(pod).ok().map(|a| a.role_arn);
        assert!(
            crate::testing::eventually(Duration::from_secs(2), || role_of(&web).as_deref()
                == Some(ROLE_A))
            .await
        );

        // The role moves from web to etl (atomic replace): web has none any more.
        let moved = tmp.path().join("associations.json.new");
        std::fs::write(
            &moved,
            format!(r#"{{"associations": [{}]}}"#, entry("etl", ROLE_A)),
        )
        .unwrap();
        std::fs::rename(&moved, &path).unwrap();
        assert!(
            crate::testing::eventually(Duration::from_secs(2), || role_of(&etl).as_deref()
                == Some(ROLE_A)
                && role_of(&web).is_none())
            .await,
            "store: {store:?}"
        );

        // Broken and conflicting edits: the previous associations stay.
        for text in [
            "{ not json".to_owned(),
            format!(
                r#"{{"associations": [{}, {}]}}"#,
                entry("etl", ROLE_A),
                entry("etl", ROLE_B)
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(role_of(&etl).as_deref(), Some(ROLE_A));
            assert!(role_of(&web).is_none());
        }
        assert!(!task.is_finished());
        task.abort();
    }

    #[tokio::test]
    async fn associations_watch_returns_the_first_load_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), "[]");
        let err = watch_associations_file(path, AssociationStore::new(), Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(matches!(err, AssociationError::Parse { .. }), "{err}");
    }
}
