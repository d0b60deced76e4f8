//! The faults a run injects, chosen by its seed, and how each is injected
//! and healed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::rng::Rng;
use crate::stack::Stack;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillEngine,
    PauseEngine,
    KillProjector,
    PauseProjector,
    KillQueryApi,
    PauseQueryApi,
    RestartKafka,
    RestartCassandra,
    PartitionEngineFromKafka,
    PartitionEngineFromCql,
    KillServer,
    PauseServer,
    FullDisk,
    TornWal,
}

pub const DISTRIBUTED: [Fault; 10] = [
    Fault::KillEngine,
    Fault::PauseEngine,
    Fault::KillProjector,
    Fault::PauseProjector,
    Fault::KillQueryApi,
    Fault::PauseQueryApi,
    Fault::RestartKafka,
    Fault::RestartCassandra,
    Fault::PartitionEngineFromKafka,
    Fault::PartitionEngineFromCql,
];

pub const EMBEDDED: [Fault; 4] = [
    Fault::KillServer,
    Fault::PauseServer,
    Fault::FullDisk,
    Fault::TornWal,
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillEngine => "kill -9 engine",
            Fault::PauseEngine => "SIGSTOP engine",
            Fault::KillProjector => "kill -9 projector",
            Fault::PauseProjector => "SIGSTOP projector",
            Fault::KillQueryApi => "kill -9 query API",
            Fault::PauseQueryApi => "SIGSTOP query API",
            Fault::RestartKafka => "Kafka broker crash + restart",
            Fault::RestartCassandra => "Cassandra crash + restart",
            Fault::PartitionEngineFromKafka => "engine partitioned from Kafka",
            Fault::PartitionEngineFromCql => "engine partitioned from CQL",
            Fault::KillServer => "kill -9 server (embedded)",
            Fault::PauseServer => "SIGSTOP server (embedded)",
            Fault::FullDisk => "full disk (embedded, tmpfs)",
            Fault::TornWal => "torn write at the WAL's end (embedded)",
        }
    }
}

/// One or two faults: the first cycles through `kinds` with `rotation` (so
/// consecutive runs cover every kind), the second is random.
pub fn choose(rotation: u64, rng: &mut Rng, kinds: &[Fault]) -> Vec<Fault> {
    let mut faults = vec![kinds[(rotation % kinds.len() as u64) as usize]];
    if rng.below(2) == 1 {
        faults.push(kinds[rng.index(kinds.len())]);
    }
    faults
}

/// Slot layout of a distributed stack: two engines, projector, query API.
pub const ENGINES: [usize; 2] = [0, 1];
pub const PROJECTOR: usize = 2;
pub const QUERY_API: usize = 3;
/// The embedded server's slot.
pub const SERVER: usize = 0;

/// What a fault needs to know about the run's world.
pub struct World {
    pub stack: Arc<Stack>,
    pub infra: PathBuf,
    pub kafka_port: u16,
    pub cql_port: u16,
    /// The embedded data directory.
    pub data_dir: PathBuf,
}

fn sleep_ms(rng: &mut Rng, low: u64, high: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(rng.between(low, high)))
}

