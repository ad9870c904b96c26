//! The supervisor's lifecycle: restore, start the program, and at every
//! death kill its group, take a post-mortem generation of the quiet region,
//! and start it again per policy.

mod events;
mod lifecycle;
mod one_run;
mod pace;
mod run;

pub use run::run;
