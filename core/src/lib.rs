//! Keysmith's shared core: the license-key format, the wire types of the
//! HTTP API and the signed validation token. Server and SDK both use these
//! definitions so that nothing is written twice.
#![forbid(unsafe_code)]

pub mod key;
