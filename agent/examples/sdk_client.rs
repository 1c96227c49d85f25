//! An unmodified aws-sdk-rust client, for the end-to-end tests and the demo: the
//! default credential chain (which reads AWS_CONTAINER_CREDENTIALS_FULL_URI and
//! AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE) and one `sts get-caller-identity`.
//!
//! Usage: `sdk_client <sts endpoint url>`; prints the caller ARN.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let endpoint = std::env::args().nth(1).unwrap_or_default();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"));
    if !endpoint.is_empty() {
        loader = loader.endpoint_url(endpoint);
    }
    let conf = loader.load().await;
    let sts = aws_sdk_sts::Client::new(&conf);
    match sts.get_caller_identity().send().await {
        Ok(out) => {
            println!("{}", out.arn().unwrap_or_default());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "sdk_client: {}",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            );
            std::process::ExitCode::FAILURE
        }
    }
}
