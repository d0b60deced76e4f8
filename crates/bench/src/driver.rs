//! Issues requests: closed loop (a fixed number of workers, each sending
//! its next request when the previous one is answered) or open loop (a
//! fixed schedule of `rate` requests per second whatever the answers, at
//! most `concurrency` in flight; a request that finds the bound reached is
//! not sent and counts as dropped by the generator). Open-loop latency runs
//! from the *scheduled* send time, so a stalled generator or server shows
//! up in the figures instead of silently delaying later requests
//! (coordinated omission). Bounded by a request count and an optional
//! duration; a progress line every second on stderr.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::target::{Code, CODES};

/// Largest latency the histogram holds (longer ones are recorded as this): 10 minutes.
pub const LATENCY_US_MAX: u64 = 600_000_000;

pub fn new_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3).expect("histogram bounds")
}

/// How requests are paced.
#[derive(Debug, Clone, PartialEq)]
pub struct Pace {
    /// Requests to issue (fewer if `duration` ends the run first).
    pub count: usize,
    /// Closed loop: the number of workers. Open loop: the in-flight bound.
    pub concurrency: usize,
    /// `Some`: open loop at this many requests per second.
    pub rate_per_second: Option<f64>,
    /// Stop issuing requests after this long.
    pub duration: Option<Duration>,
}

impl Pace {
    pub fn closed(count: usize, concurrency: usize) -> Pace {
        Pace {
            count,
            concurrency,
            rate_per_second: None,
            duration: None,
        }
    }
}

/// What one paced phase did.
#[derive(Debug)]
pub struct Phase {
    pub planned: usize,
    /// Requests handed to the ledger.
    pub sent: usize,
    /// Open loop: requests not sent because `concurrency` were in flight.
    pub dropped_by_generator: usize,
    /// From the first scheduled request to the last answer.
    pub elapsed: Duration,
    pub started: Instant,
    /// Microseconds, from the send time (closed loop) or the scheduled send time (open loop).
    pub latency: hdrhistogram::Histogram<u64>,
    /// Answers by code (`ok` included); only codes seen.
    pub counts_by_code: BTreeMap<&'static str, u64>,
}

impl Phase {
    pub fn answered(&self) -> u64 {
        self.counts_by_code.values().sum()
    }

    pub fn succeeded(&self) -> u64 {
        self.counts_by_code.get("ok").copied().unwrap_or(0)
    }

    pub fn count_where(&self, keep: impl Fn(Code) -> bool) -> u64 {
        self.counts_by_code
            .iter()
            .filter(|(code, _)| keep(Code::from_text(code)))
            .map(|(_, count)| count)
            .sum()
    }
}

/// The time request `index` is due, counted from the start of an open-loop run.
pub fn scheduled_offset(index: usize, rate_per_second: f64) -> Duration {
    Duration::from_secs_f64(index as f64 / rate_per_second)
}

/// Latency of an answer, in microseconds (at least 1), counted from when
/// the request was due: a request sent late because the generator or the
/// server was stalled carries the stall in its latency.
pub fn latency_us_since(due: Instant, answered: Instant) -> u64 {
    (answered.saturating_duration_since(due).as_micros() as u64).max(1)
}

/// Live counters, read by the progress line.
struct Counters {
    by_code: Vec<AtomicU64>,
    answered: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            by_code: CODES.iter().map(|_| AtomicU64::new(0)).collect(),
            answered: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    fn count(&self, code: Code) {
        self.by_code[code.index()].fetch_add(1, Ordering::Relaxed);
        self.answered.fetch_add(1, Ordering::Relaxed);
        if code.is_rejection() {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        } else if code.is_error() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn by_code(&self) -> BTreeMap<&'static str, u64> {
        self.by_code
            .iter()
            .enumerate()
            .map(|(index, count)| {
                (
                    Code::from_index(index).as_str(),
                    count.load(Ordering::Relaxed),
                )
            })
            .filter(|(_, count)| *count > 0)
            .collect()
    }
}

