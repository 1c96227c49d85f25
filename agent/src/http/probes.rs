//! The localhost probe listener: `/healthz`, `/readyz`, `/metrics`.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{HeaderValue, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::response::text;

/// `/healthz` (the process answers) and `/readyz` (programs attached, sources
/// synced) on a localhost port. Probes must not go through the link-local address:
/// a probe timing out there killed working stock agents (its issue #26).
/// `/metrics` serves Prometheus text from `metrics`.
pub async fn serve_probes(
    listener: TcpListener,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let ready = ready.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let ready = ready.clone();
                let metrics = metrics.clone();
                async move {
                    Ok::<_, Infallible>(match req.uri().path() {
                        "/healthz" => text(StatusCode::OK, "ok"),
                        "/metrics" => {
                            let mut r = Response::new(Full::new(Bytes::from(metrics())));
                            r.headers_mut().insert(
                                CONTENT_TYPE,
                                HeaderValue::from_static("text/plain; version=0.0.4"),
                            );
                            r
                        }
                        "/readyz" if ready() => text(StatusCode::OK, "ready"),
                        "/readyz" => text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: sources not synced",
                        ),
                        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
                    })
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
