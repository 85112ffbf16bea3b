//! The nemesis: SIGKILLs, restarts and SIGSTOPs of aux nodes (never more than `m`
//! impaired at once) and a master killed and restarted.

use super::*;

/// A master started by this test in place of a killed one, on the same address and
/// log, with the same flags; killed when dropped.
pub(super) struct RestartedMaster {
    pub(super) child: Child,
}

impl RestartedMaster {
    pub(super) fn start(cluster: &TestCluster, index: usize) -> RestartedMaster {
        let local = &cluster.cluster;
        let spec = &local.spec;
        let node = &local.masters[index];
        let aux: Vec<String> = local.aux.iter().map(|aux| aux.addr.to_string()).collect();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("open master log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardcache"))
            .arg("master")
            .arg("--listen")
            .arg(node.addr.to_string())
            .args(["--aux", &aux.join(",")])
            .args(["--data-shards", &spec.data_shards.to_string()])
            .args(["--parity-shards", &spec.parity_shards.to_string()])
            .args(&spec.master_args)
            .arg("--stop-with-parent")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.try_clone().expect("log handle"))
            .spawn()
            .expect("start master");
        let stdout = child.stdout.take().expect("master stdout");
        let (announce, announced) = mpsc::channel();
        std::thread::spawn(move || {
            let mut log = log;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("listening on ") {
                    let _ = announce.send(());
                } else {
                    let _ = writeln!(log, "{line}");
                }
            }
        });
        let mut master = RestartedMaster { child };
        if announced.recv_timeout(Duration::from_secs(20)).is_err() {
            master.kill();
            panic!("master-{index} did not start again:\n{}", node.log_tail(20));
        }
        master
    }

    pub(super) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RestartedMaster {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Fault {
    Kill,
    Pause,
}

/// How long an aux fault lasts.
#[derive(Clone, Copy, Debug)]
pub(super) enum Until {
    /// The node is brought back at once (a restart between two probes).
    Immediately,
    /// Until every master calls it suspect or down.
    Suspect,
    /// Until every master calls it down (placement skips it).
    Down,
}

#[derive(Clone, Debug)]
pub(super) enum Action {
    Aux(Vec<(usize, Fault)>, Until),
    KillMaster,
}

/// Kills, pauses and restarts, one action at a time. An aux node counts as
/// impaired from its fault until it is back and holds, for every key it owns, a
/// version at least as new as a write acknowledged after it was back; actions never
/// impair more than `m` nodes at once, and wait for the last ones to catch up first.
pub(super) struct Nemesis {
    pub(super) load: Arc<Load>,
    pub(super) rng: StdRng,
    pub(super) events: Vec<Event>,
    pub(super) kills: usize,
    pub(super) pauses: usize,
    pub(super) master_kills: usize,
    pub(super) restarted: Vec<RestartedMaster>,
}

impl Nemesis {
    pub(super) fn log(&mut self, what: String) {
        let at = self.load.start.elapsed();
        eprintln!("nemesis {:.3}s {what}", at.as_secs_f64());
        self.events.push(Event { at, what });
    }

    /// Polls `condition` until it holds (true) or the load is over (false).
    pub(super) async fn while_loading<F, Fut>(&self, mut condition: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        loop {
            if condition().await {
                return true;
            }
            if Instant::now() >= self.load.until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until clients completed `count` more operations (or the load ended).
    pub(super) async fn let_clients_run(&self, count: usize) {
        let target = self.load.done.load(Ordering::Relaxed) + count;
        self.while_loading(|| async { self.load.done.load(Ordering::Relaxed) >= target })
            .await;
    }

    pub(super) fn next_action(&mut self, round: usize) -> Action {
        let mut nodes: Vec<usize> = (0..AUX_NODES).collect();
        for at in 0..nodes.len() {
            let other = self.rng.random_range(at..nodes.len());
            nodes.swap(at, other);
        }
        let (a, b) = (nodes[0], nodes[1]);
        let until = [Until::Immediately, Until::Suspect, Until::Down][self.rng.random_range(0..3)];
        // The first rounds cover a pause with a kill, and a master; then at random.
        let choice = if round < 2 {
            round
        } else {
            self.rng.random_range(0..6)
        };
        match choice {
            0 => Action::Aux(vec![(a, Fault::Pause), (b, Fault::Kill)], Until::Down),
            1 => Action::KillMaster,
            2 => Action::Aux(vec![(a, Fault::Kill), (b, Fault::Kill)], until),
            3 => Action::Aux(vec![(a, Fault::Kill)], until),
            4 => Action::Aux(vec![(a, Fault::Pause)], until),
            _ => Action::Aux(vec![(a, Fault::Pause), (b, Fault::Kill)], until),
        }
    }

    pub(super) async fn run(&mut self, cluster: &mut TestCluster) {
        let mut round = 0;
        while Instant::now() < self.load.until {
            let action = self.next_action(round);
            round += 1;
            match action {
                Action::Aux(victims, until) => self.aux_faults(cluster, &victims, until).await,
                Action::KillMaster => self.kill_master(cluster).await,
            }
            // Some load on a healthy cluster between faults.
            self.let_clients_run(100).await;
        }
    }

    pub(super) async fn aux_faults(
        &mut self,
        cluster: &mut TestCluster,
        victims: &[(usize, Fault)],
        until: Until,
    ) {
        assert!(victims.len() <= M, "at most m aux nodes impaired at once");
        for &(aux, fault) in victims {
            match fault {
                Fault::Kill => {
                    cluster.cluster.aux[aux].kill();
                    self.kills += 1;
                    self.log(format!("SIGKILL aux-{aux}"));
                }
                Fault::Pause => {
                    cluster.cluster.aux[aux].signal(Signal::SIGSTOP).unwrap();
                    self.pauses += 1;
                    self.log(format!("SIGSTOP aux-{aux}"));
                }
            }
        }
        let view: &TestCluster = cluster;
        let wanted: &[&str] = match until {
            Until::Immediately => &[],
            Until::Suspect => &["suspect", "down"],
            Until::Down => &["down"],
        };
        if !wanted.is_empty() {
            let reached = self
                .while_loading(|| async {
                    for &(aux, _) in victims {
                        for master in 0..2 {
                            let state = view.node_state(master, aux).await;
                            if !state.is_some_and(|state| wanted.contains(&state.as_str())) {
                                return false;
                            }
                        }
                    }
                    true
                })
                .await;
            if reached {
                self.log(format!("every master sees them {}", wanted.join(" or ")));
                self.let_clients_run(150).await;
            }
        }
        for &(aux, fault) in victims {
            match fault {
                Fault::Kill => {
                    tokio::task::block_in_place(|| cluster.cluster.restart_aux(aux))
                        .expect("restart aux");
                    self.log(format!("restarted aux-{aux}"));
                }
                Fault::Pause => {
                    cluster.cluster.aux[aux].signal(Signal::SIGCONT).unwrap();
                    self.log(format!("SIGCONT aux-{aux}"));
                }
            }
        }
        for &(aux, _) in victims {
            cluster.wait_for_state(aux, "up").await;
        }
        let back = Instant::now();
        self.log("every master sees them up".to_owned());
        let view: &TestCluster = cluster;
        let caught_up = self
            .while_loading(|| async {
                for &(aux, _) in victims {
                    if !self.caught_up(view, aux, back).await {
                        return false;
                    }
                }
                true
            })
            .await;
        self.log(match caught_up {
            true => "they caught up: no aux node impaired".to_owned(),
            false => "load over before they caught up".to_owned(),
        });
    }

    /// Whether aux node `aux` holds, for every key it owns, a version at least as
    /// new as some write acknowledged after `back` (so newer than every write
    /// acknowledged before it was back, by real-time order).
    pub(super) async fn caught_up(&self, view: &TestCluster, aux: usize, back: Instant) -> bool {
        let owned: Vec<String> = (0..KEYS)
            .map(key_name)
            .filter(|key| view.owners(key).contains(&aux))
            .collect();
        let mut needed: HashMap<String, Version> = HashMap::new();
        {
            let acked = self.load.acked.lock().unwrap();
            for key in &owned {
                let oldest_since = acked.get(key).and_then(|writes| {
                    writes
                        .iter()
                        .filter(|(invoked, _)| *invoked > back)
                        .map(|(_, version)| *version)
                        .min()
                });
                match oldest_since {
                    Some(version) => needed.insert(key.clone(), version),
                    None => return false,
                };
            }
        }
        let held: HashMap<String, Version> = view
            .aux_inventory(aux)
            .await
            .into_iter()
            .map(|entry| (entry.key, entry.version))
            .collect();
        needed
            .iter()
            .all(|(key, version)| held.get(key).is_some_and(|held| held >= version))
    }

    pub(super) async fn kill_master(&mut self, cluster: &mut TestCluster) {
        match self.restarted.pop() {
            Some(mut restarted) => restarted.kill(),
            None => cluster.cluster.masters[1].kill(),
        }
        self.master_kills += 1;
        self.log("SIGKILL master-1".to_owned());
        // Until clients have found it gone, and a little more.
        let refused = self.load.refused.load(Ordering::Relaxed);
        self.while_loading(|| async { self.load.refused.load(Ordering::Relaxed) >= refused + 3 })
            .await;
        self.let_clients_run(150).await;
        let restarted = tokio::task::block_in_place(|| RestartedMaster::start(cluster, 1));
        self.restarted.push(restarted);
        self.log("restarted master-1".to_owned());
        for aux in 0..AUX_NODES {
            cluster.wait_for_state(aux, "up").await;
        }
        self.log("master-1 sees every aux node up".to_owned());
    }
}
