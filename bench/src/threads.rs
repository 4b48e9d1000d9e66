//! CPU time by thread, in user space and in the kernel, read from
//! `/proc/self/task`: where a measurement's time went, the kernel's part
//! included (callgrind counts only the instructions of user space, and
//! the durable rows spend a third of their time in the kernel: `fdatasync`,
//! wake-ups, the block device's interrupts).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// Clock ticks per second of `/proc`'s times: `USER_HZ`, 100 on Linux
/// whatever the kernel's own tick (it is part of the ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// The CPU times of the process and of each of its threads at one moment.
pub(crate) struct Threads {
    /// By thread id: the thread's name and its `(user, kernel)` ticks.
    threads: HashMap<u32, (String, u64, u64)>,
    /// The whole process, threads that ended included.
    process: (u64, u64),
    at: Instant,
}

impl Threads {
    /// Reads them now; `None` where `/proc` cannot be read (not Linux).
    pub(crate) fn now() -> Option<Threads> {
        let process = times(&std::fs::read_to_string("/proc/self/stat").ok()?)?.1;
        let mut threads = HashMap::new();
        for entry in std::fs::read_dir("/proc/self/task").ok()? {
            let entry = entry.ok()?;
            let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            // A thread may end between the listing and the read.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some((name, (user, kernel))) = times(&stat) {
                threads.insert(tid, (name, user, kernel));
            }
        }
        Some(Threads {
            threads,
            process,
            at: Instant::now(),
        })
    }

    /// Prints, on stderr, the CPU time spent since `self` per task of
    /// `tasks`, by thread name (threads of one name summed, a trailing
    /// number dropped), the kernel's part in brackets, and how many of
    /// `cores` were busy.
    pub(crate) fn print_since(&self, who: &str, tasks: usize, cores: usize) {
        let Some(now) = Threads::now() else { return };
        let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let (mut user_seen, mut kernel_seen) = (0, 0);
        for (tid, (name, user, kernel)) in &now.threads {
            let (user0, kernel0) = self
                .threads
                .get(tid)
                .map_or((0, 0), |(_, user, kernel)| (*user, *kernel));
            let (user, kernel) = (user - user0.min(*user), kernel - kernel0.min(*kernel));
            let name = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
            let sum = by_name.entry(name.to_string()).or_default();
            sum.0 += user;
            sum.1 += kernel;
            user_seen += user;
            kernel_seen += kernel;
        }
        let user = now.process.0.saturating_sub(self.process.0);
        let kernel = now.process.1.saturating_sub(self.process.1);
        let ended = (
            user.saturating_sub(user_seen),
            kernel.saturating_sub(kernel_seen),
        );
        let mut parts: Vec<(String, (u64, u64))> = by_name.into_iter().collect();
        if ended.0 + ended.1 > 0 {
            parts.push(("threads that ended meanwhile".to_string(), ended));
        }
        parts.sort_by_key(|(_, (user, kernel))| std::cmp::Reverse(user + kernel));
        let per_task = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1e6 / tasks.max(1) as f64;
        let wall = now.at.duration_since(self.at).as_secs_f64();
        let busy = (user + kernel) as f64 / TICKS_PER_SECOND / wall;
        let parts: Vec<String> = parts
            .iter()
            .filter(|(_, (user, kernel))| user + kernel > 0)
            .map(|(name, (user, kernel))| {
                format!(
                    "{name} {:.1} ({:.1})",
                    per_task(user + kernel),
                    per_task(*kernel)
                )
            })
            .collect();
        eprintln!(
            "  cpu, {who}: {busy:.2} of {cores} cores busy; {:.1} µs a task, {:.1} of them in the \
             kernel; by thread, µs a task (kernel): {}",
            per_task(user + kernel),
            per_task(kernel),
            parts.join(", ")
        );
    }
}

/// A thread's (or the process's) name and `(user, kernel)` ticks, from
/// its `stat` file: the name is between the first `(` and the last `)`
/// (it may hold either), and the times are the 14th and 15th fields.
fn times(stat: &str) -> Option<(String, (u64, u64))> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let mut fields = stat.get(close + 1..)?.split_whitespace().skip(11);
    let user = fields.next()?.parse().ok()?;
    let kernel = fields.next()?.parse().ok()?;
    Some((name, (user, kernel)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_stat_line_whose_name_holds_parentheses() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 12 0 0 20 0 9 0";
        assert_eq!(times(line), Some(("a (b) c".to_string(), (37, 12))));
    }

    #[test]
    fn counts_this_threads_work() {
        let before = Threads::now().unwrap();
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed().as_millis() < 300 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = Threads::now().unwrap();
        let spent = (after.process.0 + after.process.1) - (before.process.0 + before.process.1);
        // 300 ms of spinning is 30 ticks; a shared machine may take some.
        assert!(spent >= 10, "{spent} ticks");
    }
}
