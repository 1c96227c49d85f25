//! The localhost probe listener: `/healthz`, `/readyz`, `/metrics`.

use std::{convert::Infallible, sync::Arc, time::Duration};

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

use super::health::Health;
use super::response::text;

/// Probe connections served at once; more are closed as soon as they are accepted.
pub const MAX_PROBE_CONNECTIONS: usize = 32;
/// Time allowed for a probe's request head.
pub const PROBE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest life of one probe connection (kubelet and Prometheus reconnect freely).
pub const PROBE_CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// `/healthz` and `/readyz` ([`Health`]: what each checks) on a localhost port. Probes must not go through the link-local address:
/// a probe timing out there killed working stock agents (its issue #26).
/// `/metrics` serves Prometheus text from `metrics`.
///
/// Bounded like the pods' listener: at most [`MAX_PROBE_CONNECTIONS`] at once, each
/// with a header timeout and a lifetime, so idle connections cannot use up the
/// agent's file descriptors.
pub async fn serve_probes(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_PROBE_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                tracing::warn!(error = %e, "probe accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the cap: close at once, so the backlog keeps draining and a probe
        // arriving after a flood is not queued behind it.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let health = health.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<Incoming>| {
                let health = health.clone();
                let metrics = metrics.clone();
                async move {
                    Ok::<_, Infallible>(match req.uri().path() {
                        "/healthz" => match health.live() {
                            Ok(()) => text(StatusCode::OK, "ok"),
                            Err(why) => {
                                text(StatusCode::SERVICE_UNAVAILABLE, &format!("not live: {why}"))
                            }
                        },
                        "/metrics" => {
                            let mut r = Response::new(Full::new(Bytes::from(metrics())));
                            r.headers_mut().insert(
                                CONTENT_TYPE,
                                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                            );
                            r
                        }
                        "/readyz" => match health.ready().await {
                            Ok(()) => text(StatusCode::OK, "ready"),
                            Err(why) => text(
                                StatusCode::SERVICE_UNAVAILABLE,
                                &format!("not ready: {why}"),
                            ),
                        },
                        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
                    })
                }
            });
            let conn = http1::Builder::new()
                .max_buf_size(16 * 1024)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(PROBE_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(PROBE_CONNECTION_LIFETIME, conn).await;
        });
    }
}

#[cfg(test)]
mod tests;
