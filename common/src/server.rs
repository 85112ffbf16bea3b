//! The HTTP/1.1 serve loop of the aux node's internal port and the master's client
//! port, with the two limits `axum::serve` does not offer: a client must send a
//! request's headers within [`ServerLimits::header_read_timeout`] (else its
//! connection is closed), and at most [`ServerLimits::max_connections`] connections
//! are served at once (a connection beyond that is closed as soon as it is
//! accepted). Request bodies are
//! bounded by the routes' own limits (`crate::http_limits`).
//!
//! On `shutdown` it stops accepting and waits for the connections it serves to
//! finish their requests (the caller bounds that wait).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The serve loop's limits.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Longest a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
}

impl ServerLimits {
    /// Why these limits cannot be served with, if they cannot (the flags'
    /// names: `--header-read-timeout`, `--max-connections`).
    pub fn check(&self) -> Result<(), String> {
        if self.header_read_timeout.is_zero() {
            return Err("--header-read-timeout must be greater than zero".into());
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        Ok(())
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: give the others time to finish.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = limits.max_connections,
                "too many connections; closed a new one"
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
