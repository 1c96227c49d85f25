use super::*;

fn get(path: &str, mode: ImdsMode) -> Decision {
    classify(&Method::GET, path, mode, false)
}

const BLOCK: ImdsMode = ImdsMode::BlockCredentials;

#[test]
fn ordinary_metadata_is_forwarded() {
    for path in [
        "/",
        "/latest",
        "/latest/",
        "/latest/meta-data/",
        "/latest/meta-data/instance-id",
        "/latest/meta-data/placement/region",
        "/latest/meta-data/iam/info",
        "/latest/meta-data/tags/instance/team:name",
        "/latest/dynamic/instance-identity/document",
        "/latest/user-data",
        "/2021-07-15/meta-data/local-ipv4",
    ] {
        for mode in [BLOCK, ImdsMode::PodRole, ImdsMode::Off] {
            assert_eq!(get(path, mode), Decision::Forward, "{path} {mode:?}");
        }
        assert_eq!(
            classify(&Method::HEAD, path, BLOCK, false),
            Decision::Forward,
            "{path}"
        );
    }
}

#[test]
fn credential_families_are_blocked_under_any_version_and_spelling() {
    let creds = Decision::Block404(Blocked::Credentials);
    let ident = Decision::Block404(Blocked::IdentityCredentials);
    for path in [
        "/latest/meta-data/iam/security-credentials",
        "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/security-credentials/node-role",
        "/latest/meta-data/iam/security-credentials/node-role/",
        "/latest/meta-data/iam/security-credentials/node-role/x",
        "/2021-07-15/meta-data/iam/security-credentials/node-role",
        "/1.0/meta-data/iam/security-credentials/",
        "/anything/meta-data/iam/security-credentials/",
        "/meta-data/iam/security-credentials/",
        "/latest/latest/meta-data/iam/security-credentials/",
        "/LATEST/Meta-Data/IAM/Security-Credentials/",
    ] {
        for mode in [BLOCK, ImdsMode::Off] {
            assert_eq!(get(path, mode), creds, "{path} {mode:?}");
            assert_eq!(classify(&Method::HEAD, path, mode, false), creds, "{path}");
        }
    }
    for path in [
        "/latest/meta-data/identity-credentials",
        "/latest/meta-data/identity-credentials/",
        "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
        "/2022-09-24/meta-data/identity-credentials/ec2/info",
        "/latest/Meta-Data/Identity-Credentials/ec2/",
    ] {
        for mode in [BLOCK, ImdsMode::PodRole, ImdsMode::Off] {
            assert_eq!(get(path, mode), ident, "{path} {mode:?}");
        }
    }
}

#[test]
fn paths_that_would_need_normalising_are_refused() {
    for path in [
        "/latest/meta-data/iam/security-credentials%2F",
        "/latest/meta-data/iam/security%2Dcredentials/",
        "/latest/meta-data/%69am/security-credentials/",
        "/latest/meta-data/instance-id%00",
        "/latest//meta-data/iam/security-credentials/",
        "//latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/security-credentials//",
        "/latest/./meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/x/../security-credentials/",
        "/latest/meta-data/..",
        "/latest/meta-data/.",
        "/latest/meta-data/iam/security-credentials;x/",
        "/latest/meta-data\\iam\\security-credentials",
        "/latest/meta-data/instance id",
        "latest/meta-data/instance-id",
        "",
        "*",
    ] {
        for mode in [BLOCK, ImdsMode::PodRole] {
            assert_eq!(get(path, mode), Decision::BadRequest400, "{path:?}");
        }
        assert_eq!(
            classify(&Method::PUT, path, BLOCK, false),
            Decision::BadRequest400,
            "{path:?}"
        );
    }
    // Dots inside a segment are plain.
    assert_eq!(get("/1.0/meta-data/ami-id", BLOCK), Decision::Forward);
    assert_eq!(get("/latest/meta-data/...x", BLOCK), Decision::Forward);
}

