//! The typed configuration of a Meridian process: defaults, then the file
//! named by `--config`, then `MERIDIAN_*` / `DATABASE_URL` / `NATS_URL`, then
//! flags. Every value is validated at start, and a bad one is reported with
//! the setting's name and where it came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use meridian_domain::{Region, TimeZone};
use meridian_store::StoreLocation;
use serde::Deserialize;

/// The settings as given, each optional; later layers override earlier ones.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    pub(crate) grpc_addr: Option<String>,
    pub(crate) http_addr: Option<String>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) database_url: Option<String>,
    pub(crate) database_max_connections: Option<u32>,
    pub(crate) nats_url: Option<String>,
    pub(crate) nats_stream: Option<String>,
    pub(crate) nats_subject_root: Option<String>,
    pub(crate) nats_pack_max_bytes: Option<usize>,
    pub(crate) region: Option<String>,
    pub(crate) time_zone: Option<String>,
    pub(crate) log: Option<String>,
    pub(crate) otlp_endpoint: Option<String>,
    pub(crate) api_key_pepper: Option<String>,
    pub(crate) shutdown_grace_seconds: Option<u64>,
    pub(crate) policy_dir: Option<PathBuf>,
    pub(crate) shopify_app_secret: Option<String>,
    pub(crate) shopify_shops: Option<String>,
    pub(crate) erasure_lease_seconds: Option<u64>,
    pub(crate) destination_credentials_dir: Option<PathBuf>,
}

impl Settings {
    /// Reads a TOML file whose keys are the settings' names (`grpc_addr = "0.0.0.0:50051"`).
    pub(crate) fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::File {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
        toml::from_str(&text).map_err(|err| ConfigError::File {
            path: path.to_owned(),
            reason: err.to_string(),
        })
    }

