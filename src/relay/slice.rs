//! Short scheduler time slices for the relay's threads.
//!
//! A message crossing the relay wakes a worker thread, often on a host
//! whose cores are busy with something else (bulk relaying by other
//! threads, other processes). Linux's fair scheduler (EEVDF, 6.6 and
//! later) lets a thread that was woken run before the running one only if
//! its virtual deadline is earlier, and a deadline is the thread's time
//! slice ahead of it: with the default slice (0.7–3 ms, by core count) a
//! woken relay thread may wait that long behind a CPU-bound process. Since
//! Linux 6.12 a thread can ask for a shorter slice (`sched_runtime` of
//! `sched_setattr` for `SCHED_OTHER`, clamped by the kernel to 0.1–100 ms):
//! it then preempts sooner when it wakes and runs in shorter turns; its
//! share of the CPU (its weight, from its nice value) does not change.
//!
//! The relay asks for [`DEFAULT`] on every runtime thread
//! (`warren relay --thread-slice`); 0 leaves the kernel's default. Older
//! kernels accept the request and ignore it; other systems have no such
//! setting and the relay says so at start.

use std::time::Duration;

/// The slice the relay's threads ask for unless told otherwise: the
/// shortest the kernel grants.
pub const DEFAULT: Duration = Duration::from_micros(100);

/// Asks the scheduler to give the calling thread time slices of `slice`
/// (see the module). Keeps the thread's policy and nice value; a thread
/// under a real-time or deadline policy is left as it is (`Ok(false)`).
#[cfg(target_os = "linux")]
pub fn request(slice: Duration) -> std::io::Result<bool> {
    let mut attr = current()?;
    if attr.sched_policy != libc::SCHED_OTHER as u32
        && attr.sched_policy != libc::SCHED_BATCH as u32
    {
        return Ok(false);
    }
    // Only the flag that belongs to the thread itself is kept (its
    // children fall back to the default policy); the others are requests.
    attr.sched_flags &= libc::SCHED_FLAG_RESET_ON_FORK as u64;
    attr.sched_runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: `attr` is a valid, initialised `sched_attr` whose `size`
    // field is its own size; the kernel only reads it. Thread id 0 is the
    // calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}

/// The calling thread's scheduling attributes.
#[cfg(target_os = "linux")]
fn current() -> std::io::Result<libc::sched_attr> {
    let size = std::mem::size_of::<libc::sched_attr>();
    let mut attr = libc::sched_attr {
        size: size as u32,
        sched_policy: 0,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: 0,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: `attr` is a valid `sched_attr` of `size` bytes that the
    // kernel fills in; thread id 0 is the calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut libc::sched_attr,
            size as libc::c_uint,
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr)
}

#[cfg(not(target_os = "linux"))]
pub fn request(_slice: Duration) -> std::io::Result<bool> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "time slices can be set on Linux only",
    ))
}

/// Parses `--thread-slice`: a duration ("100us", "1ms"), or 0 for the
/// kernel's default. The kernel grants 0.1 ms to 100 ms; anything else is
/// refused here rather than silently clamped.
pub fn parse(text: &str) -> Result<Duration, String> {
    let d = if text.trim() == "0" {
        Duration::ZERO
    } else {
        humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 100us, 1ms, or 0)"))?
    };
    if !d.is_zero() && (d < Duration::from_micros(100) || d > Duration::from_millis(100)) {
        return Err(format!(
            "{text}: a time slice is between 100us and 100ms (or 0 for the kernel's default)"
        ));
    }
    Ok(d)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The slice the kernel reports for the calling thread, in ns.
    fn slice_of_this_thread() -> u64 {
        let text = std::fs::read_to_string("/proc/thread-self/sched").expect("read sched");
        let line = text
            .lines()
            .find(|l| l.starts_with("se.slice"))
            .expect("this kernel has no per-thread slice (Linux 6.12 or later needed)");
        line.rsplit(':').next().unwrap().trim().parse().unwrap()
    }

    fn nice_of_this_thread() -> i32 {
        current().expect("sched_getattr").sched_nice
    }

    #[test]
    fn a_thread_gets_the_slice_it_asks_for_and_keeps_its_nice_value() {
        std::thread::spawn(|| {
            // A nice value of its own, which the request must keep.
            rustix::process::setpriority_process(None, 3).expect("renice");
            let before = slice_of_this_thread();
            assert!(request(Duration::from_micros(250)).expect("sched_setattr"));
            assert_eq!(slice_of_this_thread(), 250_000);
            assert_ne!(before, 250_000);
            assert_eq!(nice_of_this_thread(), 3);
            assert_eq!(current().unwrap().sched_policy, libc::SCHED_OTHER as u32);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_threads_of_a_relay_runtime_ask_for_the_slice() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .on_thread_start(|| {
                request(Duration::from_micros(100)).expect("sched_setattr");
            })
            .build()
            .unwrap();
        let slices = rt.block_on(async {
            let mut all = Vec::new();
            for _ in 0..4 {
                all.push(
                    tokio::spawn(async { slice_of_this_thread() })
                        .await
                        .unwrap(),
                );
            }
            all
        });
        assert!(slices.iter().all(|&s| s == 100_000), "{slices:?}");
    }

    #[test]
    fn slices_outside_what_the_kernel_grants_are_refused() {
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse("3ms"), Ok(Duration::from_millis(3)));
        assert!(
            parse("50us")
                .unwrap_err()
                .contains("between 100us and 100ms")
        );
        assert!(parse("1s").unwrap_err().contains("between 100us and 100ms"));
        assert!(parse("fast").unwrap_err().contains("e.g. 100us"));
    }
}
