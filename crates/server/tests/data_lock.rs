//! One grid server per SQLite database, and a read-only database refused at
//! start (issue 12). No broker is needed: the lock and the preflight come
//! before the MQTT connection, which retries in the background.
#![allow(clippy::unwrap_used)]

mod common;

use common::Site;
use gridpow_common::datadir::DataDirError;
use gridpow_server::{Server, ServerError};

/// A port nothing listens on: the MQTT task just keeps retrying.
const NO_BROKER: u16 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_sqlite_file_is_refused_until_the_first_stops() {
    let site = Site::new(&[1], &[1]);
    let first = Server::start(site.config(NO_BROKER)).await.unwrap();
    let err = Server::start(site.config(NO_BROKER)).await.unwrap_err();
    match &err {
        ServerError::DataDir(DataDirError::InUse { pid, path, .. }) => {
            assert_eq!(*pid, Some(std::process::id()));
            assert_eq!(path, &site.db_path());
        }
        other => panic!("expected the database to be in use, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("in use by process {}", std::process::id())),
        "{msg}"
    );
    first.shutdown().await;
    let again = Server::start(site.config(NO_BROKER)).await.unwrap();
    again.shutdown().await;
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
