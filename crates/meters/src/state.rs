//! What a virtual meter keeps in "flash" across restarts: its boot epoch
//! (incremented and written *before* it sends anything, so a restarted fleet
//! never reuses a (boot epoch, counter) nonce) and its energy register.
//!
//! `state_dir/fleet-state.json`, replaced atomically (temporary file, fsync,
//! rename, directory fsync).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::FleetError;

/// One meter's persisted state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterPersist {
    /// The last boot epoch used.
    pub epoch: u32,
    /// The energy register when last saved, mWh.
    pub energy_mwh: Option<u64>,
}

/// The persisted state of every meter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetState {
    /// By meter id.
    pub meters: BTreeMap<u32, MeterPersist>,
}

impl FleetState {
    /// The state file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("fleet-state.json")
    }

    /// Reads the state (empty if there is none yet).
    pub fn load(dir: &Path) -> Result<FleetState, FleetError> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| FleetError::State {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FleetState::default()),
            Err(e) => Err(FleetError::Io { path, source: e }),
        }
    }

    /// Writes the state durably.
    pub fn save(&self, dir: &Path) -> Result<(), FleetError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FleetError::Io { path, source }
        };
        let path = Self::path(dir);
        let data = serde_json::to_vec_pretty(self).map_err(|e| FleetError::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        gridpow_common::durable::write_file(&path, &data, false).map_err(io(&path))
    }

    /// Starts a new boot for each of `ids`: increments and returns their epochs
    /// (the caller saves the state before sending).
    pub fn boot(&mut self, ids: &[u32]) -> Vec<u32> {
        ids.iter()
            .map(|id| {
                let m = self.meters.entry(*id).or_default();
                m.epoch = m.epoch.saturating_add(1);
                m.epoch
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_boot_gets_a_larger_epoch_than_the_last_saved_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FleetState::load(dir.path()).unwrap();
        assert_eq!(s.boot(&[1, 2]), [1, 1]);
        s.meters.get_mut(&1).unwrap().energy_mwh = Some(99);
        s.save(dir.path()).unwrap();
        let mut s = FleetState::load(dir.path()).unwrap();
        assert_eq!(s.meters[&1].energy_mwh, Some(99));
        assert_eq!(s.boot(&[1, 2, 3]), [2, 2, 1]);
        s.save(dir.path()).unwrap();
        assert_eq!(FleetState::load(dir.path()).unwrap().boot(&[1]), [3]);
    }
}
