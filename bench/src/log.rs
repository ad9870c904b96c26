//! The supervisor's log as a failed case shows it.

/// Log lines a failure message shows, the last ones.
const TAIL_LINES: usize = 20;

/// The last lines of `log`, indented, for a failure message.
pub fn tail(log: &[String]) -> String {
    let from = log.len().saturating_sub(TAIL_LINES);
    let lines: Vec<String> = log[from..].iter().map(|l| format!("  | {l}")).collect();
    if lines.is_empty() {
        "  (shm-restore logged nothing)".into()
    } else {
        format!("shm-restore's last log lines:\n{}", lines.join("\n"))
    }
}
