//! Decoders for consent signals: IAB TCF v2.2 TC strings, IAB GPP strings
//! (header, `tcfeuv2`, `usnat`, `usca`; other sections reported as present
//! but undecoded) and Global Privacy Control.
//!
//! The room's one job is to turn a signal into typed, checked values; it
//! decides nothing about consent. It exposes [`decode`] (detects TC vs GPP),
//! [`ConsentSignal`] with [`ConsentSignal::to_json`] in the IAB reference
//! implementations' field names, the typed [`TcString`], [`GppString`],
//! [`UsNat`], [`UsCa`] and [`Gpc`], and one error type, [`SignalError`],
//! which the gRPC layer maps to `INVALID_ARGUMENT`. Decoding never panics:
//! every read is checked and every failure names the segment, field and bit.
//!
//! Agreement with `@iabtcf/core` and `@iabgpp/cmpapi` is tested on thousands
//! of strings they encode and on corrupted ones (`tests/oracle.rs`). Where a
//! corrupted string is tolerated by the reference but not here, that is
//! deliberate: reversed or zero-id ranges, language/country letters outside
//! A-Z, repeated segments or section ids, restriction type 3 or purpose 0,
//! a truncated publisher-restriction list (cmpapi drops it silently), and TC
//! strings other than version 2. Id lists are sets (sorted, merged).

mod bits;
mod error;
mod gpc;
mod gpp;
mod idset;
mod tcf;

pub use error::SignalError;
pub use gpc::Gpc;
pub use gpp::{
    Consent, GpcSegment, GppString, OptOut, UndecodedSection, UsCa, UsNat, section_name,
};
pub use idset::IdSet;
pub use tcf::{PublisherRestriction, PublisherTc, RestrictionType, TcString};

use serde::{Serialize, Serializer};

/// Longest consent string accepted (a TC string with every vendor of the
/// Global Vendor List as a bitfield is about 2 KB; GPP strings are shorter).
pub const MAX_SIGNAL_LEN: usize = 64 * 1024;

/// A decoded consent string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentSignal {
    /// An IAB TCF v2 TC string.
    Tcf(TcString),
    /// An IAB GPP string.
    Gpp(GppString),
}

impl ConsentSignal {
    /// The decoded fields as JSON: for a TC string the `@iabtcf/core`
    /// `TCModel` names; for GPP `{"applicableSections", "sections",
    /// "undecodedSections"}` with `@iabgpp/cmpapi` names.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Tcf(tc) => tc.to_json(),
            Self::Gpp(gpp) => gpp.to_json(),
        }
    }
}

impl Serialize for ConsentSignal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

/// Decodes a TC string or a GPP string. A string starting with `DB` (the GPP
/// header) or containing `~` is GPP; anything else is a TC string.
/// Surrounding whitespace is ignored.
pub fn decode(text: &str) -> Result<ConsentSignal, SignalError> {
    let text = check_len(text)?;
    if text.starts_with("DB") || text.contains('~') {
        gpp::decode(text).map(ConsentSignal::Gpp)
    } else {
        tcf::decode(text, tcf::Flavor::TcString).map(ConsentSignal::Tcf)
    }
}

/// Decodes a TC string only.
pub fn decode_tc_string(text: &str) -> Result<TcString, SignalError> {
    tcf::decode(check_len(text)?, tcf::Flavor::TcString)
}

/// Decodes a GPP string only.
pub fn decode_gpp_string(text: &str) -> Result<GppString, SignalError> {
    gpp::decode(check_len(text)?)
}

fn check_len(text: &str) -> Result<&str, SignalError> {
    if text.len() > MAX_SIGNAL_LEN {
        return Err(SignalError::TooLong {
            len: text.len(),
            max: MAX_SIGNAL_LEN,
        });
    }
    let text = text.trim();
    if text.is_empty() {
        return Err(SignalError::Empty);
    }
    Ok(text)
}
