//! The Kubernetes sources (`pod_identity_agent::sources::kubernetes`) against
//! `support::kube_api`, an in-process stand-in of the Kubernetes API server
//! (there is no API server on this machine; see that module for what it serves),
//! and the Events posted on refused pods (`events.k8s.io/v1`, validated by the
//! stand-in as the API server validates them).

mod support;

use std::time::Duration;

use hyper::Method;
use pod_identity_agent::http::refusal::{Refusal, RefusalObserver};
use pod_identity_agent::http::token::TokenError;
use pod_identity_agent::model::AssumeMode;
use pod_identity_agent::model::{PodInfo, Source};
use pod_identity_agent::sources::associations::AssociationStore;
use pod_identity_agent::sources::kubernetes::{
    connect, event_channel, ClusterAccess, EventSettings, EventStats, KubeSettings, KubeSources,
    KubeStatus,
};
use pod_identity_agent::sources::pods::PodStore;
use pod_identity_agent::testing::pod_uid;
use serde_json::{json, Value};
use support::eventually;
use support::kube_api::{node, pia, pod, service_account, ApiServer, Res};

const NODE: &str = "ip-192-168-12-34.eu-west-1.compute.internal";
const OTHER_NODE: &str = "ip-192-168-56-78.eu-west-1.compute.internal";
const TAINT: &str = "pod-identity.aws-agent.io/agent-not-ready";
const ROLE_READER: &str = "arn:aws:iam::111122223333:role/s3-reader";
const ROLE_WRITER: &str = "arn:aws:iam::111122223333:role/s3-writer";
const ROLE_TARGET: &str = "arn:aws:iam::444455556666:role/cross-account";

const UID_WEB: &str = "5f3c2a1e-8b7d-4c6e-9a0f-1b2c3d4e5f60";
const UID_OTHER_NODE: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const UID_HOSTNET: &str = "c7d8e9f0-a1b2-4c3d-8e4f-5a6b7c8d9e0f";
const UID_LATE: &str = "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b";

// === harness ===

struct Agent {
    pods: PodStore,
    assocs: AssociationStore,
    status: KubeStatus,
    task: tokio::task::JoinHandle<()>,
}

