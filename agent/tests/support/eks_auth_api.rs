//! A **stand-in** for EKS Auth (`AssumeRoleForPodIdentity`): an in-process hyper
//! server on 127.0.0.1, for `eks_auth_standin.rs`. It is not EKS Auth; nothing here
//! talks to AWS.
//!
//! It answers the one operation of the eks-auth 2023-11-26 model (restJson1):
//!
//! * `POST /clusters/{clusterName}/assume-role-for-pod-identity`, body
//!   `{"token": "<JWT>"}` (and optionally `eksNodeName`, `instanceId`, `zone`),
//!   signed with SigV4 for `eks-auth`;
//! * `200`: `{"subject": {namespace, serviceAccount}, "audience",
//!   "podIdentityAssociation": {associationArn, associationId}, "assumedRoleUser":
//!   {arn, assumeRoleId}, "credentials": {sessionToken, secretAccessKey,
//!   accessKeyId, expiration (epoch seconds, a number)}}` (names and types as
//!   aws-sdk-eksauth's deserializers read them);
//! * errors: the model's status, `x-amzn-errortype: <Code>`, `x-amzn-requestid`
//!   and `{"message": …}`: `AccessDeniedException`, `ExpiredTokenException`,
//!   `InvalidParameterException`, `InvalidRequestException`,
//!   `InvalidTokenException` (400), `ResourceNotFoundException` (404),
//!   `ThrottlingException` (429), `InternalServerException` (500),
//!   `ServiceUnavailableException` (503).
//!
//! What it checks, in EKS Auth's order, before any credentials exist:
//!
//! 1. the request is signed for `eks-auth` (the scope only; the signature bytes
//!    are not recomputed) and names this cluster;
//! 2. the token is an RS256 JWT whose signature verifies against the public key of
//!    the test's "API server" ([`TokenIssuer`]), with the expected `kid` and
//!    issuer (else `InvalidToken`); audience `pods.eks.amazonaws.com` (else
//!    `InvalidToken`); not expired (else `ExpiredToken`), not valid only later;
//!    the `kubernetes.io` claims present and agreeing with `sub`;
//! 3. an association exists for the token's (namespace, service account) in the
//!    stand-in's own table (else `ResourceNotFound`, 404);
//! 4. the role's trust policy, read from moto's IAM (`GetRole`), lets the service
//!    principal `pods.eks.amazonaws.com` do both `sts:AssumeRole` and
//!    `sts:TagSession` (else `AccessDenied`). Evaluated: `Effect`, `Principal`
//!    (`"*"` or `Service`), `Action` (string or list, `*` wildcards), and a `Deny`
//!    wins; an `Allow` with a `Condition` (or `NotAction`, `NotPrincipal`) does not
//!    count, since the stand-in cannot evaluate it: it fails closed;
//! 5. then moto's STS `AssumeRole` gives the credentials: 6 h, the six EKS session
//!    tags (all transitive) and an EKS session name `eks-<cluster>-<pod>-<uuid>`
//!    cut to 64 characters by shortening the pod name.
//!
//! Tests can make it throttle, fail with 500 or 503, or answer slowly, and read what
//! it was asked and what it asked STS.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region};
use aws_lc_rs::signature::{self, KeyPair as _, RsaKeyPair, UnparsedPublicKey};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

/// The audience of pod identity tokens, and the service principal roles trust.
pub const AUDIENCE: &str = "pods.eks.amazonaws.com";
/// The cluster the stand-in serves.
pub const CLUSTER: &str = "test-cluster";
pub const REGION: &str = "us-east-1";
/// moto's default account.
pub const ACCOUNT: &str = "123456789012";
/// The cluster's service-account issuer (an EKS-shaped OIDC URL).
pub const ISSUER: &str =
    "https://oidc.eks.us-east-1.amazonaws.com/id/5A1E0C1D2B3F4A5E6D7C8B9A0F1E2D3C";
/// Session duration EKS Auth gives a plain association.
pub const SESSION_SECS: i32 = 21_600;
/// STS's limit on session names.
const SESSION_NAME_MAX: usize = 64;

