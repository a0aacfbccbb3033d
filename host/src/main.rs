//! The `switchyard` command: `run` a proxy from a config file, `check` a
//! config file (like `nginx -t`), run the `demo` (three built-in backends
//! behind the round-robin plugin), or `simulate` a strategy offline.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use switchyard::base::config::{self, Config};
use switchyard::gateway::BuildError;
use switchyard::plugin::builtin::BUILTIN;
use switchyard::{Gateway, Options, Proxy};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// mimalloc's per-thread free lists: glibc's malloc and free were a large
/// share of the proxy's CPU under load (examples/bench/HISTORY.md). Built
/// without transparent huge pages (see `host/Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "HTTP load balancer with hot-reloaded WebAssembly strategies"
)]
struct Cli {
    /// Log lines as text or as one JSON object per line (RUST_LOG filters;
    /// the access log is the `access` target).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy from a config file; the file and the plugins directory
    /// are watched and reloaded on change.
    Run {
        /// The TOML config file [default: /etc/switchyard/switchyard.toml,
        /// else ./switchyard.toml].
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Do not watch files; reload only on SIGHUP (like nginx -s reload).
        #[arg(long)]
        no_watch: bool,
    },
    /// Validate a config file, compile and initialise its plugins, and exit:
    /// 0 when it would start, 1 with the reason when not.
    Check {
        /// The TOML config file [default: /etc/switchyard/switchyard.toml,
        /// else ./switchyard.toml].
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Start three demo backends (127.0.0.1:5001-5003, answering
    /// "Hello from backend N") behind the round-robin plugin.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the admin API and dashboard listen, or "off".
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: String,
        /// Plugins directory; the built-in reference plugins are written
        /// there if missing.
        #[arg(long, default_value = "plugins")]
        plugins: PathBuf,
        /// Number of demo backends, on consecutive ports from --first-port.
        #[arg(long, default_value_t = 3)]
        backends: u16,
        /// Port of demo backend 1.
        #[arg(long, default_value_t = 5001)]
        first_port: u16,
        /// Strategy (plugin file stem).
        #[arg(long, default_value = "round-robin")]
        strategy: String,
    },
    /// Replay a request trace (an access log, trace lines, or generated)
    /// through a strategy offline, in virtual time, and print the split,
    /// simulated latency and the plugin's decisions per second.
    Simulate(switchyard::simulate::Args),
    /// Start a strategy or admission plugin of your own: write a standalone
    /// project (Rust or JavaScript) that builds to a component, with the
    /// WIT, a working skeleton, a switchyard.toml serving the build, and a
    /// README with the build, test and deploy steps.
    New(switchyard::scaffold::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    // `simulate` prints its report on stdout; its log lines (a failing
    // plugin's) go to stderr.
    let to_stderr = matches!(cli.command, Command::Simulate(_));
    let (writer, tty) = if to_stderr {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        (BoxMakeWriter::new(std::io::stderr), tty)
    } else {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
        (BoxMakeWriter::new(std::io::stdout), tty)
    };
    let logs = logs.with_writer(writer);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(tty).init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check { config } => check(&config::config_path(config)?).await,
        Command::Run {
            config: path,
            no_watch,
        } => {
            let path = config::config_path(path)?;
            let config = Config::load(&path)?;
            let proxy = Proxy::start(
                config,
                Options {
                    config_path: Some(path.clone()),
                    watch: !no_watch,
                },
            )
            .await
            .map_err(|e| in_file(&path, e))?;
            if let Some(https) = proxy.tls_addr() {
                tracing::info!(%https, "HTTPS listener serving the same routes");
            }
            match proxy.admin_addr() {
                Some(admin) => {
                    tracing::info!(listen = %proxy.addr(), %admin, "switchyard is serving; dashboard on http://{admin}/")
                }
                None => tracing::info!(listen = %proxy.addr(), "switchyard is serving"),
            }
            serve_until_signal(&proxy, Some(&path)).await;
            proxy.shutdown().await;
            Ok(())
        }
        Command::Demo {
            listen,
            admin,
            plugins,
            backends,
            first_port,
            strategy,
        } => demo(listen, admin, plugins, backends, first_port, strategy).await,
        Command::Simulate(args) => {
            tokio::task::spawn_blocking(move || {
                switchyard::simulate::run(&args, &mut std::io::stdout().lock())
            })
            .await?
        }
        Command::New(args) => switchyard::scaffold::run(&args, &mut std::io::stdout().lock()),
    }
}

async fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let tls = config.tls.as_ref().map(|t| {
        format!(
            "; HTTPS on {} with {} (key {})",
            t.listen,
            t.cert.display(),
            t.key.display()
        )
    });
    let summary: Vec<String> = config
        .upstreams
        .iter()
        .map(|u| {
            let admission = u
                .admission
                .summary()
                .map(|a| format!(", {a}"))
                .unwrap_or_default();
            format!(
                "{} ({} servers, strategy {}{admission})",
                u.name,
                u.servers.len() + u.names.len(),
                u.strategy
            )
        })
        .collect();
    let resolver =
        switchyard::backend::discovery::resolver(config.resolver).context("DNS resolver")?;
    let names: Vec<_> = config
        .upstreams
        .iter()
        .flat_map(|u| {
            u.names
                .iter()
                .map(move |n| (u.name.clone(), n.clone(), u.resolve_interval))
        })
        .collect();
    tokio::task::spawn_blocking(move || Gateway::build(config))
        .await?
        .map_err(|e| in_file(path, e.into()))?;
    // Building loaded the certificate and key: they parse and match.
    // Host names are resolved while running; say what they resolve to now,
    // but a name that does not resolve yet (a container not started) is
    // not an error.
    for (upstream, name, every) in names {
        let next = format!(
            "`run` starts without it and looks it up again every {every:?} (resolve-interval)"
        );
        match switchyard::backend::discovery::lookup(&resolver, &name).await {
            Ok(addrs) if !addrs.is_empty() => println!(
                "{upstream}: `{}` resolves to {} address(es) now",
                name.address,
                addrs.len()
            ),
            Ok(_) => println!(
                "warning: upstream `{upstream}`: `{}` resolves to no address now; {next}",
                name.address
            ),
            Err(e) => println!("warning: upstream `{upstream}`: {e}; {next}"),
        }
    }
    println!(
        "{}: configuration OK; upstreams: {}{}",
        path.display(),
        summary.join(", "),
        tls.unwrap_or_default()
    );
    Ok(())
}

