//! The serial bridge adapter over an in-memory byte pipe and over a real
//! pseudo-terminal pair, with the test playing the ESP32 bridge.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use gridpow_proto::wire::serial::{SerialDecoder, SerialKind, SerialRepr, MAX_ENCODED};
use gridpow_radio::RadioPort;
use gridpow_relay::SerialRadio;

/// One direction of an in-memory byte stream.
struct PipeWriter(Sender<Vec<u8>>);
struct PipeReader {
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
}

fn pipe() -> (PipeWriter, PipeReader) {
    let (tx, rx) = crossbeam_channel::unbounded();
    (
        PipeWriter(tx),
        PipeReader {
            rx,
            pending: Vec::new(),
        },
    )
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| std::io::ErrorKind::BrokenPipe)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pending.is_empty() {
            match self.rx.recv() {
                Ok(v) => self.pending = v,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

fn encode(kind: SerialKind, mac: [u8; 6], rssi: i8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; MAX_ENCODED];
    let n = SerialRepr {
        kind,
        mac,
        rssi,
        data,
    }
    .emit(&mut out)
    .unwrap();
    out.truncate(n);
    out
}

/// Reads bytes until one message decodes; returns (kind, mac, data).
fn read_message(r: &mut impl Read) -> (SerialKind, [u8; 6], Vec<u8>) {
    let mut d = SerialDecoder::new();
    let mut b = [0u8; 1];
    loop {
        match r.read(&mut b) {
            Ok(1) => {}
            Ok(_) => panic!("stream ended"),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => panic!("{e}"),
        }
        if let Some(m) = d.push(b[0]) {
            let m = m.unwrap();
            return (m.kind, m.mac, m.data.to_vec());
        }
    }
}

#[test]
fn bridge_frames_arrive_after_garbage_and_transmissions_reach_the_bridge() {
    let (mut to_host, host_in) = pipe();
    let (host_out, mut from_host) = pipe();
    let mut radio = SerialRadio::from_stream(host_in, host_out);

    // The bridge says hello, then line noise, a message with a bad CRC, and two frames.
    to_host
        .write_all(&encode(
            SerialKind::Hello,
            [0x24, 0x6f, 0x28, 1, 2, 3],
            0,
            b"gridpow bridge 1.0 ch 1",
        ))
        .unwrap();
    to_host.write_all(&[0x55, 0x13, 0x00, 0x99]).unwrap();
    let mut bad = encode(SerialKind::AirRx, [9; 6], -70, b"corrupted");
    bad[4] ^= 0x20;
    to_host.write_all(&bad).unwrap();
    to_host
        .write_all(&encode(
            SerialKind::AirRx,
            [2, 0x67, 0x70, 0, 0, 7],
            -61,
            &[1, 1, 0, 0, 7],
        ))
        .unwrap();
    to_host
        .write_all(&encode(
            SerialKind::AirRx,
            [2, 0x67, 0x70, 0, 0, 8],
            -48,
            &[0u8; 228],
        ))
        .unwrap();

    let f1 = radio.recv(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(
        (f1.src, f1.data.as_slice()),
        ([2, 0x67, 0x70, 0, 0, 7], &[1u8, 1, 0, 0, 7][..])
    );
    assert_eq!(
        f1.dst,
        [0x24, 0x6f, 0x28, 1, 2, 3],
        "frames are addressed to the bridge that heard them"
    );
    let f2 = radio.recv(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(f2.data, vec![0u8; 228]);
    assert!(radio.recv(Duration::from_millis(50)).unwrap().is_none());
    let s = radio.stats();
    assert_eq!((s.frames_in, s.hellos), (2, 1));
    assert!(
        s.bad_messages >= 2,
        "garbage and the bad CRC are counted: {s:?}"
    );
    assert_eq!(radio.bridge_hello(), "gridpow bridge 1.0 ch 1");

    radio
        .send(
            [2, 0x67, 0x72, 0, 0, 1],
            [2, 0x67, 0x70, 0, 0, 7],
            b"an ACK",
        )
        .unwrap();
    assert_eq!(
        read_message(&mut from_host),
        (
            SerialKind::AirTx,
            [2, 0x67, 0x70, 0, 0, 7],
            b"an ACK".to_vec()
        )
    );
    assert!(radio.send([0; 6], [1; 6], &[0u8; 251]).is_err());

    // The bridge goes away: the radio reports it closed.
    drop(to_host);
    assert!(radio.recv(Duration::from_secs(5)).is_err());
}

#[cfg(unix)]
#[test]
fn serial_radio_works_over_a_pseudo_terminal_pair() {
    use serialport::{SerialPort, TTYPort};
    let (mut bridge, host) = TTYPort::pair().unwrap();
    bridge.set_timeout(Duration::from_millis(100)).unwrap();
    let host_reader = host.try_clone_native().unwrap();
    let mut radio = SerialRadio::from_stream(host_reader, host);

    bridge
        .write_all(&encode(
            SerialKind::AirRx,
            [2, 0x67, 0x70, 0, 0, 42],
            -55,
            b"uplink bytes",
        ))
        .unwrap();
    bridge.flush().unwrap();
    let f = radio.recv(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(
        (f.src, f.data.as_slice()),
        ([2, 0x67, 0x70, 0, 0, 42], &b"uplink bytes"[..])
    );

    radio
        .send([0; 6], [2, 0x67, 0x70, 0, 0, 42], b"ack bytes")
        .unwrap();
    assert_eq!(
        read_message(&mut bridge),
        (
            SerialKind::AirTx,
            [2, 0x67, 0x70, 0, 0, 42],
            b"ack bytes".to_vec()
        )
    );
}