    /// Reads the process environment.
    pub(crate) fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        Settings {
            grpc_addr: var("MERIDIAN_GRPC_ADDR"),
            http_addr: var("MERIDIAN_HTTP_ADDR"),
            data_dir: var("MERIDIAN_DATA_DIR").map(PathBuf::from),
            database_url: var("DATABASE_URL"),
            database_max_connections: None,
            nats_url: var("NATS_URL"),
            nats_stream: var("MERIDIAN_NATS_STREAM"),
            nats_subject_root: var("MERIDIAN_NATS_SUBJECT_ROOT"),
            nats_pack_max_bytes: None,
            region: var("MERIDIAN_REGION"),
            time_zone: var("MERIDIAN_TIME_ZONE"),
            log: var("MERIDIAN_LOG"),
            otlp_endpoint: var("OTEL_EXPORTER_OTLP_ENDPOINT"),
            api_key_pepper: var("MERIDIAN_API_KEY_PEPPER"),
            shutdown_grace_seconds: None,
            policy_dir: var("MERIDIAN_POLICY_DIR").map(PathBuf::from),
            shopify_app_secret: var("MERIDIAN_SHOPIFY_APP_SECRET"),
            shopify_shops: var("MERIDIAN_SHOPIFY_SHOPS"),
            erasure_lease_seconds: var("MERIDIAN_ERASURE_LEASE_SECONDS")
                .and_then(|v| v.parse().ok()),
            destination_credentials_dir: var("MERIDIAN_DESTINATION_CREDENTIALS_DIR")
                .map(PathBuf::from),
        }
    }

    /// Layers `over` on top of `self`: any value set in `over` wins.
    pub(crate) fn merge(self, over: Settings) -> Settings {
        Settings {
            grpc_addr: over.grpc_addr.or(self.grpc_addr),
            http_addr: over.http_addr.or(self.http_addr),
            data_dir: over.data_dir.or(self.data_dir),
            database_url: over.database_url.or(self.database_url),
            database_max_connections: over
                .database_max_connections
                .or(self.database_max_connections),
            nats_url: over.nats_url.or(self.nats_url),
            nats_stream: over.nats_stream.or(self.nats_stream),
            nats_subject_root: over.nats_subject_root.or(self.nats_subject_root),
            nats_pack_max_bytes: over.nats_pack_max_bytes.or(self.nats_pack_max_bytes),
            region: over.region.or(self.region),
            time_zone: over.time_zone.or(self.time_zone),
            log: over.log.or(self.log),
            otlp_endpoint: over.otlp_endpoint.or(self.otlp_endpoint),
            api_key_pepper: over.api_key_pepper.or(self.api_key_pepper),
            shutdown_grace_seconds: over.shutdown_grace_seconds.or(self.shutdown_grace_seconds),
            policy_dir: over.policy_dir.or(self.policy_dir),
            shopify_app_secret: over.shopify_app_secret.or(self.shopify_app_secret),
            shopify_shops: over.shopify_shops.or(self.shopify_shops),
            erasure_lease_seconds: over.erasure_lease_seconds.or(self.erasure_lease_seconds),
            destination_credentials_dir: over
                .destination_credentials_dir
                .or(self.destination_credentials_dir),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("config file {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("{setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) grpc_addr: SocketAddr,
    pub(crate) http_addr: SocketAddr,
    pub(crate) data_dir: PathBuf,
    pub(crate) store: StoreLocation,
    pub(crate) nats_url: Option<String>,
    /// One JetStream stream for every family (as the Kubernetes manifests create it);
    /// unset means one stream per event family.
    pub(crate) nats_stream: Option<String>,
    /// First token of every NATS subject (`meridian` unless set): environments sharing a
    /// NATS cluster each take their own.
    pub(crate) nats_subject_root: String,
    /// Largest JetStream pack the relay publishes, in bytes; 0 sends one message per event
    /// (for a rolling upgrade from a version that cannot read packs).
    pub(crate) nats_pack_max_bytes: usize,
    pub(crate) region: Region,
    pub(crate) time_zone: TimeZone,
    pub(crate) log_filter: String,
    pub(crate) otlp_endpoint: Option<String>,
    pub(crate) api_key_pepper: Option<String>,
    pub(crate) shutdown_grace: std::time::Duration,
    /// Policies to run with instead of the built-in set.
    pub(crate) policy_dir: Option<PathBuf>,
    /// Shopify's privacy webhooks: the app's client secret (HMAC key) and the shops bound
    /// to workspaces; both set or neither.
    pub(crate) shopify: Option<ShopifySettings>,
    /// How long an erasure worker holds a saga before another may take it over.
    pub(crate) erasure_lease: std::time::Duration,
    /// Where destination credentials are, one file per credential name (the
    /// `meridian-destinations-<region>` Secret in Kubernetes); `<data_dir>/destinations`
    /// when unset. A missing directory is not an error: a region may have no destinations.
    pub(crate) destination_credentials_dir: PathBuf,
}

/// The Shopify app whose privacy webhooks this process receives.
#[derive(Clone)]
pub(crate) struct ShopifySettings {
    pub(crate) app_secret: String,
    pub(crate) shops: std::collections::HashMap<String, meridian_consent::shopify::ShopBinding>,
}

impl std::fmt::Debug for ShopifySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShopifySettings")
            .field("shops", &self.shops.len())
            .finish_non_exhaustive()
    }
}

pub(crate) const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
pub(crate) const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
pub(crate) const DEFAULT_DATA_DIR: &str = "./meridian-data";

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

fn socket_addr(
    setting: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let value = value.unwrap_or_else(|| default.to_owned());
    value.parse().map_err(|_| {
        invalid(
            setting,
            format!("'{value}' is not an IP address and port (e.g. 127.0.0.1:50051, 0.0.0.0:0)"),
        )
    })
}

