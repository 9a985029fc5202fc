//! `sspm`: run every SSPM service in one process, and operator commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use sspm_platform::{ServiceIdentity, ServiceKind, SspmConfig, TokenMinter};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Parser)]
#[command(name = "sspm", version, about = "SSPM — Self-Service Port Management")]
struct Cli {
    /// Configuration file (TOML); `SSPM__*` environment variables override it.
    #[arg(long, short, global = true, env = "SSPM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run all four services (request, authorization, approval, ticketing) in this process,
    /// on SQLite files under the data directory unless configured otherwise.
    Up {
        /// Directory of the SQLite databases (overrides `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Do not seed the demo tenancy into empty databases.
        #[arg(long)]
        no_demo: bool,
        /// Serve TLS: with the certificates configured for each service, or else with a
        /// development CA and certificate generated into --tls-dir (kept across restarts).
        #[arg(long)]
        tls: bool,
        /// Where `--tls` keeps the development CA and certificate [default: <data dir>/tls].
        #[arg(long, requires = "tls")]
        tls_dir: Option<PathBuf>,
    },
    /// Run one service in this process, as its own binary (`sspm-request`, …) does: for
    /// deployments that ship only this binary, and for tests that kill and restart one service.
    Serve {
        /// The service to run.
        #[arg(value_enum)]
        service: Service,
        /// Directory of the SQLite databases (overrides `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Seed this service's part of the demo tenancy into its database if it is empty.
        #[arg(long)]
        demo: bool,
    },
    /// Create SSPM's schema in the services' databases that have none (a new deployment),
    /// and leave those that have it alone. Outside the dev profile a service refuses to
    /// start on a database without it, so that one whose data was lost is never silently
    /// started empty: run this once when deploying, never to "fix" such a refusal (restore a
    /// backup instead).
    Init {
        /// Only these services' databases (repeatable; default: all four).
        #[arg(long = "service", value_enum)]
        services: Vec<Service>,
        /// Directory of the SQLite databases (overrides `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Write a development CA (ca.pem) and a certificate for the four services
    /// (services.pem, services-key.pem) into a directory, as `sspm up --tls` does; for
    /// docker-compose and local experiments, never for production.
    Certs {
        /// The directory to write into (existing files are kept).
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Further DNS names or IP addresses the certificate is valid for (repeatable);
        /// localhost, 127.0.0.1, ::1, and each service's name are always in.
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Check a service's health (grpc.health.v1) for container health checks and probes:
    /// prints the status, exits 0 only when SERVING.
    Health {
        /// The service's endpoint, e.g. http://127.0.0.1:50051 or https://request:50051.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        endpoint: String,
        /// The API to check, e.g. sspm.v1.ApprovalService (default: the whole server).
        #[arg(long, default_value = "")]
        service: String,
        /// CA certificate (PEM) trusted for https:// endpoints (default: clients.ca_path).
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2_000)]
        timeout_ms: u64,
    },
    /// Mint a development user token (HS256 with the development key; dev profile only:
    /// in production, users' tokens come from the identity provider), or with --service a
    /// service token signed with that service's private key (which this process must hold).
    Token {
        /// The user (the token's subject), e.g. percy@classics.example.
        #[arg(required_unless_present = "service", conflicts_with = "service")]
        principal: Option<String>,
        /// Mint the service token of this service instead.
        #[arg(long, value_enum)]
        service: Option<Service>,
        /// Lifetime in seconds (default: auth.token_ttl_seconds).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Write a new Ed25519 key pair for each of the four services (`<service>.key.pem`,
    /// owner-only, and `<service>.pub.pem`) for auth.service_keys_dir. Every service needs
    /// every public key; each needs only its own private key.
    Keys {
        /// The directory to write into (existing files are never overwritten).
        #[arg(long, default_value = "keys")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Service {
    Request,
    Authorization,
    Approval,
    Ticketing,
}

impl From<Service> for ServiceKind {
    fn from(s: Service) -> Self {
        match s {
            Service::Request => ServiceKind::Request,
            Service::Authorization => ServiceKind::Authorization,
            Service::Approval => ServiceKind::Approval,
            Service::Ticketing => ServiceKind::Ticketing,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = SspmConfig::load(cli.config.as_deref())?;
    match cli.command {
        Command::Up {
            data_dir,
            no_demo,
            tls,
            tls_dir,
        } => {
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            if tls && !ServiceKind::ALL.iter().all(|k| config.services.get(*k).tls()) {
                let dir = tls_dir.unwrap_or_else(|| config.data_dir.join("tls"));
                let (pki, created) = sspm_cli::certs::ensure_dev_pki(&dir, &[])?;
                pki.apply(&mut config);
                config.validate()?;
                eprintln!(
                    "{} development CA and certificate in {} (trust {} in clients)",
                    if created { "generated a" } else { "using the" },
                    dir.display(),
                    pki.ca_cert.display()
                );
            }
            let _telemetry = sspm_platform::telemetry::init("sspm")?;
            sspm_cli::up(config, !no_demo, sspm_platform::server::shutdown_signal()).await
        }
        Command::Serve {
            service,
            data_dir,
            demo,
        } => {
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            let kind = ServiceKind::from(service);
            let _telemetry = sspm_platform::telemetry::init(&format!("sspm-{}", kind.name()))?;
            let apps = sspm_cli::build_some(&config, std::collections::HashMap::new(), &[kind]).await?;
            if demo && sspm_cli::seed_demo(&apps, &config).await? {
                tracing::info!(service = kind.name(), "demo tenancy seeded");
            }
            sspm_cli::run_all(apps, sspm_platform::server::shutdown_signal()).await
        }
        Command::Init { services, data_dir } => {
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            let kinds: Vec<ServiceKind> = if services.is_empty() {
                ServiceKind::ALL.to_vec()
            } else {
                services.into_iter().map(ServiceKind::from).collect()
            };
            for (kind, found) in sspm_cli::init(&config, &kinds).await? {
                let what = match found {
                    sspm_platform::db::Found::Initialised => "already initialised: left as it is",
                    sspm_platform::db::Found::Nothing => "created and initialised",
                    sspm_platform::db::Found::Empty => "was empty: initialised",
                };
                #[allow(clippy::print_stdout)]
                {
                    println!("{:<14} {what}", kind.name());
                }
            }
            Ok(())
        }
        Command::Health {
            endpoint,
            service,
            cacert,
            timeout_ms,
        } => {
            let clients = sspm_platform::config::ClientConfig {
                ca_path: cacert.or(config.clients.ca_path),
                timeout_ms,
                connect_timeout_ms: timeout_ms,
                ..config.clients
            };
            let channel = sspm_platform::client::connect_lazy(&endpoint, &clients)?;
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: service.clone(),
                })
                .await
                .map_err(|e| anyhow::anyhow!("{endpoint}: {}: {}", e.code(), e.message()))?
                .into_inner()
                .status();
            #[allow(clippy::print_stdout)]
            {
                println!("{}", status.as_str_name());
            }
            anyhow::ensure!(status == ServingStatus::Serving, "{endpoint} {service} is not serving");
            Ok(())
        }
        Command::Keys { out } => {
            let written = sspm_cli::keys::write_service_keys(&out)?;
            for path in written {
                eprintln!("wrote {}", path.display());
            }
            eprintln!(
                "set auth.service_keys_dir (SSPM__AUTH__SERVICE_KEYS_DIR) to a directory holding every *.pub.pem and the service's own *.key.pem"
            );
            Ok(())
        }
        Command::Certs { out, names } => {
            let (pki, created) = sspm_cli::certs::ensure_dev_pki(&out, &names)?;
            eprintln!(
                "{} {}, {} and {}",
                if created { "wrote" } else { "kept the existing" },
                pki.ca_cert.display(),
                pki.cert.display(),
                pki.key.display()
            );
            Ok(())
        }
        Command::Token {
            principal,
            service,
            ttl,
        } => {
            let ttl = ttl.unwrap_or(config.auth.token_ttl_seconds);
            anyhow::ensure!(
                ttl <= config.auth.max_token_lifetime_seconds,
                "--ttl {ttl}: SSPM refuses tokens that live longer than auth.max_token_lifetime_seconds ({} s)",
                config.auth.max_token_lifetime_seconds
            );
            let token = match (principal, service) {
                (_, Some(service)) => {
                    let mut capped = config.clone();
                    capped.auth.max_token_lifetime_seconds = ttl;
                    ServiceIdentity::new(service.into(), &capped)?.token()
                }
                (Some(principal), None) => {
                    let id = sspm_platform::auth::parse_principal(&principal)?;
                    let minter = TokenMinter::new(&config);
                    anyhow::ensure!(
                        minter.available(),
                        "development tokens exist only in the dev profile: in production, users' tokens come from the identity provider (auth.users)"
                    );
                    minter.mint(&id, ttl)
                }
                (None, None) => anyhow::bail!("name a principal, or --service"),
            };
            #[allow(clippy::print_stdout)]
            {
                println!("{token}");
            }
            Ok(())
        }
    }
}
