//! Keysmith SDK (work in progress).
#![forbid(unsafe_code)]
pub use keysmith_core::key;
