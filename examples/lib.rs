//! Runnable examples of anet; run one with `cargo run --example NAME`.
//!
//! Each example is a file beside this one and starts with a comment saying what it
//! shows.
