//! What a database's backends spend a benchmark phase doing, sampled from
//! `pg_stat_activity`: executing, waiting inside a transaction for the client's next
//! statement, writing the write-ahead log (a commit's flush), data-file I/O, locks. CPU per
//! unit of work says how much the database worked; these shares say whether a slow phase
//! waited on the database or the database waited on the client, which CPU alone cannot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinHandle;

/// Mean number of the database's client backends (the sampler's own excluded) found in each
/// state over a phase's samples; a backend idle outside a transaction counts in none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct BackendStates {
    pub samples: u64,
    /// Running a statement and waiting on nothing: on a core, or queued for one.
    pub executing: f64,
    /// Inside a transaction (or a `COPY … FROM STDIN`), waiting for the client.
    pub waiting_on_client: f64,
    /// Writing or flushing the write-ahead log: mostly commits waiting for their flush.
    pub writing_wal: f64,
    /// Reading or writing data files.
    pub data_io: f64,
    /// Waiting for a heavyweight or lightweight lock.
    pub locks: f64,
    /// Any other wait (a timeout such as `pg_sleep`, IPC, a buffer pin).
    pub other: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Executing,
    WaitingOnClient,
    WritingWal,
    DataIo,
    Locks,
    Other,
}

/// The state of one `pg_stat_activity` row (`state`, `wait_event_type`, `wait_event`);
/// `None` for a backend outside any transaction.
fn classify(state: &str, wait_type: Option<&str>, wait: Option<&str>) -> Option<State> {
    if state.starts_with("idle in transaction") {
        return Some(State::WaitingOnClient);
    }
    if state != "active" {
        return None;
    }
    Some(match (wait_type, wait) {
        (None, _) => State::Executing,
        // A `COPY … FROM STDIN` waits for its data as `Client: ClientRead`.
        (Some("Client"), _) => State::WaitingOnClient,
        (Some("IO"), Some(w)) if w.starts_with("WAL") => State::WritingWal,
        (Some("LWLock"), Some(w)) if w.starts_with("WAL") => State::WritingWal,
        (Some("IO"), _) => State::DataIo,
        (Some("Lock" | "LWLock"), _) => State::Locks,
        _ => State::Other,
    })
}

impl BackendStates {
    fn count(&mut self, state: State) {
        let slot = match state {
            State::Executing => &mut self.executing,
            State::WaitingOnClient => &mut self.waiting_on_client,
            State::WritingWal => &mut self.writing_wal,
            State::DataIo => &mut self.data_io,
            State::Locks => &mut self.locks,
            State::Other => &mut self.other,
        };
        *slot += 1.0;
    }

    /// Sums counted so far as means per sample.
    fn into_means(mut self) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let n = self.samples.max(1) as f64;
        for slot in [
            &mut self.executing,
            &mut self.waiting_on_client,
            &mut self.writing_wal,
            &mut self.data_io,
            &mut self.locks,
            &mut self.other,
        ] {
            *slot /= n;
        }
        self
    }

    /// Two phases' means as one, weighted by their samples.
    #[must_use]
    pub fn merge(self, other: BackendStates) -> BackendStates {
        let samples = self.samples + other.samples;
        #[allow(clippy::cast_precision_loss)]
        let (a, b, n) = (
            self.samples as f64,
            other.samples as f64,
            samples.max(1) as f64,
        );
        let mean = |x: f64, y: f64| (x * a + y * b) / n;
        BackendStates {
            samples,
            executing: mean(self.executing, other.executing),
            waiting_on_client: mean(self.waiting_on_client, other.waiting_on_client),
            writing_wal: mean(self.writing_wal, other.writing_wal),
            data_io: mean(self.data_io, other.data_io),
            locks: mean(self.locks, other.locks),
            other: mean(self.other, other.other),
        }
    }
}

/// Samples the states of the backends of a pool's database, on a connection of its own
/// (outside the pool, so it takes none of the measured work's connections), until
/// [`BackendStateSampler::finish`].
pub struct BackendStateSampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Result<BackendStates, sqlx::Error>>,
}

/// Reading `pg_stat_activity` costs the sampler's backend about a fifth of a millisecond:
/// every 50 ms it takes well under 1 % of a core, and a 20 s phase gets 400 samples.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);

impl BackendStateSampler {
    pub async fn start(pool: &PgPool, every: Duration) -> Result<Self, sqlx::Error> {
        let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut states = BackendStates::default();
            while !stopped.load(Ordering::Relaxed) {
                let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
                    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid() \
                     AND backend_type = 'client backend' AND state IS NOT NULL",
                )
                .fetch_all(&mut conn)
                .await?;
                states.samples += 1;
                for (state, wait_type, wait) in &rows {
                    if let Some(s) = classify(state, wait_type.as_deref(), wait.as_deref()) {
                        states.count(s);
                    }
                }
                tokio::time::sleep(every).await;
            }
            conn.close().await?;
            Ok(states.into_means())
        });
        Ok(BackendStateSampler { stop, task })
    }

    /// Stops sampling: the mean number of backends in each state since [`Self::start`].
    pub async fn finish(mut self) -> Result<BackendStates, sqlx::Error> {
        self.stop.store(true, Ordering::Relaxed);
        (&mut self.task)
            .await
            .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?
    }
}

