//! The regime deadline watch: how many open requests are past their deadline or due within
//! the horizon, as gauges (`meridian_dsr_requests_overdue`, `meridian_dsr_requests_nearing_deadline`,
//! `meridian_dsr_requests_open`) refreshed by [`ConsentRoom::run_background`]. `ListRequests`
//! with `deadline_before` lists the same requests.

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use meridian_telemetry::opentelemetry::metrics::Gauge;
use tokio::sync::watch;

use crate::error::ConsentError;
use crate::room::ConsentRoom;

/// Open requests (received or in progress) by how close their deadline is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadlineWatch {
    pub open: u64,
    /// Due within the horizon, not yet overdue.
    pub nearing: u64,
    pub overdue: u64,
}

struct Gauges {
    open: Gauge<u64>,
    nearing: Gauge<u64>,
    overdue: Gauge<u64>,
}

fn gauges() -> &'static Gauges {
    static G: OnceLock<Gauges> = OnceLock::new();
    G.get_or_init(|| {
        let meter = meridian_telemetry::opentelemetry::global::meter("meridian");
        Gauges {
            open: meter
                .u64_gauge("meridian_dsr_requests_open")
                .with_description("data-subject requests received or in progress")
                .build(),
            nearing: meter
                .u64_gauge("meridian_dsr_requests_nearing_deadline")
                .with_description("open data-subject requests due within the watch horizon")
                .build(),
            overdue: meter
                .u64_gauge("meridian_dsr_requests_overdue")
                .with_description("open data-subject requests past their regime deadline")
                .build(),
        }
    })
}

/// What [`ConsentRoom::run_background`] runs and how often.
#[derive(Debug, Clone)]
pub struct BackgroundSettings {
    /// Requests due within this are "nearing" their deadline.
    pub deadline_horizon: chrono::Duration,
    /// Between expiry sweeps and deadline refreshes.
    pub interval: Duration,
}

impl Default for BackgroundSettings {
    fn default() -> Self {
        BackgroundSettings {
            deadline_horizon: chrono::Duration::days(7),
            interval: Duration::from_secs(60),
        }
    }
}

impl ConsentRoom {
    /// Counts open requests against their deadlines and records the gauges.
    pub async fn watch_deadlines(
        &self,
        now: DateTime<Utc>,
        horizon: chrono::Duration,
    ) -> Result<DeadlineWatch, ConsentError> {
        let (open, nearing, overdue) = self
            .store
            .deadline_counts(now.timestamp_micros(), (now + horizon).timestamp_micros())
            .await?;
        let w = DeadlineWatch {
            open,
            nearing,
            overdue,
        };
        let g = gauges();
        g.open.record(w.open, &[]);
        g.nearing.record(w.nearing, &[]);
        g.overdue.record(w.overdue, &[]);
        if w.overdue > 0 {
            tracing::warn!(
                overdue = w.overdue,
                "data-subject requests are past their deadline"
            );
        }
        Ok(w)
    }

    /// The room's background work until `shutdown` turns true: the erasure worker, the
    /// expiry sweep and the deadline watch.
    pub async fn run_background(
        &self,
        settings: BackgroundSettings,
        shutdown: watch::Receiver<bool>,
    ) {
        let sweeper = {
            let room = self.clone();
            let shutdown = shutdown.clone();
            let interval = settings.interval;
            async move { room.run_expiry_sweeper(interval, shutdown).await }
        };
        let deadlines = {
            let room = self.clone();
            let mut shutdown = shutdown.clone();
            async move {
                loop {
                    if *shutdown.borrow() {
                        return;
                    }
                    if let Err(e) = room
                        .watch_deadlines(Utc::now(), settings.deadline_horizon)
                        .await
                    {
                        tracing::warn!(error = %e, "deadline watch failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(settings.interval) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        };
        tokio::join!(self.run_erasure_worker(shutdown), sweeper, deadlines);
    }
}
