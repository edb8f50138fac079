//! A core of its own for each CPU slot's work.
//!
//! CPU work (cutting, tokenizing ahead, extracting) runs under a CPU slot, one per core
//! ([`crate::config::cpu_slots`]), most of it on tokio's blocking threads. On a small virtual
//! machine the kernel often wakes such a thread on the core of the thread that woke it and
//! leaves the two sharing that core for tens of milliseconds while the other core idles:
//! `perf sched` of one 200 MB object on two cores showed the cut and a part being tokenized
//! ahead, the two slot holders, on one core for stretches of up to 30 ms, and over many small
//! files the runtime's two worker threads, which cut small texts themselves, sharing one core
//! for up to 20 ms. While a thread does a slot's chunking work it can instead hold a core of
//! its own ([`on_core`]): the thread runs there and nowhere else until the work is done, then
//! may run anywhere again.
//!
//! Only where that cannot take a core from anyone: when the process may run on exactly as
//! many cores as it has CPU slots (a machine or container of its own, its affinity mask as
//! large as its CPU quota). A share of a larger host (a quota below the cores it may run on)
//! or a single core is left to the kernel, as is everything else the process runs (the
//! runtime's workers between cuts, reads, and work that may start a process: documents, OCR,
//! media, whose children would inherit the core). `[cpu] pin_slots = false` turns it off.

use std::sync::OnceLock;

static CORES: OnceLock<imp::Cores> = OnceLock::new();

/// Gives CPU slots' work cores of their own from now on, where the process may run on exactly
/// [`crate::config::cpu_slots`] cores, two or more. Call it once at startup, before the
/// runtime starts threads: the cores are the calling thread's. Returns how many cores the
/// slots were given, or `None` when they were not.
pub fn pin_cpu_slots() -> Option<usize> {
    let cores = imp::Cores::of_this_thread(crate::config::cpu_slots())?;
    let count = cores.count();
    CORES.set(cores).ok()?;
    Some(count)
}

/// Runs the calling thread on a free core of the slots' until the guard is dropped, when
/// [`pin_cpu_slots`] gave them cores; else does nothing. Taken on the thread that does a
/// slot's work, right after the slot, and dropped before the slot (the pipeline's `Working`
/// holds both in that order): the slots' holders never outnumber the cores, so a free core is
/// there. Between the two, the thread does that work and nothing else (no `.await`, nothing
/// that starts a thread or a process: they would inherit the core).
#[must_use]
pub fn on_core() -> Option<OnCore> {
    CORES.get()?.take()
}

/// A core held by the calling thread; see [`on_core`].
pub struct OnCore {
    cores: &'static imp::Cores,
    core: usize,
}

