//! Keysmith's shared core: the license-key format, the wire types of the
//! HTTP API and the signed validation token. Server and SDK both use these
//! definitions so that nothing is written twice.
#![forbid(unsafe_code)]

pub mod domain;
pub mod key;
pub mod time;
pub mod token;
pub mod wire;

pub use key::{KeyError, LicenseKey};
pub use token::{Claims, KeySet, TokenError};
pub use wire::{Code, Status};
