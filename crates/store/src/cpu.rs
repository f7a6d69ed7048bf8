//! CPU time for benchmarks (Linux): of a process, from `/proc/<pid>/stat`, and of the
//! local PostgreSQL backends serving a database. Benchmarks report CPU per unit of work
//! next to rates because CPU cost moves little with the load of a shared machine, while
//! rates do.

use sqlx::{PgConnection, PgPool};

/// CPU seconds (user + system, every thread, living or exited) of process `pid`; `None`
/// where there is no such file (not Linux, or gone).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    process_cpu_seconds(pid, None)
}

/// [`cpu_seconds`] of a PostgreSQL backend: `None` unless `pid` is a local process named
/// `postgres` (a database on another host has its own process ids).
pub fn backend_cpu_seconds(pid: u32) -> Option<f64> {
    process_cpu_seconds(pid, Some("postgres"))
}

fn process_cpu_seconds(pid: u32, named: Option<&str>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    if named.is_some_and(|name| stat.get(open + 1..close) != Some(name)) {
        return None;
    }
    // The command name (field 2) may hold spaces: count fields after its closing ')'.
    // utime and stime are fields 14 and 15, in USER_HZ ticks (100 per second on Linux).
    let mut fields = stat.get(close + 2..)?.split_ascii_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    #[allow(clippy::cast_precision_loss)]
    Some((utime + stime) as f64 / 100.0)
}

/// The backends connected to `pool`'s database, the one this query runs on included (a
/// pool that measures may also be one that works).
pub async fn backend_pids(pool: &PgPool) -> Result<Vec<u32>, sqlx::Error> {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(pool)
            .await?;
    Ok(pids
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .collect())
}

/// CPU seconds of the backends of a database, taken at the start of a phase.
#[derive(Debug, Clone)]
pub struct BackendCpu {
    at_start: std::collections::HashMap<u32, f64>,
}

impl BackendCpu {
    /// `None` when a backend's CPU cannot be read (PostgreSQL runs on another host, or not
    /// on Linux).
    pub async fn start(pool: &PgPool) -> Result<Option<Self>, sqlx::Error> {
        let pids = backend_pids(pool).await?;
        let at_start: std::collections::HashMap<u32, f64> = pids
            .iter()
            .filter_map(|pid| Some((*pid, backend_cpu_seconds(*pid)?)))
            .collect();
        Ok((at_start.len() == pids.len()).then_some(BackendCpu { at_start }))
    }

    /// CPU seconds the backends used since [`BackendCpu::start`]; a backend that connected
    /// since counts whole.
    pub async fn seconds_since_start(&self, pool: &PgPool) -> Result<f64, sqlx::Error> {
        let mut seconds = 0.0;
        for pid in backend_pids(pool).await? {
            if let Some(now) = backend_cpu_seconds(pid) {
                seconds += now - self.at_start.get(&pid).copied().unwrap_or(0.0);
            }
        }
        Ok(seconds)
    }
}

/// CPU seconds of this process and of the backends of a database, taken at the start of a
/// phase: a benchmark that does its work in process and in PostgreSQL.
#[derive(Debug, Clone)]
pub struct ProcessAndBackendCpu {
    own_at_start: f64,
    backends: BackendCpu,
}

impl ProcessAndBackendCpu {
    /// `None` when either cannot be read (not Linux, or PostgreSQL on another host).
    pub async fn start(pool: &PgPool) -> Result<Option<Self>, sqlx::Error> {
        let Some(own_at_start) = cpu_seconds(std::process::id()) else {
            return Ok(None);
        };
        Ok(BackendCpu::start(pool)
            .await?
            .map(|backends| ProcessAndBackendCpu {
                own_at_start,
                backends,
            }))
    }

    /// (this process, the backends) CPU seconds since [`ProcessAndBackendCpu::start`].
    pub async fn seconds_since_start(&self, pool: &PgPool) -> Result<(f64, f64), sqlx::Error> {
        let backends = self.backends.seconds_since_start(pool).await?;
        let own = cpu_seconds(std::process::id()).unwrap_or(self.own_at_start);
        Ok((own - self.own_at_start, backends))
    }
}

/// CPU seconds of the backend of one connection, taken at the start of a phase: a baseline
/// statement's cost.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionCpu {
    pid: u32,
    at_start: f64,
}

impl ConnectionCpu {
    /// `None` when the backend's CPU cannot be read (PostgreSQL on another host).
    pub async fn start(conn: &mut PgConnection) -> Result<Option<Self>, sqlx::Error> {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(conn)
            .await?;
        Ok(u32::try_from(pid).ok().and_then(|pid| {
            Some(ConnectionCpu {
                pid,
                at_start: backend_cpu_seconds(pid)?,
            })
        }))
    }

    /// CPU seconds the backend used since [`ConnectionCpu::start`]; `None` if it is gone.
    pub fn seconds_since_start(&self) -> Option<f64> {
        Some(backend_cpu_seconds(self.pid)? - self.at_start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn cpu_time_is_read_from_proc_and_grows_with_work() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).expect("/proc/<pid>/stat on Linux");
        // Spin until 50 ms of CPU (five 10 ms ticks) show, however loaded the machine is;
        // a reader that never saw them grow gives up after 20 s of wall time.
        let started = Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.05 && started.elapsed() < Duration::from_secs(20) {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            after = cpu_seconds(pid).unwrap();
        }
        assert!(after - before >= 0.05, "{before} → {after}");
        // This process is not a PostgreSQL backend.
        assert_eq!(backend_cpu_seconds(pid), None);
        assert_eq!(cpu_seconds(u32::MAX), None);
    }

    #[sqlx::test(migrations = false)]
    async fn backend_cpu_grows_with_the_work_of_the_pool(pool: PgPool) {
        let Some(meter) = BackendCpu::start(&pool).await.unwrap() else {
            panic!("the test database is local: its backends' CPU is readable");
        };
        sqlx::query("SELECT count(*) FROM generate_series(1, 3000000)")
            .execute(&pool)
            .await
            .unwrap();
        let used = meter.seconds_since_start(&pool).await.unwrap();
        assert!(used >= 0.05, "{used}");
    }

    #[sqlx::test(migrations = false)]
    async fn connection_cpu_grows_with_the_work_of_that_connection(pool: PgPool) {
        let mut conn = pool.acquire().await.unwrap();
        let Some(meter) = ConnectionCpu::start(&mut conn).await.unwrap() else {
            panic!("the test database is local: its backends' CPU is readable");
        };
        sqlx::query("SELECT count(*) FROM generate_series(1, 3000000)")
            .execute(&mut *conn)
            .await
            .unwrap();
        let used = meter.seconds_since_start().unwrap();
        assert!(used >= 0.05, "{used}");
    }
}
