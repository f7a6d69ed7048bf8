//! A second connection for work done beside a transaction that holds one already.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

/// How long [`spare_connection`] waits for the pool: long enough to open a connection,
/// short against a consumer delivery.
pub const SPARE_CONNECTION_WAIT: Duration = Duration::from_millis(100);

/// A connection for work beside a transaction the caller holds open (a delivery's edges
/// copied, the next delivery read ahead), or `None`: the caller then does that work in its
/// own transaction, or not at all.
///
/// An idle connection is taken at once with `try_acquire`, which skips the pool's liveness
/// ping (one round trip); a dead one fails the work that uses it, which the bus retries.
/// Otherwise the wait is bounded by [`SPARE_CONNECTION_WAIT`]: the caller already holds a
/// connection, and waiting long for another on a small, busy pool could wait for ever.
pub async fn spare_connection(pool: &PgPool) -> Option<PoolConnection<Postgres>> {
    match pool.try_acquire() {
        Some(conn) => Some(conn),
        None => tokio::time::timeout(SPARE_CONNECTION_WAIT, pool.acquire())
            .await
            .ok()?
            .ok(),
    }
}
