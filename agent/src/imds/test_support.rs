//! A fake real IMDS on 127.0.0.1 for the front's tests: records what reaches it
//! and answers by path.
//!
//! * `PUT /latest/api/token`: `TOKEN`, with the TTL header echoed.
//! * `/slow`: answers after 5 s.
//! * `/big`: 4 KiB of `x`.
//! * `/missing`: 404.
//! * anything else: `<method> <path and query>`, `text/plain`, plus headers that
//!   must not be passed back (`server`, `x-extra`, `set-cookie`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{HeaderMap, Response, StatusCode};

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
}

pub struct FakeImds {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeImds {
    /// Start the fake on the current runtime.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        crate::testing::serve(listener, move |req: hyper::Request<_>| {
            let record = record.clone();
            async move {
                let pq = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                record.lock().unwrap().push(Seen {
                    method: req.method().to_string(),
                    path_and_query: pq.clone(),
                    headers: req.headers().clone(),
                });
                let mut b = Response::builder();
                let body = match (req.method().as_str(), req.uri().path()) {
                    ("PUT", "/latest/api/token") => {
                        if let Some(ttl) = req.headers().get("x-aws-ec2-metadata-token-ttl-seconds")
                        {
                            b = b.header("x-aws-ec2-metadata-token-ttl-seconds", ttl);
                        }
                        "TOKEN".to_owned()
                    }
                    (_, "/slow") => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        "late".to_owned()
                    }
                    (_, "/big") => "x".repeat(4096),
                    (_, "/missing") => {
                        b = b.status(StatusCode::NOT_FOUND);
                        "nope".to_owned()
                    }
                    (m, _) => format!("{m} {pq}"),
                };
                b.header("content-type", "text/plain")
                    .header("server", "EC2ws")
                    .header("x-extra", "1")
                    .header("set-cookie", "a=b")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap()
            }
        });
        FakeImds { url, seen }
    }

    /// What reached the fake so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests reached the fake.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// The address of a port nothing listens on.
pub fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}
