//! Base64url to bits, and a checked bit reader: no read can panic, every
//! short read is a [`SignalError::Truncated`] naming the field and offset.

use crate::error::SignalError;

/// Decodes a base64url segment (no padding characters) into one `u8` (0 or 1)
/// per bit, most significant bit of each character first, as both IAB
/// reference implementations do.
pub(crate) fn base64url_bits(segment_name: &str, text: &str) -> Result<Vec<u8>, SignalError> {
    let mut bits = Vec::with_capacity(text.len() * 6);
    for (position, character) in text.chars().enumerate() {
        let value = match character {
            'A'..='Z' => character as u32 - 'A' as u32,
            'a'..='z' => character as u32 - 'a' as u32 + 26,
            '0'..='9' => character as u32 - '0' as u32 + 52,
            '-' => 62,
            '_' => 63,
            _ => {
                return Err(SignalError::InvalidCharacter {
                    segment: segment_name.to_owned(),
                    position,
                    character,
                });
            }
        };
        for shift in (0..6).rev() {
            bits.push(((value >> shift) & 1) as u8);
        }
    }
    Ok(bits)
}

/// Reads fields from a bit string, tracking the offset for error messages.
pub(crate) struct BitReader<'a> {
    bits: &'a [u8],
    pos: usize,
    segment: &'a str,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(segment: &'a str, bits: &'a [u8]) -> Self {
        Self {
            bits,
            pos: 0,
            segment,
        }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bits.len().saturating_sub(self.pos)
    }

    pub(crate) fn skip(&mut self, n: usize, field: &'static str) -> Result<(), SignalError> {
        self.need(n, field)?;
        self.pos += n;
        Ok(())
    }

    fn need(&self, n: usize, field: &'static str) -> Result<(), SignalError> {
        if self.remaining() < n {
            Err(SignalError::Truncated {
                segment: self.segment.to_owned(),
                field,
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            })
        } else {
            Ok(())
        }
    }

    /// An unsigned integer of `n` bits (n <= 64), most significant bit first.
    pub(crate) fn uint(&mut self, n: usize, field: &'static str) -> Result<u64, SignalError> {
        self.need(n, field)?;
        let mut value: u64 = 0;
        for bit in self.bits.iter().skip(self.pos).take(n) {
            value = (value << 1) | u64::from(*bit);
        }
        self.pos += n;
        Ok(value)
    }

    pub(crate) fn u8(&mut self, n: usize, field: &'static str) -> Result<u8, SignalError> {
        // n <= 8 at every call site, so the value fits.
        Ok(u8::try_from(self.uint(n.min(8), field)?).unwrap_or(u8::MAX))
    }

    pub(crate) fn u16(&mut self, n: usize, field: &'static str) -> Result<u16, SignalError> {
        Ok(u16::try_from(self.uint(n.min(16), field)?).unwrap_or(u16::MAX))
    }

    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, SignalError> {
        Ok(self.uint(1, field)? == 1)
    }

    /// `n` single-bit flags.
    pub(crate) fn flags(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<Vec<bool>, SignalError> {
        self.need(n, field)?;
        let out = self
            .bits
            .iter()
            .skip(self.pos)
            .take(n)
            .map(|b| *b == 1)
            .collect();
        self.pos += n;
        Ok(out)
    }

    /// Two letters of `bits_per_letter` bits each, `A` = 0 (TCF language and
    /// country codes). Values above `Z` are rejected.
    pub(crate) fn letters(&mut self, field: &'static str) -> Result<String, SignalError> {
        let offset = self.pos;
        let mut out = String::with_capacity(2);
        for _ in 0..2 {
            let value = self.u8(6, field)?;
            if value > 25 {
                return Err(self.invalid(
                    field,
                    offset,
                    format!("letter value {value} is not in A-Z (0-25)"),
                ));
            }
            out.push(char::from(b'A' + value));
        }
        Ok(out)
    }

    /// A Fibonacci-coded positive integer (GPP): bits for 1, 2, 3, 5, 8, …
    /// least significant first, terminated by an extra `1` (the code ends in
    /// `11`).
    pub(crate) fn fibonacci(&mut self, field: &'static str) -> Result<u64, SignalError> {
        let offset = self.pos;
        let (mut prev, mut cur) = (1u64, 2u64); // fib weights: 1, 2, 3, 5, ...
        let mut value: u64 = 0;
        let mut last_was_one = false;
        let mut index = 0usize;
        loop {
            if self.remaining() == 0 {
                return Err(SignalError::Truncated {
                    segment: self.segment.to_owned(),
                    field,
                    offset,
                    needed: self.pos - offset + 1,
                    available: self.pos - offset,
                });
            }
            let bit = self.bits.get(self.pos).copied().unwrap_or(0) == 1;
            self.pos += 1;
            if bit && last_was_one {
                return Ok(value);
            }
            if bit {
                let weight = if index == 0 { prev } else { cur };
                value = value.checked_add(weight).ok_or_else(|| {
                    self.invalid(
                        field,
                        offset,
                        "Fibonacci-coded integer overflows 64 bits".into(),
                    )
                })?;
            }
            if index > 0 {
                let next = prev.checked_add(cur).ok_or_else(|| {
                    self.invalid(
                        field,
                        offset,
                        "Fibonacci-coded integer overflows 64 bits".into(),
                    )
                })?;
                prev = cur;
                cur = next;
            }
            index += 1;
            last_was_one = bit;
        }
    }

    pub(crate) fn invalid(
        &self,
        field: &'static str,
        offset: usize,
        reason: String,
    ) -> SignalError {
        SignalError::InvalidField {
            segment: self.segment.to_owned(),
            field,
            offset,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits_of(s: &str) -> Vec<u8> {
        s.bytes().map(|b| b - b'0').collect()
    }

    #[test]
    fn fibonacci_matches_the_gpp_table() {
        // From the GPP spec: 1 = 11, 2 = 011, 3 = 0011, 4 = 1011, 5 = 00011,
        // 6 = 10011, 7 = 01011, 12 = 101011.
        for (code, value) in [
            ("11", 1),
            ("011", 2),
            ("0011", 3),
            ("1011", 4),
            ("00011", 5),
            ("10011", 6),
            ("01011", 7),
            ("101011", 12),
        ] {
            let bits = bits_of(code);
            let mut r = BitReader::new("t", &bits);
            assert_eq!(r.fibonacci("f").unwrap(), value, "{code}");
            assert_eq!(r.remaining(), 0);
        }
    }

    #[test]
    fn fibonacci_without_terminator_is_truncated() {
        let bits = bits_of("0101010");
        let mut r = BitReader::new("t", &bits);
        assert!(matches!(
            r.fibonacci("f"),
            Err(SignalError::Truncated { .. })
        ));
    }

    #[test]
    fn short_read_names_field_and_offset() {
        let bits = bits_of("101");
        let mut r = BitReader::new("seg", &bits);
        r.uint(2, "a").unwrap();
        let err = r.uint(6, "CmpId").unwrap_err();
        assert_eq!(
            err.to_string(),
            "seg: field CmpId at bit 2 needs 6 bits but only 1 remain"
        );
    }
}
