//! `sspm-authorization`: the authorization service on its own.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sspm_platform::app::run_service(sspm_platform::ServiceKind::Authorization, sspm_authorization::build).await
}