/// The trust policy EKS Pod Identity roles carry.
pub fn pod_identity_trust_policy() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": AUDIENCE},
            "Action": ["sts:AssumeRole", "sts:TagSession"]
        }]
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64url(bytes: &[u8]) -> String {
    aws_smithy_types::base64::encode(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut std_b64: String = s
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !std_b64.len().is_multiple_of(4) {
        std_b64.push('=');
    }
    aws_smithy_types::base64::decode(&std_b64).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// === the test's "API server": it signs projected service-account tokens ===

/// The claims of a projected service-account token, as the kubelet asks the API
/// server for them; change fields to make bad tokens.
#[derive(Clone, Debug)]
pub struct PodTokenClaims {
    pub issuer: String,
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub audience: Vec<String>,
    pub issued_at: u64,
    pub not_before: u64,
    pub expires_at: u64,
}

impl PodTokenClaims {
    /// A token for pod `namespace/pod_name` (UID `pod_uid`) running as
    /// `service_account`: audience `pods.eks.amazonaws.com`, issued now, valid
    /// 24 h, as the EKS webhook's projected volume asks.
    pub fn new(namespace: &str, service_account: &str, pod_name: &str, pod_uid: &str) -> Self {
        let now = unix_now();
        Self {
            issuer: ISSUER.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
            service_account_uid: "3f0c9a2e-7d41-4b8e-9a56-1c2d3e4f5a6b".into(),
            pod_name: pod_name.into(),
            pod_uid: pod_uid.into(),
            audience: vec![AUDIENCE.into()],
            issued_at: now,
            not_before: now,
            expires_at: now + 86_400,
        }
    }

    /// The JWT payload, as the API server writes it.
    pub fn to_json(&self) -> Value {
        json!({
            "aud": self.audience,
            "exp": self.expires_at,
            "iat": self.issued_at,
            "iss": self.issuer,
            "kubernetes.io": {
                "namespace": self.namespace,
                "pod": {"name": self.pod_name, "uid": self.pod_uid},
                "serviceaccount": {"name": self.service_account, "uid": self.service_account_uid}
            },
            "nbf": self.not_before,
            "sub": format!("system:serviceaccount:{}:{}", self.namespace, self.service_account)
        })
    }
}

/// The cluster's token signer: an RSA-2048 key generated per test (RS256, as the
/// API server signs service-account tokens).
pub struct TokenIssuer {
    key: RsaKeyPair,
    kid: String,
}

impl TokenIssuer {
    pub fn generate() -> Self {
        let key = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
        // EKS key ids are 40 hex digits.
        let kid = hex(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            key.public_key().as_ref(),
        )
        .as_ref());
        Self { key, kid }
    }

    /// The public key (DER `RSAPublicKey`), what EKS Auth fetches from the
    /// cluster's JWKS.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// This key, claiming another key's id: what a forger without the API
    /// server's private key can do.
    pub fn with_kid(mut self, kid: &str) -> Self {
        self.kid = kid.to_owned();
        self
    }

    /// A signed JWT with `payload`.
    pub fn sign(&self, payload: &Value) -> String {
        let header = json!({"alg": "RS256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(payload.to_string().as_bytes())
        );
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .expect("RS256 signature");
        format!("{input}.{}", b64url(&sig))
    }

    pub fn mint(&self, claims: &PodTokenClaims) -> String {
        self.sign(&claims.to_json())
    }

    /// A valid pod identity token for the pod.
    pub fn pod_token(&self, namespace: &str, sa: &str, pod_name: &str, pod_uid: &str) -> String {
        self.mint(&PodTokenClaims::new(namespace, sa, pod_name, pod_uid))
    }
}

// === the stand-in ===

/// An association in the stand-in's table.
#[derive(Clone, Debug)]
pub struct Association {
    pub id: String,
    pub arn: String,
    pub role_arn: String,
}

/// A request as it arrived.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub request_id: String,
    pub cluster: String,
    /// `<region>/<service>` of the SigV4 credential scope, if signed.
    pub signed_for: Option<String>,
    pub node_name: Option<String>,
}

/// What the stand-in answered.
#[derive(Clone, Debug)]
pub struct Answer {
    pub request_id: String,
    pub status: u16,
    /// The error code, for errors.
    pub code: Option<String>,
}

/// What the stand-in asked moto's STS.
#[derive(Clone, Debug)]
pub struct AssumeRoleCall {
    pub role_arn: String,
    pub session_name: String,
    pub duration_secs: i32,
    pub tags: Vec<(String, String)>,
    pub transitive_tag_keys: Vec<String>,
}

/// Ways to misbehave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 500 `InternalServerException`.
    InternalServer,
    /// 503 `ServiceUnavailableException`.
    ServiceUnavailable,
}

