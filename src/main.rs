//! The `meridian` command: run, check, demo.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meridian::config::{Config, ConfigError};
use meridian::{demo, server, status_page, telemetry};

/// Meridian: a geo-failover edge reverse proxy.
///
/// Sends each client to its nearest healthy region, fails over when a region
/// is down, and shows a branded status page when nothing can serve.
#[derive(Debug, Parser)]
#[command(name = "meridian", version, about, long_about, after_help = EXAMPLES)]
struct Cli {
    /// Configuration file to serve with (same as `meridian run -c FILE`).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

const EXAMPLES: &str = "\
Examples:
  meridian demo                            two demo regions on loopback, for a first look
  meridian check -c config/meridian.toml   validate a configuration and print a summary
  meridian run -c config/meridian.toml     serve

Logging is controlled by RUST_LOG (default: info), e.g. RUST_LOG=meridian=debug.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve with a configuration file.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file, print a summary, exit non-zero on error.
    Check {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run Meridian on 127.0.0.1:8080 in front of two built-in demo regions.
    Demo,
}

fn main() -> ExitCode {
    let Cli { config, command } = Cli::parse();
    let result = match (command, config) {
        (Some(Command::Check { config }), _) => return check(&config),
        (Some(Command::Run { config }), _) | (None, Some(config)) => run(config),
        (Some(Command::Demo), _) => demo(),
        (None, None) => {
            eprintln!("meridian: nothing to do: give a configuration with -c FILE, or try `meridian demo` or `meridian --help`");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meridian: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn report(e: &ConfigError) {
    match e {
        ConfigError::Invalid(issues) => {
            for issue in issues {
                eprintln!("error: {issue}");
            }
            eprintln!(
                "{} error{} found",
                issues.len(),
                if issues.len() == 1 { "" } else { "s" }
            );
        }
        other => eprintln!("error: {other}"),
    }
}

fn check(path: &PathBuf) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return ExitCode::from(1);
        }
    };
    if let Err(e) = status_page::StatusPages::new(&config.status_page) {
        eprintln!("error: {}: `status_page.template`: {e}", path.display());
        return ExitCode::from(1);
    }
    let db = match &config.geo.database {
        Some(file) => match meridian::geo::GeoDb::open(file) {
            Ok(db) => db,
            Err(e) => {
                eprintln!("error: {}: `geo.database`: {e}", path.display());
                return ExitCode::from(1);
            }
        },
        None => meridian::geo::GeoDb::built_in(),
    };
    print!("{}", config.summary());
    println!("geoip: {} ({})", db.name(), db.database_type());
    for warning in config.warnings() {
        println!("warning: {warning}");
    }
    ExitCode::SUCCESS
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    telemetry::init();
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            anyhow::bail!("invalid configuration {}", path.display());
        }
    };
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    runtime()?.block_on(async move {
        let running = server::start(config).await?;
        running.run_until_signal().await?;
        Ok(())
    })
}

fn demo() -> anyhow::Result<()> {
    telemetry::init();
    let config = demo::config();
    runtime()?.block_on(async move {
        let backends = demo::DemoBackends::start(&config)
            .await
            .context("cannot start the demo backends (ports 18081, 18082, 18091)")?;
        let control = tokio::net::TcpListener::bind(demo::CONTROL_ADDR)
            .await
            .with_context(|| format!("cannot start the demo control on {}", demo::CONTROL_ADDR))?;
        let control_addr = control.local_addr()?;
        tokio::spawn(backends.clone().serve_control(control));
        let running = server::start(config).await?;
        println!(
            "{}",
            demo::instructions(running.http_addr, running.admin_addr, control_addr)
        );
        running.run_until_signal().await?;
        backends.stop();
        Ok(())
    })
}
