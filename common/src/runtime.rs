//! Process plumbing shared by every shardcache binary: logging, the flags every
//! node takes ([`NodeArgs`]), binding the listener with a clear error, announcing
//! the bound address, the shutdown signal, the graceful-shutdown deadline, and
//! [`serve`], how a node process starts.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::cluster_token::ClusterTokenArgs;
use crate::units::HumanDuration;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Logs to stderr, filtered by `SHARDCACHE_LOG` (then `RUST_LOG`), `info` by default.
pub fn init_logging() {
    let filter = std::env::var("SHARDCACHE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Binds `addr` and prints the one stdout line `listening on ADDR` (the launcher and
/// the test harness read it to learn the port when a node was started on port 0).
/// The usual failures become one line an operator can act on.
pub async fn bind_and_announce(addr: SocketAddr) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::AddrInUse => {
                format!("cannot listen on {addr}: address already in use")
            }
            _ => format!("cannot listen on {addr}: {error}"),
        })?;
    let bound = listener
        .local_addr()
        .map_err(|error| format!("cannot read the address bound for {addr}: {error}"))?;
    println!("listening on {bound}");
    Ok(listener)
}

/// A server's shutdown in two steps: [`Shutdown::requested`] resolves when the signal
/// arrives (hand it to `with_graceful_shutdown`); [`Shutdown::drain_deadline`]
/// resolves `drain` later, to `select!` against the server so that lingering client
/// connections cannot keep the process alive. [`Shutdown::token`] stops workers.
#[derive(Clone, Debug)]
pub struct Shutdown {
    token: CancellationToken,
    drain: Duration,
}

impl Shutdown {
    /// Watches `signal` in a task of its own; must be called inside a runtime.
    pub fn new(signal: impl Future<Output = ()> + Send + 'static, drain: Duration) -> Self {
        let token = CancellationToken::new();
        let on_signal = token.clone();
        tokio::spawn(async move {
            signal.await;
            on_signal.cancel();
        });
        Shutdown { token, drain }
    }

    /// Cancelled once shutdown is requested (or [`Shutdown::token`] is cancelled).
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    pub async fn drain_deadline(&self) {
        self.token.cancelled().await;
        tokio::time::sleep(self.drain).await;
    }
}

/// Resolves on Ctrl-C or SIGTERM, or, when `stop_with_parent` is set, when standard
/// input reaches end of file — which happens when the launcher that holds its other
/// end dies, however it dies. That way no node outlives the cluster that started it.
pub async fn shutdown_signal(stop_with_parent: bool) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let parent_gone = async {
        if !stop_with_parent {
            return std::future::pending::<()>().await;
        }
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await;
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
        () = parent_gone => tracing::info!("parent process gone, shutting down"),
    }
}

/// `--worker-threads`, the same flag on masters and aux nodes (flattened into both
/// configurations).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct RuntimeArgs {
    /// Threads that serve requests: 1 (the default) runs every task on one thread,
    /// the cheapest per request, with no wake-ups across threads; more uses that
    /// many; 0, one per core. To use more cores, run more nodes (masters are
    /// stateless behind nginx) or raise this.
    #[arg(long, env = "SHARDCACHE_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
}

impl RuntimeArgs {
    /// Runs `future` to completion on the runtime these flags ask for.
    pub fn block_on<F: std::future::Future>(self, future: F) -> F::Output {
        block_on_with_workers(self.worker_threads, future)
    }
}

/// Runs `future` to completion on a fresh multi-threaded Tokio runtime with a
/// worker per core (see [`block_on_with_workers`]).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    block_on_with_workers(0, future)
}

/// Runs `future` to completion on a fresh Tokio runtime, then drops the runtime
/// without waiting for blocking tasks (the stdin watcher of [`shutdown_signal`]
/// never finishes on its own).
///
/// `worker_threads` 1 is a single-threaded runtime: every task runs on the calling
/// thread, so a task waking another never crosses threads (no futex wake-up, no
/// work stealing). That is what a node sharing its cores with other processes
/// wants, and the nodes' default (`--worker-threads`). More is a multi-threaded
/// runtime with that many workers; 0, one worker per core. Blocking work
/// (snapshots, the stdin watcher) has its own pool either way.
pub fn block_on_with_workers<F: std::future::Future>(
    worker_threads: usize,
    future: F,
) -> F::Output {
    let mut builder = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        workers => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
    };
    let runtime = builder
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    let output = runtime.block_on(future);
    runtime.shutdown_background();
    output
}

/// Ends the process: status 0 on success, otherwise one `error: …` line (with its
/// causes, `{:#}`) on stderr and status 1 — never a panic or a backtrace.
pub fn exit_on_error<E: std::fmt::Display>(result: Result<(), E>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::runtime::{Handle, RuntimeFlavor};

    use super::block_on_with_workers;

    #[test]
    fn one_worker_is_a_single_threaded_runtime_and_more_are_multi_threaded() {
        let flavor =
            |workers| block_on_with_workers(workers, async { Handle::current().runtime_flavor() });
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(0), RuntimeFlavor::MultiThread);
        assert_eq!(flavor(3), RuntimeFlavor::MultiThread);
        let workers = block_on_with_workers(3, async { Handle::current().metrics().num_workers() });
        assert_eq!(workers, 3);
    }
}

/// Flags that masters and aux nodes take alike, declared once and flattened into
/// both configurations (each keeps its own `--listen` and `--header-read-timeout`,
/// whose defaults differ).
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Serve `GET /metrics` on this address instead of on --listen, so the metrics
    /// need not be reachable where the API is (port 0 picks a free port).
    #[arg(long, env = "SHARDCACHE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Most client connections served at once; one more is closed as soon as it is
    /// accepted. Masters keep a pool of connections to every aux node (up to 256
    /// idle each): on aux nodes, leave room for all of them.
    #[arg(long, env = "SHARDCACHE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// How far clocks may be off. A master measures its offset to the aux nodes
    /// with its health probes and past this refuses writes (503) and reports
    /// `degraded`; it also caps how far a version read from another writer moves
    /// the master's clock. An aux node refuses shards stamped further than this
    /// ahead of its own clock (400). Synchronised hosts are within milliseconds;
    /// keep it equal on every node.
    #[arg(long, env = "SHARDCACHE_MAX_CLOCK_SKEW", default_value = "1s")]
    pub max_clock_skew: HumanDuration,

    #[command(flatten)]
    pub runtime: RuntimeArgs,

    #[command(flatten)]
    pub cluster_token: ClusterTokenArgs,

    /// Exit when standard input closes (set by the launcher, so that nodes never
    /// outlive it).
    #[arg(long, env = "SHARDCACHE_STOP_WITH_PARENT", hide = true)]
    pub stop_with_parent: bool,
}

/// A node process's configuration, as [`serve`] starts it.
pub trait NodeConfig: Sized {
    /// Where to serve the node's API.
    fn listen(&self) -> SocketAddr;
    /// The flags every node takes.
    fn node(&self) -> &NodeArgs;
    /// Checks what clap cannot, with a message that names the flag.
    fn validate(&self) -> Result<(), String>;
    /// Serves on `listener` until `shutdown` resolves.
    fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = anyhow::Result<()>>;
}

/// Runs a node process: validates its flags, binds and announces `--listen`, and
/// serves until Ctrl-C, SIGTERM or (with `--stop-with-parent`) the launcher's end.
pub async fn serve(config: impl NodeConfig) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let listener = bind_and_announce(config.listen())
        .await
        .map_err(anyhow::Error::msg)?;
    let signal = shutdown_signal(config.node().stop_with_parent);
    config.run(listener, signal).await
}
