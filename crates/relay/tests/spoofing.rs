//! The relay's UDP air under a network attacker who forges source MACs:
//! ACKs keep going to the address the meter was authenticated at.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use gridpow_meters::Fleet;
use gridpow_radio::UdpAir;
use gridpow_relay::Relay;

/// `"GPA1" ‖ src ‖ dst ‖ payload`, the UDP air framing.
fn datagram(src: &[u8; 6], dst: &[u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut d = b"GPA1".to_vec();
    d.extend_from_slice(src);
    d.extend_from_slice(dst);
    d.extend_from_slice(payload);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_forging_a_meters_mac_do_not_divert_its_acks() {
    let seed = common::seed("datagrams_forging_a_meters_mac_do_not_divert_its_acks");
    let dir = tempfile::tempdir().unwrap();
    let keys = common::site(dir.path(), 4);
    // No broker: blocks wait in the outbox; ingress and ACKs do not need one.
    let rcfg = common::relay_config(&keys, &dir.path().join("relay"), 1);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let relay_air = UdpAir::bind(any, None, 0.0, seed).unwrap();
    let relay_addr = relay_air.local_addr().unwrap();
    let relay = Relay::start(rcfg.clone(), Box::new(relay_air))
        .await
        .unwrap();
    let mut fcfg = common::fleet_config(&keys, dir.path(), seed);
    fcfg.interval_s = 0.1;
    let macs: Vec<_> = Fleet::meter_macs(&fcfg)
        .unwrap()
        .into_iter()
        .map(|(_, m)| m)
        .collect();

    let attacker = UdpSocket::bind(any).unwrap();
    attacker
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    // Forged frames claiming each meter, before the meters ever spoke and while they speak.
    let forge = |n: u8| {
        for m in &macs {
            attacker
                .send_to(&datagram(m, &rcfg.mac(), &[n; 60]), relay_addr)
                .unwrap();
        }
    };
    forge(0);
    let fleet_air = UdpAir::bind(any, Some(relay_addr), 0.0, seed ^ 1).unwrap();
    let fleet = Fleet::start(fcfg.clone(), Box::new(fleet_air)).unwrap();
    let mut diverted = 0;
    let mut buf = [0u8; 2048];
    for n in 1..=75u8 {
        forge(n);
        while attacker.recv_from(&mut buf).is_ok() {
            diverted += 1;
        }
    }
    fleet.stop_generating();
    let drained = fleet.wait_drained(Duration::from_secs(20));
    let fs = fleet.shutdown().unwrap();
    while attacker.recv_from(&mut buf).is_ok() {
        diverted += 1;
    }
    let rs = relay.stats();
    relay.shutdown().await;
    eprintln!("relay {rs:?}; fleet {fs:?}; {diverted} datagrams reached the attacker");
    assert_eq!(diverted, 0, "ACKs went to the forger");
    assert!(drained, "readings left unacknowledged: {fs:?}");
    assert!(fs.generated > 0);
    assert_eq!((fs.dropped, fs.acknowledged), (0, fs.generated), "{fs:?}");
    assert!(
        rs.frames_rejected.total() >= 76 * macs.len() as u64,
        "every forged frame is refused and counted: {rs:?}"
    );
}
