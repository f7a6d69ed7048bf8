//! The data of a PostgreSQL binary `COPY … FROM STDIN (FORMAT binary)`, built in memory:
//! the rooms' bulk writes use it where a multi-row `INSERT` would make PostgreSQL parse
//! arrays and run the executor per row.
//!
//! Format (PostgreSQL docs, "COPY", binary format): an 11-byte signature, a 32-bit flags
//! field and a 32-bit header-extension length; per row a 16-bit field count, then per
//! field a 32-bit length and that many bytes; a 16-bit −1 trailer. Integers are big-endian.

use chrono::{DateTime, Utc};

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// From this many rows on, the rooms write rows known to be new by binary `COPY` instead of
/// one multi-row `INSERT … UNNEST`: one more round trip, but PostgreSQL neither parses
/// arrays nor runs the executor per row. Below it, the round trip costs more than it saves.
pub const COPY_MIN_ROWS: usize = 32;

/// Why a value cannot be written as COPY data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyDataError {
    #[error("a field of {0} bytes is over the 2 GiB a COPY field can hold")]
    FieldTooLarge(usize),
    #[error("{0} is out of PostgreSQL's timestamp range")]
    TimeOutOfRange(DateTime<Utc>),
}

/// Binary COPY data under construction: [`BinaryCopy::row`], then that many fields, per
/// row; [`BinaryCopy::finish`] gives the bytes to send.
pub struct BinaryCopy {
    buf: Vec<u8>,
}

impl BinaryCopy {
    /// Starts the data, with room for about `bytes` of rows.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(SIGNATURE.len() + 8 + bytes + 2);
        buf.extend_from_slice(SIGNATURE);
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0i32.to_be_bytes()); // no header extension
        BinaryCopy { buf }
    }

    /// Starts a row of `fields` fields (the COPY statement's column count).
    pub fn row(&mut self, fields: i16) {
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    /// A field's binary value as it is (`bytea`, `text` and `uuid` are their bytes).
    pub fn bytes(&mut self, value: &[u8]) -> Result<(), CopyDataError> {
        let len =
            i32::try_from(value.len()).map_err(|_| CopyDataError::FieldTooLarge(value.len()))?;
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value);
        Ok(())
    }

    /// A NULL field.
    pub fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    /// A `bool` field.
    pub fn bool(&mut self, value: bool) {
        self.buf.extend_from_slice(&1i32.to_be_bytes());
        self.buf.push(u8::from(value));
    }

    /// An `int2` field.
    pub fn int2(&mut self, value: i16) {
        self.buf.extend_from_slice(&2i32.to_be_bytes());
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    /// An `int8` field.
    pub fn int8(&mut self, value: i64) {
        self.buf.extend_from_slice(&8i32.to_be_bytes());
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    /// A `timestamptz` field: microseconds since 2000-01-01T00:00:00Z, truncated toward
    /// that epoch exactly as sqlx encodes a bound `DateTime<Utc>`, so a COPY and an
    /// `INSERT` of the same instant store the same value.
    pub fn timestamptz(&mut self, at: DateTime<Utc>) -> Result<(), CopyDataError> {
        const PG_EPOCH: DateTime<Utc> = DateTime::from_timestamp_nanos(946_684_800_000_000_000);
        let micros = (at - PG_EPOCH)
            .num_microseconds()
            .ok_or(CopyDataError::TimeOutOfRange(at))?;
        self.buf.extend_from_slice(&8i32.to_be_bytes());
        self.buf.extend_from_slice(&micros.to_be_bytes());
        Ok(())
    }

    /// The finished data (trailer appended).
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }

    /// Finishes the data and sends it with `statement` (`COPY … FROM STDIN (FORMAT
    /// binary)`) on `conn`; returns how many rows PostgreSQL stored.
    pub async fn send(
        self,
        conn: &mut sqlx::PgConnection,
        statement: &str,
    ) -> Result<u64, sqlx::Error> {
        let mut copy = conn.copy_in_raw(statement).await?;
        copy.send(self.finish()).await?;
        copy.finish().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_laid_out_as_postgresql_reads_it() {
        let mut copy = BinaryCopy::with_capacity(0);
        copy.row(3);
        copy.bytes(b"ab").unwrap();
        copy.int2(-2);
        let before_epoch = DateTime::parse_from_rfc3339("1999-12-31T23:59:59.9999995Z")
            .unwrap()
            .with_timezone(&Utc);
        copy.timestamptz(before_epoch).unwrap();
        let data = copy.finish();
        let mut expected = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        expected.extend_from_slice(&[0, 3]);
        expected.extend_from_slice(&[0, 0, 0, 2, b'a', b'b']);
        expected.extend_from_slice(&[0, 0, 0, 2, 0xff, 0xfe]);
        // Half a microsecond before the epoch truncates toward it: 0 µs.
        expected.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(data, expected);
    }

    #[test]
    fn nulls_booleans_and_int8_are_laid_out_as_postgresql_reads_them() {
        let mut copy = BinaryCopy::with_capacity(0);
        copy.row(4);
        copy.null();
        copy.bool(true);
        copy.bool(false);
        copy.int8(-2);
        let data = copy.finish();
        let mut expected = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        expected.extend_from_slice(&[0, 4]);
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        expected.extend_from_slice(&[0, 0, 0, 1, 1]);
        expected.extend_from_slice(&[0, 0, 0, 1, 0]);
        expected.extend_from_slice(&[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        expected.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(data, expected);
    }
}
