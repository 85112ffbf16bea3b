//! Command-line and environment configuration of a master node.

use std::net::SocketAddr;
use std::time::Duration;

use shardcache_common::frame::MAX_KEY_BYTES;
use shardcache_common::geometry::Geometry;
use shardcache_common::runtime::NodeArgs;
use shardcache_common::server::ServerLimits;
use shardcache_common::units::{ByteSize, HumanDuration};
use shardcache_common::{multi_get, multi_put};

/// A shardcache master: the stateless HTTP/JSON API that erasure-codes values
/// across aux nodes.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "shardcache-master", version)]
pub struct MasterConfig {
    /// Address to serve the client API on (port 0 picks a free port).
    #[arg(long, env = "SHARDCACHE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub node: NodeArgs,

    /// Aux nodes as host:port, comma-separated. Every master should be given the
    /// same set (order does not matter); nodes can also be added at run time
    /// (`POST /cluster/nodes`) or discovered with --aux-dns.
    #[arg(
        long,
        env = "SHARDCACHE_AUX",
        value_delimiter = ',',
        required_unless_present = "aux_dns"
    )]
    pub aux: Vec<String>,

    /// A host:port whose name resolves to many aux nodes (a Kubernetes headless
    /// service, a scaled compose service); re-resolved every --dns-refresh.
    #[arg(long, env = "SHARDCACHE_AUX_DNS")]
    pub aux_dns: Option<String>,

    /// How often --aux-dns is resolved again.
    #[arg(long, env = "SHARDCACHE_DNS_REFRESH", default_value = "10s")]
    pub dns_refresh: HumanDuration,

    /// How often every aux node's health is probed.
    #[arg(long, env = "SHARDCACHE_PROBE_INTERVAL", default_value = "1s")]
    pub probe_interval: HumanDuration,

    /// Deadline of one health probe.
    #[arg(long, env = "SHARDCACHE_PROBE_TIMEOUT", default_value = "500ms")]
    pub probe_timeout: HumanDuration,

    /// Consecutive failed probes after which a node is suspect.
    #[arg(long, env = "SHARDCACHE_SUSPECT_AFTER", default_value_t = 1)]
    pub suspect_after: u32,

    /// Consecutive failed probes after which a node is down: skipped by placement,
    /// never waited for.
    #[arg(long, env = "SHARDCACHE_DOWN_AFTER", default_value_t = 3)]
    pub down_after: u32,

    /// How long a down node may stay away before its shards are rebuilt on other
    /// nodes.
    #[arg(long, env = "SHARDCACHE_REPAIR_GRACE", default_value = "30s")]
    pub repair_grace: HumanDuration,

    /// Time between full anti-entropy passes when membership is stable (passes also
    /// start whenever placement changes).
    #[arg(long, env = "SHARDCACHE_REPAIR_INTERVAL", default_value = "10m")]
    pub repair_interval: HumanDuration,

    /// Age after which repair drops a version that never reached k shards (a write
    /// that died half-way), so that the newest readable version gets back to k+m
    /// shards. Longer than any write takes, plus the masters' clock skew.
    #[arg(long, env = "SHARDCACHE_REPAIR_ABANDON_AFTER", default_value = "60s")]
    pub repair_abandon_after: HumanDuration,

    /// Most keys repaired at once: the upper bound of the repair budget, which
    /// starts a pass at 16 keys in flight and raises or lowers that with the
    /// clients' latency (and keeps at most 64 MiB of shards in flight).
    #[arg(long, env = "SHARDCACHE_REPAIR_CONCURRENCY", default_value_t = 1024)]
    pub repair_concurrency: usize,

    /// k: data shards per value. Any k shards rebuild it.
    #[arg(long, env = "SHARDCACHE_DATA_SHARDS", default_value_t = 3)]
    pub data_shards: u8,

    /// m: parity shards per value. Values survive the loss of any m aux nodes.
    #[arg(long, env = "SHARDCACHE_PARITY_SHARDS", default_value_t = 2)]
    pub parity_shards: u8,

    /// Shards that must be stored before a write or delete is acknowledged
    /// (k..=k+m; default k+1, capped at k+m).
    #[arg(long, env = "SHARDCACHE_WRITE_QUORUM")]
    pub write_quorum: Option<u8>,

    /// Deadline of every call to an aux node (connect, request and response).
    #[arg(long, env = "SHARDCACHE_SHARD_TIMEOUT", default_value = "500ms")]
    pub shard_timeout: HumanDuration,

    /// Most shard reads sent to one aux node in one multi-get request; 1 turns
    /// batching off (one GET per shard). Reads are never held back to fill a batch.
    #[arg(long, env = "SHARDCACHE_READ_BATCH_MAX", default_value_t = 64)]
    pub read_batch_max: usize,

    /// Multi-get requests in flight to one aux node at a time; reads arriving while
    /// all are busy wait and go out together in the next one.
    #[arg(long, env = "SHARDCACHE_READ_BATCH_IN_FLIGHT", default_value_t = 2)]
    pub read_batch_in_flight: usize,

    /// Most shard writes sent to one aux node in one multi-put request; 1 turns
    /// batching off (one PUT per shard). Writes are never held back to fill a batch.
    #[arg(long, env = "SHARDCACHE_WRITE_BATCH_MAX", default_value_t = 64)]
    pub write_batch_max: usize,

    /// Most frame bytes in one multi-put request; a larger shard goes alone. Keep
    /// it well below the aux nodes' `--max-request-size`.
    #[arg(long, env = "SHARDCACHE_WRITE_BATCH_BYTES", default_value = "1MiB")]
    pub write_batch_bytes: ByteSize,

    /// Multi-put requests in flight to one aux node at a time; writes arriving while
    /// all are busy wait and go out together in the next one.
    #[arg(long, env = "SHARDCACHE_WRITE_BATCH_IN_FLIGHT", default_value_t = 2)]
    pub write_batch_in_flight: usize,

    /// Longest key, in UTF-8 bytes.
    #[arg(long, env = "SHARDCACHE_MAX_KEY_SIZE", default_value = "1KiB")]
    pub max_key_size: ByteSize,

    /// Largest value, in bytes. Request bodies may be up to twice this (JSON escaping).
    #[arg(long, env = "SHARDCACHE_MAX_VALUE_SIZE", default_value = "8MiB")]
    pub max_value_size: ByteSize,

    /// How long a delete's tombstone is kept, so that a node which missed the delete
    /// cannot bring the value back within that time.
    #[arg(long, env = "SHARDCACHE_TOMBSTONE_TTL", default_value = "24h")]
    pub tombstone_ttl: HumanDuration,

    /// Longest a client may take to send a request's headers before its connection
    /// is closed (an idle keep-alive connection counts). Keep it above nginx's
    /// upstream `keepalive_timeout` (60 s in the shipped `nginx.conf`), so that
    /// nginx, not the master, closes idle connections.
    #[arg(long, env = "SHARDCACHE_HEADER_READ_TIMEOUT", default_value = "75s")]
    pub header_read_timeout: HumanDuration,

    /// Repair without taking the lease (tests only: proves that concurrent repairs
    /// are harmless).
    #[arg(long, hide = true)]
    pub repair_ignore_lease: bool,
}

