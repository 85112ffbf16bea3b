//! A TCP relay that makes one aux node slow: `shardcache bench` puts it between
//! the masters and one aux node to measure what a node that answers 5 ms late
//! costs a read.
//!
//! It accepts connections on a loopback port and, for each, connects to the
//! upstream address and forwards bytes both ways, holding every chunk it reads for
//! a fixed delay before writing it on. Each direction is a queue: a chunk is due at
//! its arrival time plus the delay and is written at that time, in order, so chunks
//! that arrive together leave together and delays never add up along a connection
//! (only a peer that reads slowly holds later chunks back, as it would anyway). An
//! end of stream is passed on as a half-close, after the same delay. The relay runs
//! on a runtime of its own, in the benchmark's process, until dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Largest chunk read at once.
const CHUNK_BYTES: usize = 64 * 1024;

/// Most chunks held per direction of one connection; a full queue stops reading.
const QUEUED_CHUNKS: usize = 256;

/// A running relay; dropping it closes every connection it relays.
pub struct DelayProxy {
    /// Where to connect instead of the upstream.
    pub addr: SocketAddr,
    pub upstream: SocketAddr,
    pub delay: Duration,
    runtime: Option<tokio::runtime::Runtime>,
}

impl DelayProxy {
    /// Listens on a free loopback port and relays every connection to `upstream`,
    /// each chunk `delay` late.
    pub fn start(upstream: SocketAddr, delay: Duration) -> anyhow::Result<DelayProxy> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("bind the delay proxy")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("delay-proxy")
            .enable_all()
            .build()
            .context("build the delay proxy's runtime")?;
        runtime.spawn(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => accept_loop(listener, upstream, delay).await,
                Err(error) => tracing::error!(%error, "delay proxy cannot listen"),
            }
        });
        Ok(DelayProxy {
            addr,
            upstream,
            delay,
            runtime: Some(runtime),
        })
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, delay: Duration) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(async move {
                    if let Err(error) = relay(client, upstream, delay).await {
                        tracing::debug!(%error, "delay proxy connection ended");
                    }
                });
            }
            Err(error) => {
                // Out of file descriptors, say: let others finish first.
                tracing::warn!(%error, "delay proxy cannot accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Relays one connection both ways until both directions have ended, or either
/// fails (which drops the other).
async fn relay(client: TcpStream, upstream: SocketAddr, delay: Duration) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (from_client, to_client) = client.into_split();
    let (from_server, to_server) = server.into_split();
    tokio::try_join!(
        delayed_copy(from_client, to_server, delay),
        delayed_copy(from_server, to_client, delay),
    )?;
    Ok(())
}

/// One direction: a reader that stamps each chunk with the time it is due, and a
/// writer that writes each at that time, in order. `None` is the end of stream.
async fn delayed_copy(
    mut reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    delay: Duration,
) -> std::io::Result<()> {
    let (queue, mut due) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(QUEUED_CHUNKS);
    let read_side = async move {
        // Read into one buffer and queue copies of what arrived: a queued chunk
        // holds its bytes, not a 64 KiB allocation each.
        let mut buffer = vec![0; CHUNK_BYTES];
        loop {
            let read = reader.read(&mut buffer).await?;
            let arrived = Instant::now();
            let item = match read {
                0 => None,
                read => Some(buffer[..read].to_vec()),
            };
            let finished = item.is_none();
            if queue.send((arrived + delay, item)).await.is_err() {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            if finished {
                return Ok(());
            }
        }
    };
    let write_side = async move {
        while let Some((at, item)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            match item {
                Some(chunk) => writer.write_all(&chunk).await?,
                None => {
                    writer.shutdown().await?;
                    break;
                }
            }
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::try_join!(read_side, write_side)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    use super::*;

    /// A server that echoes everything back on each connection it accepts.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut buffer = [0; 4096];
                    loop {
                        match stream.read(&mut buffer) {
                            Ok(0) | Err(_) => return,
                            Ok(read) => {
                                if stream.write_all(&buffer[..read]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    #[test]
    fn a_round_trip_is_delayed_both_ways_and_bytes_arrive_intact() {
        let delay = Duration::from_millis(30);
        let proxy = DelayProxy::start(echo_server(), delay).unwrap();
        let mut stream = connect(proxy.addr);
        let message: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sent = Instant::now();
        stream.write_all(&message).unwrap();
        let mut echoed = vec![0; message.len()];
        stream.read_exact(&mut echoed).unwrap();
        assert!(
            sent.elapsed() >= 2 * delay,
            "took {:?}, less than twice the delay",
            sent.elapsed()
        );
        assert_eq!(echoed, message);
        // The end of stream is relayed: the echo server closes, so does the proxy.
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(stream.read(&mut [0; 16]).unwrap(), 0);
    }

    #[test]
    fn chunks_in_flight_are_delayed_together_in_order_not_one_after_another() {
        let delay = Duration::from_millis(50);
        let chunks = 10;
        let proxy = DelayProxy::start(echo_server(), delay).unwrap();
        let mut stream = connect(proxy.addr);
        let mut reader = stream.try_clone().unwrap();
        let started = Instant::now();
        let collect = std::thread::spawn(move || {
            let mut received = Vec::new();
            let mut first_at = None;
            let mut buffer = [0; 1024];
            while received.len() < chunks * 8 {
                let read = reader.read(&mut buffer).unwrap();
                assert!(read > 0, "closed early");
                first_at.get_or_insert_with(|| started.elapsed());
                received.extend_from_slice(&buffer[..read]);
            }
            (received, first_at.unwrap(), started.elapsed())
        });
        let mut expected = Vec::new();
        for index in 0..chunks as u64 {
            let bytes = index.to_be_bytes();
            stream.write_all(&bytes).unwrap();
            expected.extend_from_slice(&bytes);
            std::thread::sleep(Duration::from_millis(3));
        }
        let (received, first_at, last_at) = collect.join().unwrap();
        assert_eq!(received, expected, "bytes out of order or altered");
        assert!(
            first_at >= 2 * delay,
            "the first echo came after {first_at:?}, less than the delay both ways"
        );
        // One after another would take chunks × delay or more.
        assert!(
            last_at < delay * chunks as u32 / 2,
            "the last echo came after {last_at:?}: delays added up"
        );
    }
}
