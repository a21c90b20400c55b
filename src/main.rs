//! The `meridian` command: run, check, demo, and ctl (the admin API's client).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meridian::config::{Config, ConfigError};
use meridian::ctl::{self, CtlError};
use meridian::{demo, server, status_page, telemetry};

/// mimalloc: a proxy allocates and frees small buffers and header maps on
/// every request, where it costs less than the system allocator (see the
/// README's benchmarks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
  meridian ctl status                      regions, backends, incident and events of a running Meridian
  meridian ctl drain us                    stop sending new requests to region us
  meridian ctl incident set --title 'Checkout errors' --message 'We are on it.'

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
    /// Ask a running Meridian through its admin API: status, drains, incident, reload.
    #[command(after_help = CTL_HELP)]
    Ctl(CtlArgs),
}

const CTL_HELP: &str = "\
The admin API is found at --admin URL, else at the [admin] listen address of
the file given with -c, else at $MERIDIAN_ADMIN, else at http://127.0.0.1:9901.
The bearer token is read from $MERIDIAN_ADMIN_TOKEN, else from the file's [admin]
section (token_env or token_file).

Examples:
  meridian ctl status
  meridian ctl -c /etc/meridian/meridian.toml drain us
  meridian ctl undrain eu --backend 10.2.0.10:8080
  meridian ctl incident set --title 'Checkout errors' --message 'We are on it.' --link https://status.example.com
  meridian ctl incident clear
  meridian ctl --json status | jq .regions

Exit codes: 0 done; 1 admin API unreachable, too slow or not the admin API (or a bad -c file);
2 usage error; 3 refused by the API (4xx: token, unknown name, conflict, invalid input);
4 the API failed (5xx).";

#[derive(Debug, clap::Args)]
struct CtlArgs {
    /// Admin API URL [default: see below]
    #[arg(long, value_name = "URL", global = true)]
    admin: Option<String>,
    /// Configuration file whose [admin] section gives the address (and token).
    #[arg(short, long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Print the API's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Regions, backends, health, drains, the incident and recent events.
    Status,
    /// Stop sending new requests to a region, or to one of its backends.
    Drain {
        /// The region's name.
        region: String,
        /// Drain only this backend of the region (its host:port).
        #[arg(long, value_name = "HOST:PORT")]
        backend: Option<String>,
    },
    /// Send requests to a drained region, or backend, again.
    Undrain {
        /// The region's name.
        region: String,
        /// Undrain only this backend of the region (its host:port).
        #[arg(long, value_name = "HOST:PORT")]
        backend: Option<String>,
    },
    /// Post or clear the incident shown on the status page.
    #[command(subcommand)]
    Incident(IncidentCommand),
    /// Re-read the configuration file, as SIGHUP does.
    Reload,
    /// Alert webhooks.
    #[command(subcommand)]
    Alerts(AlertsCommand),
}

#[derive(Debug, Subcommand)]
enum AlertsCommand {
    /// Send a test alert to every webhook of [alerts] now.
    Test,
}

#[derive(Debug, Subcommand)]
enum IncidentCommand {
    /// Post the incident (replacing any other).
    Set {
        /// A short headline.
        #[arg(long)]
        title: String,
        /// What is going on, in plain words.
        #[arg(long)]
        message: String,
        /// Where updates are posted (an http(s) URL).
        #[arg(long, value_name = "URL")]
        link: Option<String>,
    },
    /// Clear the incident.
    Clear,
}

impl From<CtlCommand> for ctl::Command {
    fn from(command: CtlCommand) -> ctl::Command {
        match command {
            CtlCommand::Status => ctl::Command::Status,
            CtlCommand::Drain { region, backend } => ctl::Command::Drain { region, backend },
            CtlCommand::Undrain { region, backend } => ctl::Command::Undrain { region, backend },
            CtlCommand::Incident(IncidentCommand::Set {
                title,
                message,
                link,
            }) => ctl::Command::IncidentSet(ctl::IncidentText {
                title,
                message,
                link,
            }),
            CtlCommand::Incident(IncidentCommand::Clear) => ctl::Command::IncidentClear,
            CtlCommand::Reload => ctl::Command::Reload,
            CtlCommand::Alerts(AlertsCommand::Test) => ctl::Command::AlertsTest,
        }
    }
}

/// `print!` to standard output, except that a reader that went away (as
/// `meridian check | head -1` does) ends the program quietly, as it ends
/// other command-line tools, instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = write!(stdout, $($arg)*).and_then(|()| stdout.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("meridian: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }};
}

