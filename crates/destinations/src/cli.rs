//! `meridian hash --platform P --field F [--default-region CC]`: values one per line on
//! stdin, the platform's normalized SHA-256 hex per line on stdout (an empty line for a
//! value the platform would reject). For operators checking what a platform will receive.

use std::io::{BufRead, Write};

use crate::hash::hash_field;
use crate::normalize::{Field, Platform};

/// Hashes every line of `input` into `output`, line for line.
pub fn hash_lines(
    platform: Platform,
    field: Field,
    default_region: Option<&str>,
    input: impl BufRead,
    mut output: impl Write,
) -> std::io::Result<u64> {
    let mut count = 0;
    for line in input.split(b'\n') {
        let line = line?;
        // Not UTF-8: the platform could not read it either.
        let hashed = std::str::from_utf8(&line)
            .ok()
            .map(|v| v.strip_suffix('\r').unwrap_or(v))
            .and_then(|v| hash_field(platform, field, v, default_region));
        if let Some(h) = hashed {
            output.write_all(h.as_bytes())?;
        }
        output.write_all(b"\n")?;
        count += 1;
    }
    output.flush()?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_out_per_line_in() {
        let mut out = Vec::new();
        let n = hash_lines(
            Platform::Google,
            Field::Email,
            None,
            &b"a@b.co\nnot-an-email\n\nA@B.CO\r\n"[..],
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(n, 4);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].len(), 64);
        assert_eq!(lines[1], "");
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], lines[0]);
    }
}
