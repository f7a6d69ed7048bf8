//! TEST SUPPORT ONLY (feature `test-support`): dumps every table of a database as text and
//! captures logs, for plaintext scans ("no email, phone or name appears at rest or in logs").
//! Not for production use.
//!
//! Each dumped value is rendered as text; binary values are rendered both as lossy UTF-8 (so
//! plaintext stored in a BLOB/BYTEA column shows up) and as hex. [`find_plaintext`] looks for
//! each needle case-insensitively, raw and hex-encoded.

use std::io::Write;
use std::sync::{Arc, Mutex};

use sqlx::{PgPool, Row, SqlitePool};

/// Every row of every table, one line per row: `table: col=value | col=value`.
#[derive(Debug, Default, Clone)]
pub struct TableDump {
    /// Table names dumped.
    pub tables: Vec<String>,
    /// Rows dumped per table, in `tables` order.
    pub row_counts: Vec<usize>,
    /// The text.
    pub text: String,
}

impl TableDump {
    /// Rows dumped from `table` (None if the table was not seen).
    pub fn rows_in(&self, table: &str) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| t == table)
            .map(|i| self.row_counts[i])
    }
}

/// What opens the hex rendering of a binary value; a `)` closes it.
const HEX_RENDERING: &[u8] = b"(hex ";

fn render_bytes(bytes: &[u8]) -> String {
    format!(
        "{} {}{})",
        String::from_utf8_lossy(bytes),
        String::from_utf8_lossy(HEX_RENDERING),
        hex::encode(bytes)
    )
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Dumps every base table of the current schema of a PostgreSQL database.
pub async fn dump_postgres(pool: &PgPool) -> Result<TableDump, sqlx::Error> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name",
    )
    .fetch_all(pool)
    .await?;
    let mut dump = TableDump::default();
    for table in tables {
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(&table)
        .fetch_all(pool)
        .await?;
        let select: Vec<String> = columns
            .iter()
            .map(|(name, ty)| {
                if ty == "bytea" {
                    quote_ident(name)
                } else {
                    format!("{}::text", quote_ident(name))
                }
            })
            .collect();
        let sql = format!("SELECT {} FROM {}", select.join(", "), quote_ident(&table));
        let rows = sqlx::query(&sql).fetch_all(pool).await?;
        for row in &rows {
            let mut line = format!("{table}:");
            for (i, (name, ty)) in columns.iter().enumerate() {
                let value = if ty == "bytea" {
                    row.try_get::<Option<Vec<u8>>, _>(i)?
                        .map(|b| render_bytes(&b))
                } else {
                    row.try_get::<Option<String>, _>(i)?
                };
                line.push_str(&format!(" {name}={} |", value.as_deref().unwrap_or("NULL")));
            }
            dump.text.push_str(&line);
            dump.text.push('\n');
        }
        dump.row_counts.push(rows.len());
        dump.tables.push(table);
    }
    Ok(dump)
}

/// Dumps every table of a SQLite database (including `sqlite_sequence` and the migrations table).
pub async fn dump_sqlite(pool: &SqlitePool) -> Result<TableDump, sqlx::Error> {
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(pool)
            .await?;
    let mut dump = TableDump::default();
    for table in tables {
        let columns: Vec<String> =
            sqlx::query(&format!("PRAGMA table_info({})", quote_ident(&table)))
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>("name"))
                .collect::<Result<_, _>>()?;
        // CAST(.. AS BLOB) renders any value (text, number, blob) as its bytes.
        let select: Vec<String> = columns
            .iter()
            .map(|c| format!("CAST({} AS BLOB)", quote_ident(c)))
            .collect();
        let sql = format!("SELECT {} FROM {}", select.join(", "), quote_ident(&table));
        let rows = sqlx::query(&sql).fetch_all(pool).await?;
        for row in &rows {
            let mut line = format!("{table}:");
            for (i, name) in columns.iter().enumerate() {
                let value = row
                    .try_get::<Option<Vec<u8>>, _>(i)?
                    .map(|b| render_bytes(&b));
                line.push_str(&format!(" {name}={} |", value.as_deref().unwrap_or("NULL")));
            }
            dump.text.push_str(&line);
            dump.text.push('\n');
        }
        dump.row_counts.push(rows.len());
        dump.tables.push(table);
    }
    Ok(dump)
}

