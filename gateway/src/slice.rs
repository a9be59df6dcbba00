//! The serving threads' scheduler slice: longer than the kernel's default while a thread is
//! lightly loaded, the default once it is not.
//!
//! A proxied request is a chain of hand-offs: the client's write wakes the serving thread, its
//! write to the engine wakes the engine, the engine's answer wakes the serving thread, and its
//! write wakes the client. Under Linux's EEVDF scheduler a thread that is woken on the waker's
//! CPU runs at once when its virtual deadline is earlier than the waker's, so with equal slices
//! the engine (or the client) often preempts the serving thread just after the write, and the
//! serving thread finishes its few microseconds of work later, often after a migration to the
//! other CPU. A serving thread with a longer slice (Linux 6.12+, `sched_setattr`) keeps the
//! CPU until it goes back to waiting, which is microseconds later. At one request at a time
//! this is most of the time a request takes (docs/benchmarks.md, "The serving threads'
//! slice"). Under load, a long slice means the woken serving thread waits longer behind the
//! threads already running, so the governor goes back to the default slice as soon as a
//! thread has more than one request in flight, and to the long slice after a window in which
//! it never had.
//!
//! [`SliceGovernor`] is the decision, a plain state machine; [`install`] and [`InFlight`] are
//! the per-thread glue around it and `kinfer-sched`'s system call.

use std::cell::RefCell;
use std::str::FromStr;
use std::time::{Duration, Instant};

use kinfer_sched::{MAX_SLICE, MIN_SLICE};

/// Requests in flight on one serving thread up to which it counts as lightly loaded.
pub const LIGHT_IN_FLIGHT: u32 = 1;
/// How long a thread must stay lightly loaded before it takes the long slice again.
pub const LIGHT_WINDOW: Duration = Duration::from_millis(50);

/// `--light-load-slice`: the slice of a lightly loaded serving thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceSetting {
    /// Twice the kernel's default slice for the thread (read when the thread starts).
    Auto,
    /// Leave the kernel's default.
    Off,
    /// This slice (the kernel clamps it to 0.1–100 ms).
    Fixed(Duration),
}

impl FromStr for SliceSetting {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "auto" => Ok(SliceSetting::Auto),
            "off" | "0" => Ok(SliceSetting::Off),
            other => {
                let slice = crate::config::parse_duration(other).map_err(|error| {
                    format!("{error}; or `auto` (twice the kernel's default) or `off`")
                })?;
                if !(MIN_SLICE..=MAX_SLICE).contains(&slice) {
                    return Err(format!(
                        "{other}: the kernel takes slices from 0.1ms to 100ms; or `off`"
                    ));
                }
                Ok(SliceSetting::Fixed(slice))
            }
        }
    }
}

impl SliceSetting {
    /// The long slice for a thread whose default slice is `default` (zero on kernels without
    /// custom slices), or `None` when there is nothing to set.
    pub fn light_slice(self, default: Duration) -> Option<Duration> {
        if default.is_zero() {
            return None;
        }
        match self {
            SliceSetting::Off => None,
            SliceSetting::Fixed(slice) => Some(slice),
            SliceSetting::Auto => Some((default * 2).min(MAX_SLICE)),
        }
    }
}

/// Which slice the thread should ask the kernel for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slice {
    /// The long slice: the thread is lightly loaded.
    Light,
    /// The kernel's default.
    Default,
}

/// One serving thread's load and the slice that follows from it.
#[derive(Debug)]
pub struct SliceGovernor {
    in_flight: u32,
    /// Most requests in flight since `window_start`.
    peak: u32,
    /// Start of the current window while on the default slice (`None` until the first
    /// request finishes after the switch, so that starting a request never reads the clock).
    window_start: Option<Instant>,
    slice: Slice,
}

impl Default for SliceGovernor {
    /// An idle thread, on the long slice.
    fn default() -> Self {
        SliceGovernor {
            in_flight: 0,
            peak: 0,
            window_start: None,
            slice: Slice::Light,
        }
    }
}

