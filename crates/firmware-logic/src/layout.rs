//! Flash layout of both firmwares (`firmware/partitions.csv`, 4 MiB chips):
//! the app gets 1.25 MiB after the bootloader and partition table, the
//! gridpow partitions follow, and the standalone relay's journal takes the
//! rest of the chip (its size is set by the wear budget in
//! `docs/hardware.md`, checked by the tests below).
//!
//! ```text
//! # Name,     Type, SubType, Offset,   Size
//! nvs,        data, nvs,     0x9000,   0x6000
//! phy_init,   data, phy,     0xf000,   0x1000
//! factory,    app,  factory, 0x10000,  0x140000
//! gp_config,  data, undefined,  0x150000, 0x1000
//! gp_state,   data, undefined,  0x151000, 0x2000
//! gp_journal, data, undefined,  0x153000, 0x2AD000
//! ```
//!
//! Until this layout, `gp_config` and `gp_state` sat at 0x200000 and
//! 0x201000: a board flashed with the old layout must be re-provisioned (see
//! `docs/hardware.md`), never just re-flashed, or a meter would restart its
//! boot epochs.

/// Offset of the app partition.
pub const APP_OFFSET: u32 = 0x1_0000;
/// Largest app image the partition table allows.
pub const APP_MAX: u32 = 0x14_0000;
/// Offset of the configuration partition (the provisioning blob).
pub const CONFIG_OFFSET: u32 = 0x15_0000;
/// Size of the configuration partition.
pub const CONFIG_SIZE: u32 = 0x1000;
/// Offset of the state partition (the state log).
pub const STATE_OFFSET: u32 = 0x15_1000;
/// Size of the state partition: two 4 KiB sectors.
pub const STATE_SIZE: u32 = 0x2000;
/// Offset of the standalone relay's journal partition
/// ([`crate::journal::Journal`]).
pub const JOURNAL_OFFSET: u32 = 0x15_3000;
/// Size of the journal partition: 685 sectors of 4 KiB, up to the end of a
/// 4 MiB chip.
pub const JOURNAL_SIZE: u32 = 0x2A_D000;
/// Flash size the layout is made for.
pub const FLASH_SIZE: u32 = 0x40_0000;
/// Erase unit of the ESP32-C3/C6 flash.
pub const SECTOR_SIZE: u32 = 0x1000;

// The partitions are adjacent, sector-aligned and fit the chip; the app keeps
// at least 1 MiB. Checked when the crate compiles.
const _: () = {
    assert!(APP_MAX >= 0x10_0000);
    assert!(APP_OFFSET % 0x1_0000 == 0);
    assert!(APP_OFFSET + APP_MAX == CONFIG_OFFSET);
    assert!(CONFIG_OFFSET + CONFIG_SIZE == STATE_OFFSET);
    assert!(STATE_OFFSET + STATE_SIZE == JOURNAL_OFFSET);
    assert!(JOURNAL_OFFSET + JOURNAL_SIZE == FLASH_SIZE);
    assert!(CONFIG_OFFSET % SECTOR_SIZE == 0 && STATE_OFFSET % SECTOR_SIZE == 0);
    assert!(JOURNAL_OFFSET % SECTOR_SIZE == 0 && JOURNAL_SIZE % SECTOR_SIZE == 0);
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{
        frame_record_len, CONFIRM_RECORD_LEN, SEAL_RECORD_LEN, SECTOR_RECORD_LEN,
    };

    /// Days until the busiest journal sector reaches `cycles` erases, with
    /// `meters` meters each sending one reading every 10 s, `readings`
    /// readings per frame, and a block every 10 s (the default interval).
    /// The arithmetic of `docs/hardware.md`, "Flash wear budget".
    fn journal_life_days(meters: u64, readings: u64, cycles: u64) -> u64 {
        let frames_per_day = meters * 8_640 / readings;
        let frame_len = 52 + 32 * readings as usize;
        let record = frame_record_len(frame_len) as u64;
        let blocks_per_day = 8_640;
        let bytes_per_day = frames_per_day * record
            + blocks_per_day * (SEAL_RECORD_LEN + CONFIRM_RECORD_LEN) as u64;
        // Pessimistic: each sector loses its header and a whole record at its end.
        let usable = u64::from(SECTOR_SIZE) - SECTOR_RECORD_LEN as u64 - record;
        let sectors = u64::from(JOURNAL_SIZE / SECTOR_SIZE);
        // Sectors are filled (and erased) in turn, so wear is spread evenly:
        // erases per sector per day = bytes_per_day / usable / sectors.
        cycles * sectors * usable / bytes_per_day
    }

    #[test]
    fn journal_outlives_ten_years_at_64_meters_one_reading_per_frame() {
        let days = journal_life_days(64, 1, 100_000);
        assert!(days >= 3653, "{days} days");
        // The pessimistic 10 000-cycle flash: a tenth of it, stated in the docs.
        assert!(journal_life_days(64, 1, 10_000) >= 365);
        // Six readings per frame wears the flash less than half as fast.
        assert!(journal_life_days(64, 6, 100_000) >= 2 * days);
    }

    #[test]
    fn partition_table_file_holds_the_same_offsets() {
        let csv = include_str!("../../../firmware/partitions.csv");
        let row = |name: &str| -> (u32, u32) {
            let line = csv
                .lines()
                .find(|l| l.split(',').next().map(str::trim) == Some(name))
                .unwrap_or_else(|| panic!("{name} missing"));
            let hex = |s: Option<&str>| {
                let s = s.unwrap_or_default().trim().trim_start_matches("0x");
                u32::from_str_radix(s, 16).unwrap_or_else(|_| panic!("{name}: {line}"))
            };
            let mut f = line.split(',').skip(3);
            (hex(f.next()), hex(f.next()))
        };
        assert_eq!(row("factory"), (APP_OFFSET, APP_MAX));
        assert_eq!(row("gp_config"), (CONFIG_OFFSET, CONFIG_SIZE));
        assert_eq!(row("gp_state"), (STATE_OFFSET, STATE_SIZE));
        assert_eq!(row("gp_journal"), (JOURNAL_OFFSET, JOURNAL_SIZE));
    }
}
