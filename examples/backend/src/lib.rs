//! An example backend for Switchyard: the role the Flask app plays in the
//! classic "nginx in front of three Flask containers" demo.
//!
//! Every answer names the server that gave it, in the body and in an
//! `X-Backend` header, so a client can see the load balancer at work:
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /health` | `200 ok` |
//! | `/delay/<ms>` | `200 Hello from <name> after <ms> ms`, sent after `ms` milliseconds (at most 60 s) |
//! | `/delay/<not a number>` | `400` |
//! | anything else | `200 Hello from <name>` |
//!
//! [`serve`] speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c) and
//! shuts down gracefully; [`check`] is the client side of a container
//! health check (the runtime image has no `curl`).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

/// Where the backend listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8000";

/// The longest `/delay/<ms>` honours; longer delays are cut to this.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// The name used when nothing else names the backend.
pub const FALLBACK_NAME: &str = "backend";

/// Serves the example backend on `listener` as `name` until `shutdown`
/// completes; then stops accepting (the listener is closed, so new
/// connections are refused), lets in-flight requests finish, closes idle
/// connections, and returns once every connection is done.
///
/// Fails at once, before accepting anything, when `name` cannot be sent
/// in a header (control characters).
pub async fn serve<F>(listener: TcpListener, name: String, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()>,
{
    let header = HeaderValue::from_str(&name).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("backend name {name:?} cannot be sent in a header (control characters)"),
        )
    })?;
    let me = Arc::new(Me { name, header });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Per-connection failures (reset before accept) and
                    // running out of descriptors: wait a little, go on.
                    eprintln!("switchyard-backend: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let me = Arc::clone(&me);
        let service = service_fn(move |req| {
            let me = Arc::clone(&me);
            async move { Ok::<_, Infallible>(answer(&me, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A client that goes away mid-request is not our error.
            let _ = conn.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Who is answering.
struct Me {
    name: String,
    header: HeaderValue,
}

async fn answer(me: &Me, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let name = &me.name;
    let (status, body) = if path == "/health" {
        (StatusCode::OK, "ok\n".to_owned())
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        match ms.parse::<u64>() {
            Ok(ms) => {
                let delay = delay_for(ms);
                tokio::time::sleep(delay).await;
                (
                    StatusCode::OK,
                    format!("Hello from {name} after {} ms\n", delay.as_millis()),
                )
            }
            Err(_) => (
                StatusCode::BAD_REQUEST,
                format!("{name}: `/delay/{ms}`: expected a number of milliseconds\n"),
            ),
        }
    } else {
        (StatusCode::OK, format!("Hello from {name}\n"))
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert("x-backend", me.header.clone());
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// How long `/delay/<ms>` waits: `ms`, at most [`MAX_DELAY`].
fn delay_for(ms: u64) -> Duration {
    Duration::from_millis(ms).min(MAX_DELAY)
}

/// The backend's name: `explicit` (from `--name` or `BACKEND_NAME`), else
/// the host name (`HOSTNAME`, else `/etc/hostname`), else
/// [`FALLBACK_NAME`]. Empty values count as absent. In a container the host
/// name is the container id, so every replica has its own name.
pub fn backend_name(explicit: Option<&str>) -> String {
    let etc = || std::fs::read_to_string("/etc/hostname").ok();
    choose_name(
        explicit,
        std::env::var("HOSTNAME").ok().as_deref(),
        etc().as_deref(),
    )
}

/// The rule behind [`backend_name`], on given values: the first of
/// `explicit`, `hostname_env`, `etc_hostname` that is not blank (trimmed),
/// else [`FALLBACK_NAME`].
pub fn choose_name(
    explicit: Option<&str>,
    hostname_env: Option<&str>,
    etc_hostname: Option<&str>,
) -> String {
    [explicit, hostname_env, etc_hostname]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or(FALLBACK_NAME)
        .to_owned()
}

/// The health URL of a backend listening on `listen`: an unspecified
/// address (`0.0.0.0`, `::`) is reached through loopback.
pub fn health_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/health", SocketAddr::new(ip, listen.port()))
}

/// One `GET url` (plain `http://` only) within `timeout`, connection
/// included: `Ok` with the status when it is 2xx, else `Err` saying what
/// went wrong. What a container health check runs.
pub async fn check(url: &str, timeout: Duration) -> Result<StatusCode, String> {
    match tokio::time::timeout(timeout, probe(url)).await {
        Ok(result) => result.map_err(|why| format!("{url}: {why}")),
        Err(_) => Err(format!("{url}: no answer within {timeout:?}")),
    }
}

async fn probe(url: &str) -> Result<StatusCode, String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs can be checked".to_owned());
    }
    let authority = uri
        .authority()
        .ok_or_else(|| "the URL has no host".to_owned())?
        .clone();
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = authority.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let request = Request::get(target)
        .header(HOST, authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    if status.is_success() {
        Ok(status)
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_capped_at_sixty_seconds() {
        assert_eq!(delay_for(0), Duration::ZERO);
        assert_eq!(delay_for(250), Duration::from_millis(250));
        assert_eq!(delay_for(60_000), MAX_DELAY);
        assert_eq!(delay_for(60_001), MAX_DELAY);
        assert_eq!(delay_for(u64::MAX), Duration::from_secs(60));
    }
}
