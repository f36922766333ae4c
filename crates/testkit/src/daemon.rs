//! [`Daemon`]: a long-running child process of a test (a `gridpow`
//! service, the relay application) with its stdout and stderr in a log
//! file. It is stopped with SIGINT and must exit 0 in time, can be killed
//! with SIGKILL and started again with the same command, and is killed
//! and reaped when dropped, so a failed assertion leaves nothing running.
//! Every panic names the process and shows the end of its log.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How often the waits look at the process or its log.
const POLL: Duration = Duration::from_millis(50);

/// How much of the end of a log a panic message shows.
const TAIL_BYTES: usize = 16 * 1024;

/// A child process started from a [`Command`], logging to a file; killed
/// (SIGKILL) and reaped when dropped.
///
/// The caller builds the command (binary, arguments, environment, working
/// directory, stdin); the guard points its stdout and stderr at the log,
/// opened for appending, so the log of a restarted process follows the
/// earlier one. The waits block the calling thread, sleeping between looks.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    command: Command,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Daemon {
    /// Starts `command` as `name`, its stdout and stderr appended to `log`.
    pub fn start(name: impl Into<String>, command: Command, log: impl Into<PathBuf>) -> Daemon {
        let mut daemon = Daemon {
            name: name.into(),
            command,
            log: log.into(),
            child: None,
            starts: 0,
        };
        daemon.spawn();
        daemon
    }

    /// Starts the same command again, after [`Daemon::kill9`] or
    /// [`Daemon::interrupt`]; panics if the process still runs.
    pub fn restart(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let status = child.try_wait().expect("try_wait on a child");
            assert!(
                status.is_some(),
                "{} restarted while still running",
                self.name
            );
            self.child = None;
        }
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot duplicate {}: {e}", self.log.display()));
        let child = self
            .command
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({:?}): {e}", self.name, self.command));
        self.child = Some(child);
        self.starts += 1;
    }

    /// The name given at start, as the panic messages say it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id of the running process, `None` once stopped or killed.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How often the command was started: 1 after [`Daemon::start`], one
    /// more for every [`Daemon::restart`].
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The whole log so far (every start's), empty if there is none yet.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The end of the log, from a line start, headed by its path: for panic messages.
    fn log_tail(&self) -> String {
        let log = self.log();
        let head = format!("--- {} log {}", self.name, self.log.display());
        if log.len() <= TAIL_BYTES {
            return format!("{head}\n{log}");
        }
        let mut cut = log.len() - TAIL_BYTES;
        while !log.is_char_boundary(cut) {
            cut += 1;
        }
        let cut = log[cut..].find('\n').map_or(cut, |n| cut + n + 1);
        format!(
            "{head} (the last {} bytes)\n{}",
            log.len() - cut,
            &log[cut..]
        )
    }

    fn running(&mut self, what: &str) -> &mut Child {
        let name = &self.name;
        self.child
            .as_mut()
            .unwrap_or_else(|| panic!("{what}: {name} is not running"))
    }

    /// Sends SIGINT, the graceful stop, with the `kill` command.
    fn sigint(&mut self) {
        let pid = self.running("SIGINT").id().to_string();
        let status = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("the kill command runs");
        assert!(
            status.success(),
            "kill -INT {pid} ({}): {status}",
            self.name
        );
    }

    /// Polls for the exit status until `within` has passed since `start`.
    fn wait_exit(&mut self, start: Instant, within: Duration) -> Option<ExitStatus> {
        let child = self.running("wait");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait on a child") {
                return Some(status);
            }
            if start.elapsed() >= within {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL, then waits for the process to be gone.
    fn kill_and_reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGINT, the graceful stop: the process must exit 0 within `within`.
    /// Panics with the end of the log otherwise (after a SIGKILL, if it still runs).
    pub fn interrupt(&mut self, within: Duration) {
        let start = Instant::now();
        self.sigint();
        match self.wait_exit(start, within) {
            Some(status) => {
                self.child = None;
                assert!(
                    status.success(),
                    "{} exited with {status}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            None => {
                self.kill_and_reap();
                panic!(
                    "{} did not stop within {within:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
        }
    }

    /// SIGINT, and SIGKILL if the process has not stopped within `within`;
    /// for a process whose graceful stop would wait for what never comes.
    /// Its exit status is not checked.
    pub fn interrupt_or_kill(&mut self, within: Duration) {
        let start = Instant::now();
        self.sigint();
        let _ = self.wait_exit(start, within);
        self.kill_and_reap();
    }

    /// SIGKILL, as a crash; panics, with the end of the log, if the process
    /// had already died on its own.
    pub fn kill9(&mut self) {
        let exited = self
            .running("SIGKILL")
            .try_wait()
            .expect("try_wait on a child");
        if let Some(status) = exited {
            self.child = None;
            panic!(
                "{} had died on its own ({status}) before its SIGKILL:\n{}",
                self.name,
                self.log_tail()
            );
        }
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL to a running child");
            child.wait().expect("wait for a killed child");
        }
    }

    /// Waits until the log holds `needle`; panics with the end of the log
    /// if it does not within `within`.
    pub fn wait_log(&self, needle: &str, within: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < within,
                "{} log never said {needle:?} within {within:?}:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn a_restart_appends_to_the_log_and_counts_the_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("d.log");
        let mut d = Daemon::start(
            "d",
            sh("echo started; trap 'echo stopping; exit 0' INT; while :; do sleep 0.05; done"),
            &log,
        );
        d.wait_log("started", Duration::from_secs(10));
        assert!(d.id().is_some());
        d.kill9();
        assert_eq!(d.id(), None);
        d.restart();
        d.wait_log("started\nstarted", Duration::from_secs(10));
        d.interrupt(Duration::from_secs(10));
        assert_eq!(d.starts(), 2);
        assert!(d.log().ends_with("stopping\n"), "{}", d.log());
    }

    #[test]
    #[should_panic(expected = "d exited with exit status: 3:\n--- d log")]
    fn a_failed_stop_panics_with_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = Daemon::start(
            "d",
            sh("trap 'echo bad; exit 3' INT; echo up; while :; do sleep 0.05; done"),
            dir.path().join("d.log"),
        );
        d.wait_log("up", Duration::from_secs(10));
        d.interrupt(Duration::from_secs(10));
    }

    #[test]
    #[should_panic(expected = "d had died on its own (exit status: 0) before its SIGKILL")]
    fn kill9_of_a_dead_process_panics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = Daemon::start("d", sh("echo done"), dir.path().join("d.log"));
        d.wait_log("done", Duration::from_secs(10));
        std::thread::sleep(Duration::from_secs(1));
        d.kill9();
    }

    #[test]
    fn interrupt_or_kill_stops_a_process_that_ignores_sigint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = Daemon::start(
            "d",
            sh("trap '' INT; echo up; while :; do sleep 0.05; done"),
            dir.path().join("d.log"),
        );
        d.wait_log("up", Duration::from_secs(10));
        let t = Instant::now();
        d.interrupt_or_kill(Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(d.id(), None);
    }
}
