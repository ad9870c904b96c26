//! The supervisor's restores: what the region gets at start, after a death
//! (the post-mortem generation, or the store's newest restorable one), and
//! from a region handed back by the service manager.

mod ladder;
mod post_mortem;
mod take_back;

pub use ladder::{OnDamage, When, apply, newest, report_tails, restore_into_new};
pub use post_mortem::{Left, Persist, post_mortem, post_mortem_while_busy};
pub use take_back::take_back;
