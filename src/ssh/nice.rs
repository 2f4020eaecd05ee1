//! A lower scheduling priority for bulk work while another tenant is
//! active.
//!
//! The fair share ([`super::fair`]) decides which connection task runs on
//! the runtime's workers; the host's scheduler decides when a worker
//! thread, or any other process, gets a core. On a host whose cores are
//! busy, a thread running a bulk tenant's slice competes for a core with
//! the thread that would carry another tenant's small message, and with
//! the processes at the two ends of that message when they share the
//! host. While a bulk connection works with a turn and another tenant was
//! active lately, its thread runs at a higher nice value ([`set`], `warren
//! relay --bulk-nice`): the scheduler then lets the others run first, and
//! the bulk work keeps the rest of the cores. The thread is back at its own
//! nice value before the task waits or its round of work ends, so the lower
//! weight applies to one round of one task's work, not to the thread's
//! other tasks (the scheduler may still carry some of the round's
//! accounting over to the thread's next moments).
//!
//! Nice values weigh threads against each other inside one scheduling
//! group: the relay's own threads always, other processes only when they
//! share the relay's group (with autogroup, its session; under systemd,
//! its cgroup, whose `CPUWeight=` weighs it against other services).
//!
//! Raising a nice value is always allowed; setting it back needs
//! `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows the thread's own value
//! (`LimitNICE=` in a systemd unit). [`set`] checks that on a throwaway
//! thread first and refuses if the way back is closed. Linux only: other
//! systems have one nice value per process.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// How much the nice value of a thread doing a bulk slice rises while
/// another tenant is active (0: never). Set once at start.
static BULK: AtomicI32 = AtomicI32::new(0);

/// Whether [`set`] ever turned lowering on: threads started after that
/// begin at [`BASE`], even once lowering is off again.
static EVER: AtomicBool = AtomicBool::new(false);

/// The nice value of the thread that called [`set`]: what every thread
/// the runtime starts begins with ([`on_thread_start`]).
static BASE: AtomicI32 = AtomicI32::new(0);

/// The relay's default for `--bulk-nice`: the weight of a bulk slice drops
/// to about a tenth of a normal thread's (Linux's nice 10 is weight 110
/// against 1024).
pub const DEFAULT: i32 = 10;

/// Turns the lower priority of bulk slices on with `step` (1–19; 0 turns
/// it off). Fails, leaving it off, where this process may not set a
/// thread's nice value back (see the module), and on systems where a
/// nice value belongs to the whole process rather than to one thread.
pub fn set(step: i32) -> std::io::Result<()> {
    if !(0..=19).contains(&step) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{step}: a bulk nice step is between 0 and 19"),
        ));
    }
    if step > 0 {
        check(step)?;
        BASE.store(own_nice()?, Ordering::Relaxed);
        EVER.store(true, Ordering::Relaxed);
    }
    BULK.store(step, Ordering::Relaxed);
    Ok(())
}

/// Whether a thread may rise by `step` and come back (on a throwaway
/// thread, so that a failure leaves no thread of ours lowered).
#[cfg(target_os = "linux")]
fn check(step: i32) -> std::io::Result<()> {
    std::thread::spawn(move || -> std::io::Result<()> {
        let own = own_nice()?;
        renice(own.saturating_add(step).min(19))?;
        renice(own)
    })
    .join()
    .map_err(|_| std::io::Error::other("the check of nice values panicked"))?
}

#[cfg(not(target_os = "linux"))]
fn check(_step: i32) -> std::io::Result<()> {
    // Elsewhere "this process" in the priority calls is the whole process.
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "a thread's own nice value exists on Linux only",
    ))
}

/// The step set by [`set`] (0: off).
pub fn step() -> i32 {
    BULK.load(Ordering::Relaxed)
}

thread_local! {
    /// This thread's own nice value, read when it was lowered, and
    /// whether it runs lowered now.
    static OWN: Cell<i32> = const { Cell::new(0) };
    static LOWERED: Cell<bool> = const { Cell::new(false) };
}

/// Lowers the calling thread's priority by the step, if one is set and
/// the thread is not lowered already. Returns whether it is lowered now.
pub fn lower() -> bool {
    let step = step();
    if step == 0 {
        return false;
    }
    if LOWERED.get() {
        return true;
    }
    // Read each time, so a value someone set on this thread since stays.
    let Ok(own) = own_nice() else {
        return false;
    };
    if renice(own.saturating_add(step).min(19)).is_err() {
        return false;
    }
    OWN.set(own);
    LOWERED.set(true);
    true
}

/// Puts the calling thread back at its own nice value if [`lower`]
/// lowered it. If that fails (only a limit changed since the start can
/// make it), lowering is turned off for good and the thread stays marked
/// lowered, so the next call tries again.
pub fn restore() {
    if !LOWERED.get() {
        return;
    }
    match renice(OWN.get()) {
        Ok(()) => LOWERED.set(false),
        Err(e) => {
            if BULK.swap(0, Ordering::Relaxed) != 0 {
                tracing::warn!(error = %e, "a relay thread could not get its priority back: bulk slices are no longer lowered");
            }
        }
    }
}

/// For every thread a runtime starts: a new thread inherits the nice
/// value of the thread that started it, which may be a lowered one (a
/// blocking task started during a bulk slice); it starts at the base
/// value instead.
pub fn on_thread_start() {
    if EVER.load(Ordering::Relaxed) {
        let _ = renice(BASE.load(Ordering::Relaxed));
    }
}

/// Whether the calling thread runs lowered now (for tests).
#[cfg(test)]
pub(crate) fn lowered() -> bool {
    LOWERED.get()
}

fn own_nice() -> std::io::Result<i32> {
    // On Linux a nice value belongs to a thread, and "this process" (0)
    // in the priority calls means the calling thread.
    rustix::process::getpriority_process(None).map_err(std::io::Error::from)
}

fn renice(n: i32) -> std::io::Result<()> {
    rustix::process::setpriority_process(None, n).map_err(std::io::Error::from)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    // One test: BULK is process-wide.
    #[test]
    fn a_lowered_thread_gets_its_own_nice_value_back_and_others_are_untouched() {
        assert!(set(25).is_err());
        assert_eq!(step(), 0);
        assert!(!lower(), "off: nothing is lowered");
        set(7).expect("this test runs as a user that may set nice values back");
        std::thread::spawn(|| {
            renice(2).unwrap();
            assert!(lower());
            assert_eq!(own_nice().unwrap(), 9);
            assert!(lower(), "a second lower is a no-op");
            assert_eq!(own_nice().unwrap(), 9);
            // A thread started now inherits the lowered value, and the
            // runtime's start hook puts it back at the base value.
            let other = std::thread::spawn(|| {
                let inherited = own_nice().unwrap();
                on_thread_start();
                (inherited, own_nice().unwrap(), lowered())
            })
            .join()
            .unwrap();
            assert_eq!(other, (9, 0, false));
            restore();
            assert_eq!(own_nice().unwrap(), 2);
            assert!(!lowered());
            restore();
            assert_eq!(own_nice().unwrap(), 2);
            // Capped at 19.
            renice(15).unwrap();
            assert!(lower());
            assert_eq!(own_nice().unwrap(), 19);
            restore();
            assert_eq!(own_nice().unwrap(), 15);
        })
        .join()
        .unwrap();
        set(0).unwrap();
        assert!(!lower());
    }
}
