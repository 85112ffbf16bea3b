//! `shardcache up`: a local cluster of real processes for trying shardcache out.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::harness::{ClusterSpec, LocalCluster};

/// Start a local cluster (masters + aux nodes) and run it until Ctrl-C.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Number of master nodes.
    #[arg(long, env = "SHARDCACHE_MASTERS", default_value_t = 1)]
    pub masters: usize,

    /// Number of aux nodes (more than k+m leaves room to lose nodes and re-protect).
    #[arg(long, env = "SHARDCACHE_AUX_NODES", default_value_t = 6)]
    pub aux_nodes: usize,

    /// k: data shards per value.
    #[arg(long, env = "SHARDCACHE_DATA_SHARDS", default_value_t = 3)]
    pub data_shards: u8,

    /// m: parity shards per value.
    #[arg(long, env = "SHARDCACHE_PARITY_SHARDS", default_value_t = 2)]
    pub parity_shards: u8,

    /// Interface every node listens on.
    #[arg(long, env = "SHARDCACHE_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port of the first master; further masters count up from it. 0 = any free port.
    #[arg(long, env = "SHARDCACHE_MASTER_PORT", default_value_t = 8080)]
    pub master_port: u16,

    /// Port of the first aux node; further aux nodes count up from it. 0 = any.
    #[arg(long, env = "SHARDCACHE_AUX_PORT", default_value_t = 7101)]
    pub aux_port: u16,

    /// Where node data (`aux-N/`) and logs (`logs/`) go.
    #[arg(long, env = "SHARDCACHE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Memory capacity of each aux node, e.g. 256MiB.
    #[arg(long, env = "SHARDCACHE_CAPACITY", default_value = "256MiB")]
    pub capacity: String,
}

impl UpArgs {
    fn validate(&self) -> anyhow::Result<()> {
        let (k, m) = (
            usize::from(self.data_shards),
            usize::from(self.parity_shards),
        );
        if self.masters == 0 {
            bail!("--masters must be at least 1");
        }
        if k == 0 {
            bail!("--data-shards must be at least 1");
        }
        if k + m > self.aux_nodes {
            bail!(
                "--data-shards {k} + --parity-shards {m} needs at least {} aux nodes, --aux-nodes is {}",
                k + m,
                self.aux_nodes
            );
        }
        Ok(())
    }

    fn spec(&self) -> ClusterSpec {
        ClusterSpec {
            masters: self.masters,
            aux_nodes: self.aux_nodes,
            data_shards: self.data_shards,
            parity_shards: self.parity_shards,
            aux_checks_geometry: true,
            host: self.host,
            master_port: self.master_port,
            aux_port: self.aux_port,
            data_dir: self.data_dir.clone(),
            aux_args: vec!["--capacity".into(), self.capacity.clone()],
            master_args: Vec::new(),
        }
    }
}

/// Starts the cluster, prints where everything is, and waits for Ctrl-C/SIGTERM.
pub fn up(args: UpArgs) -> anyhow::Result<()> {
    args.validate()?;
    let exe = std::env::current_exe().context("find the shardcache executable")?;
    let mut cluster = LocalCluster::start(exe, args.spec())?;
    print_banner(&cluster);
    shardcache_common::runtime::block_on(watch(&mut cluster));
    println!("stopping the cluster…");
    cluster.stop();
    println!("stopped");
    Ok(())
}

fn print_banner(cluster: &LocalCluster) {
    let spec = &cluster.spec;
    println!(
        "shardcache is up: {} master(s), {} aux nodes, {}+{} Reed-Solomon (survives {} aux node failures)",
        spec.masters, spec.aux_nodes, spec.data_shards, spec.parity_shards, spec.parity_shards
    );
    for node in &cluster.masters {
        println!(
            "  {:<9} http://{:<21} log {}",
            node.name,
            node.addr,
            node.log_path.display()
        );
    }
    for node in &cluster.aux {
        println!(
            "  {:<9} {:<28} log {}",
            node.name,
            node.addr,
            node.log_path.display()
        );
    }
    let master = cluster.masters[0].addr;
    println!("try:");
    println!("  curl -X POST {master}/data -d '{{\"key\":\"fruit\",\"value\":\"cherry\"}}'");
    println!("  curl {master}/data/fruit");
    println!("Ctrl-C stops every node.");
}

/// Waits for Ctrl-C or SIGTERM, reporting any node that exits on its own meanwhile.
async fn watch(cluster: &mut LocalCluster) {
    let mut reported = std::collections::HashSet::new();
    let shutdown = shardcache_common::runtime::shutdown_signal(false);
    tokio::pin!(shutdown);
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => {
                for node in cluster.nodes_mut() {
                    if !node.is_running() && reported.insert(node.name.clone()) {
                        eprintln!("{} exited; its log:\n{}", node.name, node.log_tail(10));
                    }
                }
            }
        }
    }
}
