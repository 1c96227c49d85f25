//! The EKS Auth **stand-in** (`tests/support/eks_auth_api.rs`) as a process, for the
//! demo and the node tests, where the agent runs in the simulated node's network
//! namespace and must reach it there. It is not EKS Auth; nothing here talks to AWS.
//!
//! ```text
//! eks_auth_standin --listen 127.0.0.1:5080 --moto http://169.254.199.1:5000 \
//!     --token-dir DIR [--role NAME]... [--associate NS/SA=ROLE]... [--pod NAME:UID:NS:SA]...
//! ```
//!
//! * `--role NAME`: a role in moto's IAM with the EKS Pod Identity trust policy.
//! * `--associate NS/SA=ROLE`: an association of the service account with the role.
//! * `--pod NAME:UID:NS:SA`: a projected token for the pod, signed by the stand-in's
//!   "API server" key, written to `DIR/NAME`.
//!
//! Prints `EKS Auth stand-in ready on <url>` once serving; serves until killed.

#[path = "../tests/support/eks_auth_api.rs"]
#[allow(dead_code)]
mod eks_auth_api;

use eks_auth_api::{pod_identity_trust_policy, EksAuthApi, TokenIssuer, ACCOUNT};

fn usage(why: &str) -> ! {
    eprintln!("eks_auth_standin: {why}\nusage: eks_auth_standin --listen ADDR --moto URL --token-dir DIR [--role NAME]... [--associate NS/SA=ROLE]... [--pod NAME:UID:NS:SA]...");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut moto, mut token_dir) = (None, None, None);
    let (mut roles, mut associations, mut pods) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--listen" => listen = Some(value()),
            "--moto" => moto = Some(value()),
            "--token-dir" => token_dir = Some(std::path::PathBuf::from(value())),
            "--role" => roles.push(value()),
            "--associate" => associations.push(value()),
            "--pod" => pods.push(value()),
            other => usage(&format!("unknown flag {other}")),
        }
    }
    let listen = listen.unwrap_or_else(|| usage("--listen is required"));
    let moto = moto.unwrap_or_else(|| usage("--moto is required"));
    let token_dir = token_dir.unwrap_or_else(|| usage("--token-dir is required"));

    let issuer = TokenIssuer::generate();
    let api = EksAuthApi::start_on(&listen, &moto, &issuer).await;
    for role in &roles {
        api.create_role(role, &pod_identity_trust_policy()).await;
    }
    for a in &associations {
        let (sa, role) = a
            .split_once('=')
            .unwrap_or_else(|| usage(&format!("--associate {a}: NS/SA=ROLE")));
        let (ns, sa) = sa
            .split_once('/')
            .unwrap_or_else(|| usage(&format!("--associate {a}: NS/SA=ROLE")));
        api.associate(ns, sa, &format!("arn:aws:iam::{ACCOUNT}:role/{role}"));
    }
    std::fs::create_dir_all(&token_dir).expect("token dir");
    for p in &pods {
        let parts: Vec<&str> = p.split(':').collect();
        let [name, uid, ns, sa] = parts[..] else {
            usage(&format!("--pod {p}: NAME:UID:NS:SA"))
        };
        std::fs::write(token_dir.join(name), issuer.pod_token(ns, sa, name, uid))
            .expect("writing a pod token");
    }
    println!("EKS Auth stand-in ready on {}", api.url());
    std::future::pending::<()>().await;
}
