//! What the agent answers on the credentials endpoint.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};

use crate::{
    config::Config,
    server::{json, text, Handler, RequestContext, Unattributed},
};

/// The credentials endpoint.
pub struct Service {
    cfg: Config,
}

impl Service {
    pub fn new(cfg: Config) -> Self {
        Service { cfg }
    }

    fn valid_host(&self, host: &str) -> bool {
        host == self.cfg.kernel.cred_addr4.to_string() || host == self.cfg.kernel.cred_addr6.to_string()
    }
}

impl Handler for Service {
    async fn handle(&self, ctx: RequestContext, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let caller = match &ctx.caller {
            Ok(c) => c,
            Err(Unattributed::NoRecord) => {
                tracing::warn!(peer = %ctx.peer, "refused: connection not attributed by the kernel");
                return text(
                    StatusCode::FORBIDDEN,
                    "Access Denied. The kernel has no record of this connection: call http://169.254.170.23/v1/credentials from a pod on this node",
                );
            }
            Err(Unattributed::LookupFailed(e)) => {
                tracing::error!(peer = %ctx.peer, error = %e, "attribution lookup failed");
                return text(StatusCode::INTERNAL_SERVER_ERROR, "Internal error: attribution lookup failed");
            }
        };
        let host = crate::server::host_of(&req).unwrap_or_default();
        if !self.valid_host(&host) {
            return text(
                StatusCode::FORBIDDEN,
                &format!(
                    "Access Denied. Called agent through invalid address, please use either [{} {}] address not {host}",
                    self.cfg.kernel.cred_addr4, self.cfg.kernel.cred_addr6
                ),
            );
        }
        match req.uri().path() {
            "/v1/whoami" | "/v1/credentials" => json(
                StatusCode::OK,
                serde_json::to_string(caller).unwrap_or_default(),
            ),
            _ => text(StatusCode::NOT_FOUND, "404 page not found"),
        }
    }
}
