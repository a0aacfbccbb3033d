//! `switchyard-backend`: the example backend server (see the library docs),
//! and `switchyard-backend check`, its health probe for containers.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use switchyard_backend::{DEFAULT_LISTEN, backend_name, check, health_url, serve};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[derive(Parser)]
#[command(
    version,
    about = "Example backend for Switchyard: answers every request with `Hello from <name>`"
)]
struct Cli {
    /// The name in every answer [default: env BACKEND_NAME, else the host
    /// name, else "backend"].
    #[arg(long)]
    name: Option<String>,
    /// Address to listen on (HTTP/1.1 and h2c); what `check` probes by
    /// default [default: env LISTEN, else 0.0.0.0:8000].
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// GET a health URL and exit 0 on a 2xx answer, 1 otherwise: a
    /// container health check for images without curl.
    Check {
        /// The URL [default: /health of the backend at --listen, through
        /// loopback when it listens on all addresses].
        url: Option<String>,
        /// Give up after this many milliseconds (connection included).
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let listen = match cli.listen.map_or_else(listen_from_env, Ok) {
        Ok(listen) => listen,
        Err(why) => {
            eprintln!("error: {why}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Check { url, timeout_ms }) => {
            let url = url.unwrap_or_else(|| health_url(listen));
            match check(&url, Duration::from_millis(timeout_ms)).await {
                Ok(status) => {
                    println!("{url}: {status}");
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    eprintln!("unhealthy: {why}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            let name = cli
                .name
                .filter(|n| !n.trim().is_empty())
                .or_else(|| std::env::var("BACKEND_NAME").ok());
            run(listen, backend_name(name.as_deref())).await
        }
    }
}

/// `LISTEN` from the environment when set and not empty, else
/// [`DEFAULT_LISTEN`].
fn listen_from_env() -> Result<SocketAddr, String> {
    let value = std::env::var("LISTEN")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    value
        .trim()
        .parse()
        .map_err(|e| format!("LISTEN={value:?} is not an ip:port address: {e}"))
}

async fn run(listen: SocketAddr, name: String) -> ExitCode {
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(listen);
    eprintln!("switchyard-backend {name:?} listening on http://{addr}");
    let (first_signal, signalled) = oneshot::channel();
    let server = serve(listener, name, async {
        terminated().await;
        eprintln!("switchyard-backend: stopping: no new connections, finishing open requests");
        let _ = first_signal.send(());
    });
    // A second signal while draining: stop waiting for open requests.
    let impatient = async {
        if signalled.await.is_ok() {
            terminated().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server => match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        () = impatient => {
            eprintln!("switchyard-backend: second signal: exiting without waiting");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM (what `docker stop` sends) or SIGINT (Ctrl-C).
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
