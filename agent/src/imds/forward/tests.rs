use super::*;
use crate::imds::test_support::{closed_url, FakeImds};

fn forwarder(upstream: &str) -> Forwarder {
    Forwarder::new(&ImdsSettings {
        upstream: upstream.to_owned(),
        timeout: Duration::from_millis(500),
        max_body_bytes: 1024,
        ..ImdsSettings::default()
    })
}

async fn body(resp: Response<Full<Bytes>>) -> String {
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn forwards_method_path_query_and_only_the_imds_headers() {
    let imds = FakeImds::start().await;
    let f = forwarder(&imds.url);
    let req = Request::get("/latest/meta-data/placement/region?x=1")
        .header("host", "169.254.169.254")
        .header("x-aws-ec2-metadata-token", "SESSION")
        .header("accept", "*/*")
        .header("user-agent", "aws-cli/2")
        .header("x-forwarded-for", "10.0.0.9")
        .header("authorization", "Bearer pod-token")
        .header("cookie", "c=1")
        .header("connection", "keep-alive, x-aws-ec2-metadata-token")
        .body(())
        .unwrap();
    let resp = f.forward(&req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(
        body(resp).await,
        "GET /latest/meta-data/placement/region?x=1"
    );
    assert_eq!(h["content-type"], "text/plain");
    for dropped in ["server", "x-extra", "set-cookie"] {
        assert!(!h.contains_key(dropped), "{dropped} passed back");
    }

    let seen = imds.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        (s.method.as_str(), s.path_and_query.as_str()),
        ("GET", "/latest/meta-data/placement/region?x=1")
    );
    assert_eq!(s.headers["x-aws-ec2-metadata-token"], "SESSION");
    assert_eq!(s.headers["accept"], "*/*");
    assert_eq!(s.headers["user-agent"], "aws-cli/2");
    let authority = imds.url.trim_start_matches("http://");
    assert_eq!(s.headers["host"], authority);
    for dropped in [
        "x-forwarded-for",
        "authorization",
        "cookie",
        "forwarded",
        "via",
    ] {
        assert!(!s.headers.contains_key(dropped), "{dropped} forwarded");
    }
    let names: Vec<_> = s.headers.keys().map(|k| k.as_str()).collect();
    for name in &names {
        assert!(
            ["host", "x-aws-ec2-metadata-token", "accept", "user-agent"].contains(name),
            "unexpected header {name} upstream: {names:?}"
        );
    }
}

#[tokio::test]
async fn the_token_put_round_trips_and_refuses_x_forwarded_for() {
    let imds = FakeImds::start().await;
    let f = forwarder(&imds.url);
    let put = |xff: bool| {
        let mut b = Request::put("/latest/api/token")
            .header("x-aws-ec2-metadata-token-ttl-seconds", "21600");
        if xff {
            b = b.header("X-Forwarded-For", "1.2.3.4");
        }
        b.body(()).unwrap()
    };
    let resp = f.forward(&put(false)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-aws-ec2-metadata-token-ttl-seconds"],
        "21600"
    );
    assert_eq!(body(resp).await, "TOKEN");
    let s = &imds.seen()[0];
    assert_eq!(s.method, "PUT");
    assert_eq!(s.headers["x-aws-ec2-metadata-token-ttl-seconds"], "21600");

    let e = f.forward(&put(true)).await.unwrap_err();
    assert!(matches!(e, ForwardError::ForwardedFor), "{e}");
    assert_eq!(e.status(), 403);
    assert_eq!(imds.count(), 1, "never reached the upstream");
}

#[tokio::test]
async fn upstream_status_and_head_pass_through() {
    let imds = FakeImds::start().await;
    let f = forwarder(&imds.url);
    let resp = f
        .forward(&Request::get("/missing").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(body(resp).await, "nope");
    let resp = f
        .forward(&Request::head("/latest/meta-data/").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body(resp).await, "");
    assert_eq!(imds.seen()[1].method, "HEAD");
}

#[tokio::test]
async fn unreachable_slow_and_oversized_upstreams_are_gateway_errors() {
    let e = forwarder(&closed_url())
        .forward(&Request::get("/latest/meta-data/").body(()).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, ForwardError::Unreachable), "{e}");
    assert_eq!(e.status(), 502);
    assert_eq!(e.code(), "ImdsUpstreamUnreachable");

    let imds = FakeImds::start().await;
    let f = forwarder(&imds.url);
    let start = std::time::Instant::now();
    let e = f
        .forward(&Request::get("/slow").body(()).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, ForwardError::Timeout), "{e}");
    assert_eq!(e.status(), 504);
    assert!(start.elapsed() < Duration::from_secs(3));

    let e = f
        .forward(&Request::get("/big").body(()).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, ForwardError::TooLarge), "{e}");
    assert_eq!(e.status(), 502);
    let resp = e.response();
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");

    let e = forwarder("https://169.254.169.254")
        .forward(&Request::get("/").body(()).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, ForwardError::BadUpstream), "{e}");
}

#[test]
fn upstreams_parse_strictly() {
    let a = parse_upstream("http://169.254.169.254").unwrap();
    assert_eq!(
        (a.host.as_str(), a.port, a.authority.as_str()),
        ("169.254.169.254", 80, "169.254.169.254")
    );
    let a = parse_upstream("http://[fd00:ec2::254]:8080/").unwrap();
    assert_eq!(
        (a.host.as_str(), a.port, a.authority.as_str()),
        ("fd00:ec2::254", 8080, "[fd00:ec2::254]:8080")
    );
    for bad in [
        "",
        "169.254.169.254",
        "https://169.254.169.254",
        "http://169.254.169.254/latest",
        "http://u@169.254.169.254",
        "http://169.254.169.254?x",
    ] {
        assert!(parse_upstream(bad).is_err(), "{bad:?}");
    }
}
