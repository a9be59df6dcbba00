//! The EEVDF scheduler slice of the calling thread.
//!
//! Since Linux 6.12 a thread of the normal scheduling class may ask for its own slice with
//! `sched_setattr(2)` (`sched_attr::sched_runtime`, clamped by the kernel to 0.1–100 ms). The
//! slice sets the thread's virtual deadline: a longer one means that a thread it wakes is
//! placed ahead of it less often, so it finishes what it is doing before that thread runs.
//! On kernels before 6.12 `sched_getattr` reports no slice (zero) for these threads, so callers
//! check [`slice`] before setting one (from the kernel's sources; the machine these tests run on
//! has 6.18).
//!
//! This crate holds the only `unsafe` code of the workspace: the two system calls, which no
//! safe crate wraps, each on a `sched_attr` that lives on the stack for the call.
#![cfg_attr(target_os = "linux", allow(unsafe_code))]

use std::io;
use std::time::Duration;

/// The shortest slice the kernel takes; shorter requests are raised to it.
pub const MIN_SLICE: Duration = Duration::from_micros(100);
/// The longest slice the kernel takes; longer requests are clamped to it.
pub const MAX_SLICE: Duration = Duration::from_millis(100);

/// `struct sched_attr` of `include/uapi/linux/sched/types.h` (`SCHED_ATTR_SIZE_VER1`).
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

#[cfg(target_os = "linux")]
const SCHED_OTHER: u32 = 0;
#[cfg(target_os = "linux")]
const SCHED_BATCH: u32 = 3;

#[cfg(target_os = "linux")]
fn get_attr() -> io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as libc::c_uint;
    // SAFETY: `attr` is a live, writable `sched_attr` of `size` bytes for the whole call; pid 0
    // is the calling thread and the kernel writes at most `size` bytes.
    let result = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            size,
            0,
        )
    };
    if result == 0 {
        Ok(attr)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(target_os = "linux")]
fn set_attr(attr: &SchedAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `sched_attr` whose `size` field says how many bytes the kernel
    // may read; it outlives the call. pid 0 is the calling thread.
    let result = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, attr as *const SchedAttr, 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread's current slice as the kernel reports it (`sched_runtime` of
/// `sched_getattr`): the default slice unless one was set. Zero on kernels before 6.12.
pub fn slice() -> io::Result<Duration> {
    #[cfg(target_os = "linux")]
    {
        Ok(Duration::from_nanos(get_attr()?.sched_runtime))
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// Ask for `slice` for the calling thread, or for the kernel's default with `None`. The
/// thread's policy and nice value are kept. Only threads of the normal classes (`SCHED_OTHER`,
/// `SCHED_BATCH`) are changed; for others this returns an `InvalidInput` error.
pub fn set_slice(slice: Option<Duration>) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let mut attr = get_attr()?;
        if attr.sched_policy != SCHED_OTHER && attr.sched_policy != SCHED_BATCH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the thread is not in the normal scheduling class",
            ));
        }
        attr.size = std::mem::size_of::<SchedAttr>() as u32;
        attr.sched_flags = 0;
        attr.sched_runtime = slice.map_or(0, |slice| {
            u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX)
        });
        attr.sched_deadline = 0;
        attr.sched_period = 0;
        set_attr(&attr)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = slice;
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// On a thread of its own, so the test runner's thread keeps its slice.
    fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f)
            .join()
            .expect("the test thread panicked")
    }

    #[test]
    fn a_set_slice_reads_back_and_none_restores_the_default() {
        on_thread(|| {
            let default = slice().unwrap();
            set_slice(Some(Duration::from_millis(5))).unwrap();
            let set = slice().unwrap();
            if default.is_zero() {
                // A kernel before 6.12: the value is accepted and ignored.
                assert!(set.is_zero());
                return;
            }
            assert_eq!(set, Duration::from_millis(5));
            set_slice(None).unwrap();
            assert_eq!(slice().unwrap(), default);
        });
    }

    #[test]
    fn the_kernel_clamps_the_slice_and_keeps_the_nice_value() {
        on_thread(|| {
            let before = get_attr().unwrap();
            set_slice(Some(Duration::from_secs(1))).unwrap();
            let after = get_attr().unwrap();
            assert_eq!(after.sched_nice, before.sched_nice);
            assert_eq!(after.sched_policy, before.sched_policy);
            if before.sched_runtime != 0 {
                assert_eq!(after.sched_runtime, 100_000_000, "clamped to 100 ms");
            }
        });
    }
}
