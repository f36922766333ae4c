//! The binary `COPY … FROM STDIN (FORMAT binary)` encoding, written directly
//! into one buffer (no per-value trait objects): a signature and header, then
//! per row a 16-bit field count and per field a 32-bit length and the value
//! in network byte order, then a 16-bit −1.

use bytes::{BufMut, Bytes, BytesMut};

use crate::verified::ReadingRow;

/// The readings' columns in the order [`CopyBuf::reading`] writes them.
pub(crate) const COPY_READINGS: &str =
    "COPY readings (id, block_id, meter_id, epoch, seq, ts_ms, energy_mwh, current_ma, \
     leaf, voltage_cv, power_dw, freq_mhz, flags, pf_e4) FROM STDIN (FORMAT binary)";

/// Rows of one `COPY`.
pub(crate) struct CopyBuf {
    buf: BytesMut,
    rows: usize,
}

impl CopyBuf {
    /// An empty copy with room for about `bytes`.
    pub(crate) fn with_capacity(bytes: usize) -> CopyBuf {
        let mut buf = BytesMut::with_capacity(bytes + 21);
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension length
        CopyBuf { buf, rows: 0 }
    }

    /// Rows added so far.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Starts a row of `fields` fields.
    pub(crate) fn row(&mut self, fields: i16) {
        self.rows += 1;
        self.buf.put_i16(fields);
    }

    pub(crate) fn i64(&mut self, v: i64) {
        self.buf.put_i32(8);
        self.buf.put_i64(v);
    }

    pub(crate) fn i32(&mut self, v: i32) {
        self.buf.put_i32(4);
        self.buf.put_i32(v);
    }

    pub(crate) fn i16(&mut self, v: i16) {
        self.buf.put_i32(2);
        self.buf.put_i16(v);
    }

    pub(crate) fn bool(&mut self, v: bool) {
        self.buf.put_i32(1);
        self.buf.put_u8(u8::from(v));
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> Result<(), std::num::TryFromIntError> {
        self.buf.put_i32(i32::try_from(v.len())?);
        self.buf.put_slice(v);
        Ok(())
    }

    pub(crate) fn null(&mut self) {
        self.buf.put_i32(-1);
    }

    pub(crate) fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.i64(v),
            None => self.null(),
        }
    }

    /// One reading row with id `id` of block `block_id` ([`COPY_READINGS`]).
    pub(crate) fn reading(&mut self, id: i64, block_id: i64, row: &ReadingRow) {
        let r = &row.reading;
        self.row(14);
        self.i64(id);
        self.i64(block_id);
        self.i64(i64::from(row.meter_id));
        self.i64(i64::from(row.epoch));
        self.i64(i64::from(row.seq));
        self.i64(r.timestamp_ms as i64);
        self.i64(r.energy_mwh as i64);
        self.i64(i64::from(r.current_ma));
        self.i32(row.leaf as i32);
        self.i32(i32::from(r.voltage_cv));
        self.i32(r.active_power_dw);
        self.i32(i32::from(r.frequency_mhz));
        self.i32(i32::from(r.flags));
        self.i16(r.power_factor_e4);
    }

    /// The encoded copy, trailer included.
    pub(crate) fn finish(mut self) -> Bytes {
        self.buf.put_i16(-1);
        self.buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_copy_has_the_signature_fields_and_trailer_postgres_expects() {
        let mut c = CopyBuf::with_capacity(0);
        c.row(3);
        c.i64(-2);
        c.null();
        c.bytes(&[0xab]).unwrap();
        assert_eq!(c.rows(), 1);
        let b = c.finish();
        let mut want = b"PGCOPY\n\xff\r\n\0".to_vec();
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0, 3]);
        want.extend_from_slice(&[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        want.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        want.extend_from_slice(&[0, 0, 0, 1, 0xab]);
        want.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(&b[..], &want[..]);
    }
}
