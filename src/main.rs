//! The `clonelb` command line: parses arguments, sets up logging, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// What `--help` says after the commands and options, for the top level and `run`.
const OPERATING: &str = "\
Reload on save: `clonelb run` reloads lb.toml when the file is closed after writing or
renamed into place (an editor's save, `mv`, a ConfigMap update), and on SIGHUP. A file
with problems is rejected: they are logged and the running configuration stays.
SIGTERM or SIGINT stops gracefully (requests in flight finish, up to
[proxy] shutdown_timeout); a second one stops at once.

Logs go to stderr (stdout stays quiet, but for `check`'s summary, `demo`'s URL and
the access log when `[log] access` is on without `access_path`); `--log-format json`
or `[log] format = \"json\"` writes them as JSON. SIGUSR1 reopens the access log.
Set the level with CLONELB_LOG, e.g. CLONELB_LOG=debug (default: info; any
tracing-subscriber filter, e.g. CLONELB_LOG=clonelb=debug,warn).";

#[derive(Parser)]
#[command(
    name = "clonelb",
    version = env!("CLONELB_VERSION"),
    about = "A load balancer for clusters of identical app servers",
    long_about = "A load balancer for clusters of identical app servers (clones).\n\n\
        `clonelb run` serves ./lb.toml (or --config PATH), `clonelb check` validates it,\n\
        `clonelb demo` shows it at work with three embedded clones, and `status`,\n\
        `disable`, `enable`, `reload`, `pin` and `unpin` steer a running balancer through\n\
        its admin API.",
    after_help = OPERATING
)]
struct Cli {
    /// Format of clonelb's own log lines on stderr [default: lb.toml's `[log] format`,
    /// else text]. A change of `[log] format` applies at the next start.
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGINT/SIGTERM, reloading the config file on save and on SIGHUP.
    #[command(
        long_about = "Serve until SIGINT/SIGTERM, reloading the config file on save and on SIGHUP.\n\n\
            Starting fails (exit 1, one line naming the address) when another process\n\
            listens on a listen address, another clonelb included: two balancers on one\n\
            port would split the traffic, each with its own view of lb.toml.\n\
            --reuse-port starts beside it deliberately.",
        after_help = OPERATING
    )]
    Run {
        /// Path to the configuration file.
        #[arg(long, short, default_value = "lb.toml")]
        config: PathBuf,
        /// Start even when another process listens on the address, sharing the port with it
        /// (SO_REUSEPORT): e.g. a new clonelb beside the old one before stopping the old.
        #[arg(long)]
        reuse_port: bool,
    },
    /// Parse and validate a configuration file, then exit (0 valid, 1 invalid).
    Check {
        /// Path to the configuration file.
        #[arg(default_value = "lb.toml")]
        path: PathBuf,
        /// Also look up each DNS name once (with [dns]) and print the clones it gives;
        /// exit 1 when a lookup fails. Without it, names are only checked for syntax.
        #[arg(long)]
        resolve: bool,
    },
    /// Start three embedded clones and a balancer in front of them.
    Demo {
        /// The balancer's address [default: 127.0.0.1:8080, or any free port when it is
        /// taken]. A given address that is taken is an error.
        #[arg(long, value_name = "ADDR", value_parser = clonelb::config::parse_address)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Show the running configuration and every clone's state (via the admin API).
    Status {
        #[command(flatten)]
        admin: AdminsArgs,
    },
    /// Take a clone out of rotation; with --wait, until nothing is in flight on it.
    Disable {
        /// The clone's name.
        name: String,
        /// Then wait until the clone has no request in flight (exit 1 at the timeout).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits ("250ms", "2s", "1m").
        #[arg(long, requires = "wait", default_value = "60s", value_parser = clonelb::config::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        admin: AdminsArgs,
    },
    /// Put a disabled clone back into rotation.
    Enable {
        /// The clone's name.
        name: String,
        #[command(flatten)]
        admin: AdminsArgs,
    },
    /// Pin the active version (atomic deploy mode): no cutover until `unpin`.
    #[command(
        long_about = "Pin the active version (atomic deploy mode): requests go to clones of\n\
            VERSION only, and no cutover happens until `clonelb unpin` (an outage fallback\n\
            still does). Exit 1 in mixed mode or when no clone reports VERSION; nothing changes."
    )]
    Pin {
        /// The version to pin, as the clones report it.
        version: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove the pin: cutovers choose the active version again.
    Unpin {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Reload the balancer's config file now (exit 1 when it is rejected).
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How the admin commands reach the balancer.
#[derive(clap::Args)]
struct AdminArgs {
    /// Admin API address [default: "listen" of the --config file's admin section].
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// The config file whose admin section gives the address, and the token ("token" or
    /// "token_file") when none is given otherwise [default: lb.toml].
    #[arg(long, short, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Bearer token of the admin API [default: $CLONELB_ADMIN_TOKEN, else the config
    /// file's when it gives the address].
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
}

impl AdminArgs {
    fn target(self) -> clonelb::cli::Target {
        clonelb::cli::Target {
            admin: self.admin,
            config: self.config,
            token: self.token,
        }
    }
}

/// How `status`, `disable` and `enable` reach one balancer or several.
#[derive(clap::Args)]
struct AdminsArgs {
    /// Admin API address [default: "listen" of the --config file's admin section]. Give it
    /// once per balancer to act on several: each is called on its own, its output lines
    /// (status: its section) name it, and the exit status is 0 only when all succeed.
    #[arg(long, value_name = "ADDR", action = clap::ArgAction::Append)]
    admin: Vec<String>,
    /// The config file whose admin section gives the address [default: lb.toml].
    #[arg(long, short, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Bearer token of the admin API(s) [default: $CLONELB_ADMIN_TOKEN].
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
}

impl AdminsArgs {
    /// One target per `--admin`, the same token for each; without `--admin`, the one of
    /// the config file.
    fn targets(self) -> Vec<clonelb::cli::Target> {
        let target = |admin| clonelb::cli::Target {
            admin,
            config: self.config.clone(),
            token: self.token.clone(),
        };
        if self.admin.is_empty() {
            return vec![target(None)];
        }
        self.admin.iter().cloned().map(Some).map(target).collect()
    }
}

fn main() -> ExitCode {
    // Usage errors exit 2 (clap's convention).
    let cli = Cli::parse();
    let json = match (cli.log_format, &cli.command) {
        (Some(f), _) => matches!(f, LogFormatArg::Json),
        (None, Command::Run { config, .. }) => {
            clonelb::config::log_format_of(config) == Some(clonelb::config::LogFormat::Json)
        }
        (None, _) => false,
    };
    init_logging(json);
    // A failed start's error: plain lines on stderr, or log lines when logs are JSON (so
    // a log shipper gets nothing that does not parse).
    let fail = |e: &dyn std::fmt::Display| {
        if json {
            for line in e.to_string().lines() {
                tracing::error!("{line}");
            }
        } else {
            eprintln!("{e}");
        }
        ExitCode::FAILURE
    };
    if matches!(cli.command, Command::Run { .. } | Command::Demo { .. }) {
        raise_open_file_limit();
    }
    match cli.command {
        Command::Run { config, reuse_port } => {
            match clonelb::run(&config, clonelb::Options::default().reuse_port(reuse_port)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Check { path, resolve } => check(&path, resolve),
        Command::Demo { listen } => match clonelb::demo::run(listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Status { admin } => exit(clonelb::cli::many::status(&admin.targets())),
        Command::Disable {
            name,
            wait,
            timeout,
            admin,
        } => exit(clonelb::cli::many::disable(
            &admin.targets(),
            &name,
            wait.then_some(timeout),
        )),
        Command::Enable { name, admin } => {
            exit(clonelb::cli::many::enable(&admin.targets(), &name))
        }
        Command::Pin { version, admin } => exit(clonelb::cli::pin(&admin.target(), &version)),
        Command::Unpin { admin } => exit(clonelb::cli::unpin(&admin.target())),
        Command::Reload { admin } => exit(clonelb::cli::reload(&admin.target())),
    }
}

/// Process logs on stderr: text (coloured on a terminal) or one JSON object per line
/// (tracing-subscriber's JSON format: `timestamp`, `level`, `fields` with `message`,
/// `target`). Levels from `CLONELB_LOG` (default `info`).
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLONELB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn exit(result: Result<(), clonelb::cli::CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn check(path: &std::path::Path, resolve: bool) -> ExitCode {
    let label = path.display().to_string();
    // The same load as `run` and every reload: the certificate and key must exist, parse
    // and match too.
    match clonelb::reload::load(path) {
        Ok(loaded) => {
            let checked = &loaded.checked;
            for w in &checked.warnings {
                eprintln!("{}", clonelb::config::format_diagnostic(&label, w));
            }
            let c = &checked.config;
            let n = c.backends.len();
            let mut listeners = Vec::new();
            if let Some(a) = c.listen.http {
                listeners.push(format!("http {a}"));
            }
            if let Some(a) = c.listen.https {
                listeners.push(format!("https {a}"));
            }
            let names = match c.dns_backends.len() {
                0 => String::new(),
                1 => ", 1 DNS name".to_string(),
                m => format!(", {m} DNS names"),
            };
            println!(
                "{label}: ok: listen {}, strategy {}, {n} clone{}{names}",
                listeners.join(", "),
                c.balancer.strategy.as_str(),
                if n == 1 { "" } else { "s" }
            );
            if !resolve || c.dns_backends.is_empty() {
                return ExitCode::SUCCESS;
            }
            match clonelb::dns::check::resolve_all(c) {
                Ok((lines, all_ok)) => {
                    for l in lines {
                        println!("{l}");
                    }
                    if all_ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("{label}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Every client and upstream connection is a file descriptor: raise the soft limit to the
/// hard one, as HAProxy and nginx do, so `max_connections` is not capped by a default 1024.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}
