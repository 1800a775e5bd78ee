//! Random identifiers for records: `lic_…`, `evt_…`.

use keysmith_core::key::ALPHABET;
use rand::Rng;

fn random_id(prefix: &str, symbols: usize) -> String {
    let mut rng = rand::thread_rng();
    let mut id = String::with_capacity(prefix.len() + symbols);
    id.push_str(prefix);
    id.extend((0..symbols).map(|_| ALPHABET[rng.gen_range(0..32)] as char));
    id
}

/// A license id such as `lic_8J2K4M6P9Q`.
pub fn license_id() -> String {
    random_id("lic_", 10)
}

/// An event id such as `evt_…`, unique so receivers can deduplicate.
pub fn event_id() -> String {
    random_id("evt_", 20)
}
