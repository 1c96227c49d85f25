//! The pod-role answers without root: a temp directory tree stands in for
//! cgroupfs and a fake upstream issues the credentials.
use super::*;
use crate::{
    credentials::{eks_auth::prefetch_token::token_path, CacheOutcome, CacheSettings},
    sources::pods::PodStore,
    testing::{self, CountingSts, POD_UID},
};
use http_body_util::BodyExt;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

struct Fixture {
    _dir: tempfile::TempDir,
    kubelet: tempfile::TempDir,
    pod_cgroup: u64,
    pods: PodStore,
    upstream: CountingSts,
    role: PodRole<CountingSts>,
}

fn fixture(eks_auth: bool, with_kubelet_dir: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = tempfile::tempdir().unwrap();
    let pod_dir = testing::pod_cgroup_dir(dir.path(), POD_UID).join(
        "cri-containerd-4b3c0a1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b.scope",
    );
    std::fs::create_dir_all(&pod_dir).unwrap();
    let app = testing::association("ns", "app", "arn:aws:iam::111122223333:role/team/app-role");
    let resolver = testing::resolver(dir.path(), Duration::from_millis(50), vec![app]);
    let pods = resolver.pods.clone();
    let upstream = CountingSts::default();
    let role = PodRole::new(
        resolver,
        CredentialCache::new(upstream.clone(), CacheSettings::default()),
        eks_auth,
        with_kubelet_dir.then(|| kubelet.path().to_owned()),
    );
    Fixture {
        pod_cgroup: std::fs::metadata(&pod_dir).unwrap().ino(),
        _dir: dir,
        kubelet,
        pods,
        upstream,
        role,
    }
}

async fn ask(f: &Fixture, what: PodRoleRequest) -> (Result<(u16, String), PodRoleError>, Access) {
    let mut access = Access::default();
    let r = f
        .role
        .respond(&testing::caller(f.pod_cgroup), &what, &mut access)
        .await;
    let r = match r {
        Ok(resp) => {
            assert_eq!(resp.headers()["content-type"], "text/plain");
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            Ok((status, String::from_utf8(body.to_vec()).unwrap()))
        }
        Err(e) => Err(e),
    };
    (r, access)
}

fn role(name: &str) -> PodRoleRequest {
    PodRoleRequest::Role(name.into())
}

/// The body is IMDS's, field for field and in its order.
fn assert_imds_json(body: &str) {
    assert!(
        body.starts_with(r#"{"Code":"Success","LastUpdated":""#),
        "{body}"
    );
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort_unstable();
    let mut want = [
        "Code",
        "LastUpdated",
        "Type",
        "AccessKeyId",
        "SecretAccessKey",
        "Token",
        "Expiration",
    ];
    want.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(v["Type"], "AWS-HMAC");
    assert_eq!(v["AccessKeyId"], "ASIAFAKE");
    assert_eq!(v["SecretAccessKey"], "secret");
    assert_eq!(v["Token"], "token");
    for t in ["LastUpdated", "Expiration"] {
        let s = v[t].as_str().unwrap();
        assert_eq!(s.len(), "2024-01-01T00:00:00Z".len(), "{s}");
        assert!(s.ends_with('Z'), "{s}");
    }
}

#[tokio::test]
async fn sts_serves_the_associations_role_name_and_credentials() {
    let f = fixture(false, false);
    f.pods.upsert(testing::pod("ns", "web", "app"));
    let (r, a) = ask(&f, PodRoleRequest::List).await;
    assert_eq!(r.unwrap(), (200, "app-role".to_owned()));
    assert!(a.association.is_some());
    assert_eq!(f.upstream.calls(), 0, "the name needs no credentials");

    let (r, a) = ask(&f, role("app-role")).await;
    let (status, body) = r.unwrap();
    assert_eq!(status, 200);
    assert_imds_json(&body);
    assert_eq!(a.access_key_id.as_deref(), Some("ASIAFAKE"));
    assert_eq!(a.cache, Some(CacheOutcome::Miss));
    assert_eq!(a.pod.unwrap().name, "web");

    let (r, _) = ask(&f, role("node-role")).await;
    let e = r.unwrap_err();
    assert_eq!((e.status().as_u16(), e.code()), (404, "ImdsNotPodRole"));
    // Names are compared exactly.
    assert!(ask(&f, role("App-Role")).await.0.is_err());
    assert_eq!(f.upstream.calls(), 1);
}

#[tokio::test]
async fn sts_pods_without_an_association_get_404() {
    let f = fixture(false, false);
    // Not known yet: retryable.
    let (r, _) = ask(&f, PodRoleRequest::List).await;
    let e = r.unwrap_err();
    assert_eq!((e.status().as_u16(), e.code()), (503, "UnknownPod"));
    f.pods.upsert(testing::pod("ns", "web", "other"));
    for what in [PodRoleRequest::List, role("app-role")] {
        let (r, a) = ask(&f, what).await;
        let e = r.unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (404, "NoAssociation"));
        assert!(a.pod.is_some());
    }
    assert_eq!(f.upstream.calls(), 0);
}

