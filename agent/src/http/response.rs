//! Responses shaped like the stock agent's, and the request's `Host`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    header::{HeaderValue, CONTENT_TYPE},
    Request, Response, StatusCode,
};

/// A plain-text response like the stock agent's: message plus newline.
pub fn text(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// A JSON response, body as given (no trailing newline).
pub fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The `Host` header without port or brackets, lowercased.
pub fn host_of<B>(req: &Request<B>) -> Option<String> {
    let raw = req
        .headers()
        .get(hyper::header::HOST)?
        .to_str()
        .ok()?
        .trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if raw.matches(':').count() == 1 {
        raw.split(':').next().unwrap_or("")
    } else {
        raw
    };
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str) -> Request<()> {
        Request::builder().header("host", host).body(()).unwrap()
    }

    #[test]
    fn host_strips_port_and_brackets() {
        assert_eq!(host_of(&req("169.254.170.23")).unwrap(), "169.254.170.23");
        assert_eq!(
            host_of(&req("169.254.170.23:80")).unwrap(),
            "169.254.170.23"
        );
        assert_eq!(host_of(&req("[fd00:ec2::23]:80")).unwrap(), "fd00:ec2::23");
        assert_eq!(host_of(&req("[FD00:EC2::23]")).unwrap(), "fd00:ec2::23");
        assert_eq!(host_of(&req("fd00:ec2::23")).unwrap(), "fd00:ec2::23");
        assert!(host_of(&Request::new(())).is_none());
    }

    #[test]
    fn text_has_stock_headers() {
        let r = text(StatusCode::FORBIDDEN, "nope");
        assert_eq!(r.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }
}
