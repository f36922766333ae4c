//! The flash state log (`gridpow_firmware_logic::state`) on a NOR flash in
//! RAM (`MemFlash`): append, reopen, latest record, sector wrap-around and
//! power cuts in the middle of a write; mirrors the host tests in
//! `crates/firmware-logic/src/state.rs`.

use gridpow_firmware_logic::state::{
    reserve_boot_epoch, MemFlash, MeterState, RelayState, StateError, StateLog, KIND_METER,
    KIND_RELAY, RECORD_LEN,
};

use crate::harness::Outcome;

tests![
    each_boot_reserves_a_higher_epoch,
    min_epoch_lifts_the_epoch_after_an_erased_state,
    power_cut_during_a_write_keeps_the_previous_record,
    energy_checkpoints_survive_and_epochs_do_not_move,
    relay_and_meter_records_do_not_mix,
    a_region_of_one_sector_is_refused,
];

/// Two 4 KiB sectors, the smallest valid region.
type Region = MemFlash<8192>;

fn each_boot_reserves_a_higher_epoch() -> Outcome {
    let mut flash = Region::new();
    let mut last = 0;
    for _ in 0..300 {
        let mut log = check_ok!(StateLog::open(&mut flash, KIND_METER));
        let s = check_ok!(reserve_boot_epoch(&mut log, 0));
        check_eq!(s.boot_epoch, last + 1);
        last = s.boot_epoch;
    }
    // 300 records over two sectors of 64: both sectors were erased several times.
    check!(
        flash.erase_counts[0] >= 2 && flash.erase_counts[1] >= 2,
        "erase counts {:?}",
        &flash.erase_counts[..2]
    );
    Ok(())
}

fn min_epoch_lifts_the_epoch_after_an_erased_state() -> Outcome {
    let mut flash = Region::new();
    let mut log = check_ok!(StateLog::open(&mut flash, KIND_METER));
    check_eq!(check_ok!(reserve_boot_epoch(&mut log, 500)).boot_epoch, 500);
    check_eq!(check_ok!(reserve_boot_epoch(&mut log, 500)).boot_epoch, 501);
    Ok(())
}

fn power_cut_during_a_write_keeps_the_previous_record() -> Outcome {
    for cut in 0..RECORD_LEN {
        let mut flash = Region::new();
        {
            let mut log = check_ok!(StateLog::open(&mut flash, KIND_METER));
            for _ in 0..70 {
                check_ok!(reserve_boot_epoch(&mut log, 0));
            }
        }
        flash.write_budget = Some(cut);
        {
            let mut log = check_ok!(StateLog::open(&mut flash, KIND_METER));
            check!(
                reserve_boot_epoch(&mut log, 0).is_err(),
                "write cut after {cut} bytes reported success"
            );
        }
        flash.write_budget = None;
        let mut log = check_ok!(StateLog::open(&mut flash, KIND_METER));
        let latest = check_ok!(log.latest(), "a record after a cut at {cut} bytes");
        check_eq!(MeterState::from_payload(latest).boot_epoch, 70, "cut after {cut} bytes");
        // The torn slot is skipped and the next epoch is still new.
        check_eq!(check_ok!(reserve_boot_epoch(&mut log, 0)).boot_epoch, 71);
    }
    Ok(())
}

fn energy_checkpoints_survive_and_epochs_do_not_move() -> Outcome {
    let mut flash = Region::new();
    let mut log = check_ok!(StateLog::open(&mut flash, KIND_METER));
    let s = check_ok!(reserve_boot_epoch(&mut log, 0));
    let cp = MeterState {
        import_mwh: 1234,
        export_mwh: 5,
        ..s
    };
    check_ok!(log.append(&cp.to_payload()));
    let mut log = check_ok!(StateLog::open(&mut flash, KIND_METER));
    let s2 = check_ok!(reserve_boot_epoch(&mut log, 0));
    check_eq!(s2.boot_epoch, 2);
    check_eq!((s2.import_mwh, s2.export_mwh), (1234, 5));
    // A u64 register beyond 32 bits survives the round trip on the 32-bit CPU.
    let big = MeterState {
        import_mwh: 0x1_2345_6789_abcd,
        ..s2
    };
    check_ok!(log.append(&big.to_payload()));
    let log = check_ok!(StateLog::open(&mut flash, KIND_METER));
    check_eq!(log.latest().map(MeterState::from_payload), Some(big));
    Ok(())
}

fn relay_and_meter_records_do_not_mix() -> Outcome {
    let mut flash = Region::new();
    let mut log = check_ok!(StateLog::open(&mut flash, KIND_RELAY));
    let st = RelayState {
        next_height: 9,
        prev_hash: [3; 32],
    };
    check_ok!(log.append(&st.to_payload()));
    check!(check_ok!(StateLog::open(&mut flash, KIND_METER)).latest().is_none());
    let log = check_ok!(StateLog::open(&mut flash, KIND_RELAY));
    check_eq!(log.latest().map(RelayState::from_payload), Some(st));
    Ok(())
}

fn a_region_of_one_sector_is_refused() -> Outcome {
    let r = StateLog::open(MemFlash::<4096>::new(), KIND_METER).map(|_| ());
    check!(matches!(r, Err(StateError::BadRegion)), "{r:?}");
    Ok(())
}
