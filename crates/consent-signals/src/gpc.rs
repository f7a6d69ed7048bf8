//! Global Privacy Control: the `Sec-GPC` request header (or the
//! `navigator.globalPrivacyControl` flag an SDK forwards). A GPC signal is an
//! opt-out of sale and sharing for the subject and the profiles linked to it;
//! the consent service records it as such.

use crate::error::SignalError;

/// A Global Privacy Control signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpc {
    /// Whether the user agent asserted GPC.
    pub enabled: bool,
}

impl Gpc {
    /// Parses a `Sec-GPC` header value. The only defined value is `1`
    /// (surrounding whitespace is allowed, as in any HTTP field value).
    pub fn from_header(value: &str) -> Result<Self, SignalError> {
        if value.trim_matches([' ', '\t']) == "1" {
            Ok(Self { enabled: true })
        } else {
            Err(SignalError::InvalidGpcHeader {
                value: value.chars().take(16).collect(),
            })
        }
    }

    /// From an optional header: absent means no GPC signal.
    pub fn from_optional_header(value: Option<&str>) -> Result<Self, SignalError> {
        value.map_or(Ok(Self { enabled: false }), Self::from_header)
    }

    /// From the boolean flag (`navigator.globalPrivacyControl`, or the GPC
    /// bit of a GPP US section).
    pub fn from_flag(enabled: bool) -> Self {
        Self { enabled }
    }

    /// Whether this signal opts the subject (and linked profiles) out of the
    /// sale and sharing of personal data.
    pub fn opts_out_of_sale_and_sharing(&self) -> bool {
        self.enabled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values() {
        assert!(Gpc::from_header("1").unwrap().enabled);
        assert!(
            Gpc::from_header(" 1\t")
                .unwrap()
                .opts_out_of_sale_and_sharing()
        );
        for bad in ["0", "", "true", "11", "1,1"] {
            let err = Gpc::from_header(bad).unwrap_err();
            assert!(err.to_string().contains("Sec-GPC"), "{err}");
        }
        assert!(!Gpc::from_optional_header(None).unwrap().enabled);
        assert!(Gpc::from_optional_header(Some("1")).unwrap().enabled);
        assert!(Gpc::from_flag(true).enabled);
    }
}