fn main() -> ExitCode {
    let Cli { config, command } = Cli::parse();
    let result = match (command, config) {
        (Some(Command::Check { config }), _) => return check(&config),
        (Some(Command::Ctl(args)), config) => return ctl(args, config),
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
    out!("{}", config.summary());
    out!("geoip: {} ({})\n", db.name(), db.database_type());
    for warning in config.warnings() {
        out!("warning: {warning}\n");
    }
    ExitCode::SUCCESS
}

/// The async runtime: a worker thread per CPU the process may use, or a
/// single thread when that is one CPU (`taskset`, a one-core cgroup quota).
/// There a multi-thread runtime only adds hand-offs between its worker and
/// the thread that drives it: on one pinned core, a single thread served
/// about 40% more requests at about 30% less CPU per request.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    refuse_huge_pages();
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder
        .enable_all()
        .on_thread_park(collect_freed)
        .build()
        .context("cannot start the async runtime")?;
    runtime.spawn(return_freed_memory());
    Ok(runtime)
}

/// Turns transparent huge pages off for this process. mimalloc asks for
/// them on its arenas, and a 2 MiB page is faulted in whole for a few
/// live buffers, split again when mimalloc returns 64 KiB of it, and put
/// back together by `khugepaged`: under steady load RSS jumped by 2 MiB
/// about once a second (8% of a 26 MB process), and idle connections
/// kept whole huge pages resident. A proxy's heap of tens of megabytes
/// gains nothing measurable from fewer TLB misses.
fn refuse_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets
        // a flag of this process; no memory is passed.
        #[allow(unsafe_code)]
        let refused = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if refused != 0 {
            // Only memory use depends on it; old kernels lack the flag.
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "cannot turn transparent huge pages off"
            );
        }
    }
}

/// How often a worker thread about to wait for work hands mimalloc back
/// the pages it emptied.
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Lets mimalloc take back the pages this thread emptied, at most every
/// [`COLLECT_EVERY`]: each thread keeps its own, which no other thread's
/// collection reaches.
fn collect_freed() {
    thread_local! {
        static LAST: std::cell::Cell<Option<tokio::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = tokio::time::Instant::now();
    if LAST
        .get()
        .is_some_and(|last| now.duration_since(last) < COLLECT_EVERY)
    {
        return;
    }
    LAST.set(Some(now));
    // SAFETY: `mi_collect` takes no pointer and may be called from any
    // thread at any time; mimalloc is the global allocator.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(false)
    };
}

/// How often mimalloc is asked to return memory freed a while ago.
const RETURN_FREED_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Gives the OS back the memory mimalloc holds freed. mimalloc does so a
/// second after a page empties (`purge_delay`), but only when a thread
/// that allocates passes by: a burst of connections that then go idle
/// would keep their first requests' buffers in the process's RSS for as
/// long as nothing else happened.
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(RETURN_FREED_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        collect_freed();
    }
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            anyhow::bail!("invalid configuration {}", path.display());
        }
    };
    telemetry::init_with(&config.log);
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
        out!(
            "{}\n",
            demo::instructions(running.http_addr, running.admin_addr, control_addr)
        );
        running.run_until_signal().await?;
        backends.stop();
        Ok(())
    })
}

/// `meridian ctl`: one admin API call, its answer printed for people (or as
/// JSON), its warnings on standard error, and an exit code scripts can test.
fn ctl(args: CtlArgs, top_config: Option<PathBuf>) -> ExitCode {
    let CtlArgs {
        admin,
        config,
        json,
        command,
    } = args;
    let fail = |e: &CtlError| {
        eprintln!("meridian: {e}");
        if let CtlError::Refused { issues, .. } = e {
            for issue in issues {
                eprintln!("error: {issue}");
            }
        }
        ExitCode::from(e.exit_code())
    };
    // `meridian -c FILE ctl ...` reads as well as `meridian ctl -c FILE ...`.
    let config = match config.or(top_config) {
        Some(path) => match Config::load(&path) {
            Ok(c) => Some(c),
            Err(e) => {
                report(&e);
                eprintln!(
                    "meridian: cannot take the admin API address from {}: fix it, or give --admin URL",
                    path.display()
                );
                return ExitCode::from(ctl::exit::UNREACHABLE);
            }
        },
        None => None,
    };
    let env_admin = std::env::var(ctl::ADMIN_ENV).ok();
    let base = match ctl::admin_base(admin.as_deref(), config.as_ref(), env_admin.as_deref()) {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    let target = ctl::Target {
        base,
        token: ctl::token(std::env::var(ctl::TOKEN_ENV).ok(), config.as_ref()),
    };
    let command = ctl::Command::from(command);
    // One call needs no thread pool.
    let answer = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(ctl::call(&target, &command, ctl::TIMEOUT)),
        Err(e) => {
            eprintln!("meridian: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    for warning in ctl::warnings(&answer.json) {
        eprintln!("warning: {warning}");
    }
    if json {
        let text = String::from_utf8_lossy(&answer.body);
        out!("{}\n", text.trim_end());
    } else if command == ctl::Command::Status {
        match ctl::status_table(&answer.json) {
            Ok(table) => out!("{table}"),
            Err(e) => {
                return fail(&CtlError::BadAnswer {
                    url: target.base,
                    reason: format!("the status is not in the expected shape: {e}"),
                })
            }
        }
    } else {
        out!("{}\n", ctl::confirmation(&command, &answer.json));
    }
    ExitCode::SUCCESS
}