impl Config {
    pub(crate) fn resolve(settings: Settings) -> Result<Config, ConfigError> {
        let grpc_addr = socket_addr(
            "grpc_addr (--grpc-addr, MERIDIAN_GRPC_ADDR)",
            settings.grpc_addr,
            DEFAULT_GRPC_ADDR,
        )?;
        let http_addr = socket_addr(
            "http_addr (--http-addr, MERIDIAN_HTTP_ADDR)",
            settings.http_addr,
            DEFAULT_HTTP_ADDR,
        )?;
        let data_dir = settings
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "data_dir (--data-dir, MERIDIAN_DATA_DIR)",
                "must not be empty",
            ));
        }
        let max_connections = settings.database_max_connections.unwrap_or(16);
        if max_connections == 0 {
            return Err(invalid("database_max_connections", "must be at least 1"));
        }
        let store = match settings.database_url {
            None => StoreLocation::Embedded {
                data_dir: data_dir.clone(),
            },
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                StoreLocation::Postgres {
                    url,
                    max_connections,
                }
            }
            Some(_) => {
                return Err(invalid(
                    "database_url (DATABASE_URL)",
                    "must be a postgres:// or postgresql:// URL; leave it unset for the embedded store",
                ));
            }
        };
        let nats_url = match settings.nats_url {
            Some(url) if !(url.starts_with("nats://") || url.starts_with("tls://")) => {
                return Err(invalid(
                    "nats_url (NATS_URL)",
                    "must be a nats:// or tls:// URL; leave it unset for the in-process bus",
                ));
            }
            other => other,
        };
        let nats_subject_root = settings
            .nats_subject_root
            .unwrap_or_else(|| "meridian".to_owned());
        if nats_subject_root.is_empty()
            || nats_subject_root.len() > 64
            || !nats_subject_root
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "nats_subject_root (MERIDIAN_NATS_SUBJECT_ROOT)",
                "must be 1 to 64 characters of a-z, 0-9, '-' and '_' (one NATS subject token)",
            ));
        }
        let region = settings
            .region
            .as_deref()
            .unwrap_or("local")
            .parse()
            .map_err(|err: meridian_domain::InvalidValue| {
                invalid("region (--region, MERIDIAN_REGION)", err.reason)
            })?;
        let time_zone = settings
            .time_zone
            .as_deref()
            .unwrap_or("UTC")
            .parse()
            .map_err(|err: meridian_domain::InvalidValue| {
                invalid("time_zone (--time-zone, MERIDIAN_TIME_ZONE)", err.reason)
            })?;
        let otlp_endpoint = match settings.otlp_endpoint {
            Some(endpoint)
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) =>
            {
                return Err(invalid(
                    "otlp_endpoint (OTEL_EXPORTER_OTLP_ENDPOINT)",
                    format!(
                        "'{endpoint}' must be an http:// or https:// URL of an OTLP/gRPC collector"
                    ),
                ));
            }
            other => other,
        };
        let shopify = match (settings.shopify_app_secret, settings.shopify_shops) {
            (None, None) => None,
            (Some(app_secret), Some(shops)) => Some(ShopifySettings {
                app_secret,
                shops: meridian_consent::shopify::parse_shop_bindings(&shops)
                    .map_err(|e| invalid("shopify_shops (MERIDIAN_SHOPIFY_SHOPS)", e))?,
            }),
            (None, Some(_)) => {
                return Err(invalid(
                    "shopify_app_secret (MERIDIAN_SHOPIFY_APP_SECRET)",
                    "required with shopify_shops: the webhooks' HMAC key",
                ));
            }
            (Some(_), None) => {
                return Err(invalid(
                    "shopify_shops (MERIDIAN_SHOPIFY_SHOPS)",
                    "required with shopify_app_secret: shop.myshopify.com=workspace:JURISDICTION,…",
                ));
            }
        };
        let erasure_lease_seconds = settings.erasure_lease_seconds.unwrap_or(45);
        if erasure_lease_seconds == 0 {
            return Err(invalid(
                "erasure_lease_seconds (MERIDIAN_ERASURE_LEASE_SECONDS)",
                "must be at least 1",
            ));
        }
        let destination_credentials_dir = settings
            .destination_credentials_dir
            .unwrap_or_else(|| data_dir.join("destinations"));
        Ok(Config {
            destination_credentials_dir,
            shopify,
            erasure_lease: std::time::Duration::from_secs(erasure_lease_seconds),
            grpc_addr,
            http_addr,
            data_dir,
            store,
            nats_url,
            nats_stream: settings.nats_stream,
            nats_subject_root,
            nats_pack_max_bytes: settings
                .nats_pack_max_bytes
                .unwrap_or(meridian_bus::JetStreamSettings::default().pack_max_bytes),
            region,
            time_zone,
            log_filter: settings.log.unwrap_or_else(|| "info".to_owned()),
            otlp_endpoint,
            api_key_pepper: settings.api_key_pepper,
            shutdown_grace: std::time::Duration::from_secs(
                settings.shutdown_grace_seconds.unwrap_or(25),
            ),
            policy_dir: settings.policy_dir,
        })
    }
}

