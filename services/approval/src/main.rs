//! `sspm-approval`: the approval service on its own.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sspm_platform::app::run_service(sspm_platform::ServiceKind::Approval, sspm_approval::build).await
}
