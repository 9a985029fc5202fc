//! `sspm-ticketing`: the ticketing service on its own.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sspm_platform::app::run_service(sspm_platform::ServiceKind::Ticketing, sspm_ticketing::build).await
}
