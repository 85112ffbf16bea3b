//! Command-line and environment configuration of an aux node.

use std::net::SocketAddr;
use std::path::PathBuf;

use shardcache_common::geometry::Geometry;
use shardcache_common::runtime::NodeArgs;
use shardcache_common::server::ServerLimits;
use shardcache_common::units::{ByteSize, HumanDuration};

/// The store addresses 65,535 segments of at most 1 MiB.
const MAX_CAPACITY: u64 = 64 << 30;

/// A shardcache aux node: holds shards in a byte-bounded store with TTL.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "shardcache-aux", version)]
pub struct AuxConfig {
    /// Address to serve the aux API on (port 0 picks a free port).
    #[arg(long, env = "SHARDCACHE_LISTEN", default_value = "127.0.0.1:7101")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub node: NodeArgs,

    /// Directory for this node's files (snapshots); created if missing.
    #[arg(long, env = "SHARDCACHE_DATA_DIR", default_value = "./data/aux")]
    pub data_dir: PathBuf,

    /// This node's identity on the ring. Defaults to one generated on first start
    /// and kept in DATA_DIR/node-id; set it (e.g. to the pod name) when the data
    /// directory may be lost but the identity should not.
    #[arg(long, env = "SHARDCACHE_NODE_ID")]
    pub node_id: Option<String>,

    /// How often a changed store is snapshotted to DATA_DIR (also on SIGTERM).
    /// 0s disables periodic snapshots (the one at shutdown is still written).
    #[arg(long, env = "SHARDCACHE_SNAPSHOT_INTERVAL", default_value = "10s")]
    pub snapshot_interval: HumanDuration,

    /// Most memory the shard store holds (its segments and index); the oldest shards
    /// not read lately are evicted beyond it. The node's resident memory stays within
    /// 1.10 × this plus a fixed base (README, Operations). At most 64GiB.
    #[arg(long, env = "SHARDCACHE_CAPACITY", default_value = "256MiB")]
    pub capacity: ByteSize,

    /// Largest request body accepted: one shard frame, multi-get or multi-put.
    /// Larger ones are refused with 413 before they are read. Must be at least the
    /// masters' --max-value-size / k, plus 64KiB for the frame and key.
    #[arg(long, env = "SHARDCACHE_MAX_REQUEST_SIZE", default_value = "16MiB")]
    pub max_request_size: ByteSize,

    /// Longest a client may take to send a request's headers before its connection
    /// is closed. Keep it above the masters' pool idle time (30 s).
    #[arg(long, env = "SHARDCACHE_HEADER_READ_TIMEOUT", default_value = "60s")]
    pub header_read_timeout: HumanDuration,

    /// k, the data shards per value the masters write (their `--data-shards`). With
    /// `--parity-shards`, shards of any other geometry are refused (400): a master
    /// configured with another k and m gets its writes refused, rather than storing
    /// shards the other masters cannot read. Unset, any well-formed shard is taken.
    #[arg(long, env = "SHARDCACHE_DATA_SHARDS", requires = "parity_shards")]
    pub data_shards: Option<u8>,

    /// m, the parity shards per value the masters write (their `--parity-shards`);
    /// see `--data-shards`.
    #[arg(long, env = "SHARDCACHE_PARITY_SHARDS", requires = "data_shards")]
    pub parity_shards: Option<u8>,

    /// How often expired shards are swept out of memory.
    #[arg(long, env = "SHARDCACHE_SWEEP_INTERVAL", default_value = "1s")]
    pub sweep_interval: HumanDuration,
}

impl AuxConfig {
    /// The serve loop's limits from `--header-read-timeout` and `--max-connections`.
    pub fn server_limits(&self) -> ServerLimits {
        ServerLimits {
            header_read_timeout: self.header_read_timeout.0,
            max_connections: self.node.max_connections,
        }
    }

    /// Checks what clap cannot, with a message that names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.capacity.bytes() < 4096 {
            return Err(format!(
                "--capacity {} is too small: at least 4KiB is needed",
                self.capacity
            ));
        }
        if self.capacity.bytes() > MAX_CAPACITY {
            return Err(format!(
                "--capacity {} is too large: at most 64GiB per aux node (run more nodes)",
                self.capacity
            ));
        }
        if let Some(id) = &self.node_id {
            crate::identity::validate(id).map_err(|problem| format!("--node-id: {problem}"))?;
        }
        self.server_limits().check()?;
        if self.sweep_interval.0.is_zero() {
            return Err("--sweep-interval must be greater than zero".into());
        }
        if self.data_shards == Some(0) {
            return Err("--data-shards must be at least 1".into());
        }
        Ok(())
    }

    /// The geometry every stored shard must have, when configured.
    pub fn geometry(&self) -> Option<Geometry> {
        let (data_shards, parity_shards) = self.data_shards.zip(self.parity_shards)?;
        Some(Geometry {
            data_shards,
            parity_shards,
        })
    }

    /// Largest request body the aux API accepts: `--max-request-size`, and never
    /// more than the store could hold.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_request_size
            .bytes()
            .min(self.capacity.bytes())
            .min(1 << 30) as usize
    }
}
