//! The API key format: `mk_<key id>_<secret>`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

const PREFIX: &str = "mk_";
const KEY_ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a Meridian API key (expected mk_<16 hex>_<43 base64url>)")]
pub struct ApiKeyError;

/// A whole API key. Its `Display` is the key itself: print it only to the operator who asked for it.
pub struct ApiKey {
    key_id: String,
    secret: Zeroizing<Vec<u8>>,
    text: Zeroizing<String>,
}

impl ApiKey {
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let mut id = [0u8; KEY_ID_BYTES];
        let mut secret = Zeroizing::new(vec![0u8; SECRET_BYTES]);
        // The system RNG fails only if the OS cannot provide randomness at all,
        // in which case no key can be made safely.
        #[allow(clippy::expect_used)]
        {
            rng.fill(&mut id).expect("system randomness");
            rng.fill(&mut secret).expect("system randomness");
        }
        let key_id = hex::encode(id);
        let text = Zeroizing::new(format!(
            "{PREFIX}{key_id}_{}",
            URL_SAFE_NO_PAD.encode(secret.as_slice())
        ));
        Self {
            key_id,
            secret,
            text,
        }
    }

    pub fn parse(text: &str) -> Result<Self, ApiKeyError> {
        let rest = text.strip_prefix(PREFIX).ok_or(ApiKeyError)?;
        let (key_id, secret_text) = rest.split_once('_').ok_or(ApiKeyError)?;
        if key_id.len() != KEY_ID_BYTES * 2
            || !key_id
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(ApiKeyError);
        }
        let secret = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(secret_text)
                .map_err(|_| ApiKeyError)?,
        );
        if secret.len() != SECRET_BYTES {
            return Err(ApiKeyError);
        }
        Ok(Self {
            key_id: key_id.to_owned(),
            secret,
            text: Zeroizing::new(text.to_owned()),
        })
    }

    /// The public half, safe to log.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_and_differ() {
        let key = ApiKey::generate();
        let parsed = ApiKey::parse(&key.to_string()).unwrap();
        assert_eq!(parsed.key_id(), key.key_id());
        assert_eq!(parsed.secret(), key.secret());
        assert_ne!(ApiKey::generate().to_string(), key.to_string());
        assert!(!format!("{key:?}").contains(&key.to_string()));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let good = ApiKey::generate().to_string();
        let cases = [
            String::new(),
            "mk_".into(),
            good.replacen("mk_", "sk_", 1),
            good[..good.len() - 1].to_string(),
            good.replacen('_', "-", 2),
            format!("{good}A"),
            "mk_ZZZZZZZZZZZZZZZZ_".to_string() + &"A".repeat(43),
        ];
        for case in cases {
            assert_eq!(ApiKey::parse(&case).err(), Some(ApiKeyError), "{case}");
        }
    }
}
