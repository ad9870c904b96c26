//! The status a running supervisor reports: `status.json` in the store
//! directory for `shm-restore watch`, and a service manager's `STATUS=`
//! line, both from one reporter.

mod board;
mod file;
mod reporter;

pub use board::Board;
pub use file::{STATUS_FILE, Status, now_ms, read, remove_temp_files};
pub use reporter::{PERIOD, Reporter};