/// The needles found in `haystack`, case-insensitively (ASCII case), as given or
/// hex-encoded. One Aho-Corasick pass, so thousands of needles over megabytes stay fast.
///
/// Two kinds of match are coincidences, not plaintext, and do not count:
/// - a needle as given inside the hex rendering of a binary value: hex of random ciphertext
///   holds a given ten-digit string about once in 10^12 positions, and a scan over ~10^6 hex
///   digits with ~2,000 digit needles failed in CI on one;
/// - a needle made only of digits (a phone number's digits) inside a longer run of digits,
///   as given or hex-encoded: a microsecond timestamp such as 1764155551550123 holds the US
///   number 4155551550.
pub fn find_plaintext<'n>(
    haystack: &str,
    needles: impl IntoIterator<Item = &'n str>,
) -> Vec<&'n str> {
    let needles: Vec<&'n str> = needles.into_iter().filter(|n| !n.is_empty()).collect();
    let mut patterns: Vec<String> = Vec::with_capacity(needles.len() * 2);
    for needle in &needles {
        patterns.push(needle.to_lowercase());
        patterns.push(hex::encode(needle.as_bytes()));
    }
    let hay = haystack.to_lowercase();
    let Ok(automaton) = aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(&patterns)
    else {
        // Building only fails past internal size limits; report every needle rather than none.
        return needles;
    };
    let digits_only: Vec<bool> = needles
        .iter()
        .map(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    let bytes = hay.as_bytes();
    let mut hit = vec![false; needles.len()];
    for m in automaton.find_overlapping_iter(&hay) {
        let needle = m.pattern().as_usize() / 2;
        let hex_form = m.pattern().as_usize() % 2 == 1;
        if !hex_form && inside_hex_rendering(bytes, m.start(), m.end()) {
            continue;
        }
        if digits_only[needle] && inside_longer_number(bytes, m.start(), m.end(), hex_form) {
            continue;
        }
        hit[needle] = true;
    }
    needles
        .into_iter()
        .zip(hit)
        .filter(|(_, h)| *h)
        .map(|(n, _)| n)
        .collect()
}

/// Whether `start..end` of `hay` lies in the hex rendering of a binary value: only hex digits
/// between it and the `(hex ` before it and the `)` after it.
fn inside_hex_rendering(hay: &[u8], start: usize, end: usize) -> bool {
    if !hay[start..end].iter().all(u8::is_ascii_hexdigit) {
        return false;
    }
    let before = hay[..start]
        .iter()
        .rposition(|b| !b.is_ascii_hexdigit())
        .map_or(0, |i| i + 1);
    let after = hay[end..]
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .map_or(hay.len(), |i| end + i);
    hay[..before].ends_with(HEX_RENDERING) && hay.get(after) == Some(&b')')
}

/// Whether the digits at `start..end` of `hay` continue a longer number on either side: a
/// digit next to them, or for their hex form, a digit's hex (`30`–`39`).
fn inside_longer_number(hay: &[u8], start: usize, end: usize, hex_form: bool) -> bool {
    let is_digit_hex = |pair: &[u8]| pair[0] == b'3' && pair[1].is_ascii_digit();
    if hex_form {
        (start >= 2 && is_digit_hex(&hay[start - 2..start]))
            || (end + 2 <= hay.len() && is_digit_hex(&hay[end..end + 2]))
    } else {
        (start >= 1 && hay[start - 1].is_ascii_digit())
            || hay.get(end).is_some_and(u8::is_ascii_digit)
    }
}

/// A `tracing` subscriber writing every event (TRACE and up, all targets) into memory.
#[derive(Clone, Default)]
pub struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// A fresh capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs the capture as the global default subscriber; returns false if one was
    /// already installed (then nothing is captured by this capture).
    pub fn install_global(&self) -> bool {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(self.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).is_ok()
    }

    /// Everything captured so far.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// Writer handed out per event.
pub struct LogCaptureWriter {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl Write for LogCaptureWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCaptureWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LogCaptureWriter {
            buf: self.buf.clone(),
        }
    }
}