impl SliceGovernor {
    /// The slice the thread is on.
    pub fn slice(&self) -> Slice {
        self.slice
    }

    /// A request started; returns the slice to switch to, if it changes.
    pub fn started(&mut self) -> Option<Slice> {
        self.in_flight += 1;
        self.peak = self.peak.max(self.in_flight);
        if self.slice == Slice::Light && self.in_flight > LIGHT_IN_FLIGHT {
            self.slice = Slice::Default;
            self.window_start = None;
            return Some(Slice::Default);
        }
        None
    }

    /// A request finished; returns the slice to switch to, if it changes. `now` is called
    /// only on the default slice, so a lightly loaded thread never reads the clock.
    pub fn finished(&mut self, now: impl FnOnce() -> Instant) -> Option<Slice> {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.slice == Slice::Light {
            return None;
        }
        let now = now();
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            self.peak = self.in_flight + 1;
            return None;
        };
        if now.saturating_duration_since(start) < LIGHT_WINDOW {
            return None;
        }
        if self.peak <= LIGHT_IN_FLIGHT {
            self.slice = Slice::Light;
            return Some(Slice::Light);
        }
        self.window_start = Some(now);
        self.peak = self.in_flight;
        None
    }
}

struct ThreadSlice {
    governor: SliceGovernor,
    light: Duration,
}

thread_local! {
    static THREAD: RefCell<Option<ThreadSlice>> = const { RefCell::new(None) };
}

/// Give the calling serving thread the long slice of `setting` while it is lightly loaded.
/// Logs and leaves the thread alone when the kernel has no custom slices (before Linux 6.12)
/// or refuses the call.
pub fn install(setting: SliceSetting) {
    if setting == SliceSetting::Off {
        return;
    }
    let default = match kinfer_sched::slice() {
        Ok(default) => default,
        Err(error) => {
            tracing::info!(%error, "cannot read the serving thread's scheduler slice; leaving it");
            return;
        }
    };
    let Some(light) = setting.light_slice(default) else {
        tracing::info!("the kernel has no per-thread slices (Linux 6.12+); leaving the default");
        return;
    };
    if let Err(error) = kinfer_sched::set_slice(Some(light)) {
        tracing::warn!(%error, "cannot set the serving thread's scheduler slice; leaving it");
        return;
    }
    tracing::debug!(?light, ?default, "serving thread slice at light load");
    THREAD.with(|thread| {
        *thread.borrow_mut() = Some(ThreadSlice {
            governor: SliceGovernor::default(),
            light,
        })
    });
}

fn apply(change: Option<Slice>, light: Duration) {
    let slice = match change {
        None => return,
        Some(Slice::Light) => Some(light),
        Some(Slice::Default) => None,
    };
    if let Err(error) = kinfer_sched::set_slice(slice) {
        tracing::debug!(%error, "cannot change the serving thread's scheduler slice");
    }
}

/// A request in flight on this serving thread, for the governor of [`install`] (a no-op on
/// threads without one). Created and dropped on the same thread: the serving threads run
/// single-threaded runtimes.
pub struct InFlight(());

