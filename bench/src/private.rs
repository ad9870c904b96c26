//! The supervisor's private memory: `RssAnon` in `/proc/<pid>/status` (its
//! heap, stacks and other anonymous pages; the region it shares with the
//! program is `RssShmem` and not counted), the most of it over a case,
//! sampled on a thread of its own. The end-to-end benchmark reports it per
//! case; the large-region test holds it to a bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A running sampler of one process's `RssAnon`.
pub struct Sampler {
    most: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling process `pid` every `every`.
    pub fn start(pid: u32, every: Duration) -> Sampler {
        let most = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (most, stop) = (most.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(bytes) = rss_anon(pid) {
                        most.fetch_max(bytes, Ordering::Relaxed);
                    }
                    std::thread::sleep(every);
                }
            })
        };
        Sampler {
            most,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling: the most `RssAnon` read, in bytes (`None` if no
    /// reading was had).
    pub fn finish(mut self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        Some(self.most.load(Ordering::Relaxed)).filter(|&b| b > 0)
    }
}

/// `RssAnon` of process `pid` in bytes, or `None` once it is gone.
pub fn rss_anon(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse(&status)
}

/// `RssAnon` from the text of `/proc/<pid>/status`, in bytes.
fn parse(status: &str) -> Option<u64> {
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_anon_is_read_in_kib_and_given_in_bytes() {
        let status =
            "Name:\tshm-restore\nVmRSS:\t  141148 kB\nRssAnon:\t   87200 kB\nRssFile:\t    4560 kB\n";
        assert_eq!(parse(status), Some(87200 * 1024));
        assert_eq!(parse("Name:\tx\n"), None);
        assert!(rss_anon(std::process::id()).is_some_and(|b| b > 0));
    }
}
