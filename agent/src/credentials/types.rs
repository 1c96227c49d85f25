//! Temporary AWS credentials as the agent holds and serves them.
//!
//! Two jobs: keep the secret parts out of every log line and `Debug` output
//! (invariant 5), and render the exact JSON body the stock EKS Pod Identity Agent
//! answers with, because the SDKs parse it strictly (the Rust SDK rejects an
//! `Expiration` with an offset other than `Z`, or trailing bytes).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A secret string (secret access key, session token).
///
/// `Debug` prints a placeholder and there is deliberately no `Display`, so a
/// secret can only reach a log or a response through an explicit [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call sites are easy to audit: only the response body
    /// and the second STS hop need it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not even the length: a length can tell a session token from a long-term key.
        f.write_str("Secret(<redacted>)")
    }
}

/// Temporary credentials for one role session.
///
/// `Debug` is safe to log: the secret key and the token are [`Secret`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// `ASIA...` key id; fine to log (invariant 5 allows it, it helps CloudTrail lookups).
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Secret,
    pub expiration: SystemTime,
    /// Account of the assumed role, served as `AccountId` (newer SDKs use it for
    /// account-based endpoints).
    pub account_id: Option<String>,
    /// `arn:aws:sts::<account>:assumed-role/<role>/<session>`.
    pub assumed_role_arn: String,
}

/// Field order of the stock agent's body; serde_json keeps struct order.
#[derive(serde::Serialize)]
struct SdkBody<'a> {
    #[serde(rename = "AccessKeyId")]
    access_key_id: &'a str,
    #[serde(rename = "SecretAccessKey")]
    secret_access_key: &'a str,
    #[serde(rename = "Token")]
    token: &'a str,
    #[serde(rename = "AccountId", skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
    #[serde(rename = "Expiration")]
    expiration: String,
}

impl Credentials {
    /// The `200` body of `GET /v1/credentials`, byte for byte as the stock agent
    /// writes it: `{"AccessKeyId":..,"SecretAccessKey":..,"Token":..,"AccountId":..,"Expiration":"2023-07-13T20:49:35Z"}`,
    /// `AccountId` left out when unknown, no trailing newline.
    pub fn to_sdk_json(&self) -> String {
        let body = SdkBody {
            access_key_id: &self.access_key_id,
            secret_access_key: self.secret_access_key.expose(),
            token: self.session_token.expose(),
            account_id: self.account_id.as_deref().filter(|a| !a.is_empty()),
            expiration: rfc3339_utc(self.expiration),
        };
        // Serialising borrowed strings and a String into a Vec cannot fail.
        serde_json::to_string(&body).unwrap_or_default()
    }

    /// Time left before expiry as seen at `now`; zero once expired.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expiration
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }
}

/// Account id (5th field) of an ARN such as `arn:aws:sts::111122223333:assumed-role/r/s`.
///
/// `None` unless the ARN has the `arn:partition:service:region:account:resource`
/// shape and the account is all digits (as the stock agent, which omits
/// `AccountId` when it cannot parse one).
pub fn account_id_from_arn(arn: &str) -> Option<String> {
    let mut parts = arn.splitn(6, ':');
    if parts.next()? != "arn" {
        return None;
    }
    let _partition = parts.next().filter(|p| !p.is_empty())?;
    let _service = parts.next().filter(|s| !s.is_empty())?;
    let _region = parts.next()?;
    let account = parts.next()?;
    let _resource = parts.next().filter(|r| !r.is_empty())?;
    if account.is_empty() || !account.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(account.to_owned())
}

