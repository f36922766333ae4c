//! `gridpow broker`: the embedded TLS broker of the demo as a process of its
//! own, so the parts can run separately on a machine without Mosquitto.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use gridpow_broker::{start_embedded, BrokerError, EmbeddedOptions};
use gridpow_keys::KeyDir;

#[derive(Args, Debug)]
pub struct BrokerArgs {
    /// The key directory with tls/ca.pem, tls/broker.pem and tls/broker.key:
    /// the master directory of `gridpow keys init`, or a bundle of `gridpow
    /// keys export broker`.
    #[arg(long, default_value = "keys", env = "GRIDPOW_BROKER_KEYS")]
    pub keys: PathBuf,
    /// The MQTT 5 listener (grid servers, the standalone relay application);
    /// `[mqtt] port` of server.toml.
    #[arg(
        long,
        default_value = "127.0.0.1:8883",
        value_name = "IP:PORT",
        env = "GRIDPOW_BROKER_LISTEN"
    )]
    pub listen: SocketAddr,
    /// The MQTT 3.1.1 listener (`gridpow relay`); `[mqtt] port` of relay.toml.
    /// rumqttd speaks one protocol version per port; Mosquitto serves both on one.
    #[arg(
        long,
        default_value = "127.0.0.1:8884",
        value_name = "IP:PORT",
        env = "GRIDPOW_BROKER_LISTEN_V311"
    )]
    pub listen_v311: SocketAddr,
}

pub fn run(a: BrokerArgs) -> anyhow::Result<ExitCode> {
    if a.listen == a.listen_v311 {
        anyhow::bail!(
            "--listen and --listen-v311 are both {}: the MQTT 5 and MQTT 3.1.1 listeners need a port each",
            a.listen
        );
    }
    let keys = KeyDir::new(&a.keys);
    if !keys.root().is_dir() {
        anyhow::bail!(
            "keys directory {} does not exist (--keys); make it with `gridpow keys init --dir {}`",
            keys.root().display(),
            keys.root().display()
        );
    }
    let tls = keys.broker_tls();
    // Refuses an expired or not yet valid certificate, warns when one ends within 30 days.
    crate::services::check_certificates(&[&keys.ca_cert_path(), &tls.cert])?;
    let opts = EmbeddedOptions {
        listen: a.listen,
        listen_v311: Some(a.listen_v311),
        ..EmbeddedOptions::default()
    };
    let broker = start_embedded(&keys, &opts).map_err(|e| match e {
        BrokerError::Listen { addr, source } => {
            let flag = if addr == a.listen {
                "--listen"
            } else {
                "--listen-v311"
            };
            anyhow::anyhow!(
                "cannot listen on {addr} ({flag}): {source}; is another broker running there? Choose another address with {flag}"
            )
        }
        e => anyhow::Error::new(e).context("starting the embedded broker"),
    })?;
    let rt = crate::services::runtime()?;
    println!(
        "MQTT broker (TLS, client certificates from CA {ca} required, certificate {cert}) listening on {v5} (MQTT 5: grid servers) and {v4} (MQTT 3.1.1: `gridpow relay`, [mqtt] port = {v4p}); Ctrl-C stops it",
        ca = keys.ca_cert_path().display(),
        cert = tls.cert.display(),
        v5 = broker.v5_addr,
        v4 = broker.v4_addr,
        v4p = broker.v4_addr.port(),
    );
    rt.block_on(async { crate::services::stop_signal().await });
    eprintln!("MQTT broker stopped");
    Ok(ExitCode::SUCCESS)
}
