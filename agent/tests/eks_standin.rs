//! The EKS association source (`pod_identity_agent::sources::eks`) against
//! `support::eks_api`, an in-process stand-in of the EKS API (there is no EKS
//! endpoint to reach from here; see that module for what it answers). The real
//! aws-sdk-eks client talks to it, signing every call.

mod support;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use pod_identity_agent::model::Source;
use pod_identity_agent::model::{AssumeMode, PodInfo};
use pod_identity_agent::sources::associations::AssociationStore;
use pod_identity_agent::sources::eks::{eks_client, EksError, EksSettings, EksSource};
use serde_json::json;
use support::eks_api::{query_param, EksApi, ACCOUNT, CLUSTER};
use support::eventually;

fn role(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{name}")
}

fn id(n: u32) -> String {
    format!("a-{n:017}")
}

/// The agent's SDK config: static credentials, no retries (a failing poll fails
/// at once), and the stand-in as the endpoint through the settings.
fn source(
    api: &EksApi,
    store: &AssociationStore,
    edit: impl FnOnce(&mut EksSettings),
) -> EksSource {
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new(
                "AKIDSTANDIN",
                "standin-secret",
                None,
                None,
                "test",
            ),
        ))
        .retry_config(RetryConfig::disabled())
        .build();
    let mut settings = EksSettings {
        endpoint_url: Some(api.url()),
        ..EksSettings::new(CLUSTER)
    };
    edit(&mut settings);
    EksSource::new(eks_client(&sdk, &settings), settings, store.clone()).unwrap()
}

/// A pod of `namespace` running as `sa` (all the association store looks at).
fn pod(namespace: &str, sa: &str) -> PodInfo {
    pod_identity_agent::testing::pod(namespace, "p", sa)
}

fn seed(api: &EksApi) {
    api.put(&id(1), "shop", "web", &role("web"), json!({}));
    api.put(
        &id(2),
        "shop",
        "worker",
        &role("worker"),
        json!({"disableSessionTags": true}),
    );
    api.put(
        &id(3),
        "batch",
        "etl",
        &role("etl-hop"),
        json!({
            "targetRoleArn": "arn:aws:iam::444455556666:role/etl-target",
            "externalId": "3b5f1c2e-6d7a-4b8c-9e0f-1a2b3c4d5e6f"
        }),
    );
    api.put(
        &id(4),
        "batch",
        "report",
        &role("report"),
        json!({"ownerArn": "arn:aws:eks:eu-west-1:111122223333:addon/prod/report/1a2b"}),
    );
    api.put(
        &id(5),
        "monitoring",
        "agent",
        &role("monitoring"),
        json!({}),
    );
}

#[tokio::test]
async fn all_pages_listed_each_described_and_applied() {
    let api = EksApi::start().await;
    seed(&api);
    // An association with an inline session policy: carried, and applied on AssumeRole.
    api.put(
        &id(6),
        "shop",
        "restricted",
        &role("restricted"),
        json!({"disableSessionTags": true, "policy": "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Deny\",\"Action\":\"s3:*\",\"Resource\":\"*\"}]}"}),
    );
    let store = AssociationStore::new();
    let mut src = source(&api, &store, |_| {});
    let status = src.status();
    assert!(!status.is_synced());

    let report = src.poll_once().await.unwrap();
    assert_eq!(
        (
            report.listed,
            report.described,
            report.applied,
            report.skipped
        ),
        (6, 6, 6, 0)
    );
    assert!(status.is_synced());
    assert_eq!(store.source_len(Source::Eks), 6);

    let web = store.resolve(&pod("shop", "web")).unwrap();
    assert_eq!(
        (web.source.as_str(), web.mode, web.role_arn.as_str()),
        ("eks", AssumeMode::PodIdentity, role("web").as_str())
    );
    assert_eq!(web.association_id.as_deref(), Some(id(1).as_str()));
    assert!(!web.disable_session_tags);
    assert!(
        store
            .resolve(&pod("shop", "worker"))
            .unwrap()
            .disable_session_tags
    );
    let etl = store.resolve(&pod("batch", "etl")).unwrap();
    assert_eq!(
        etl.target_role_arn.as_deref(),
        Some("arn:aws:iam::444455556666:role/etl-target")
    );
    assert_eq!(
        etl.effective_role_arn(),
        "arn:aws:iam::444455556666:role/etl-target"
    );
    // Carried with its session policy (never served without it).
    let restricted = store.resolve(&pod("shop", "restricted")).unwrap();
    assert!(restricted.policy.as_deref().unwrap().contains("\"Deny\""));
    assert!(restricted.disable_session_tags);

    // Pagination: 3 pages of 2, following nextToken, asking for full pages.
    let st = api.lock();
    let lists: Vec<&(String, String)> = st
        .requests
        .iter()
        .filter(|(p, _)| p == "/clusters/prod/pod-identity-associations")
        .collect();
    assert_eq!(lists.len(), 3, "{lists:?}");
    assert_eq!(query_param(&lists[0].1, "nextToken"), None);
    assert_eq!(query_param(&lists[1].1, "nextToken"), Some("page-2"));
    assert_eq!(query_param(&lists[2].1, "nextToken"), Some("page-4"));
    assert!(lists
        .iter()
        .all(|(_, q)| query_param(q, "maxResults") == Some("100")));
}

