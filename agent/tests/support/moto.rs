//! moto's server on loopback: the real STS and IAM the tests call.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A `moto_server` child process on loopback (STS, IAM, IMDS paths), killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
    _log: tempfile::NamedTempFile,
}

impl Moto {
    pub fn start() -> Self {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("temp file for moto's log");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.reopen().expect("reopen log")))
            .stderr(Stdio::from(log.reopen().expect("reopen log")))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `moto_server` ({e}). These tests need moto (STS, IAM): \
                     install it with `pip install 'moto[server]'` and make sure \
                     `moto_server` is on PATH"
                )
            });
        let mut moto = Moto {
            child,
            port,
            _log: log,
        };
        moto.wait_ready();
        moto
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "moto_server exited early ({status}); its output:\n{}",
                    std::fs::read_to_string(self._log.path()).unwrap_or_default()
                );
            }
            if http_answers(self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "moto_server did not answer on 127.0.0.1:{} within 60 s",
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server and waits until the port refuses connections.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "port {} still open after kill",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Whether something answers HTTP on the port (moto is up, not just listening).
fn http_answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(s.read(&mut buf), Ok(n) if n >= 5 && buf.starts_with(b"HTTP/"))
}

/// What moto's STS says the served credentials are (`GetCallerIdentity`, the check
/// a pod's client would do).
pub async fn caller_arn(
    moto: &Moto,
    creds: &pod_identity_agent::credentials::Credentials,
) -> String {
    use aws_config::{BehaviorVersion, Region};
    let conf = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(moto.url())
        .credentials_provider(aws_credential_types::Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.expose().to_owned(),
            Some(creds.session_token.expose().to_owned()),
            Some(creds.expiration),
            "served",
        ))
        .build();
    let out = aws_sdk_sts::Client::from_conf(conf)
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity with the served credentials");
    out.arn().expect("caller ARN").to_owned()
}
