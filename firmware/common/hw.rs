//! Hardware adapters shared by the meter and relay firmware (included with
//! `#[path]`): the AES and SHA accelerators behind the traits of
//! `gridpow_firmware_logic::crypto`, and a flash partition
//! behind `gridpow_firmware_logic::state::Flash`.

use core::convert::Infallible;

use esp_hal::aes::Aes;
use esp_hal::peripherals::{AES, SHA};
use esp_hal::sha::{Context, Sha, Sha256, ShaDigest};
use esp_storage::{FlashStorage, FlashStorageError};
use gridpow_firmware_logic::crypto::{BlockEncrypt, Sha256Engine};
use gridpow_firmware_logic::state::Flash;

/// The AES accelerator: one 16-byte block per call, key loaded each time.
pub struct EspAes(Aes<'static>);

impl EspAes {
    /// Takes the peripheral.
    pub fn new(aes: AES<'static>) -> Self {
        EspAes(Aes::new(aes))
    }
}

impl BlockEncrypt for EspAes {
    fn encrypt_block(&mut self, key: &[u8; 16], block: &mut [u8; 16]) {
        self.0.encrypt(block, *key);
    }
}

/// The SHA accelerator. Besides plain digests (HMAC for ACKs) it can save
/// and restore its state, which the relay's proof of work uses as a midstate.
pub struct EspSha {
    sha: Sha<'static>,
}

impl EspSha {
    /// Takes the peripheral.
    pub fn new(sha: SHA<'static>) -> Self {
        EspSha { sha: Sha::new(sha) }
    }
}

fn feed<'d, S: core::borrow::BorrowMut<Sha<'d>>>(
    d: &mut ShaDigest<'d, Sha256, S>,
    mut data: &[u8],
) {
    while !data.is_empty() {
        data = match nb::block!(d.update(data)) {
            Ok(rest) => rest,
            Err(never) => match never {},
        };
    }
}

fn finish<'d, S: core::borrow::BorrowMut<Sha<'d>>>(d: &mut ShaDigest<'d, Sha256, S>) -> [u8; 32] {
    let mut out = [0u8; 32];
    let r: Result<(), Infallible> = nb::block!(d.finish(&mut out));
    if let Err(never) = r {
        match never {}
    }
    out
}

impl Sha256Engine for EspSha {
    /// The peripheral's saved state (hash registers and buffered bytes).
    type Midstate = Context<Sha256>;

    fn sha256(&mut self, prefix: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut d = ShaDigest::<Sha256, _>::new(&mut self.sha);
        feed(&mut d, prefix);
        for p in parts {
            feed(&mut d, p);
        }
        finish(&mut d)
    }

    fn midstate(&mut self, first: &[u8; 64]) -> Context<Sha256> {
        let mut d = ShaDigest::<Sha256, _>::new(&mut self.sha);
        feed(&mut d, first);
        let mut ctx = Context::new();
        let saved: Result<(), Infallible> = nb::block!(d.save(&mut ctx));
        if let Err(never) = saved {
            match never {}
        }
        ctx
    }

    fn resume(&mut self, midstate: &mut Context<Sha256>, rest: &[u8]) -> [u8; 32] {
        // `restore` copies the saved state into the peripheral, so one
        // midstate serves every try.
        let mut d = ShaDigest::restore(&mut self.sha, midstate);
        feed(&mut d, rest);
        finish(&mut d)
    }
}

/// A flash partition at `base`, `size` bytes, addressed from 0.
pub struct Partition {
    flash: FlashStorage<'static>,
    base: u32,
    size: u32,
}

impl Partition {
    /// The partition `base..base + size` of `flash`.
    pub fn new(flash: FlashStorage<'static>, base: u32, size: u32) -> Self {
        Partition { flash, base, size }
    }

    /// The flash back, to open another partition (the relay reads its old
    /// chain tip from `gp_state`, then opens `gp_journal`).
    #[allow(dead_code)] // the meter has one partition
    pub fn into_inner(self) -> FlashStorage<'static> {
        self.flash
    }
}

impl Flash for Partition {
    type Error = FlashStorageError;
    const SECTOR_SIZE: u32 = FlashStorage::SECTOR_SIZE;

    fn size(&self) -> u32 {
        self.size
    }

    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), FlashStorageError> {
        self.flash.read_nor(self.base + offset, buf)
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), FlashStorageError> {
        self.flash.write_nor(self.base + offset, data)
    }

    fn erase_sector(&mut self, offset: u32) -> Result<(), FlashStorageError> {
        let at = self.base + offset;
        self.flash.erase(at, at + FlashStorage::SECTOR_SIZE)
    }
}
