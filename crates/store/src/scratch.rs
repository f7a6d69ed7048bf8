//! Scratch PostgreSQL databases for benchmarks and tests: created next to a
//! server's URL, migrated by the caller, dropped (with FORCE) when done.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::StoreError;

/// A PostgreSQL database that lives for one benchmark or test.
#[derive(Debug)]
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    /// Creates `<prefix>_<unique suffix>` on the server of `admin_url`.
    pub async fn create(admin_url: &str, prefix: &str) -> Result<ScratchDatabase, StoreError> {
        let suffix = uuid_like_suffix();
        let name = format!("{prefix}_{suffix}");
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(StoreError::BadUrl(format!(
                "scratch database name {name} must be lowercase letters, digits and '_'"
            )));
        }
        let url = database_url(admin_url, &name)?;
        let mut admin = connect(admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        Ok(ScratchDatabase {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The scratch database's URL: the server's URL with the database replaced.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Drops the database, closing any connection still open to it.
    pub async fn drop_now(self) -> Result<(), StoreError> {
        let mut admin = connect(&self.admin_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        admin.close().await?;
        Ok(())
    }
}

/// `admin_url` with its database replaced by `name`; host, user and options stay.
fn database_url(admin_url: &str, name: &str) -> Result<String, StoreError> {
    let mut url = url::Url::parse(admin_url)
        .ok()
        .filter(|url| matches!(url.scheme(), "postgres" | "postgresql"))
        .ok_or_else(|| StoreError::BadUrl("expected postgres://user@host:port/database".into()))?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

async fn connect(url: &str) -> Result<sqlx::PgConnection, StoreError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|_| StoreError::BadUrl("expected postgres://user@host:port/database".into()))?;
    options
        .connect()
        .await
        .map_err(|source| StoreError::Connect {
            backend: "postgres",
            source,
        })
}

/// Unique enough across processes and runs: process id and wall-clock nanoseconds.
fn uuid_like_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("{}_{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_urls_keep_host_user_and_options() {
        assert_eq!(
            database_url("postgres://u@h:5432/postgres?sslmode=disable", "x").unwrap(),
            "postgres://u@h:5432/x?sslmode=disable"
        );
        assert_eq!(database_url("postgres://h", "x").unwrap(), "postgres://h/x");
        assert!(database_url("nonsense", "x").is_err());
        assert!(database_url("mysql://h/db", "x").is_err());
    }
}