impl Agent {
    /// The pod with this UID in the agent's pod directory, if there.
    fn pod(&self, uid: &str) -> Option<PodInfo> {
        self.pods.get(&pod_uid(uid))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_agent(api: &ApiServer, edit: impl FnOnce(&mut KubeSettings)) -> Agent {
    let mut settings = KubeSettings {
        access: ClusterAccess::Url(api.url()),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..KubeSettings::new(NODE)
    };
    edit(&mut settings);
    let pods = PodStore::new();
    let assocs = AssociationStore::new();
    let sources = KubeSources::connect(settings, pods.clone(), assocs.clone())
        .await
        .expect("client for the stand-in");
    let status = sources.status();
    let task = tokio::spawn(sources.run());
    Agent {
        pods,
        assocs,
        status,
        task,
    }
}

fn seed(api: &ApiServer) {
    api.apply(
        Res::ServiceAccounts,
        service_account(
            "shop",
            "web",
            json!({
                "eks.amazonaws.com/role-arn": ROLE_READER,
                "eks.amazonaws.com/sts-regional-endpoints": "true",
                "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\",\"kind\":\"ServiceAccount\"}\n"
            }),
        ),
    );
    api.apply(
        Res::ServiceAccounts,
        service_account("kube-system", "default", json!({})),
    );
    api.apply(
        Res::Pods,
        pod("shop", "web-6d5f8", UID_WEB, NODE, "web", false),
    );
    api.apply(
        Res::Pods,
        pod(
            "shop",
            "web-k2j4n",
            UID_OTHER_NODE,
            OTHER_NODE,
            "web",
            false,
        ),
    );
    api.apply(
        Res::Pods,
        pod(
            "kube-system",
            "node-exporter-q8z7x",
            UID_HOSTNET,
            NODE,
            "default",
            true,
        ),
    );
}

// === tests ===

#[tokio::test]
async fn pods_of_this_node_land_in_the_store_and_follow_the_watch() {
    let api = ApiServer::start().await;
    seed(&api);
    let agent = start_agent(&api, |s| s.crd = false).await;
    eventually("pods synced", || agent.pods.is_synced()).await;
    assert!(agent.status.is_ready());

    let web = agent.pod(UID_WEB).expect("pod on this node");
    assert_eq!(
        (
            web.namespace.as_str(),
            web.name.as_str(),
            web.service_account.as_str()
        ),
        ("shop", "web-6d5f8", "web")
    );
    assert!(!web.host_network);
    assert_eq!(
        web.service_account_annotations
            .get("eks.amazonaws.com/role-arn")
            .map(String::as_str),
        Some(ROLE_READER)
    );
    assert_eq!(
        web.service_account_annotations
            .get("eks.amazonaws.com/sts-regional-endpoints")
            .map(String::as_str),
        Some("true")
    );
    assert!(
        !web.service_account_annotations
            .contains_key("kubectl.kubernetes.io/last-applied-configuration"),
        "large, unused annotation dropped"
    );
    let hostnet = agent.pod(UID_HOSTNET).expect("hostNetwork pod");
    assert!(hostnet.host_network);
    assert!(hostnet.service_account_annotations.is_empty());
    assert!(agent.pod(UID_OTHER_NODE).is_none(), "other node's pod");
    assert_eq!(agent.pods.len(), 2);

    // The IRSA annotation resolves (no explicit association exists).
    let assoc = agent.assocs.resolve(&web).unwrap();
    assert_eq!(
        (assoc.mode, assoc.role_arn.as_str()),
        (AssumeMode::WebIdentity, ROLE_READER)
    );

    // Every pod request was a read carrying the node's field selector; SA
    // requests had none. The watch opens after the list that marks the store
    // synced: wait for it.
    eventually("a pod watch was opened", || {
        api.requests(Res::Pods).iter().any(|r| r.is_watch())
    })
    .await;
    let pod_requests = api.requests(Res::Pods);
    assert!(pod_requests.iter().all(|r| r.method == Method::GET));
    assert!(
        pod_requests.iter().any(|r| r.is_watch()),
        "a pod watch was opened"
    );
    for r in &pod_requests {
        assert_eq!(
            r.query.get("fieldSelector").map(String::as_str),
            Some(format!("spec.nodeName={NODE}").as_str()),
            "{r:?}"
        );
    }
    assert!(api
        .requests(Res::ServiceAccounts)
        .iter()
        .all(|r| !r.query.contains_key("fieldSelector")));

    // A new pod: unknown until the watch reports it; lookup's wait covers the lag.
    let lookup = {
        let pods = agent.pods.clone();
        tokio::spawn(async move {
            pods.lookup(&pod_uid(UID_LATE), Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    api.apply(
        Res::Pods,
        pod("shop", "web-late1", UID_LATE, NODE, "web", false),
    );
    let late = lookup.await.unwrap().expect("pod reported by the watch");
    assert_eq!(late.name, "web-late1");
    assert_eq!(
        late.service_account_annotations
            .get("eks.amazonaws.com/role-arn")
            .map(String::as_str),
        Some(ROLE_READER)
    );

    // A changed service account annotation reaches its pods.
    api.apply(
        Res::ServiceAccounts,
        service_account(
            "shop",
            "web",
            json!({"eks.amazonaws.com/role-arn": ROLE_WRITER}),
        ),
    );
    eventually("new annotation on both pods", || {
        [UID_WEB, UID_LATE].iter().all(|uid| {
            agent.pod(uid).and_then(|p| {
                p.service_account_annotations
                    .get("eks.amazonaws.com/role-arn")
                    .cloned()
            }) == Some(ROLE_WRITER.to_owned())
        })
    })
    .await;

    // A deleted pod disappears.
    api.delete(Res::Pods, "shop", "web-6d5f8");
    eventually("deleted pod gone", || agent.pod(UID_WEB).is_none()).await;
    assert!(agent.pod(UID_LATE).is_some());
    // One list each: the watch carried everything since.
    assert_eq!(api.lists(Res::Pods), 1);
}

#[tokio::test]
async fn watch_error_event_forces_a_relist() {
    let api = ApiServer::start().await;
    seed(&api);
    let agent = start_agent(&api, |s| s.crd = false).await;
    eventually("pods synced", || agent.pods.is_synced()).await;
    assert_eq!(api.lists(Res::Pods), 1);

    // The watch stalls; meanwhile a pod goes and another comes.
    api.pause_watches();
    api.delete(Res::Pods, "shop", "web-6d5f8");
    api.apply(
        Res::Pods,
        pod("shop", "web-late1", UID_LATE, NODE, "web", false),
    );
    // Not confirmed by the watch: not in the store, however long we wait. Never a guess.
    let err = agent
        .pods
        .lookup(&pod_uid(UID_LATE), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(UID_LATE), "{err}");
    assert!(agent.pod(UID_WEB).is_some(), "old state until resync");

    // The server expires the watch (ERROR 410 Expired event); the agent re-lists.
    api.expire_watches();
    eventually("re-listed pods", || {
        agent.pod(UID_LATE).is_some() && agent.pod(UID_WEB).is_none()
    })
    .await;
    assert!(agent.pod(UID_HOSTNET).is_some());
    // One re-list, then a watch from its resourceVersion holds: no list loop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.lists(Res::Pods), 2);

    // And the new watch delivers events again.
    api.delete(Res::Pods, "kube-system", "node-exporter-q8z7x");
    eventually("deleted after resync", || agent.pod(UID_HOSTNET).is_none()).await;
}

#[tokio::test]
async fn http_410_at_watch_start_forces_a_relist() {
    let api = ApiServer::start().await;
    seed(&api);
    let agent = start_agent(&api, |s| s.crd = false).await;
    eventually("pods synced", || agent.pods.is_synced()).await;

    // A change the watch does not deliver, then the watch ends and re-watching
    // from the old resource version is answered "410 Gone".
    api.pause_watches();
    api.apply(
        Res::Pods,
        pod("shop", "web-late1", UID_LATE, NODE, "web", false),
    );
    api.gone_next_watches(Res::Pods, 1);
    api.close_watches();
    eventually("re-listed after HTTP 410", || agent.pod(UID_LATE).is_some()).await;
    assert!(api.lists(Res::Pods) >= 2);
    let gone_then_list = api
        .requests(Res::Pods)
        .windows(2)
        .any(|w| w[0].is_watch() && !w[1].is_watch());
    assert!(gone_then_list, "a list followed the refused watch");
}

#[tokio::test]
async fn nothing_is_published_until_service_accounts_are_listed() {
    let api = ApiServer::start().await;
    seed(&api);
    api.fail_next_lists(Res::ServiceAccounts, 3);
    let agent = start_agent(&api, |s| s.crd = false).await;
    // Pods are listed at once, but without the SAs an IRSA pod would look
    // annotation-less: hold everything back.
    eventually("pods listed", || api.lists(Res::Pods) >= 1).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    // Read the store first: if it was synced, the SA list had succeeded before.
    let (synced, empty) = (agent.pods.is_synced(), agent.pods.is_empty());
    if api.lists(Res::ServiceAccounts) < 4 {
        assert!(!synced && empty, "published before the SAs were listed");
    }
    eventually("synced after SA list recovered", || agent.pods.is_synced()).await;
    assert!(api.lists(Res::ServiceAccounts) >= 4);
    let web = agent.pod(UID_WEB).unwrap();
    assert_eq!(
        web.service_account_annotations
            .get("eks.amazonaws.com/role-arn")
            .map(String::as_str),
        Some(ROLE_READER)
    );
}

#[tokio::test]
async fn crd_associations_land_in_the_store() {
    let api = ApiServer::start().await;
    seed(&api);
    api.apply(
        Res::Pias,
        pia(
            "shop",
            "web",
            "2025-06-01T08:00:00Z",
            json!({"serviceAccount": "web", "roleArn": ROLE_WRITER}),
        ),
    );
    api.apply(
        Res::Pias,
        pia(
            "kube-system",
            "node-exporter",
            "2025-06-01T08:00:00Z",
            json!({
                "serviceAccount": "default",
                "roleArn": ROLE_READER,
                "targetRoleArn": ROLE_TARGET,
                "disableSessionTags": true,
                "sessionDurationSecs": 3600
            }),
        ),
    );
    let agent = start_agent(&api, |_| {}).await;
    eventually("ready", || agent.status.is_ready()).await;
    assert!(agent.status.associations_synced());
    assert_eq!(agent.assocs.source_len(Source::Crd), 2);

    let web = agent.pod(UID_WEB).unwrap();
    let a = agent.assocs.resolve(&web).unwrap();
    // The explicit association beats the SA's IRSA annotation.
    assert_eq!(
        (a.source.as_str(), a.mode, a.role_arn.as_str()),
        ("crd", AssumeMode::PodIdentity, ROLE_WRITER)
    );
    let exporter = agent.pod(UID_HOSTNET).unwrap();
    let a = agent.assocs.resolve(&exporter).unwrap();
    assert_eq!(a.target_role_arn.as_deref(), Some(ROLE_TARGET));
    assert!(a.disable_session_tags);
    assert_eq!(a.session_duration_secs, Some(3600));

    // A newer resource for the same service account does not take over.
    api.apply(
        Res::Pias,
        pia(
            "shop",
            "web-2",
            "2025-06-02T08:00:00Z",
            json!({"serviceAccount": "web", "roleArn": ROLE_READER}),
        ),
    );
    // An update does.
    api.apply(
        Res::Pias,
        pia(
            "shop",
            "web",
            "2025-06-01T08:00:00Z",
            json!({"serviceAccount": "web", "roleArn": ROLE_TARGET}),
        ),
    );
    eventually("updated role", || {
        agent.assocs.resolve(&web).map(|a| a.role_arn).ok() == Some(ROLE_TARGET.to_owned())
    })
    .await;
    // Deleting the older one hands the service account to the remaining one.
    api.delete(Res::Pias, "shop", "web");
    eventually("remaining resource applies", || {
        agent.assocs.resolve(&web).map(|a| a.role_arn).ok() == Some(ROLE_READER.to_owned())
    })
    .await;
    // Deleting the last one leaves the IRSA annotation (source irsa-annotation).
    api.delete(Res::Pias, "shop", "web-2");
    eventually("back to IRSA", || {
        agent.assocs.resolve(&web).map(|a| a.source).ok() == Some(Source::IrsaAnnotation)
    })
    .await;
    assert_eq!(agent.assocs.source_len(Source::Crd), 1);
    // The CRD watch is cluster-wide.
    assert!(api
        .requests(Res::Pias)
        .iter()
        .all(|r| !r.query.contains_key("fieldSelector")));
}

#[tokio::test]
async fn crd_watch_error_relists() {
    let api = ApiServer::start().await;
    seed(&api);
    let agent = start_agent(&api, |_| {}).await;
    eventually("ready", || agent.status.is_ready()).await;
    assert_eq!(agent.assocs.source_len(Source::Crd), 0);
    api.pause_watches();
    api.apply(
        Res::Pias,
        pia(
            "shop",
            "web",
            "2025-06-01T08:00:00Z",
            json!({"serviceAccount": "web", "roleArn": ROLE_WRITER}),
        ),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(agent.assocs.source_len(Source::Crd), 0, "not delivered yet");
    api.expire_watches();
    eventually("association after re-list", || {
        agent.assocs.source_len(Source::Crd) == 1
    })
    .await;
    assert!(api.lists(Res::Pias) >= 2);
}

#[tokio::test]
async fn startup_taint_is_removed_once_synced() {
    let api = ApiServer::start().await;
    seed(&api);
    api.lock().nodes.insert(
        NODE.to_owned(),
        node(
            NODE,
            json!([
                {"key": TAINT, "effect": "NoSchedule"},
                {"key": "dedicated", "value": "batch", "effect": "NoSchedule"}
            ]),
        ),
    );
    // The first patch loses a race with another writer (409): the agent retries
    // with the fresh resourceVersion.
    api.lock().conflict_next_patch = true;
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let mut settings = KubeSettings {
        access: ClusterAccess::Url(api.url()),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        startup_taint: Some(TAINT.to_owned()),
        crd: false,
        ..KubeSettings::new(NODE)
    };
    settings.node_name = NODE.to_owned();
    let sources = KubeSources::connect(settings, PodStore::new(), AssociationStore::new())
        .await
        .unwrap()
        .with_ready_gate(gate_rx);
    let status = sources.status();
    let task = tokio::spawn(sources.run());

    eventually("sources ready", || status.is_ready()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        api.lock().node_patches.is_empty(),
        "gate closed: taint stays"
    );
    gate_tx.send(true).unwrap();
    eventually("taint removed", || status.taint_removed()).await;

    let st = api.lock();
    let taints = st.nodes[NODE]["spec"]["taints"].as_array().unwrap().clone();
    assert_eq!(taints.len(), 1);
    assert_eq!(taints[0]["key"], "dedicated");
    assert_eq!(taints[0]["value"], "batch");
    assert_eq!(st.node_patches.len(), 2, "conflict, then success");
    for p in &st.node_patches {
        assert_eq!(p["metadata"]["resourceVersion"], "777", "{p}");
    }
    drop(st);
    task.abort();
}

#[tokio::test]
async fn a_taint_that_cannot_be_removed_does_not_stop_the_sources() {
    let api = ApiServer::start().await;
    seed(&api);
    // No such node in the API (a wrong --node-name would look like this): 404.
    let agent = start_agent(&api, |s| {
        s.crd = false;
        s.startup_taint = Some(TAINT.to_owned());
    })
    .await;
    eventually("pods synced", || agent.pods.is_synced()).await;
    eventually("node looked up", || {
        api.lock()
            .requests
            .iter()
            .any(|r| r.path == format!("/api/v1/nodes/{NODE}"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!agent.status.taint_removed());
    // Still watching.
    api.apply(
        Res::Pods,
        pod("shop", "web-late1", UID_LATE, NODE, "web", false),
    );
    eventually("pod after the taint failure", || {
        agent.pod(UID_LATE).is_some()
    })
    .await;
}

// === Events on refused pods ===

/// Events with a 1 s window, posting to the stand-in; `pods` names the pod of a
/// token refusal.
async fn events_for(
    api: &ApiServer,
    pods: PodStore,
) -> (
    std::sync::Arc<pod_identity_agent::sources::kubernetes::EventQueue>,
    std::sync::Arc<EventStats>,
    tokio::task::JoinHandle<()>,
) {
    let client = connect(&ClusterAccess::Url(api.url())).await.unwrap();
    let settings = EventSettings {
        window: Duration::from_secs(1),
        ..EventSettings::default()
    };
    let (queue, publisher, stats) = event_channel(client, NODE, settings, pods);
    (queue, stats, tokio::spawn(publisher.run()))
}

fn no_association(pod: &PodInfo) -> Refusal {
    Refusal::NoAssociation {
        namespace: pod.namespace.clone(),
        service_account: pod.service_account.clone(),
        pod: pod.name.clone(),
    }
}

fn count(stats: &EventStats, outcome: &str) -> u64 {
    stats
        .snapshot()
        .into_iter()
        .find(|(o, _)| *o == outcome)
        .unwrap()
        .1
}

#[tokio::test]
async fn refused_pods_get_one_warning_event_per_reason_with_repeats_as_a_series() {
    let api = ApiServer::start().await;
    seed(&api);
    let agent = start_agent(&api, |s| s.crd = false).await;
    eventually("pods synced", || agent.pods.is_synced()).await;
    let web = agent.pod(UID_WEB).unwrap();
    let hostnet = agent.pod(UID_HOSTNET).unwrap();
    let (queue, stats, task) = events_for(&api, agent.pods.clone()).await;

    // Three refusals of web for no association, one right after the other.
    for _ in 0..3 {
        queue.refused(Some(&web), &no_association(&web));
    }
    // The token check refuses before the pod is looked up: the kernel's pod UID
    // names it, through the pod directory.
    queue.refused(
        None,
        &Refusal::Token(TokenError::PodMismatch {
            token_pod: UID_LATE.into(),
            kernel_pod: pod_uid(UID_HOSTNET),
        }),
    );
    // STS's AccessDenied, for the hostNetwork pod.
    queue.refused(
        Some(&hostnet),
        &Refusal::from(pod_identity_agent::testing::access_denied()),
    );
    // Not an Event's business.
    queue.refused(Some(&web), &Refusal::Throttled);

    eventually("three events", || api.lock().events.len() == 3).await;
    let events = api.events_for("shop", "web-6d5f8");
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e["apiVersion"], "events.k8s.io/v1");
    assert_eq!(e["kind"], "Event");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], "NoPodIdentityAssociation");
    assert_eq!(e["action"], "ServeCredentials");
    assert_eq!(e["reportingController"], "pod-identity-agent");
    assert_eq!(e["reportingInstance"], NODE);
    assert_eq!(
        e["regarding"],
        json!({"apiVersion": "v1", "kind": "Pod", "namespace": "shop", "name": "web-6d5f8", "uid": UID_WEB})
    );
    assert_eq!(e["metadata"]["namespace"], "shop");
    assert!(
        e["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("web-6d5f8."),
        "{e:#?}"
    );
    let note = e["note"].as_str().unwrap();
    assert!(
        note.contains("No Pod Identity association for service account shop/web")
            && note.contains("(404)"),
        "{note}"
    );
    assert!(e["series"].is_null(), "a new Event has no series");

    let mut reasons: Vec<(String, String)> = api
        .lock()
        .events
        .values()
        .map(|e| {
            (
                e["regarding"]["name"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            (
                "node-exporter-q8z7x".to_owned(),
                "CredentialsAccessDenied".to_owned()
            ),
            ("node-exporter-q8z7x".to_owned(), "TokenMismatch".to_owned()),
            (
                "web-6d5f8".to_owned(),
                "NoPodIdentityAssociation".to_owned()
            ),
        ]
    );

    // When the window ends the two repeats are folded in: one merge PATCH, count 3.
    eventually("the series update", || {
        api.events_for("shop", "web-6d5f8")[0]["series"]["count"] == 3
    })
    .await;
    let e = &api.events_for("shop", "web-6d5f8")[0];
    assert!(e["series"]["lastObservedTime"].is_string(), "{e:#?}");
    let requests = api.lock().event_requests.clone();
    let posts = requests
        .iter()
        .filter(|(m, _, _)| *m == Method::POST)
        .count();
    let patches: Vec<&Value> = requests
        .iter()
        .filter(|(m, _, _)| *m == Method::PATCH)
        .map(|(_, _, b)| b)
        .collect();
    assert_eq!((posts, patches.len()), (3, 1), "{requests:#?}");
    assert_eq!(patches[0]["series"]["count"], 3);
    assert_eq!(count(&stats, "created"), 3);
    assert_eq!(count(&stats, "rate_limited"), 2);
    assert_eq!(count(&stats, "series_updated"), 1);
    assert_eq!((count(&stats, "dropped"), count(&stats, "failed")), (0, 0));

    // A quiet window later, the next refusal is a new Event.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    queue.refused(Some(&web), &no_association(&web));
    eventually("a second event", || {
        api.events_for("shop", "web-6d5f8").len() == 2
    })
    .await;
    assert_eq!(count(&stats, "created"), 4);
    let text = pod_identity_agent::metrics::render_kube_events(stats.clone());
    assert!(
        text.contains("pod_identity_kubernetes_events_total{outcome=\"created\"} 4"),
        "{text}"
    );
    task.abort();
}

#[tokio::test]
async fn events_the_api_refuses_are_counted_and_not_retried_in_a_loop() {
    let api = ApiServer::start().await;
    api.lock().forbid_events = true;
    let web = pod_identity_agent::testing::pod("shop", "web-6d5f8", "web");
    let (queue, stats, task) = events_for(&api, PodStore::new()).await;
    for _ in 0..20 {
        queue.refused(Some(&web), &no_association(&web));
    }
    eventually("the failure counted", || count(&stats, "failed") == 1).await;
    eventually("the repeats held back", || {
        count(&stats, "rate_limited") == 19
    })
    .await;
    // One POST for twenty refusals, and no PATCH of an Event that does not exist.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(api.lock().event_requests.len(), 1);
    assert_eq!(count(&stats, "created"), 0);
    task.abort();
}

#[tokio::test]
async fn the_stand_in_refuses_events_the_api_server_would() {
    // What the agent's Events are checked against must itself refuse bad ones.
    let api = ApiServer::start().await;
    let client = reqwest_like_post(&api).await;
    let good = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "web-6d5f8.1", "namespace": "shop"},
        "eventTime": "2025-06-02T10:20:00.000000Z",
        "type": "Warning", "reason": "TokenMismatch", "action": "ServeCredentials",
        "note": "n", "reportingController": "pod-identity-agent", "reportingInstance": NODE,
        "regarding": {"apiVersion": "v1", "kind": "Pod", "namespace": "shop", "name": "web-6d5f8"}
    });
    assert_eq!(client(good.clone(), "shop").await, 200, "accepted");
    assert_eq!(client(good.clone(), "shop").await, 409, "name taken");
    assert_eq!(
        client(good.clone(), "other").await,
        400,
        "namespace mismatch"
    );
    let bad = |edit: &dyn Fn(&mut Value)| {
        let mut e = good.clone();
        e["metadata"]["name"] = "web-6d5f8.2".into();
        edit(&mut e);
        e
    };
    for (what, e) in [
        ("no eventTime", bad(&|e| e["eventTime"] = Value::Null)),
        (
            "no reportingController",
            bad(&|e| e["reportingController"] = Value::Null),
        ),
        (
            "reportingController not a qualified name",
            bad(&|e| e["reportingController"] = "pod identity agent".into()),
        ),
        ("type", bad(&|e| e["type"] = "Error".into())),
        (
            "note too long",
            bad(&|e| e["note"] = "x".repeat(1025).into()),
        ),
        (
            "reason too long",
            bad(&|e| e["reason"] = "R".repeat(129).into()),
        ),
        (
            "deprecatedCount set",
            bad(&|e| e["deprecatedCount"] = 1.into()),
        ),
        (
            "series of one",
            bad(&|e| {
                e["series"] = json!({"count": 1, "lastObservedTime": "2025-06-02T10:20:00.000000Z"})
            }),
        ),
        (
            "name not a subdomain",
            bad(&|e| e["metadata"]["name"] = "Web_6d5f8".into()),
        ),
    ] {
        assert_eq!(client(e, "shop").await, 422, "{what}");
    }
}

/// POSTs an Event body to the stand-in and returns the status.
async fn reqwest_like_post(
    api: &ApiServer,
) -> impl Fn(Value, &str) -> std::pin::Pin<Box<dyn std::future::Future<Output = u16> + Send>> {
    let client = connect(&ClusterAccess::Url(api.url())).await.unwrap();
    move |body: Value, ns: &str| {
        let client = client.clone();
        let uri = format!("/apis/events.k8s.io/v1/namespaces/{ns}/events");
        Box::pin(async move {
            let req = hyper::Request::post(uri)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap())
                .unwrap();
            match client.request_text(req).await {
                Ok(_) => 200,
                Err(kube::Error::Api(s)) => s.code,
                Err(e) => panic!("{e}"),
            }
        })
    }
}
