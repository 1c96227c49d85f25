//! Forwarding one request to the real IMDS: one connection per request, bounded
//! in time (connection included) and in the size of the answer.
//!
//! Only what the IMDS API uses crosses: the method, the path and query, and the
//! headers in [`FORWARDED_REQUEST_HEADERS`] one way; the status, the body and the
//! headers in [`RETURNED_HEADERS`] the other. No `X-Forwarded-For` is ever added,
//! and a token `PUT` that carries one is refused here with 403, as the real IMDS
//! refuses it (its protection against being reached through an open proxy).
//! Tokens and bodies are never logged.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited};
use hyper::{
    header::{HeaderName, HOST},
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;

use super::settings::ImdsSettings;
use crate::http::response::text;

/// The request headers passed to the real IMDS (any others are dropped).
pub const FORWARDED_REQUEST_HEADERS: [&str; 4] = [
    "x-aws-ec2-metadata-token",
    "x-aws-ec2-metadata-token-ttl-seconds",
    "accept",
    "user-agent",
];

/// The response headers passed back (any others are dropped).
pub const RETURNED_HEADERS: [&str; 2] = ["content-type", "x-aws-ec2-metadata-token-ttl-seconds"];

/// Why a request got no answer from the real IMDS.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// `settings.upstream` is not `http://host[:port]`.
    #[error("the agent's IMDS upstream is misconfigured")]
    BadUpstream,
    /// A token `PUT` with `X-Forwarded-For`.
    #[error("Forbidden: token requests must not carry X-Forwarded-For")]
    ForwardedFor,
    /// No connection, or the connection failed before a whole answer.
    #[error("Bad Gateway: the instance metadata service is unreachable")]
    Unreachable,
    /// No whole answer within `settings.timeout`.
    #[error("Gateway Timeout: the instance metadata service did not answer in time")]
    Timeout,
    /// The answer is larger than `settings.max_body_bytes`.
    #[error("Bad Gateway: the instance metadata service's answer is too large")]
    TooLarge,
}

impl ForwardError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ForwardError::ForwardedFor => StatusCode::FORBIDDEN,
            ForwardError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ForwardError::BadUpstream | ForwardError::Unreachable | ForwardError::TooLarge => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// Reason code for the audit record.
    pub fn code(&self) -> &'static str {
        match self {
            ForwardError::BadUpstream => "ImdsUpstreamMisconfigured",
            ForwardError::ForwardedFor => "ImdsForwardedForRefused",
            ForwardError::Unreachable => "ImdsUpstreamUnreachable",
            ForwardError::Timeout => "ImdsUpstreamTimeout",
            ForwardError::TooLarge => "ImdsUpstreamTooLarge",
        }
    }

    /// The plain-text answer.
    pub fn response(&self) -> Response<Full<Bytes>> {
        text(self.status(), &self.to_string())
    }
}

/// The real IMDS's address, from `http://host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamAddr {
    /// Host to connect to (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The `Host` header sent (`host[:port]` as given, brackets kept).
    pub authority: String,
}

/// Parses `http://host[:port]` (an optional `/` after it; nothing else).
pub fn parse_upstream(url: &str) -> Result<UpstreamAddr, String> {
    let bad = |why: &str| format!("IMDS upstream {url:?}: {why}; want http://host[:port]");
    let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("not http"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(bad("has a path"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("has user info"));
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok(UpstreamAddr {
        host: host.to_owned(),
        port: authority.port_u16().unwrap_or(80),
        authority: authority.as_str().to_owned(),
    })
}

/// Forwards requests to the real IMDS.
#[derive(Clone, Debug)]
pub struct Forwarder {
    upstream: Result<UpstreamAddr, String>,
    timeout: Duration,
    max_body_bytes: usize,
}

/// Aborts the connection task when the request is done or given up.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Forwarder {
    /// A forwarder to `settings.upstream`. A malformed upstream is logged here
    /// and answered with 502 on every request.
    pub fn new(settings: &ImdsSettings) -> Self {
        let upstream = parse_upstream(&settings.upstream);
        if let Err(e) = &upstream {
            tracing::error!(error = %e, "IMDS front cannot forward");
        }
        Forwarder {
            upstream,
            timeout: settings.timeout,
            max_body_bytes: settings.max_body_bytes,
        }
    }

    /// Forward `req` (its method, path and query, and the headers in
    /// [`FORWARDED_REQUEST_HEADERS`]; never its body) and return the answer
    /// (status, body, [`RETURNED_HEADERS`]).
    pub async fn forward<B>(
        &self,
        req: &Request<B>,
    ) -> Result<Response<Full<Bytes>>, ForwardError> {
        if req.method() == Method::PUT && req.headers().contains_key("x-forwarded-for") {
            return Err(ForwardError::ForwardedFor);
        }
        let up = self
            .upstream
            .as_ref()
            .map_err(|_| ForwardError::BadUpstream)?;
        let mut out = Request::builder()
            .method(req.method().clone())
            .uri(
                req.uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned(),
            )
            .header(HOST, up.authority.as_str());
        for name in FORWARDED_REQUEST_HEADERS {
            for v in req.headers().get_all(name) {
                out = out.header(name, v);
            }
        }
        let out = out
            .body(Empty::<Bytes>::new())
            .map_err(|_| ForwardError::Unreachable)?;
        match tokio::time::timeout(self.timeout, self.exchange(up, out)).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(upstream = %up.authority, "IMDS upstream timed out");
                Err(ForwardError::Timeout)
            }
        }
    }

    async fn exchange(
        &self,
        up: &UpstreamAddr,
        out: Request<Empty<Bytes>>,
    ) -> Result<Response<Full<Bytes>>, ForwardError> {
        let fail = |e: &dyn std::fmt::Display| {
            tracing::warn!(upstream = %up.authority, error = %e, "IMDS upstream unreachable");
            ForwardError::Unreachable
        };
        let stream = tokio::net::TcpStream::connect((up.host.as_str(), up.port))
            .await
            .map_err(|e| fail(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(&e))?;
        let _conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let resp = sender.send_request(out).await.map_err(|e| fail(&e))?;
        let (parts, body) = resp.into_parts();
        let body = match Limited::new(body, self.max_body_bytes).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                tracing::warn!(upstream = %up.authority, limit = self.max_body_bytes, "IMDS answer too large");
                return Err(ForwardError::TooLarge);
            }
            Err(e) => return Err(fail(&e)),
        };
        let mut answer = Response::new(Full::new(body));
        *answer.status_mut() = parts.status;
        for name in RETURNED_HEADERS {
            let name = HeaderName::from_static(name);
            for v in parts.headers.get_all(&name) {
                answer.headers_mut().append(name.clone(), v.clone());
            }
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests;