fn exp() -> u64 {
    (SystemTime::now() + Duration::from_secs(3600))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn write_token(f: &Fixture, token: &str) {
    let path = token_path(f.kubelet.path(), &testing::pod_uid(POD_UID));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, token).unwrap();
}

#[tokio::test]
async fn eks_auth_reads_the_pods_token_and_names_the_served_role() {
    let f = fixture(true, true);
    // No token in the pod: no association, as far as the front can tell.
    let (r, _) = ask(&f, PodRoleRequest::List).await;
    let e = r.unwrap_err();
    assert_eq!((e.status().as_u16(), e.code()), (404, "ImdsNoPodToken"));

    // The fake names the role after the token's service account.
    write_token(
        &f,
        &testing::fake_pod_token("ns", "app", "web", POD_UID, exp()),
    );
    let (r, a) = ask(&f, PodRoleRequest::List).await;
    assert_eq!(r.unwrap(), (200, "app".to_owned()));
    assert_eq!(
        a.assumed_role_arn.as_deref(),
        Some("arn:aws:sts::111122223333:assumed-role/app/web")
    );
    let pod = a.pod.unwrap();
    assert_eq!(
        (pod.namespace.as_str(), pod.service_account.as_str()),
        ("ns", "app")
    );
    assert_eq!(a.access_key_id, None, "the name only");

    let (r, a) = ask(&f, role("app")).await;
    let (status, body) = r.unwrap();
    assert_eq!(status, 200);
    assert_imds_json(&body);
    assert_eq!(a.cache, Some(CacheOutcome::Hit));
    let (r, _) = ask(&f, role("node-role")).await;
    assert_eq!(r.unwrap_err().code(), "ImdsNotPodRole");
    assert_eq!(f.upstream.calls(), 1, "one fetch, then the cache");

    // Another pod's token in this pod's volume.
    write_token(
        &f,
        &testing::fake_pod_token(
            "ns",
            "app",
            "db",
            "8a1f0e2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
            exp(),
        ),
    );
    let (r, _) = ask(&f, role("app")).await;
    let e = r.unwrap_err();
    assert_eq!((e.status().as_u16(), e.code()), (403, "ImdsBadPodToken"));
}

#[tokio::test]
async fn eks_auth_without_a_kubelet_dir_is_404_with_the_reason() {
    let f = fixture(true, false);
    write_token(
        &f,
        &testing::fake_pod_token("ns", "app", "web", POD_UID, exp()),
    );
    let (r, _) = ask(&f, PodRoleRequest::List).await;
    let e = r.unwrap_err();
    assert_eq!(
        (e.status().as_u16(), e.code()),
        (404, "ImdsNoKubeletPodsDir")
    );
    assert!(e.to_string().contains("--kubelet-pods-dir"), "{e}");
    assert_eq!(f.upstream.calls(), 0);
}

#[test]
fn role_names_from_arns() {
    for (arn, name) in [
        ("arn:aws:iam::111122223333:role/app", Some("app")),
        ("arn:aws:iam::111122223333:role/team/sub/app", Some("app")),
        (
            "arn:aws:sts::111122223333:assumed-role/app/web",
            Some("app"),
        ),
        (
            "arn:aws-cn:sts::111122223333:assumed-role/app/s/x",
            Some("app"),
        ),
        ("arn:aws:iam::111122223333:user/app", None),
        ("arn:aws:iam::111122223333:role/", None),
        ("arn:aws:sts::111122223333:assumed-role//s", None),
        ("not-an-arn", None),
    ] {
        assert_eq!(role_name(arn), name, "{arn}");
    }
}

#[test]
fn imds_json_is_byte_exact() {
    let creds = Credentials {
        access_key_id: "ASIAEXAMPLE".into(),
        secret_access_key: crate::credentials::Secret::new("s/k+"),
        session_token: crate::credentials::Secret::new("t=="),
        expiration: SystemTime::UNIX_EPOCH + Duration::from_secs(1_689_281_375),
        account_id: Some("111122223333".into()),
        assumed_role_arn: "arn:aws:sts::111122223333:assumed-role/r/s".into(),
    };
    assert_eq!(
        imds_credentials_json(
            &creds,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_689_277_775)
        ),
        r#"{"Code":"Success","LastUpdated":"2023-07-13T19:49:35Z","Type":"AWS-HMAC","AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"s/k+","Token":"t==","Expiration":"2023-07-13T20:49:35Z"}"#
    );
}
