//! `cargo xtask demo`: the EKS mode (`--upstream eks-auth`, the agent's default).
//! The agent has no pods file, no associations and no Kubernetes API: the kernel
//! says which pod is calling (its cgroup), the pod's own projected token must name
//! that pod, and EKS Auth (AssumeRoleForPodIdentity) finds the association and
//! gives the credentials. EKS Auth here is the stand-in
//! `agent/examples/eks_auth_standin.rs`: a real RS256 token issuer, roles and
//! trust policies in moto's IAM, credentials from moto's STS.

use std::{path::Path, time::Duration};

use testnode::Node;

use super::{
    agent_command, audit_log, caller_identity, direct_connection, kernel_says, moto_url, show_pod,
    start_moto, step,
};

/// The stand-in's cluster (`CLUSTER` in agent/tests/support/eks_auth_api.rs).
const CLUSTER: &str = "test-cluster";
/// The stand-in listens here, in the node netns (where the agent runs).
const EKS_AUTH_ADDR: &str = "127.0.0.1:5080";
const ROLE: &str = "s3-eks-pod-identity-role";
const ASSOCIATED_SA: &str = "s3-sa";

struct DemoPod {
    name: &'static str,
    uid: &'static str,
    service_account: &'static str,
}

/// The first pod's service account has an association; the second's has none.
const PODS: &[DemoPod] = &[
    DemoPod {
        name: "s3-app-6d8f7",
        uid: "2c48913c-b29f-11e7-9350-020968147796",
        service_account: ASSOCIATED_SA,
    },
    DemoPod {
        name: "curious-9k2lm",
        uid: "8a1f0e2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
        service_account: "curious",
    },
];

pub(super) fn demo(agent: &Path, standin: &Path, work: &Path) -> Result<(), String> {
    step("Simulated node: node netns + one netns and cgroup per pod (all removed at the end)");
    let mut node = Node::new();
    for p in PODS {
        let i = node.add_pod(p.name, p.uid, false);
        show_pod(&node, i, p.service_account);
    }

    start_moto(&mut node);

    step(&format!(
        "EKS Auth stand-in for cluster {CLUSTER} on {EKS_AUTH_ADDR} (node netns), backed by moto"
    ));
    let tokens = work.join("tokens");
    let mut eks = node.node_command(standin.to_str().ok_or("stand-in path")?);
    eks.args(["--listen", EKS_AUTH_ADDR, "--moto", &moto_url()])
        .arg("--token-dir")
        .arg(&tokens)
        .args(["--role", ROLE])
        .args(["--associate", &format!("default/{ASSOCIATED_SA}={ROLE}")]);
    for p in PODS {
        eks.args([
            "--pod",
            &format!("{}:{}:default:{}", p.name, p.uid, p.service_account),
        ]);
    }
    node.spawn_until(eks, "EKS Auth stand-in ready", Duration::from_secs(30));
    println!("  association: default/{ASSOCIATED_SA} → {ROLE}; default/curious has none");
    println!(
        "  {ROLE}'s trust policy in IAM: {}",
        trust_policy(&node, work)?
    );
    println!(
        "  each pod's projected token (audience pods.eks.amazonaws.com, kubernetes.io.pod.uid = its UID),"
    );
    println!(
        "  signed by the cluster's key as the kubelet would mount it: {}/<pod>",
        tokens.display()
    );

    step("Agent (--upstream eks-auth): no pods file, no associations, no Kubernetes API");
    let mut a = agent_command(&node, agent, work)?;
    a.args(["--upstream", "eks-auth", "--cluster-name", CLUSTER])
        .args(["--endpoint", &format!("http://{EKS_AUTH_ADDR}")]);
    node.spawn_until(a, "pod-identity-agent ready", Duration::from_secs(30));

    let (owner, other) = (&PODS[0], &PODS[1]);
    step(&format!(
        "pod default/{} runs `aws sts get-caller-identity` with its own token",
        owner.name
    ));
    kernel_says(&node, 0)?;
    println!("  the pod's UID, from its cgroup: {}", owner.uid);
    caller_identity(&node, 0, &tokens.join(owner.name), work)?;

    step(&format!(
        "pod default/{} runs it with default/{}'s token (a copied token file)",
        other.name, owner.name
    ));
    kernel_says(&node, 1)?;
    println!(
        "  the pod's UID, from its cgroup: {}; the token's: {}",
        other.uid, owner.uid
    );
    caller_identity(&node, 1, &tokens.join(owner.name), work)?;

    step(&format!(
        "pod default/{} runs it with its own token (sa {}: no association)",
        other.name, other.service_account
    ));
    caller_identity(&node, 1, &tokens.join(other.name), work)?;

    direct_connection(&node)?;
    audit_log(agent, work)?;

    step("what the node's own role needs in this mode");
    println!(
        r#"  {{"Effect":"Allow","Action":"eks-auth:AssumeRoleForPodIdentity","Resource":"*"}} and nothing else:"#
    );
    println!("  no sts:AssumeRole, and no pod role trusts the node or the agent; roles trust");
    println!("  the service principal pods.eks.amazonaws.com (sts:AssumeRole, sts:TagSession).");

    step("done: removing namespaces, cgroups and processes");
    drop(node);
    Ok(())
}

/// The role's trust policy as moto's IAM holds it (`aws iam get-role`, node netns).
fn trust_policy(node: &Node, work: &Path) -> Result<String, String> {
    let mut cli = node.node_command("aws");
    cli.args(["iam", "get-role", "--role-name", ROLE])
        .args(["--query", "Role.AssumeRolePolicyDocument.Statement"])
        .args(["--output", "json", "--endpoint-url", &moto_url()]);
    // A pod's SDK environment, but with static credentials of an administrator.
    testnode::sdk_env(
        &mut cli,
        Path::new("/dev/null"),
        work,
        &crate::setup::path_with_python_scripts(),
    );
    cli.env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env_remove("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
        .env("AWS_ACCESS_KEY_ID", "AKIADEMOADMIN0000001")
        .env("AWS_SECRET_ACCESS_KEY", "demo");
    let out = cli.output().map_err(|e| format!("aws iam get-role: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "aws iam get-role: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // One line: the JSON without its layout.
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split_whitespace().collect::<Vec<_>>().join(""))
}
