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

/// A webhook endpoint id such as `wh_…`.
pub fn webhook_id() -> String {
    random_id("wh_", 12)
}

/// A webhook signing secret: `whsec_` and 32 random bytes, base64url.
pub fn webhook_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}
