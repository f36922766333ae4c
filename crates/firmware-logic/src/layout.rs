//! Flash layout of both firmwares (`firmware/partitions.csv`): the app gets
//! the first 2 MiB after the bootloader and partition table, the gridpow
//! partitions follow, so the layout fits 4 MiB and larger flash chips.
//!
//! ```text
//! # Name,     Type, SubType, Offset,   Size
//! nvs,        data, nvs,     0x9000,   0x6000
//! phy_init,   data, phy,     0xf000,   0x1000
//! factory,    app,  factory, 0x10000,  0x1F0000
//! gp_config,  data, undefined,  0x200000, 0x1000
//! gp_state,   data, undefined,  0x201000, 0x2000
//! ```

/// Offset of the configuration partition (the provisioning blob).
pub const CONFIG_OFFSET: u32 = 0x20_0000;
/// Size of the configuration partition.
pub const CONFIG_SIZE: u32 = 0x1000;
/// Offset of the state partition (the state log).
pub const STATE_OFFSET: u32 = 0x20_1000;
/// Size of the state partition: two 4 KiB sectors.
pub const STATE_SIZE: u32 = 0x2000;
/// Largest app image the partition table allows.
pub const APP_MAX: u32 = 0x1F_0000;
