//! The ledger's processes under test and their supervisor: a slot per
//! process (an engine, the projector, the query API, or the embedded
//! server), restarted when it exits unless a fault holds it down, as an
//! orchestrator would.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::support::{self, Process};

/// What a slot's process serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `ledger command-api` with its engine worker: command URL `index`.
    Engine(usize),
    Projector,
    QueryApi,
    /// `ledger serve`: the command URL and the query URL.
    Serve,
}

/// A started process, and the query URL of an embedded server.
pub struct Started {
    pub process: Process,
    pub query_url: Option<String>,
}

pub type Starter = Arc<dyn Fn() -> Result<Started, String> + Send + Sync>;

pub struct Slot {
    pub role: Role,
    /// The uid the process runs as (an engine's, for partitions), if not ours.
    pub uid: Option<u32>,
    starter: Starter,
    process: Option<Process>,
    /// Held down by a fault: not restarted while set.
    held: bool,
    pub restarts: u32,
}

/// Where the workload sends commands and reads.
#[derive(Clone, Default)]
pub struct Urls {
    pub commands: Vec<String>,
    pub query: String,
}

/// The log lines of one process the stack started.
type ProcessLog = Arc<Mutex<std::collections::VecDeque<String>>>;

pub struct Stack {
    pub slots: Vec<tokio::sync::Mutex<Slot>>,
    urls: RwLock<Urls>,
    supervising: AtomicBool,
    /// Every process started, in order: its role and its log.
    logs: Mutex<Vec<(Role, ProcessLog)>>,
}

impl Stack {
    /// Starts every slot's process (each waits until it listens).
    pub async fn start(slots: Vec<(Role, Option<u32>, Starter)>) -> Result<Arc<Stack>, String> {
        let engines = slots
            .iter()
            .filter(|(role, _, _)| matches!(role, Role::Engine(_) | Role::Serve))
            .count();
        let stack = Arc::new(Stack {
            slots: slots
                .into_iter()
                .map(|(role, uid, starter)| {
                    tokio::sync::Mutex::new(Slot {
                        role,
                        uid,
                        starter,
                        process: None,
                        held: false,
                        restarts: 0,
                    })
                })
                .collect(),
            urls: RwLock::new(Urls {
                commands: vec![String::new(); engines],
                query: String::new(),
            }),
            supervising: AtomicBool::new(false),
            logs: Mutex::new(Vec::new()),
        });
        for slot in &stack.slots {
            let mut slot = slot.lock().await;
            stack.launch(&mut slot).await?;
            slot.restarts = 0;
        }
        Ok(stack)
    }

    /// A command URL for attempt `attempt` (round robin over the engines).
    pub fn command_url(&self, attempt: usize) -> String {
        let urls = self.urls.read().expect("urls lock");
        urls.commands[attempt % urls.commands.len()].clone()
    }

    pub fn query_url(&self) -> String {
        self.urls.read().expect("urls lock").query.clone()
    }

    async fn launch(&self, slot: &mut Slot) -> Result<(), String> {
        let starter = slot.starter.clone();
        let started = tokio::task::spawn_blocking(move || starter())
            .await
            .map_err(|error| format!("starter task failed: {error}"))??;
        {
            let mut urls = self.urls.write().expect("urls lock");
            match slot.role {
                Role::Engine(index) => urls.commands[index] = started.process.url.clone(),
                Role::QueryApi => urls.query = started.process.url.clone(),
                Role::Serve => {
                    urls.commands[0] = started.process.url.clone();
                    urls.query = started.query_url.clone().unwrap_or_default();
                }
                Role::Projector => {}
            }
        }
        self.logs
            .lock()
            .expect("logs lock")
            .push((slot.role, started.process.log.clone()));
        slot.process = Some(started.process);
        slot.restarts += 1;
        Ok(())
    }

    /// Writes the log of every process started so far into `directory`,
    /// one file per process, numbered in the order they started
    /// (`03-engine1.log`: the fourth process started, engine 1), for the
    /// inspection of a failed run.
    pub fn write_logs(&self, directory: &std::path::Path) -> Result<(), String> {
        std::fs::create_dir_all(directory)
            .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
        for (number, (role, log)) in self.logs.lock().expect("logs lock").iter().enumerate() {
            let name = match role {
                Role::Engine(index) => format!("engine{index}"),
                Role::Projector => "projector".to_string(),
                Role::QueryApi => "query-api".to_string(),
                Role::Serve => "serve".to_string(),
            };
            let path = directory.join(format!("{number:02}-{name}.log"));
            let mut text = String::new();
            for line in log.lock().expect("log lock").iter() {
                text.push_str(line);
                text.push('\n');
            }
            std::fs::write(&path, text)
                .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        }
        Ok(())
    }

    /// Restarts every slot whose process is gone and not held down; the
    /// errors of those that could not start yet.
    pub async fn ensure_running(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for slot in &self.slots {
            let mut slot = slot.lock().await;
            if slot.held {
                continue;
            }
            let alive = match slot.process.as_mut() {
                Some(process) => matches!(process.child.try_wait(), Ok(None)),
                None => false,
            };
            if !alive {
                slot.process = None;
                if let Err(error) = self.launch(&mut slot).await {
                    errors.push(error);
                }
            }
        }
        errors
    }