/// What tests change and inspect through [`EksAuthApi::lock`].
#[derive(Default)]
pub struct State {
    /// By (namespace, service account).
    associations: BTreeMap<(String, String), Association>,
    pub arrivals: Vec<Arrival>,
    pub answers: Vec<Answer>,
    pub assume_role_calls: Vec<AssumeRoleCall>,
    /// Answer 429 `ThrottlingException`.
    pub throttling: bool,
    /// Answer with a server error.
    pub failing: Option<Failure>,
    /// Wait this long before answering.
    pub delay: Duration,
}

struct Upstream {
    iam: aws_sdk_iam::Client,
    sts: aws_sdk_sts::Client,
    /// The API server's key (`RSAPublicKey` DER) and key id.
    public_key: Vec<u8>,
    kid: String,
}

/// The EKS Auth stand-in, on a loopback port.
#[derive(Clone)]
pub struct EksAuthApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    upstream: Arc<Upstream>,
}

/// An error answer: the modeled code and a message.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn api_error(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::from_u16(status).unwrap(),
        code,
        message: message.into(),
    }
}

fn invalid_token(message: impl Into<String>) -> ApiError {
    api_error(400, "InvalidTokenException", message)
}

fn access_denied() -> ApiError {
    api_error(
        400,
        "AccessDeniedException",
        "Unauthorized Exception! EKS does not have permissions to assume the associated role.",
    )
}

impl EksAuthApi {
    /// Start the stand-in; it trusts tokens signed by `issuer` and uses moto (IAM
    /// and STS) at `moto_url`.
    pub async fn start(moto_url: &str, issuer: &TokenIssuer) -> Self {
        Self::start_on("127.0.0.1:0", moto_url, issuer).await
    }

