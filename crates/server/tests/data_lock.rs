//! A read-only database refused at start (issue 12), and servers that share
//! one SQLite file. No broker is needed: the preflight comes before the MQTT
//! connection, which retries in the background.
#![allow(clippy::unwrap_used)]

mod common;

use common::Site;
use gridpow_common::datadir::DataDirError;
use gridpow_server::{Server, ServerError};

/// A port nothing listens on: the MQTT task just keeps retrying.
const NO_BROKER: u16 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_may_share_one_sqlite_file() {
    // By design, like PostgreSQL (crates/cli/tests/crash.rs runs two on one
    // file under kill -9): the server takes no lock on its database.
    let site = Site::new(&[1], &[1]);
    let first = Server::start(site.config(NO_BROKER)).await.unwrap();
    let second = Server::start(site.config(NO_BROKER)).await.unwrap();
    second.shutdown().await;
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_sqlite_database_is_refused_at_start() {
    let site = Site::new(&[1], &[1]);
    // Create the database, then make it read-only (the mode is checked, so
    // this holds when the tests run as root too).
    Server::start(site.config(NO_BROKER))
        .await
        .unwrap()
        .shutdown()
        .await;
    let db = site.db_path();
    let mut p = std::fs::metadata(&db).unwrap().permissions();
    p.set_readonly(true);
    std::fs::set_permissions(&db, p).unwrap();
    let err = Server::start(site.config(NO_BROKER)).await.unwrap_err();
    assert!(
        matches!(err, ServerError::DataDir(DataDirError::NotWritable { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("database {} is not writable", db.display())),
        "{err}"
    );
}