/// Longest TTL accepted, so expiry arithmetic can never overflow: 10 years.
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

impl MasterConfig {
    /// The serve loop's limits from `--header-read-timeout` and `--max-connections`.
    pub fn server_limits(&self) -> ServerLimits {
        ServerLimits {
            header_read_timeout: self.header_read_timeout.0,
            max_connections: self.node.max_connections,
        }
    }

    /// The geometry from `--data-shards` and `--parity-shards` (checked by
    /// [`validate`](Self::validate)).
    pub fn geometry(&self) -> Geometry {
        Geometry {
            data_shards: self.data_shards,
            parity_shards: self.parity_shards,
        }
    }

    /// Checks what clap cannot, with a message that names the flag.
    pub fn validate(&self) -> Result<(), String> {
        let (k, m) = (
            usize::from(self.data_shards),
            usize::from(self.parity_shards),
        );
        if k == 0 {
            return Err("--data-shards must be at least 1".into());
        }
        if k + m > 255 {
            return Err("--data-shards + --parity-shards must be at most 255".into());
        }
        let mut distinct = self.aux.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.iter().any(|node| node.trim().is_empty()) {
            return Err("--aux contains an empty address".into());
        }
        if self.aux_dns.is_none() && distinct.len() < k + m {
            return Err(format!(
                "--data-shards {k} + --parity-shards {m} needs at least {} distinct aux nodes, --aux lists {}",
                k + m,
                distinct.len()
            ));
        }
        let quorum = usize::from(self.write_quorum());
        if quorum < k || quorum > k + m {
            return Err(format!("--write-quorum must be between {k} and {}", k + m));
        }
        self.server_limits().check()?;
        if self.shard_timeout.0 < Duration::from_millis(1) {
            return Err("--shard-timeout must be at least 1ms".into());
        }
        if self.max_key_size.bytes() == 0 || self.max_key_size.bytes() > MAX_KEY_BYTES as u64 {
            return Err(format!(
                "--max-key-size must be between 1B and {MAX_KEY_BYTES}B"
            ));
        }
        if self.max_value_size.bytes() > 1 << 30 {
            return Err("--max-value-size must be at most 1GiB".into());
        }
        if self.suspect_after == 0 || self.down_after < self.suspect_after {
            return Err(
                "--suspect-after must be at least 1 and --down-after at least --suspect-after"
                    .into(),
            );
        }
        for (flag, value) in [
            ("--probe-interval", self.probe_interval.0),
            ("--probe-timeout", self.probe_timeout.0),
            ("--dns-refresh", self.dns_refresh.0),
            ("--repair-interval", self.repair_interval.0),
        ] {
            if value < Duration::from_millis(1) {
                return Err(format!("{flag} must be at least 1ms"));
            }
        }
        if self.read_batch_max == 0 || self.read_batch_max > multi_get::MAX_KEYS {
            return Err(format!(
                "--read-batch-max must be between 1 and {}",
                multi_get::MAX_KEYS
            ));
        }
        if self.read_batch_in_flight == 0 {
            return Err("--read-batch-in-flight must be at least 1".into());
        }
        if self.write_batch_max == 0 || self.write_batch_max > multi_put::MAX_FRAMES {
            return Err(format!(
                "--write-batch-max must be between 1 and {}",
                multi_put::MAX_FRAMES
            ));
        }
        if self.write_batch_in_flight == 0 {
            return Err("--write-batch-in-flight must be at least 1".into());
        }
        if self.repair_concurrency == 0 {
            return Err("--repair-concurrency must be at least 1".into());
        }
        Ok(())
    }

    /// The write quorum in effect: the flag, or k+1 capped at k+m.
    pub fn write_quorum(&self) -> u8 {
        self.write_quorum.unwrap_or_else(|| {
            (self.data_shards.saturating_add(1))
                .min(self.data_shards.saturating_add(self.parity_shards))
        })
    }

    /// Largest request body: room for a fully escaped value and key.
    pub fn max_body_bytes(&self) -> usize {
        (2 * self.max_value_size.bytes() + 6 * self.max_key_size.bytes() + 4096) as usize
    }
}