/// Prints a progress line every second until aborted.
fn spawn_progress(
    label: String,
    planned: usize,
    counters: Arc<Counters>,
    started: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker =
            tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
        let mut previous = (started, 0u64);
        loop {
            let now = ticker.tick().await;
            let answered = counters.answered.load(Ordering::Relaxed);
            let interval = now
                .saturating_duration_since(previous.0)
                .as_secs_f64()
                .max(1e-3);
            let rate_now = (answered - previous.1) as f64 / interval;
            previous = (now, answered);
            eprintln!(
                "{label}: {:.0} s, {answered}/{planned} answered, {rate_now:.0}/s now, {} rejected, {} errors, {} dropped by the generator",
                now.saturating_duration_since(started).as_secs_f64(),
                counters.rejected.load(Ordering::Relaxed),
                counters.errors.load(Ordering::Relaxed),
                counters.dropped.load(Ordering::Relaxed),
            );
        }
    })
}

/// Runs `work(n)` for n in 0..pace.count (fewer if the duration ends first).
/// `progress`: the label of the per-second progress line, `None` for none.
pub async fn drive<F, Fut>(pace: &Pace, progress: Option<String>, work: F) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Code> + Send + 'static,
{
    let counters = Arc::new(Counters::new());
    let started = Instant::now();
    let progress =
        progress.map(|label| spawn_progress(label, pace.count, counters.clone(), started));
    let (sent, latency) = match pace.rate_per_second {
        None => closed_loop(pace, started, counters.clone(), work).await,
        Some(rate) => open_loop(pace, rate, started, counters.clone(), work).await,
    };
    let elapsed = started.elapsed();
    if let Some(progress) = progress {
        progress.abort();
    }
    Phase {
        planned: pace.count,
        sent,
        dropped_by_generator: counters.dropped.load(Ordering::Relaxed) as usize,
        elapsed,
        started,
        latency,
        counts_by_code: counters.by_code(),
    }
}

