//! The signals the supervisor acts on, delivered by a thread as events,
//! with the ones taken early (while a chaos kill waited for its moment)
//! held for the lifecycle.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Instant;

use anyhow::{Context, Result};

/// What waiting for the next event gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A signal: SIGCHLD, or a stop signal (SIGTERM, SIGINT, SIGHUP).
    Signal(i32),
    /// The deadline passed first.
    Deadline,
}

/// The supervisor's signals, in order.
pub struct Events {
    signals: Receiver<i32>,
    /// Events taken early, handed out before anything new.
    held: VecDeque<i32>,
}

impl Events {
    /// Installs the handlers and starts the thread that turns signals into
    /// events.
    pub fn start() -> Result<Events> {
        use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGCHLD])
            .context("installing signal handlers")?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if tx.send(signal).is_err() {
                        break;
                    }
                }
            })
            .context("starting the signal thread")?;
        Ok(Events {
            signals: rx,
            held: VecDeque::new(),
        })
    }

    /// The next event: a held signal first, else one that comes before
    /// `deadline` (`None`: no limit), else [`Event::Deadline`].
    pub fn next(&mut self, deadline: Option<Instant>) -> Result<Event> {
        if let Some(signal) = self.held.pop_front() {
            return Ok(Event::Signal(signal));
        }
        let received = match deadline {
            Some(at) => self
                .signals
                .recv_timeout(at.saturating_duration_since(Instant::now())),
            None => self.signals.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(signal) => Ok(Event::Signal(signal)),
            Err(RecvTimeoutError::Timeout) => Ok(Event::Deadline),
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the signal thread stopped"),
        }
    }

    /// Takes every signal that has arrived and holds it for [`Events::next`];
    /// whether a stop signal is among those held.
    pub fn hold_pending(&mut self) -> bool {
        while let Ok(signal) = self.signals.try_recv() {
            self.held.push_back(signal);
        }
        self.held.iter().any(|&s| s != libc::SIGCHLD)
    }
}
