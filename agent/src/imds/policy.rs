//! What the IMDS front does with one pod's request: a pure function of the
//! method, the raw path and the settings, failing closed.
//!
//! Paths are not interpreted, only recognised: a path the front would have to
//! decode or normalise to understand (percent-encoding, `//`, `.` or `..`
//! segments, characters outside a plain set) is refused with 400 rather than
//! compared in some normal form the real IMDS might not share. Everything else is
//! split into segments and the role credential families are looked for under any
//! version prefix, case-insensitively, with or without a trailing slash.

use hyper::Method;

use super::settings::ImdsMode;

/// The IMDSv2 session token path (`PUT`).
pub const TOKEN_PATH: &str = "/latest/api/token";

/// Where a pod's request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// To the real IMDS.
    Forward,
    /// 404, as an instance without what was asked for.
    Block404(Blocked),
    /// The pod's own role, in IMDS's form (`pod-role` mode).
    ServePodRole(PodRoleRequest),
    /// 403: `deny` mode.
    Deny403,
    /// 400: a path the front does not take apart (see the module docs).
    BadRequest400,
    /// 405: only `GET`, `HEAD` and the IMDSv2 token `PUT` are allowed.
    MethodNotAllowed405,
}

/// What a 404 hides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// `meta-data/iam/security-credentials[/…]`: the node role.
    Credentials,
    /// `meta-data/identity-credentials[/…]`: the instance identity role.
    IdentityCredentials,
    /// `user-data` (with `block_user_data`).
    UserData,
}

impl Blocked {
    /// Reason code for the audit record.
    pub fn code(self) -> &'static str {
        match self {
            Blocked::Credentials => "ImdsCredentialsBlocked",
            Blocked::IdentityCredentials => "ImdsIdentityCredentialsBlocked",
            Blocked::UserData => "ImdsUserDataBlocked",
        }
    }
}

/// Which pod-role answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodRoleRequest {
    /// `…/security-credentials[/]`: the role's name.
    List,
    /// `…/security-credentials/<name>`: that role's credentials (if it is the
    /// pod's).
    Role(String),
}

/// The path's segments, when the path is in plain form; `None` when it is not.
///
/// Plain: starts with `/`; only ASCII letters, digits and `-._~+=,:@/` (no `;`
/// path parameters, no `%`, no `\`);
/// no empty segment but a single trailing one (`/a/b/`); no `.` or `..` segment.
/// Returns the segments and whether there is a trailing slash.
pub fn segments(path: &str) -> Option<(Vec<&str>, bool)> {
    let rest = path.strip_prefix('/')?;
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._~+=,:@/".contains(&b);
    if !path.bytes().all(plain) {
        return None;
    }
    if rest.is_empty() {
        return Some((Vec::new(), false));
    }
    let (body, trailing) = match rest.strip_suffix('/') {
        Some(b) => (b, true),
        None => (rest, false),
    };
    let segs: Vec<&str> = body.split('/').collect();
    if segs.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return None;
    }
    Some((segs, trailing))
}

/// Where the credential families start in `segs` (lowercased), if anywhere.
fn find_family(segs: &[String], family: &[&str]) -> Option<usize> {
    (0..segs.len()).find(|&i| {
        segs.len() >= i + family.len() && family.iter().zip(&segs[i..]).all(|(f, s)| f == s)
    })
}

/// The decision for a pod's request.
///
/// `off` mode is handled as `block-credentials`: should a connection reach the
/// front anyway, it never hands out the node role.
pub fn classify(method: &Method, path: &str, mode: ImdsMode, block_user_data: bool) -> Decision {
    if mode == ImdsMode::Deny {
        return Decision::Deny403;
    }
    let Some((raw_segs, trailing)) = segments(path) else {
        return Decision::BadRequest400;
    };
    if *method == Method::PUT {
        return if path == TOKEN_PATH {
            Decision::Forward
        } else {
            Decision::MethodNotAllowed405
        };
    }
    if *method != Method::GET && *method != Method::HEAD {
        return Decision::MethodNotAllowed405;
    }
    let segs: Vec<String> = raw_segs.iter().map(|s| s.to_ascii_lowercase()).collect();

    if find_family(&segs, &["meta-data", "identity-credentials"]).is_some() {
        return Decision::Block404(Blocked::IdentityCredentials);
    }
    if let Some(at) = find_family(&segs, &["meta-data", "iam", "security-credentials"]) {
        if mode != ImdsMode::PodRole || at != 1 {
            return Decision::Block404(Blocked::Credentials);
        }
        // `/<version>/meta-data/iam/security-credentials` then at most one name.
        return match &raw_segs[4..] {
            [] => Decision::ServePodRole(PodRoleRequest::List),
            [name] if !trailing => Decision::ServePodRole(PodRoleRequest::Role((*name).into())),
            _ => Decision::Block404(Blocked::Credentials),
        };
    }
    if block_user_data && segs.iter().any(|s| s == "user-data") {
        return Decision::Block404(Blocked::UserData);
    }
    Decision::Forward
}

#[cfg(test)]
mod tests;