    /// As [`EksAuthApi::start`], listening on `addr` (the demo and the node tests
    /// run it inside the simulated node's network namespace).
    pub async fn start_on(addr: &str, moto_url: &str, issuer: &TokenIssuer) -> Self {
        // The EKS service's own credentials towards IAM and STS (moto accepts any).
        let creds = aws_credential_types::Credentials::new(
            "AKIAEKSAUTHSTANDIN01",
            "eks-auth-stand-in-secret",
            None,
            None,
            "eks-auth-stand-in",
        );
        let iam = aws_sdk_iam::Client::from_conf(
            aws_sdk_iam::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new(REGION))
                .endpoint_url(moto_url)
                .credentials_provider(creds.clone())
                .build(),
        );
        let sts = aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new(REGION))
                .endpoint_url(moto_url)
                .credentials_provider(creds)
                .build(),
        );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("binding the EKS Auth stand-in on {addr}: {e}"));
        let api = EksAuthApi {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            upstream: Arc::new(Upstream {
                iam,
                sts,
                public_key: issuer.public_key(),
                kid: issuer.kid().to_owned(),
            }),
        };
        let a = api.clone();
        pod_identity_agent::testing::serve(listener, move |req| {
            let a = a.clone();
            async move { a.handle(req).await }
        });
        api
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Associate `namespace/service_account` with `role_arn` (replacing any).
    pub fn associate(&self, namespace: &str, service_account: &str, role_arn: &str) -> Association {
        let id = format!("a-{}", &uuid::Uuid::new_v4().simple().to_string()[..17]);
        let assoc = Association {
            arn: format!("arn:aws:eks:{REGION}:{ACCOUNT}:podidentityassociation/{CLUSTER}/{id}"),
            id,
            role_arn: role_arn.to_owned(),
        };
        self.lock().associations.insert(
            (namespace.to_owned(), service_account.to_owned()),
            assoc.clone(),
        );
        assoc
    }

    /// A role in moto's IAM with `trust_policy`; returns its ARN.
    pub async fn create_role(&self, name: &str, trust_policy: &Value) -> String {
        let out = self
            .upstream
            .iam
            .create_role()
            .role_name(name)
            .assume_role_policy_document(trust_policy.to_string())
            .send()
            .await
            .expect("CreateRole in moto");
        out.role().expect("role").arn().to_owned()
    }

    /// Requests that arrived so far.
    pub fn arrivals(&self) -> usize {
        self.lock().arrivals.len()
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let result = self.answer(&parts, &body, &request_id).await;
        let (status, code, bytes) = match &result {
            Ok(v) => (StatusCode::OK, None, serde_json::to_vec(v).unwrap()),
            Err(e) => (
                e.status,
                Some(e.code),
                serde_json::to_vec(&json!({ "message": e.message })).unwrap(),
            ),
        };
        self.lock().answers.push(Answer {
            request_id: request_id.clone(),
            status: status.as_u16(),
            code: code.map(str::to_owned),
        });
        let mut resp = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("x-amzn-requestid", &request_id);
        if let Some(code) = code {
            resp = resp.header("x-amzn-errortype", code);
        }
        resp.body(Full::new(Bytes::from(bytes))).unwrap()
    }

    async fn answer(
        &self,
        parts: &hyper::http::request::Parts,
        body: &[u8],
        request_id: &str,
    ) -> Result<Value, ApiError> {
        let path = parts.uri.path();
        let cluster = match path
            .strip_prefix("/clusters/")
            .and_then(|rest| rest.strip_suffix("/assume-role-for-pod-identity"))
        {
            Some(c) if parts.method == hyper::Method::POST && !c.contains('/') => c.to_owned(),
            _ => {
                return Err(api_error(
                    404,
                    "UnknownOperationException",
                    format!("{} {path}", parts.method),
                ))
            }
        };
        let auth = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // Credential=<key id>/<date>/<region>/<service>/aws4_request
        let signed_for = auth
            .strip_prefix("AWS4-HMAC-SHA256 Credential=")
            .and_then(|c| c.split([',', ' ']).next())
            .and_then(|scope| {
                let p: Vec<&str> = scope.split('/').collect();
                (p.len() == 5 && p[4] == "aws4_request").then(|| format!("{}/{}", p[2], p[3]))
            });
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let (delay, throttling, failing) = {
            let mut st = self.lock();
            st.arrivals.push(Arrival {
                request_id: request_id.to_owned(),
                cluster: cluster.clone(),
                signed_for: signed_for.clone(),
                node_name: request["eksNodeName"].as_str().map(str::to_owned),
            });
            (st.delay, st.throttling, st.failing)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match signed_for.as_deref() {
            None => {
                return Err(api_error(
                    403,
                    "MissingAuthenticationTokenException",
                    "Missing Authentication Token",
                ))
            }
            Some(s) if s != format!("{REGION}/eks-auth") => {
                return Err(api_error(
                    403,
                    "InvalidSignatureException",
                    format!("Credential should be scoped to correct service: 'eks-auth', not {s}"),
                ))
            }
            Some(_) => {}
        }
        if throttling {
            return Err(api_error(429, "ThrottlingException", "Rate exceeded"));
        }
        match failing {
            Some(Failure::InternalServer) => {
                return Err(api_error(
                    500,
                    "InternalServerException",
                    "These errors are usually caused by a server-side issue.",
                ))
            }
            Some(Failure::ServiceUnavailable) => {
                return Err(api_error(
                    503,
                    "ServiceUnavailableException",
                    "The service is unavailable. Back off and retry the operation.",
                ))
            }
            None => {}
        }
        if cluster != CLUSTER {
            return Err(api_error(
                404,
                "ResourceNotFoundException",
                format!("No cluster found for name: {cluster}."),
            ));
        }
        let token = request["token"].as_str().unwrap_or_default();
        if !jwt_shaped(token) {
            return Err(api_error(
                400,
                "InvalidParameterException",
                "The token parameter is missing or is not a JWT.",
            ));
        }
        let claims = self.verify(token)?;
        let k8s = &claims["kubernetes.io"];
        let namespace = k8s["namespace"].as_str().unwrap_or_default();
        let sa = k8s["serviceaccount"]["name"].as_str().unwrap_or_default();
        let pod_name = k8s["pod"]["name"].as_str().unwrap_or_default();
        let pod_uid = k8s["pod"]["uid"].as_str().unwrap_or_default();
        let Some(assoc) = self
            .lock()
            .associations
            .get(&(namespace.to_owned(), sa.to_owned()))
            .cloned()
        else {
            return Err(api_error(
                404,
                "ResourceNotFoundException",
                format!(
                    "No Pod Identity Association found for service account {sa} in namespace {namespace} of cluster {CLUSTER}."
                ),
            ));
        };
        self.check_trust(&assoc.role_arn).await?;

        let session_name = session_name(CLUSTER, pod_name);
        let tags = vec![
            (
                "eks-cluster-arn".to_owned(),
                format!("arn:aws:eks:{REGION}:{ACCOUNT}:cluster/{CLUSTER}"),
            ),
            ("eks-cluster-name".to_owned(), CLUSTER.to_owned()),
            ("kubernetes-namespace".to_owned(), namespace.to_owned()),
            ("kubernetes-service-account".to_owned(), sa.to_owned()),
            ("kubernetes-pod-name".to_owned(), pod_name.to_owned()),
            ("kubernetes-pod-uid".to_owned(), pod_uid.to_owned()),
        ];
        let mut call = self
            .upstream
            .sts
            .assume_role()
            .role_arn(&assoc.role_arn)
            .role_session_name(&session_name)
            .duration_seconds(SESSION_SECS);
        for (k, v) in &tags {
            call = call
                .tags(
                    aws_sdk_sts::types::Tag::builder()
                        .key(k)
                        .value(v)
                        .build()
                        .unwrap(),
                )
                .transitive_tag_keys(k);
        }
        self.lock().assume_role_calls.push(AssumeRoleCall {
            role_arn: assoc.role_arn.clone(),
            session_name: session_name.clone(),
            duration_secs: SESSION_SECS,
            transitive_tag_keys: tags.iter().map(|(k, _)| k.clone()).collect(),
            tags,
        });
        let out = call.send().await.map_err(|e| {
            use aws_sdk_sts::error::ProvideErrorMetadata;
            if e.code() == Some("AccessDenied") {
                access_denied()
            } else {
                api_error(
                    500,
                    "InternalServerException",
                    format!(
                        "STS AssumeRole failed: {}",
                        aws_sdk_sts::error::DisplayErrorContext(&e)
                    ),
                )
            }
        })?;
        let creds = out.credentials.expect("moto's AssumeRole credentials");
        let user = out.assumed_role_user.expect("moto's AssumedRoleUser");
        Ok(json!({
            "subject": {"namespace": namespace, "serviceAccount": sa},
            "audience": AUDIENCE,
            "podIdentityAssociation": {"associationArn": assoc.arn, "associationId": assoc.id},
            "assumedRoleUser": {"arn": user.arn, "assumeRoleId": user.assumed_role_id},
            "credentials": {
                "sessionToken": creds.session_token,
                "secretAccessKey": creds.secret_access_key,
                "accessKeyId": creds.access_key_id,
                "expiration": creds.expiration.secs(),
            }
        }))
    }

    /// Signature, issuer, audience, lifetime and Kubernetes claims of a pod token.
    fn verify(&self, token: &str) -> Result<Value, ApiError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid_token("Token is not a JWT."));
        };
        let header: Value = b64url_decode(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| invalid_token("Token header is not valid."))?;
        if header["alg"] != "RS256" {
            return Err(invalid_token("Token signing algorithm is not supported."));
        }
        if header["kid"] != self.upstream.kid.as_str() {
            return Err(invalid_token("Token key id is unknown."));
        }
        let sig = b64url_decode(s).ok_or_else(|| invalid_token("Token signature is not valid."))?;
        UnparsedPublicKey::new(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            &self.upstream.public_key,
        )
        .verify(format!("{h}.{p}").as_bytes(), &sig)
        .map_err(|_| invalid_token("Token signature verification failed."))?;
        let claims: Value = b64url_decode(p)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| invalid_token("Token payload is not valid."))?;
        if claims["iss"] != ISSUER {
            return Err(invalid_token("Token issuer is not valid for this cluster."));
        }
        let aud_ok = match &claims["aud"] {
            Value::String(a) => a == AUDIENCE,
            Value::Array(a) => a.iter().any(|x| x == AUDIENCE),
            _ => false,
        };
        if !aud_ok {
            return Err(invalid_token(format!("Token audience is not {AUDIENCE}.")));
        }
        let now = unix_now();
        match claims["exp"].as_u64() {
            None => return Err(invalid_token("Token has no expiration.")),
            Some(exp) if exp <= now => {
                return Err(api_error(400, "ExpiredTokenException", "Token is expired."))
            }
            Some(_) => {}
        }
        if claims["nbf"].as_u64().is_some_and(|nbf| nbf > now + 60) {
            return Err(invalid_token("Token is not valid yet."));
        }
        let k8s = &claims["kubernetes.io"];
        let present = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
        if ![
            &k8s["namespace"],
            &k8s["serviceaccount"]["name"],
            &k8s["serviceaccount"]["uid"],
            &k8s["pod"]["name"],
            &k8s["pod"]["uid"],
        ]
        .into_iter()
        .all(present)
        {
            return Err(invalid_token("Token lacks Kubernetes pod claims."));
        }
        let sub = format!(
            "system:serviceaccount:{}:{}",
            k8s["namespace"].as_str().unwrap_or_default(),
            k8s["serviceaccount"]["name"].as_str().unwrap_or_default()
        );
        if claims["sub"] != sub.as_str() {
            return Err(invalid_token("Token subject does not match its claims."));
        }
        Ok(claims)
    }

    /// Whether the role trusts `pods.eks.amazonaws.com` with `sts:AssumeRole` and
    /// `sts:TagSession`, from the trust policy in moto's IAM.
    async fn check_trust(&self, role_arn: &str) -> Result<(), ApiError> {
        let name = role_arn.rsplit('/').next().unwrap_or_default();
        let out = self
            .upstream
            .iam
            .get_role()
            .role_name(name)
            .send()
            .await
            .map_err(|e| {
                use aws_sdk_iam::error::ProvideErrorMetadata;
                if e.code() == Some("NoSuchEntity") {
                    access_denied()
                } else {
                    api_error(
                        500,
                        "InternalServerException",
                        format!(
                            "IAM GetRole failed: {}",
                            aws_sdk_iam::error::DisplayErrorContext(&e)
                        ),
                    )
                }
            })?;
        let doc = out
            .role()
            .and_then(|r| r.assume_role_policy_document())
            .map(percent_decode)
            .and_then(|d| serde_json::from_str::<Value>(&d).ok())
            .unwrap_or(Value::Null);
        if trusts(&doc, AUDIENCE, "sts:AssumeRole") && trusts(&doc, AUDIENCE, "sts:TagSession") {
            Ok(())
        } else {
            Err(access_denied())
        }
    }
}