#[tokio::test]
async fn known_associations_are_not_described_every_poll() {
    let api = EksApi::start().await;
    seed(&api);
    let store = AssociationStore::new();
    let mut src = source(&api, &store, |_| {});
    src.poll_once().await.unwrap();
    assert_eq!(api.describes(), 5);

    // A new one is described; the known ones wait for describe_refresh.
    api.put(&id(7), "shop", "cart", &role("cart"), json!({}));
    api.remove(&id(5));
    let report = src.poll_once().await.unwrap();
    assert_eq!((report.listed, report.described, report.applied), (5, 1, 5));
    assert_eq!(api.describes(), 6);
    assert!(store.resolve(&pod("shop", "cart")).is_ok());
    assert!(
        store.resolve(&pod("monitoring", "agent")).is_err(),
        "deleted association"
    );
}

#[tokio::test]
async fn updated_associations_are_picked_up_on_refresh() {
    let api = EksApi::start().await;
    seed(&api);
    let store = AssociationStore::new();
    let mut src = source(&api, &store, |s| s.describe_refresh = Duration::ZERO);
    src.poll_once().await.unwrap();
    // UpdatePodIdentityAssociation keeps the id and changes the role.
    api.put(&id(1), "shop", "web", &role("web-v2"), json!({}));
    let report = src.poll_once().await.unwrap();
    assert_eq!(report.described, 5);
    assert_eq!(
        store.resolve(&pod("shop", "web")).unwrap().role_arn,
        role("web-v2")
    );
}

#[tokio::test]
async fn a_failing_poll_keeps_the_previous_set() {
    let api = EksApi::start().await;
    seed(&api);
    let store = AssociationStore::new();
    let mut src = source(&api, &store, |_| {});
    src.poll_once().await.unwrap();
    assert_eq!(store.source_len(Source::Eks), 5);

    api.lock().failing = true;
    api.remove(&id(1));
    let err = src.poll_once().await.unwrap_err();
    assert!(matches!(err, EksError::List { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("ListPodIdentityAssociations") && text.contains("ServerException"),
        "{text}"
    );
    assert_eq!(store.source_len(Source::Eks), 5, "previous set kept");
    assert!(store.resolve(&pod("shop", "web")).is_ok());

    // Recovered: the deletion now shows.
    api.lock().failing = false;
    src.poll_once().await.unwrap();
    assert_eq!(store.source_len(Source::Eks), 4);
    assert!(store.resolve(&pod("shop", "web")).is_err());
}

#[tokio::test]
async fn a_failing_describe_keeps_known_and_withholds_new() {
    let api = EksApi::start().await;
    seed(&api);
    let store = AssociationStore::new();
    let mut src = source(&api, &store, |s| s.describe_refresh = Duration::ZERO);
    src.poll_once().await.unwrap();

    api.put(&id(8), "shop", "new", &role("new"), json!({}));
    api.lock().failing_describes = vec![id(1), id(8)];
    let report = src.poll_once().await.unwrap();
    assert_eq!((report.listed, report.applied, report.skipped), (6, 5, 1));
    assert_eq!(
        store.resolve(&pod("shop", "web")).unwrap().role_arn,
        role("web"),
        "kept"
    );
    assert!(
        store.resolve(&pod("shop", "new")).is_err(),
        "never described: not served"
    );

    api.lock().failing_describes.clear();
    src.poll_once().await.unwrap();
    assert_eq!(
        store.resolve(&pod("shop", "new")).unwrap().role_arn,
        role("new")
    );
}

#[tokio::test]
async fn unknown_cluster_is_an_error_and_nothing_is_applied() {
    let api = EksApi::start().await;
    seed(&api);
    let store = AssociationStore::new();
    let mut src = source(&api, &store, |s| s.cluster_name = "staging".to_owned());
    let err = src.poll_once().await.unwrap_err();
    assert!(
        err.to_string().contains("ResourceNotFoundException"),
        "{err}"
    );
    assert!(err.to_string().contains("staging"), "{err}");
    assert!(!src.status().is_synced());
    assert_eq!(store.source_len(Source::Eks), 0);
}

#[tokio::test]
async fn run_polls_on_its_interval() {
    let api = EksApi::start().await;
    seed(&api);
    let store = AssociationStore::new();
    let src = source(&api, &store, |s| {
        s.poll_interval = Duration::from_millis(50);
        s.retry_interval = Duration::from_millis(20);
    });
    let status = src.status();
    let task = tokio::spawn(src.run());
    eventually("first poll", || {
        status.is_synced() && store.source_len(Source::Eks) == 5
    })
    .await;
    api.put(&id(9), "shop", "late", &role("late"), json!({}));
    eventually("next poll", || store.resolve(&pod("shop", "late")).is_ok()).await;
    api.lock().failing = true;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.source_len(Source::Eks), 6, "outage keeps the set");
    task.abort();
}

#[tokio::test]
async fn empty_cluster_name_is_refused() {
    let api = EksApi::start().await;
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .build();
    let settings = EksSettings {
        endpoint_url: Some(api.url()),
        ..EksSettings::new(" ")
    };
    let err = EksSource::new(
        eks_client(&sdk, &settings),
        settings,
        AssociationStore::new(),
    )
    .unwrap_err();
    assert!(matches!(err, EksError::NoClusterName));
}
