//! `sspm-request`: the request service on its own.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sspm_platform::app::run_service(sspm_platform::ServiceKind::Request, sspm_request::build).await
}