#[test]
fn only_get_head_and_the_token_put_are_allowed() {
    assert_eq!(
        classify(&Method::PUT, TOKEN_PATH, BLOCK, false),
        Decision::Forward
    );
    assert_eq!(
        classify(&Method::PUT, TOKEN_PATH, ImdsMode::PodRole, true),
        Decision::Forward
    );
    for path in [
        "/latest/api/token/",
        "/2021-07-15/api/token",
        "/latest/meta-data/",
        "/latest/meta-data/iam/security-credentials/",
    ] {
        assert_eq!(
            classify(&Method::PUT, path, BLOCK, false),
            Decision::MethodNotAllowed405,
            "{path}"
        );
    }
    for m in [
        Method::POST,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ] {
        for path in [TOKEN_PATH, "/latest/meta-data/instance-id"] {
            assert_eq!(
                classify(&m, path, BLOCK, false),
                Decision::MethodNotAllowed405,
                "{m} {path}"
            );
        }
    }
}

#[test]
fn deny_mode_refuses_everything() {
    for (m, path) in [
        (Method::GET, "/latest/meta-data/instance-id"),
        (Method::PUT, TOKEN_PATH),
        (Method::POST, "/x"),
        (Method::GET, "/latest/meta-data/%69am"),
    ] {
        assert_eq!(
            classify(&m, path, ImdsMode::Deny, false),
            Decision::Deny403,
            "{m} {path}"
        );
    }
}

#[test]
fn user_data_is_blocked_on_request() {
    let ud = Decision::Block404(Blocked::UserData);
    for path in [
        "/latest/user-data",
        "/latest/user-data/",
        "/2009-04-04/User-Data",
    ] {
        assert_eq!(classify(&Method::GET, path, BLOCK, true), ud, "{path}");
        assert_eq!(
            classify(&Method::GET, path, ImdsMode::PodRole, true),
            ud,
            "{path}"
        );
        assert_eq!(
            classify(&Method::GET, path, BLOCK, false),
            Decision::Forward
        );
    }
    // The credential paths stay blocked as credentials.
    assert_eq!(
        classify(
            &Method::GET,
            "/latest/meta-data/iam/security-credentials/",
            BLOCK,
            true
        ),
        Decision::Block404(Blocked::Credentials)
    );
}

#[test]
fn pod_role_mode_serves_the_list_and_one_name() {
    let pr = ImdsMode::PodRole;
    for path in [
        "/latest/meta-data/iam/security-credentials",
        "/latest/meta-data/iam/security-credentials/",
        "/2021-07-15/meta-data/iam/security-credentials/",
    ] {
        assert_eq!(
            get(path, pr),
            Decision::ServePodRole(PodRoleRequest::List),
            "{path}"
        );
    }
    assert_eq!(
        get("/latest/meta-data/iam/security-credentials/App-Role", pr),
        Decision::ServePodRole(PodRoleRequest::Role("App-Role".into()))
    );
    assert_eq!(
        classify(
            &Method::HEAD,
            "/latest/meta-data/iam/security-credentials/r",
            pr,
            false
        ),
        Decision::ServePodRole(PodRoleRequest::Role("r".into()))
    );
    // Deeper, trailing slash, no version or two: 404, as the node role would be.
    for path in [
        "/latest/meta-data/iam/security-credentials/r/",
        "/latest/meta-data/iam/security-credentials/r/x",
        "/meta-data/iam/security-credentials/",
        "/a/b/meta-data/iam/security-credentials/r",
    ] {
        assert_eq!(
            get(path, pr),
            Decision::Block404(Blocked::Credentials),
            "{path}"
        );
    }
}

#[test]
fn segments_of_plain_paths() {
    assert_eq!(segments("/"), Some((vec![], false)));
    assert_eq!(segments("/a/b"), Some((vec!["a", "b"], false)));
    assert_eq!(segments("/a/b/"), Some((vec!["a", "b"], true)));
    assert_eq!(segments("/a//b"), None);
    assert_eq!(segments("//"), None);
    assert_eq!(segments("/a/%62"), None);
}