/// A start-up error in the config file `path`, at the line of the key it
/// is about when there is one (a plugin named there has no file).
fn in_file(path: &Path, e: anyhow::Error) -> anyhow::Error {
    let at = (e.downcast_ref::<BuildError>())
        .and_then(BuildError::key)
        .and_then(|key| config::locate(&std::fs::read_to_string(path).ok()?, key));
    match at {
        Some(at) => anyhow::anyhow!("{}:{at}: {e:#}{}", path.display(), at.snippet()),
        None => e.context(path.display().to_string()),
    }
}

async fn demo(
    listen: SocketAddr,
    admin: String,
    plugins: PathBuf,
    count: u16,
    first_port: u16,
    strategy: String,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&plugins)
        .with_context(|| format!("cannot create {}", plugins.display()))?;
    for (name, bytes) in BUILTIN {
        let path = plugins.join(format!("{name}.wasm"));
        if !path.exists() {
            std::fs::write(&path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            tracing::info!(file = %path.display(), "wrote built-in plugin");
        }
    }
    let mut servers = Vec::new();
    let mut running = Vec::new();
    for n in 0..count {
        let port = first_port
            .checked_add(n)
            .context("--first-port + --backends exceeds 65535")?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let backend = switchyard::demo::spawn(addr, usize::from(n) + 1)
            .await
            .with_context(|| format!("cannot start demo backend {} on {addr}", n + 1))?;
        servers.push(toml::Value::String(addr.to_string()));
        running.push(backend);
    }
    // The demo is an ordinary config, so it gets the documented defaults.
    // Its backends answer /health, so active checks are on: stop one and
    // watch it leave.
    let text = format!(
        "listen = {}\nadmin = {}\nplugins = {}\n\n[[upstream]]\nname = \"app\"\nstrategy = {}\nservers = {}\nhealth-check = {{}}\n",
        toml::Value::String(listen.to_string()),
        toml::Value::String(admin),
        toml::Value::String(plugins.display().to_string()),
        toml::Value::String(strategy.clone()),
        toml::Value::Array(servers),
    );
    let config = Config::parse(&text, Path::new("<demo>"))?;
    let strategy_stem = strategy;
    let proxy = Proxy::start(
        config,
        Options {
            config_path: None,
            watch: true,
        },
    )
    .await?;
    let file = plugins.join(format!("{strategy_stem}.wasm"));
    println!(
        "switchyard demo: proxy on http://{} -> {} demo backends on 127.0.0.1:{}-{}, strategy `{strategy_stem}`\n\
         try:     curl http://{}/\n\
         swap:    cp {}/least-conn.wasm {}   (any strategy component; it serves the next request)\n\
         undo:    rm {}   (back to the built-in copy)",
        proxy.addr(),
        count,
        first_port,
        first_port + count.saturating_sub(1),
        proxy.addr(),
        plugins.display(),
        file.display(),
        file.display(),
    );
    if let Some(admin) = proxy.admin_addr() {
        println!("dashboard: http://{admin}/   (also /status, /metrics, /events)");
    }
    serve_until_signal(&proxy, None).await;
    proxy.shutdown().await;
    drop(running);
    Ok(())
}

/// Waits for SIGTERM or SIGINT; on SIGHUP reloads the config file (and the
/// plugins it uses) in the meantime.
async fn serve_until_signal(proxy: &Proxy, config_path: Option<&Path>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    let Some(path) = config_path else {
                        tracing::info!("SIGHUP: no config file to reload (demo)");
                        continue;
                    };
                    tracing::info!("SIGHUP: reloading {}", path.display());
                    let (gateway, path) = (std::sync::Arc::clone(proxy.gateway()), path.to_owned());
                    let _ = tokio::task::spawn_blocking(move || {
                        switchyard::gateway::reload::reload_everything(&gateway, &path)
                    })
                    .await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (proxy, config_path);
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down: no new connections, draining open ones");
}