async fn closed_loop<F, Fut>(
    pace: &Pace,
    started: Instant,
    counters: Arc<Counters>,
    work: F,
) -> (usize, hdrhistogram::Histogram<u64>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Code> + Send + 'static,
{
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let (count, deadline) = (pace.count, pace.duration.map(|duration| started + duration));
    let mut workers = JoinSet::new();
    for _ in 0..pace.concurrency.clamp(1, count.max(1)) {
        let (work, next, sent, counters) =
            (work.clone(), next.clone(), sent.clone(), counters.clone());
        workers.spawn(async move {
            let mut local = new_histogram();
            loop {
                if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    break;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                let begun = Instant::now();
                let code = work(n).await;
                local.saturating_record(latency_us_since(begun, Instant::now()));
                counters.count(code);
            }
            local
        });
    }
    let mut histogram = new_histogram();
    while let Some(local) = workers.join_next().await {
        histogram
            .add(local.expect("a load worker panicked"))
            .expect("same bounds");
    }
    (sent.load(Ordering::Relaxed), histogram)
}

async fn open_loop<F, Fut>(
    pace: &Pace,
    rate_per_second: f64,
    started: Instant,
    counters: Arc<Counters>,
    work: F,
) -> (usize, hdrhistogram::Histogram<u64>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Code> + Send + 'static,
{
    let work = Arc::new(work);
    let in_flight_max = pace.concurrency.max(1);
    let permits = Arc::new(Semaphore::new(in_flight_max));
    let histogram = Arc::new(std::sync::Mutex::new(new_histogram()));
    let mut sent = 0;
    for n in 0..pace.count {
        let offset = scheduled_offset(n, rate_per_second);
        if pace.duration.is_some_and(|duration| offset >= duration) {
            break;
        }
        let due = started + offset;
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        sent += 1;
        let (work, histogram, counters) = (work.clone(), histogram.clone(), counters.clone());
        tokio::spawn(async move {
            let code = work(n).await;
            let latency_us = latency_us_since(due, Instant::now());
            histogram
                .lock()
                .expect("histogram lock")
                .saturating_record(latency_us);
            counters.count(code);
            drop(permit);
        });
    }
    // Every request has finished once all permits are back.
    let _all = permits
        .acquire_many(in_flight_max as u32)
        .await
        .expect("the semaphore is never closed");
    let histogram = std::mem::replace(
        &mut *histogram.lock().expect("histogram lock"),
        new_histogram(),
    );
    (sent, histogram)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_loop_runs_each_request_once_and_counts_codes() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let phase = drive(&Pace::closed(100, 7), None, {
            let seen = seen.clone();
            move |n| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(n);
                    if n % 2 == 0 {
                        Code::OK
                    } else {
                        Code::from_text("sold_out")
                    }
                }
            }
        })
        .await;
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(phase.succeeded(), 50);
        assert_eq!(phase.counts_by_code.get("sold_out"), Some(&50));
        assert_eq!(phase.count_where(Code::is_rejection), 50);
        assert_eq!((phase.sent, phase.answered()), (100, 100));
        assert_eq!(phase.latency.len(), 100);
    }

    #[tokio::test]
    async fn closed_loop_stops_at_the_duration() {
        let pace = Pace {
            duration: Some(Duration::from_millis(100)),
            ..Pace::closed(1_000_000, 2)
        };
        let phase = drive(&pace, None, |_| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Code::OK
        })
        .await;
        assert!(phase.sent < 100, "{} sent", phase.sent);
        assert!(phase.elapsed < Duration::from_secs(2));
        assert_eq!(phase.answered(), phase.sent as u64);
    }

    #[test]
    fn the_schedule_spaces_requests_evenly() {
        assert_eq!(scheduled_offset(0, 4.0), Duration::ZERO);
        assert_eq!(scheduled_offset(1, 4.0), Duration::from_millis(250));
        assert_eq!(scheduled_offset(10, 4.0), Duration::from_millis(2_500));
        assert_eq!(scheduled_offset(3, 1_000.0), Duration::from_millis(3));
        let now = Instant::now();
        assert_eq!(latency_us_since(now + Duration::from_millis(5), now), 1);
        assert_eq!(latency_us_since(now, now + Duration::from_millis(5)), 5_000);
    }

    #[tokio::test]
    async fn open_loop_sends_on_schedule_and_measures_from_it() {
        // 1,000/s for 20 requests on a single-threaded runtime. Request 0
        // blocks the thread for 60 ms, so the generator itself cannot send
        // requests 1..19 (due at 1..19 ms) before 60 ms. Each of them is
        // answered at once, but its latency must carry the stall: at least
        // 60 - 19 = 41 ms. Measured from the actual send time it would be ~0.
        let pace = Pace {
            count: 20,
            concurrency: 100,
            rate_per_second: Some(1_000.0),
            duration: None,
        };
        let phase = drive(&pace, None, |n| async move {
            if n == 0 {
                std::thread::sleep(Duration::from_millis(60));
            }
            Code::OK
        })
        .await;
        assert_eq!((phase.sent, phase.dropped_by_generator), (20, 0));
        assert_eq!(phase.latency.len(), 20);
        assert!(
            phase.latency.min() >= 40_000,
            "latency from the schedule, min {} us",
            phase.latency.min()
        );
    }

    #[tokio::test]
    async fn open_loop_drops_requests_beyond_the_in_flight_bound() {
        // 500/s for 50 requests (100 ms), 1 in flight, each taking 35 ms:
        // about one in 17.5 ms can be sent; the others are dropped, not delayed.
        let pace = Pace {
            count: 50,
            concurrency: 1,
            rate_per_second: Some(500.0),
            duration: None,
        };
        let phase = drive(&pace, None, |_| async {
            tokio::time::sleep(Duration::from_millis(35)).await;
            Code::OK
        })
        .await;
        assert_eq!(phase.sent + phase.dropped_by_generator, 50);
        assert!(
            (2..=6).contains(&phase.sent),
            "{} sent, {} dropped",
            phase.sent,
            phase.dropped_by_generator
        );
        assert_eq!(phase.answered(), phase.sent as u64);
        // Latency is from the schedule: each sent request took ≥ 35 ms.
        assert!(phase.latency.min() >= 35_000);
    }

    #[tokio::test]
    async fn open_loop_stops_at_the_duration() {
        let pace = Pace {
            count: 1_000_000,
            concurrency: 10,
            rate_per_second: Some(200.0),
            duration: Some(Duration::from_millis(100)),
        };
        let phase = drive(&pace, None, |_| async { Code::OK }).await;
        // On a busy machine the loop can fall behind and find every permit
        // taken: such requests are dropped, but they are still scheduled.
        assert_eq!(
            phase.sent + phase.dropped_by_generator,
            20,
            "0, 5, …, 95 ms are before the end"
        );
    }
}