/// The JwtToken shape's pattern: `[A-Za-z0-9-_=]+\.[A-Za-z0-9-_=]+\.[A-Za-z0-9-_=]+`.
fn jwt_shaped(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
        })
}

/// IAM returns policy documents URL-encoded (RFC 3986).
pub fn percent_decode(s: &str) -> String {
    let hexval = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let decoded = (b[i] == b'%' && i + 2 < b.len())
            .then(|| Some(hexval(b[i + 1])? * 16 + hexval(b[i + 2])?))
            .flatten();
        match decoded {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A string or a list of strings, as policy elements are.
fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// IAM's case-insensitive match with `*` and `?` wildcards.
fn wildcard_match(pattern: &str, value: &str) -> bool {
    fn go(p: &[u8], v: &[u8]) -> bool {
        match (p.first(), v.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], v) || (!v.is_empty() && go(p, &v[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &v[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &v[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), value.as_bytes())
}

/// Whether trust policy `doc` lets service principal `service` perform `action`.
pub fn trusts(doc: &Value, service: &str, action: &str) -> bool {
    let statements: Vec<&Value> = match &doc["Statement"] {
        Value::Array(a) => a.iter().collect(),
        s @ Value::Object(_) => vec![s],
        _ => Vec::new(),
    };
    let applies = |s: &Value| {
        let principal = &s["Principal"];
        let principal_ok = principal == "*"
            || strings(&principal["Service"])
                .iter()
                .any(|p| p.eq_ignore_ascii_case(service));
        principal_ok
            && strings(&s["Action"])
                .iter()
                .any(|a| wildcard_match(a, action))
    };
    let allowed = statements.iter().any(|s| {
        s["Effect"] == "Allow"
            && s.get("Condition").is_none()
            && s.get("NotAction").is_none()
            && s.get("NotPrincipal").is_none()
            && applies(s)
    });
    let denied = statements
        .iter()
        .any(|s| s["Effect"] == "Deny" && applies(s));
    allowed && !denied
}

/// `eks-<cluster>-<pod>-<uuid>`, the pod name shortened to fit STS's 64 characters.
pub fn session_name(cluster: &str, pod_name: &str) -> String {
    let id = uuid::Uuid::new_v4().hyphenated().to_string();
    let fixed = "eks-".len() + cluster.len() + 1 + 1 + id.len();
    let pod: String = pod_name
        .chars()
        .take(SESSION_NAME_MAX.saturating_sub(fixed))
        .collect();
    let name = format!("eks-{cluster}-{pod}-{id}");
    assert!(name.len() <= SESSION_NAME_MAX, "{name}");
    name
}