    /// Restarts exited processes every 300 ms until [`Stack::stop_supervising`].
    pub fn supervise(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.supervising.store(true, Ordering::SeqCst);
        let stack = self.clone();
        tokio::spawn(async move {
            while stack.supervising.load(Ordering::SeqCst) {
                stack.ensure_running().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    }

    pub fn stop_supervising(&self) {
        self.supervising.store(false, Ordering::SeqCst);
    }

    /// Every slot running (restarting what is not), within `patience`.
    pub async fn wait_all_running(&self, patience: Duration) -> Result<(), String> {
        let deadline = Instant::now() + patience;
        loop {
            let errors = self.ensure_running().await;
            let mut running = errors.is_empty();
            for slot in &self.slots {
                let mut slot = slot.lock().await;
                let alive = match slot.process.as_mut() {
                    Some(process) => matches!(process.child.try_wait(), Ok(None)),
                    None => false,
                };
                running &= alive;
            }
            if running {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the ledger's processes did not all run again within {patience:?}: {errors:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The pid of slot `index`'s process, if it runs.
    pub async fn pid(&self, index: usize) -> Option<u32> {
        let slot = self.slots[index].lock().await;
        slot.process.as_ref().map(|process| process.child.id())
    }

    /// `kill -9` of slot `index`, held down until [`Stack::release`].
    pub async fn kill_and_hold(&self, index: usize) {
        let mut slot = self.slots[index].lock().await;
        slot.held = true;
        if let Some(mut process) = slot.process.take() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }

    pub async fn release(&self, index: usize) {
        self.slots[index].lock().await.held = false;
    }

    /// SIGSTOP or SIGCONT (`signal` as `kill` names it) to slot `index`.
    pub async fn signal(&self, index: usize, signal: &str) {
        if let Some(pid) = self.pid(index).await {
            send_signal(pid, signal);
        }
    }

    /// SIGCONT to every process (a heal step: nothing stays paused).
    pub async fn resume_all(&self) {
        for index in 0..self.slots.len() {
            self.signal(index, "CONT").await;
        }
    }

    /// Stops slot `index` as an orchestrator does (SIGTERM, then a grace
    /// period), held down afterwards.
    pub async fn stop(&self, index: usize) {
        let process = {
            let mut slot = self.slots[index].lock().await;
            slot.held = true;
            slot.process.take()
        };
        if let Some(process) = process {
            let _ = tokio::task::spawn_blocking(move || process.stop()).await;
        }
    }

    /// Every slot stopped with SIGTERM.
    pub async fn stop_all(&self) {
        self.stop_supervising();
        for index in 0..self.slots.len() {
            self.stop(index).await;
        }
    }

    /// Restarts of processes after the first start, all slots together.
    pub async fn restarts(&self) -> u32 {
        let mut total = 0;
        for slot in &self.slots {
            total += slot.lock().await.restarts;
        }
        total
    }
}

pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// A starter for a distributed service (`command-api`, `projector`,
/// `query-api`) with `environment`, as `uid` when given.
pub fn service_starter(
    role: &'static str,
    environment: Vec<(String, String)>,
    uid: Option<u32>,
) -> Starter {
    Arc::new(move || {
        support::try_start(role, &environment, uid, Duration::from_secs(60)).map(|process| {
            Started {
                process,
                query_url: None,
            }
        })
    })
}

/// A starter for `ledger serve` on `data_dir` (4 shards).
pub fn serve_starter(data_dir: PathBuf, secret: String) -> Starter {
    Arc::new(move || start_serve(&data_dir, &secret))
}

fn start_serve(data_dir: &std::path::Path, secret: &str) -> Result<Started, String> {
    let mut child = Command::new(support::ledger_binary())
        .args([
            "serve",
            "--command-addr",
            "127.0.0.1:0",
            "--query-addr",
            "127.0.0.1:0",
            "--shards",
            "4",
        ])
        .env("LEDGER_DATA_DIR", data_dir)
        .env("LEDGER_JWT_SECRET", secret)
        .env("RUST_LOG", "warn")
        // Load that buys faster than a person: no purchase rate limits.
        .env("LEDGER_PURCHASE_LIMIT", "0")
        .env("LEDGER_ITEM_REQUEST_INTERVAL", "0s")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot start ledger serve: {error}"))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let log = Arc::new(Mutex::new(std::collections::VecDeque::new()));
    let kept = log.clone();
    let (addresses, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("command API: ") {
                let _ = addresses.send((true, url.trim().to_string()));
            } else if let Some(url) = line.strip_prefix("query API:") {
                let _ = addresses.send((false, url.trim().to_string()));
            }
            let mut log = kept.lock().expect("log lock");
            if log.len() == support::LOG_LINES_KEPT {
                log.pop_front();
            }
            log.push_back(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut command_url, mut query_url) = (String::new(), String::new());
    while command_url.is_empty() || query_url.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok((true, url)) => command_url = url,
            Ok((false, url)) => query_url = url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let last: Vec<String> = log
                    .lock()
                    .expect("log lock")
                    .iter()
                    .rev()
                    .take(3)
                    .cloned()
                    .collect();
                return Err(format!(
                    "ledger serve did not listen within 60 s; last log lines: {last:?}"
                ));
            }
        }
    }
    Ok(Started {
        process: Process {
            child,
            url: command_url,
            log,
        },
        query_url: Some(query_url),
    })
}