impl InFlight {
    pub fn start() -> InFlight {
        THREAD.with(|thread| {
            if let Some(state) = thread.borrow_mut().as_mut() {
                apply(state.governor.started(), state.light);
            }
        });
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        THREAD.with(|thread| {
            if let Some(state) = thread.borrow_mut().as_mut() {
                apply(state.governor.finished(Instant::now), state.light);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_at_a_time_stays_on_the_long_slice_without_reading_the_clock() {
        let mut governor = SliceGovernor::default();
        for _ in 0..1000 {
            assert_eq!(governor.started(), None);
            let no_clock = || -> Instant { panic!("the clock was read at light load") };
            assert_eq!(governor.finished(no_clock), None);
        }
        assert_eq!(governor.slice(), Slice::Light);
    }

    #[test]
    fn a_second_request_in_flight_switches_to_the_default_at_once() {
        let mut governor = SliceGovernor::default();
        assert_eq!(governor.started(), None);
        assert_eq!(governor.started(), Some(Slice::Default));
        assert_eq!(governor.started(), None, "no second switch");
        assert_eq!(governor.slice(), Slice::Default);
    }

    /// A governor that went to the default slice: two requests in flight.
    fn under_load() -> SliceGovernor {
        let mut governor = SliceGovernor::default();
        governor.started();
        governor.started();
        governor
    }

    #[test]
    fn back_to_the_long_slice_only_after_a_whole_window_at_light_load() {
        let t0 = Instant::now();
        let mut governor = under_load();
        assert_eq!(governor.finished(|| t0), None, "opens the window");
        assert_eq!(governor.finished(|| t0), None);
        // The window saw two in flight: it does not count as light.
        assert_eq!(governor.finished(|| t0 + LIGHT_WINDOW), None);
        // One at a time for a whole window.
        governor.started();
        assert_eq!(governor.finished(|| t0 + LIGHT_WINDOW * 3 / 2), None);
        governor.started();
        assert_eq!(
            governor.finished(|| t0 + LIGHT_WINDOW * 2),
            Some(Slice::Light)
        );
        assert_eq!(governor.slice(), Slice::Light);
    }

    #[test]
    fn sustained_load_stays_on_the_default_slice() {
        let t0 = Instant::now();
        let mut governor = under_load();
        for step in 0..100u32 {
            governor.started();
            let now = t0 + LIGHT_WINDOW / 4 * step;
            assert_eq!(governor.finished(|| now), None, "step {step}");
        }
        assert_eq!(governor.slice(), Slice::Default);
    }

    /// On a thread of its own, as a serving thread, so the test runner's thread keeps its
    /// slice and has no governor.
    fn on_thread(test: impl FnOnce() + Send + 'static) {
        std::thread::spawn(test)
            .join()
            .expect("the test thread panicked");
    }

    /// The glue with the real system call.
    #[test]
    fn a_serving_thread_takes_the_long_slice_and_gives_it_up_under_load() {
        on_thread(|| {
            let default = kinfer_sched::slice().unwrap();
            if default.is_zero() {
                return; // a kernel before 6.12: install leaves the thread alone
            }
            let light = Duration::from_millis(5);
            install(SliceSetting::Fixed(light));
            assert_eq!(kinfer_sched::slice().unwrap(), light);
            let first = InFlight::start();
            assert_eq!(kinfer_sched::slice().unwrap(), light);
            let second = InFlight::start();
            assert_eq!(kinfer_sched::slice().unwrap(), default);
            drop(second);
            drop(first);
            assert_eq!(
                kinfer_sched::slice().unwrap(),
                default,
                "the long slice comes back only after a light window"
            );
        });
    }

    #[test]
    fn without_install_a_request_changes_nothing() {
        on_thread(|| {
            let before = kinfer_sched::slice().unwrap();
            let first = InFlight::start();
            let second = InFlight::start();
            drop((first, second));
            assert_eq!(kinfer_sched::slice().unwrap(), before);
        });
    }

    #[test]
    fn settings_parse_and_give_the_long_slice() {
        let default = Duration::from_micros(1400);
        assert_eq!(
            "auto".parse::<SliceSetting>().unwrap().light_slice(default),
            Some(Duration::from_micros(2800))
        );
        assert_eq!(
            "3ms".parse::<SliceSetting>().unwrap().light_slice(default),
            Some(Duration::from_millis(3))
        );
        assert_eq!(
            "off".parse::<SliceSetting>().unwrap().light_slice(default),
            None
        );
        assert_eq!(
            SliceSetting::Auto.light_slice(Duration::ZERO),
            None,
            "a kernel without per-thread slices"
        );
        assert_eq!(
            SliceSetting::Auto.light_slice(Duration::from_millis(80)),
            Some(MAX_SLICE)
        );
        let error = "1s".parse::<SliceSetting>().unwrap_err();
        assert!(error.contains("0.1ms to 100ms"), "{error}");
        let error = "soon".parse::<SliceSetting>().unwrap_err();
        assert!(error.contains("auto"), "{error}");
    }
}