impl Config {
    /// Opens the configured store with its schema brought up to date; refuses
    /// a schema that is ahead of this binary, dirty, or edited.
    pub(crate) async fn open_store(&self) -> anyhow::Result<meridian_store::Store> {
        use anyhow::Context as _;
        let store = meridian_store::Store::connect(&self.store)
            .await
            .context("opening the store")?;
        store
            .migrate()
            .await
            .context("checking the database schema")?;
        Ok(store)
    }

    /// The vault over `store`, with the KEK from `MERIDIAN_KEK` or the data
    /// directory's key file.
    pub(crate) fn vault(
        &self,
        store: &meridian_store::Store,
    ) -> anyhow::Result<meridian_vault::Vault> {
        use anyhow::Context as _;
        let provider = meridian_vault::provider_from_env_or_data_dir(&self.data_dir)
            .context("opening the key-encryption key")?;
        Ok(meridian_vault::Vault::new(
            provider,
            meridian_vault::key_store_for(store),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_store_on_loopback() {
        let config = Config::resolve(Settings::default()).unwrap();
        assert_eq!(config.grpc_addr.to_string(), DEFAULT_GRPC_ADDR);
        assert_eq!(config.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert!(matches!(config.store, StoreLocation::Embedded { .. }));
        assert_eq!(config.time_zone.to_string(), "UTC");
    }

    #[test]
    fn later_layers_win() {
        let file = Settings {
            grpc_addr: Some("127.0.0.1:1".into()),
            region: Some("eu".into()),
            ..Settings::default()
        };
        let flags = Settings {
            grpc_addr: Some("127.0.0.1:0".into()),
            ..Settings::default()
        };
        let config = Config::resolve(file.merge(flags)).unwrap();
        assert_eq!(config.grpc_addr.port(), 0);
        assert_eq!(config.region.as_str(), "eu");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases: [(Settings, &str); 5] = [
            (
                Settings {
                    grpc_addr: Some("localhost".into()),
                    ..Default::default()
                },
                "grpc_addr",
            ),
            (
                Settings {
                    database_url: Some("mysql://x".into()),
                    ..Default::default()
                },
                "DATABASE_URL",
            ),
            (
                Settings {
                    nats_url: Some("http://x".into()),
                    ..Default::default()
                },
                "NATS_URL",
            ),
            (
                Settings {
                    time_zone: Some("Europe/Atlantis".into()),
                    ..Default::default()
                },
                "time_zone",
            ),
            (
                Settings {
                    region: Some("EU West".into()),
                    ..Default::default()
                },
                "region",
            ),
        ];
        for (settings, name) in cases {
            let err = Config::resolve(settings).unwrap_err().to_string();
            assert!(err.contains(name), "{err} should name {name}");
        }
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meridian.toml");
        std::fs::write(&path, "grpc_adr = \"127.0.0.1:0\"\n").unwrap();
        let err = Settings::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("grpc_adr"), "{err}");
    }

    #[test]
    fn jetstream_packs_are_on_unless_the_file_turns_them_off() {
        let default = Config::resolve(Settings::default()).unwrap();
        assert_eq!(
            crate::outbox::jetstream_settings(&default).pack_max_bytes,
            256 * 1024
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meridian.toml");
        std::fs::write(&path, "nats_pack_max_bytes = 0\n").unwrap();
        let config = Config::resolve(Settings::from_file(&path).unwrap()).unwrap();
        assert_eq!(crate::outbox::jetstream_settings(&config).pack_max_bytes, 0);
    }
}
