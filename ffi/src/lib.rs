//! C ABI for the Keysmith SDK (work in progress).
