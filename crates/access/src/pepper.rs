//! The API-key pepper: a secret mixed into every stored key hash, kept outside
//! the database (environment or a file in the data directory), so that a
//! stolen database cannot be used to test guesses.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// The pepper file inside the data directory.
pub const PEPPER_FILE: &str = "secrets/api-key-pepper";
const PEPPER_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum PepperError {
    #[error("MERIDIAN_API_KEY_PEPPER must be base64 of at least 32 bytes")]
    BadEnvironmentValue,
    #[error("the pepper file {path} is unreadable or not base64 of at least 32 bytes")]
    BadFile { path: PathBuf },
    #[error("cannot write the pepper file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the system random number generator failed")]
    Random,
}

pub struct ApiKeyPepper {
    key: hmac::Key,
}

impl std::fmt::Debug for ApiKeyPepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKeyPepper(<secret>)")
    }
}

impl ApiKeyPepper {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// The pepper from `MERIDIAN_API_KEY_PEPPER` when given (base64), otherwise
    /// from the data directory's pepper file, which is created (mode 0600) on first use.
    pub fn load(environment_value: Option<&str>, data_dir: &Path) -> Result<Self, PepperError> {
        if let Some(value) = environment_value {
            let bytes = Zeroizing::new(
                STANDARD
                    .decode(value.trim())
                    .map_err(|_| PepperError::BadEnvironmentValue)?,
            );
            if bytes.len() < PEPPER_BYTES {
                return Err(PepperError::BadEnvironmentValue);
            }
            return Ok(Self::from_bytes(&bytes));
        }
        let path = data_dir.join(PEPPER_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = Zeroizing::new(
                    STANDARD
                        .decode(text.trim())
                        .map_err(|_| PepperError::BadFile { path: path.clone() })?,
                );
                if bytes.len() < PEPPER_BYTES {
                    return Err(PepperError::BadFile { path });
                }
                Ok(Self::from_bytes(&bytes))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Self::create_file(&path),
            Err(_) => Err(PepperError::BadFile { path }),
        }
    }

    fn create_file(path: &Path) -> Result<Self, PepperError> {
        let mut bytes = Zeroizing::new([0u8; PEPPER_BYTES]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| PepperError::Random)?;
        let to_error = |source| PepperError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(to_error)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(mut file) => {
                let text = Zeroizing::new(STANDARD.encode(bytes.as_ref()));
                file.write_all(text.as_bytes()).map_err(to_error)?;
                file.sync_all().map_err(to_error)?;
                Ok(Self::from_bytes(bytes.as_ref()))
            }
            // Another process created it first: use theirs.
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::load(None, path.parent().and_then(Path::parent).unwrap_or(path))
            }
            Err(err) => Err(to_error(err)),
        }
    }

    pub(crate) fn hash(&self, secret: &[u8]) -> Vec<u8> {
        hmac::sign(&self.key, secret).as_ref().to_vec()
    }

    /// Constant-time check of a presented secret against a stored hash.
    pub(crate) fn verify(&self, secret: &[u8], stored_hash: &[u8]) -> bool {
        hmac::verify(&self.key, secret, stored_hash).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pepper_file_is_created_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = ApiKeyPepper::load(None, dir.path()).unwrap();
        let second = ApiKeyPepper::load(None, dir.path()).unwrap();
        assert_eq!(first.hash(b"secret"), second.hash(b"secret"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(PEPPER_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn environment_pepper_wins_and_must_be_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let env = STANDARD.encode([7u8; 32]);
        let from_env = ApiKeyPepper::load(Some(&env), dir.path()).unwrap();
        assert!(!dir.path().join(PEPPER_FILE).exists());
        assert!(from_env.verify(b"s", &ApiKeyPepper::from_bytes(&[7u8; 32]).hash(b"s")));
        let short = STANDARD.encode([7u8; 8]);
        assert!(ApiKeyPepper::load(Some(&short), dir.path()).is_err());
        assert!(ApiKeyPepper::load(Some("not base64!"), dir.path()).is_err());
    }
}