/// Injects `fault`, lets it last, and heals it (a killed process is let
/// restart, a paused one resumed, a broker restarted, a rule removed, the
/// disk freed).
pub async fn inject(fault: Fault, world: &World, rng: &mut Rng) -> Result<(), String> {
    let stack = &world.stack;
    match fault {
        Fault::KillEngine | Fault::KillProjector | Fault::KillQueryApi | Fault::KillServer => {
            let slot = match fault {
                Fault::KillEngine => ENGINES[rng.index(2)],
                Fault::KillProjector => PROJECTOR,
                Fault::KillQueryApi => QUERY_API,
                _ => SERVER,
            };
            stack.kill_and_hold(slot).await;
            sleep_ms(rng, 300, 3_000).await;
            stack.release(slot).await;
        }
        Fault::PauseEngine | Fault::PauseProjector | Fault::PauseQueryApi | Fault::PauseServer => {
            let (slot, low, high) = match fault {
                // Past the 6 s session timeout about half the time: a zombie.
                Fault::PauseEngine => (ENGINES[rng.index(2)], 2_000, 10_000),
                Fault::PauseProjector => (PROJECTOR, 1_000, 8_000),
                Fault::PauseQueryApi => (QUERY_API, 1_000, 6_000),
                _ => (SERVER, 500, 5_000),
            };
            stack.signal(slot, "STOP").await;
            sleep_ms(rng, low, high).await;
            stack.signal(slot, "CONT").await;
        }
        Fault::RestartKafka | Fault::RestartCassandra => {
            let component = if fault == Fault::RestartKafka {
                "kafka"
            } else {
                "cassandra"
            };
            infra(&world.infra, &["crash", component]).await?;
            sleep_ms(rng, 500, 3_000).await;
            infra(&world.infra, &["up", component]).await?;
            infra(&world.infra, &["wait", component]).await?;
        }
        Fault::PartitionEngineFromKafka | Fault::PartitionEngineFromCql => {
            let slot = ENGINES[rng.index(2)];
            let uid = stack.slots[slot]
                .lock()
                .await
                .uid
                .ok_or("engines run under their own uid for partitions")?;
            let port = if fault == Fault::PartitionEngineFromKafka {
                world.kafka_port
            } else {
                world.cql_port
            };
            let rule = Partition::drop(uid, port)?;
            sleep_ms(rng, 2_000, 10_000).await;
            rule.heal()?;
        }
        Fault::FullDisk => {
            let filler = world.data_dir.join("filler");
            fill(&filler)?;
            sleep_ms(rng, 1_000, 4_000).await;
            std::fs::remove_file(&filler)
                .map_err(|error| format!("cannot remove {}: {error}", filler.display()))?;
        }
        Fault::TornWal => {
            stack.kill_and_hold(SERVER).await;
            let torn = tear_wal(&world.data_dir, rng);
            stack.release(SERVER).await;
            torn?;
        }
    }
    Ok(())
}

/// `scripts/infra ARGS` (the run's environment names the instance).
pub async fn infra(script: &Path, args: &[&str]) -> Result<(), String> {
    let script = script.to_path_buf();
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let output = Command::new(&script)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("cannot run {}: {error}", script.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/infra {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    })
    .await
    .map_err(|error| format!("infra task failed: {error}"))?
}

/// An iptables rule dropping every packet a uid sends to a loopback port:
/// the engine running as that uid is cut off from the broker (or the
/// database) while everything else still reaches it.
pub struct Partition {
    args: Vec<String>,
    active: bool,
}

impl Partition {
    pub fn drop(uid: u32, port: u16) -> Result<Partition, String> {
        let args: Vec<String> = [
            "OUTPUT",
            "-o",
            "lo",
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-m",
            "owner",
            "--uid-owner",
            &uid.to_string(),
            "-j",
            "DROP",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        iptables("-I", &args)?;
        Ok(Partition { args, active: true })
    }

    pub fn heal(mut self) -> Result<(), String> {
        self.active = false;
        iptables("-D", &self.args)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if self.active {
            let _ = iptables("-D", &self.args);
        }
    }
}

fn iptables(action: &str, args: &[String]) -> Result<(), String> {
    let output = Command::new("iptables")
        .arg(action)
        .args(args)
        .output()
        .map_err(|error| format!("cannot run iptables: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {action} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Fills the file system of `filler` until it refuses another byte.
fn fill(filler: &Path) -> Result<(), String> {
    use std::io::Write;
    let mut file = std::fs::File::create(filler)
        .map_err(|error| format!("cannot create {}: {error}", filler.display()))?;
    let chunk = vec![0u8; 1 << 20];
    let mut size = chunk.len();
    while size > 0 {
        match file.write(&chunk[..size]) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => size /= 2,
        }
    }
    let _ = file.sync_all();
    Ok(())
}

/// After a `kill -9`: the start of a copy of the WAL's last frame appended
/// to the WAL, as a write torn by the crash leaves it (same salts, so
/// SQLite must reject it by its checksum and length, not by its header).
fn tear_wal(data_dir: &Path, rng: &mut Rng) -> Result<(), String> {
    let wal = data_dir.join(format!("{}-wal", store_sqlite::DATABASE_FILE_NAME));
    let bytes =
        std::fs::read(&wal).map_err(|error| format!("cannot read {}: {error}", wal.display()))?;
    if bytes.len() < 32 {
        return Ok(());
    }
    let page_size = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let frame = 24 + page_size;
    let frames = (bytes.len() - 32) / frame;
    if page_size == 0 || frames == 0 {
        return Ok(());
    }
    let last = 32 + (frames - 1) * frame;
    let torn = 1 + rng.index(frame - 1);
    let mut tail = bytes[last..last + torn].to_vec();
    // Not the same frame again: a later page number.
    if tail.len() >= 4 {
        tail[3] = tail[3].wrapping_add(1);
    }
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&wal)
        .and_then(|mut file| file.write_all(&tail))
        .map_err(|error| format!("cannot append to {}: {error}", wal.display()))
}