/// The role ARN of an assumed-role ARN:
/// `arn:aws:sts::111122223333:assumed-role/r/s` → `arn:aws:iam::111122223333:role/r`
/// (an assumed-role ARN drops the role's path, so this one has none). `None` for
/// anything else.
pub fn role_arn_from_assumed(arn: &str) -> Option<String> {
    let (head, resource) = arn.rsplit_once(':')?;
    let mut parts = head.splitn(5, ':');
    let (Some("arn"), Some(partition), Some("sts"), Some(_region), Some(account)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let mut r = resource.splitn(3, '/');
    let (Some("assumed-role"), Some(role), Some(_session)) = (r.next(), r.next(), r.next()) else {
        return None;
    };
    if role.is_empty() || account.is_empty() {
        return None;
    }
    Some(format!("arn:{partition}:iam::{account}:role/{role}"))
}

/// RFC 3339 in UTC with a `Z` and whole seconds (sub-seconds cut, never rounded up,
/// so the served expiry is never later than the real one). Times before 1970
/// cannot come from STS; they print as the epoch.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`, restricted to non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Credentials {
        Credentials {
            access_key_id: "ASIAEXAMPLEKEY".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"),
            session_token: Secret::new("IQoJb3JpZ2luX2VjE///token=="),
            // 2023-07-13T20:49:35Z
            expiration: UNIX_EPOCH + Duration::from_secs(1_689_281_375),
            account_id: Some("111122223333".into()),
            assumed_role_arn: "arn:aws:sts::111122223333:assumed-role/r/s".into(),
        }
    }

    #[test]
    fn sdk_json_is_byte_exact() {
        assert_eq!(
            sample().to_sdk_json(),
            r#"{"AccessKeyId":"ASIAEXAMPLEKEY","SecretAccessKey":"wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY","Token":"IQoJb3JpZ2luX2VjE///token==","AccountId":"111122223333","Expiration":"2023-07-13T20:49:35Z"}"#
        );
    }

    #[test]
    fn sdk_json_omits_unknown_account_and_cuts_subseconds() {
        let mut c = sample();
        c.account_id = None;
        c.expiration += Duration::from_millis(999);
        assert_eq!(
            c.to_sdk_json(),
            r#"{"AccessKeyId":"ASIAEXAMPLEKEY","SecretAccessKey":"wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY","Token":"IQoJb3JpZ2luX2VjE///token==","Expiration":"2023-07-13T20:49:35Z"}"#
        );
        c.account_id = Some(String::new());
        assert!(!c.to_sdk_json().contains("AccountId"));
    }

    #[test]
    fn sdk_json_escapes_and_parses_back() {
        let mut c = sample();
        c.session_token = Secret::new("a\"b\\c\nd");
        let json = c.to_sdk_json();
        assert!(json.contains(r#""Token":"a\"b\\c\nd""#), "{json}");
        assert!(!json.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["Token"], "a\"b\\c\nd");
        assert_eq!(v["Expiration"], "2023-07-13T20:49:35Z");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = sample();
        for s in [format!("{c:?}"), format!("{c:#?}")] {
            assert!(!s.contains("wJalrXUtnFEMI"), "{s}");
            assert!(!s.contains("IQoJb3JpZ2lu"), "{s}");
            assert!(s.contains("ASIAEXAMPLEKEY"), "{s}");
            assert!(s.contains("<redacted>"), "{s}");
        }
        assert_eq!(format!("{:?}", Secret::new("x")), "Secret(<redacted>)");
    }

    #[test]
    fn account_id_parsing() {
        assert_eq!(
            account_id_from_arn("arn:aws:sts::111122223333:assumed-role/my-role/eks-c-p-1")
                .as_deref(),
            Some("111122223333")
        );
        assert_eq!(
            account_id_from_arn("arn:aws-cn:iam::123456789012:role/path/r").as_deref(),
            Some("123456789012")
        );
        assert_eq!(account_id_from_arn("arn:aws:s3:::bucket"), None);
        assert_eq!(
            account_id_from_arn("arn:aws:sts::notdigits:assumed-role/r/s"),
            None
        );
        assert_eq!(account_id_from_arn("not-an-arn"), None);
        assert_eq!(account_id_from_arn(""), None);
        assert_eq!(account_id_from_arn("arn:aws:sts::111122223333:"), None);
    }

    #[test]
    fn role_of_an_assumed_role() {
        assert_eq!(
            role_arn_from_assumed("arn:aws:sts::111122223333:assumed-role/s3-role/eks-c-p-1")
                .as_deref(),
            Some("arn:aws:iam::111122223333:role/s3-role")
        );
        assert_eq!(
            role_arn_from_assumed("arn:aws-cn:sts::111122223333:assumed-role/r/s").as_deref(),
            Some("arn:aws-cn:iam::111122223333:role/r")
        );
        for bad in [
            "arn:aws:iam::111122223333:role/r",
            "arn:aws:sts::111122223333:assumed-role/r",
            "arn:aws:sts::111122223333:federated-user/u",
            "",
        ] {
            assert_eq!(role_arn_from_assumed(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // Leap day and end of a leap year.
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(1_735_689_599)),
            "2024-12-31T23:59:59Z"
        );
    }

    #[test]
    fn remaining_saturates() {
        let c = sample();
        let t = c.expiration;
        assert_eq!(
            c.remaining(t - Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(c.remaining(t + Duration::from_secs(60)), Duration::ZERO);
    }
}