impl Drop for OnCore {
    fn drop(&mut self) {
        self.cores.give_back(self.core);
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::sync::Mutex;

    use nix::sched::{CpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};
    use nix::unistd::Pid;

    use super::OnCore;

    /// The cores a process may run on, and those of them no slot's work holds.
    pub(super) struct Cores {
        all: CpuSet,
        free: Mutex<Vec<usize>>,
    }

    impl Cores {
        /// The calling thread's cores, when they are `slots` and at least two.
        pub(super) fn of_this_thread(slots: usize) -> Option<Cores> {
            let all = sched_getaffinity(Pid::from_raw(0)).ok()?;
            let cores = Cores::new(all);
            (slots >= 2 && cores.count() == slots).then_some(cores)
        }

        pub(super) fn new(all: CpuSet) -> Cores {
            let free = (0..CpuSet::count())
                .filter(|&cpu| all.is_set(cpu).unwrap_or(false))
                .collect();
            Cores {
                all,
                free: Mutex::new(free),
            }
        }

        /// Cores no slot's work holds now (all of them before any is taken).
        pub(super) fn count(&self) -> usize {
            self.free.lock().map_or(0, |free| free.len())
        }

        /// Moves the calling thread to a free core: the one it runs on when that one is free
        /// (no move), else another.
        pub(super) fn take(&'static self) -> Option<OnCore> {
            let core = {
                let mut free = self.free.lock().ok()?;
                let here = sched_getcpu().ok();
                let at = free
                    .iter()
                    .position(|&core| Some(core) == here)
                    .or_else(|| free.len().checked_sub(1))?;
                free.swap_remove(at)
            };
            let mut only = CpuSet::new();
            if only.set(core).is_err() || sched_setaffinity(Pid::from_raw(0), &only).is_err() {
                self.release(core);
                return None;
            }
            Some(OnCore { cores: self, core })
        }

        /// Lets the calling thread run on every core again and frees `core`.
        pub(super) fn give_back(&self, core: usize) {
            if let Err(err) = sched_setaffinity(Pid::from_raw(0), &self.all) {
                tracing::warn!(core, error = %err, "a blocking thread stays on one core");
            }
            self.release(core);
        }

        fn release(&self, core: usize) {
            if let Ok(mut free) = self.free.lock() {
                free.push(core);
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::OnCore;

    /// Cores are left to the operating system here.
    pub(super) struct Cores;

    impl Cores {
        pub(super) fn of_this_thread(_slots: usize) -> Option<Cores> {
            None
        }

        pub(super) fn count(&self) -> usize {
            0
        }

        pub(super) fn take(&'static self) -> Option<OnCore> {
            None
        }

        pub(super) fn give_back(&self, _core: usize) {}
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use nix::sched::{CpuSet, sched_getaffinity};
    use nix::unistd::Pid;

    use super::imp::Cores;

    fn cores_of(set: &CpuSet) -> Vec<usize> {
        (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect()
    }

    fn this_thread() -> Vec<usize> {
        cores_of(&sched_getaffinity(Pid::from_raw(0)).unwrap_or_else(|_| CpuSet::new()))
    }

    #[test]
    fn a_holder_runs_on_its_core_alone_and_on_all_of_them_after() {
        // On a thread of its own: the test moves it between cores.
        let all = std::thread::spawn(|| {
            let all = sched_getaffinity(Pid::from_raw(0)).expect("this thread's cores");
            let cores: &'static Cores = Box::leak(Box::new(Cores::new(all)));
            let mine = cores_of(&all);
            assert!(!mine.is_empty());
            assert_eq!(cores.count(), mine.len());

            // Every core is given once, each to one holder; with none free, none is given.
            let mut held = Vec::new();
            for _ in 0..mine.len() {
                let on = cores.take().expect("a free core");
                assert_eq!(
                    this_thread(),
                    vec![on.core],
                    "the thread runs on its core alone"
                );
                held.push(on.core);
                // Forgotten, not dropped: the core stays held and the thread on it.
                std::mem::forget(on);
            }
            held.sort_unstable();
            assert_eq!(held, mine);
            assert!(cores.take().is_none(), "more holders than cores");
            assert_eq!(cores.count(), 0);

            // Giving one back frees it and lets the thread run anywhere again.
            cores.give_back(held[0]);
            assert_eq!(this_thread(), mine);
            assert_eq!(cores.count(), 1);
            let on = cores.take().expect("the freed core");
            assert_eq!(on.core, held[0]);
            drop(on);
            assert_eq!(this_thread(), mine);
            mine
        })
        .join()
        .expect("the test thread");
        assert!(!all.is_empty());
    }

    #[test]
    fn the_slots_get_cores_only_where_they_match_them() {
        let mine = this_thread().len();
        assert!(
            Cores::of_this_thread(mine + 1).is_none(),
            "a quota above the cores"
        );
        assert!(Cores::of_this_thread(1).is_none(), "one slot");
        if mine >= 2 {
            assert!(
                Cores::of_this_thread(mine - 1).is_none(),
                "a quota below the cores"
            );
            let cores = Cores::of_this_thread(mine).expect("as many slots as cores");
            assert_eq!(cores.count(), mine);
        } else {
            assert!(Cores::of_this_thread(mine).is_none(), "one core");
        }
    }
}