impl Drop for BackendStateSampler {
    /// A sampler dropped unfinished (its phase failed with `?`) stops too, and its
    /// connection closes, instead of polling until the process exits. After
    /// [`BackendStateSampler::finish`] the task is done and this does nothing.
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A phase that fails drops its sampler without finishing it: the sampling stops and
    /// its backend goes.
    #[sqlx::test(migrations = false)]
    async fn a_sampler_dropped_unfinished_stops_and_closes_its_connection(pool: PgPool) {
        const SAMPLERS: &str = "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'SELECT state, wait_event_type%'";
        let sampler = BackendStateSampler::start(&pool, Duration::from_millis(10))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let running: i64 = sqlx::query_scalar(SAMPLERS).fetch_one(&pool).await.unwrap();
        assert_eq!(running, 1);
        drop(sampler);
        let mut left = running;
        for _ in 0..100 {
            left = sqlx::query_scalar(SAMPLERS).fetch_one(&pool).await.unwrap();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(left, 0, "the dropped sampler's backend is still there");
    }

    #[test]
    fn activity_rows_are_classified_by_state_and_wait() {
        assert_eq!(classify("idle", None, None), None);
        assert_eq!(classify("active", None, None), Some(State::Executing));
        assert_eq!(
            classify("idle in transaction", Some("Client"), Some("ClientRead")),
            Some(State::WaitingOnClient)
        );
        assert_eq!(
            classify("idle in transaction (aborted)", None, None),
            Some(State::WaitingOnClient)
        );
        assert_eq!(
            classify("active", Some("Client"), Some("ClientRead")),
            Some(State::WaitingOnClient)
        );
        assert_eq!(
            classify("active", Some("IO"), Some("WALSync")),
            Some(State::WritingWal)
        );
        assert_eq!(
            classify("active", Some("LWLock"), Some("WALWrite")),
            Some(State::WritingWal)
        );
        assert_eq!(
            classify("active", Some("IO"), Some("DataFileRead")),
            Some(State::DataIo)
        );
        assert_eq!(
            classify("active", Some("Lock"), Some("transactionid")),
            Some(State::Locks)
        );
        assert_eq!(
            classify("active", Some("LWLock"), Some("BufferContent")),
            Some(State::Locks)
        );
        assert_eq!(
            classify("active", Some("Timeout"), Some("PgSleep")),
            Some(State::Other)
        );
    }

    #[test]
    fn phases_merge_weighted_by_their_samples() {
        let a = BackendStates {
            samples: 30,
            executing: 1.0,
            ..BackendStates::default()
        };
        let b = BackendStates {
            samples: 10,
            waiting_on_client: 2.0,
            ..BackendStates::default()
        };
        let m = a.merge(b);
        assert_eq!(m.samples, 40);
        assert!((m.executing - 0.75).abs() < 1e-9, "{m:?}");
        assert!((m.waiting_on_client - 0.5).abs() < 1e-9, "{m:?}");
        assert_eq!(
            BackendStates::default()
                .merge(BackendStates::default())
                .samples,
            0
        );
    }

    /// One backend holds a transaction open, another sleeps in `pg_sleep`, a third counts
    /// (hundreds of milliseconds on a core): the sampler finds each in its state, and not
    /// itself.
    #[sqlx::test(migrations = false)]
    async fn the_sampler_sees_a_waiting_transaction_a_sleep_and_a_running_statement(pool: PgPool) {
        let sampler = BackendStateSampler::start(&pool, Duration::from_millis(10))
            .await
            .unwrap();
        let mut open = pool.begin().await.unwrap();
        sqlx::query("SELECT 1").execute(&mut *open).await.unwrap();
        let (slept, counted) = tokio::join!(
            sqlx::query("SELECT pg_sleep(0.4)").execute(&pool),
            sqlx::query("SELECT count(*) FROM generate_series(1, 3000000)").execute(&pool),
        );
        slept.unwrap();
        counted.unwrap();
        open.rollback().await.unwrap();
        let states = sampler.finish().await.unwrap();
        assert!(states.samples >= 5, "{states:?}");
        // The open transaction was there the whole time, the sleep nearly all of it.
        assert!(states.waiting_on_client > 0.8, "{states:?}");
        assert!(states.other > 0.5, "{states:?}");
        assert!(states.executing > 0.0, "{states:?}");
    }
}
