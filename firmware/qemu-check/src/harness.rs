//! A tiny test harness for a target without `std::test`: named test
//! functions, grouped in suites, run in order; a failed check prints where and
//! why and the run goes on; a panic ends the run (panic = abort) and names the
//! test that panicked.

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

/// A test's verdict. Checks (`check!`, `check_eq!`) print the details and
/// return `Err(Failed)`.
pub type Outcome = Result<(), Failed>;

/// A check failed; its message was already printed.
#[derive(Debug)]
pub struct Failed;

/// A named test.
pub struct Test {
    /// The function's name.
    pub name: &'static str,
    /// The test.
    pub run: fn() -> Outcome,
}

/// A suite: a module's name and its tests.
pub struct Suite {
    /// The module's name.
    pub name: &'static str,
    /// Its tests, in run order.
    pub tests: &'static [Test],
}

/// Builds a module's `TESTS` list from its test functions' names.
macro_rules! tests {
    ($($f:ident),+ $(,)?) => {
        pub const TESTS: &[$crate::harness::Test] = &[
            $($crate::harness::Test { name: stringify!($f), run: $f }),+
        ];
    };
}

/// Fails the test (returns `Err(Failed)`) unless `cond` holds.
macro_rules! check {
    ($cond:expr) => {
        check!($cond, "{}", stringify!($cond))
    };
    ($cond:expr, $($arg:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            $crate::harness::report(file!(), line!(), format_args!($($arg)+));
            return Err($crate::harness::Failed);
        }
    };
}

/// Fails the test unless `left == right`, printing both.
macro_rules! check_eq {
    ($left:expr, $right:expr) => {
        check_eq!($left, $right, "{} == {}", stringify!($left), stringify!($right))
    };
    ($left:expr, $right:expr, $($arg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    $crate::harness::report(
                        file!(),
                        line!(),
                        format_args!("{}\n    left: {:?}\n   right: {:?}", format_args!($($arg)+), l, r),
                    );
                    return Err($crate::harness::Failed);
                }
            }
        }
    };
}

/// The value inside an `Ok` or `Some`; otherwise fails the test, printing
/// the error (or `None`).
macro_rules! check_ok {
    ($e:expr) => {
        check_ok!($e, "{}", stringify!($e))
    };
    ($e:expr, $($arg:tt)+) => {
        match $crate::harness::Checkable::into_result($e) {
            Ok(value) => value,
            Err(e) => {
                $crate::harness::report(
                    file!(),
                    line!(),
                    format_args!("{}: {:?}", format_args!($($arg)+), e),
                );
                return Err($crate::harness::Failed);
            }
        }
    };
}

/// What `check_ok!` unwraps.
pub trait Checkable {
    /// The wrapped value.
    type Value;
    /// Why there is none.
    type Error: fmt::Debug;
    /// The value, or why there is none.
    fn into_result(self) -> Result<Self::Value, Self::Error>;
}

impl<T, E: fmt::Debug> Checkable for Result<T, E> {
    type Value = T;
    type Error = E;
    fn into_result(self) -> Result<T, E> {
        self
    }
}

/// The error of a `None` under `check_ok!`.
#[derive(Debug)]
pub struct NoneFound;

impl<T> Checkable for Option<T> {
    type Value = T;
    type Error = NoneFound;
    fn into_result(self) -> Result<T, NoneFound> {
        self.ok_or(NoneFound)
    }
}

/// Prints a failed check.
pub fn report(file: &str, line: u32, msg: fmt::Arguments<'_>) {
    semihosting::println!("    check failed at {file}:{line}: {msg}");
}

const NONE: usize = usize::MAX;
// Which test runs, for the panic and trap handlers (load/store atomics exist
// on RV32IMC; only compare-and-swap does not).
static SUITE: AtomicUsize = AtomicUsize::new(NONE);
static TEST: AtomicUsize = AtomicUsize::new(NONE);

/// Displays " in test suite::name" while a test runs, else nothing (for the
/// panic and trap handlers).
pub struct RunningTest;

impl fmt::Display for RunningTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, t) = (SUITE.load(Ordering::Relaxed), TEST.load(Ordering::Relaxed));
        if s == NONE || t == NONE {
            return Ok(());
        }
        match crate::SUITES
            .get(s)
            .and_then(|suite| Some((suite.name, suite.tests.get(t)?.name)))
        {
            Some((suite, test)) => write!(f, " in test {suite}::{test}"),
            None => Ok(()),
        }
    }
}

/// Centiseconds since the program started (semihosting SYS_CLOCK), if the host says.
fn clock_cs() -> Option<usize> {
    semihosting::sys::arm_compat::sys_clock().ok()
}

/// Runs every test of every suite in `crate::SUITES`; returns (passed, failed).
pub fn run() -> (usize, usize) {
    let suites = crate::SUITES;
    let total: usize = suites.iter().map(|s| s.tests.len()).sum();
    semihosting::println!("running {total} tests on riscv32imc (QEMU virt)");
    let (mut passed, mut failed) = (0, 0);
    for (si, suite) in suites.iter().enumerate() {
        for (ti, test) in suite.tests.iter().enumerate() {
            SUITE.store(si, Ordering::Relaxed);
            TEST.store(ti, Ordering::Relaxed);
            let t0 = clock_cs();
            let outcome = (test.run)();
            let ms = match (t0, clock_cs()) {
                (Some(a), Some(b)) => b.saturating_sub(a) * 10,
                _ => 0,
            };
            match outcome {
                Ok(()) => {
                    passed += 1;
                    semihosting::println!("test {}::{} ... ok ({ms} ms)", suite.name, test.name);
                }
                Err(Failed) => {
                    failed += 1;
                    semihosting::println!("test {}::{} ... FAILED", suite.name, test.name);
                }
            }
        }
    }
    SUITE.store(NONE, Ordering::Relaxed);
    TEST.store(NONE, Ordering::Relaxed);
    (passed, failed)
}
