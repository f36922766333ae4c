//! The ground truth: every reading the fleet generated, one JSON object per
//! line, so tests and tools can compare what reached the database with what
//! the meters measured.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use gridpow_proto::wire::Reading;
use serde::{Deserialize, Serialize};

use crate::FleetError;

/// One generated reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TruthRecord {
    /// Meter id.
    pub meter_id: u32,
    /// Boot epoch of the meter when the reading was made.
    pub boot_epoch: u32,
    /// Sequence number within the epoch.
    pub seq: u32,
    /// End of the measurement interval, Unix ms (meter clock).
    pub timestamp_ms: u64,
    /// 0.01 V.
    pub voltage_cv: u16,
    /// mA.
    pub current_ma: u32,
    /// 0.1 W.
    pub active_power_dw: i32,
    /// 1/10000.
    pub power_factor_e4: i16,
    /// mHz.
    pub frequency_mhz: u16,
    /// mWh.
    pub energy_mwh: u64,
    /// Reading flags.
    pub flags: u16,
}

impl TruthRecord {
    /// The record of `reading` made by `meter_id` in `boot_epoch` with `seq`.
    pub fn new(meter_id: u32, boot_epoch: u32, seq: u32, r: &Reading) -> Self {
        TruthRecord {
            meter_id,
            boot_epoch,
            seq,
            timestamp_ms: r.timestamp_ms,
            voltage_cv: r.voltage_cv,
            current_ma: r.current_ma,
            active_power_dw: r.active_power_dw,
            power_factor_e4: r.power_factor_e4,
            frequency_mhz: r.frequency_mhz,
            energy_mwh: r.energy_mwh,
            flags: r.flags,
        }
    }

    /// The reading as it travels on the wire.
    pub fn reading(&self) -> Reading {
        Reading {
            timestamp_ms: self.timestamp_ms,
            voltage_cv: self.voltage_cv,
            current_ma: self.current_ma,
            active_power_dw: self.active_power_dw,
            power_factor_e4: self.power_factor_e4,
            frequency_mhz: self.frequency_mhz,
            energy_mwh: self.energy_mwh,
            flags: self.flags,
        }
    }
}

/// Appends truth records to a file.
pub(crate) struct TruthWriter {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
}

impl TruthWriter {
    pub(crate) fn open(path: &Path) -> Result<Self, FleetError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| FleetError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| FleetError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(TruthWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(f),
        })
    }

    pub(crate) fn write(&mut self, rec: &TruthRecord) {
        let res = serde_json::to_writer(&mut self.out, rec)
            .map_err(std::io::Error::other)
            .and_then(|()| self.out.write_all(b"\n"));
        if let Err(e) = res {
            tracing::warn!(error = %e, file = %self.path.display(), "truth record not written");
        }
    }

    pub(crate) fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            tracing::warn!(error = %e, file = %self.path.display(), "truth file not flushed");
        }
    }
}

/// Reads a truth file.
pub fn read_truth(path: &Path) -> Result<Vec<TruthRecord>, FleetError> {
    let f = std::fs::File::open(path).map_err(|source| FleetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| FleetError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| FleetError::State {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", i + 1),
        })?);
    }
    Ok(out)
}
