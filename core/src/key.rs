//! License key format v1 (SPEC §4): `PREFIX-XXXX-XXXX-XXXX-XXXX-XXXX-XXXX`.
//!
//! The 24 symbols after the prefix are Crockford base32: 20 random data
//! symbols, then 4 check symbols of a Reed–Solomon RS(24,20) code over GF(32).
//! The code has minimum distance 5, so every error in up to four symbols is
//! caught — every single typo and every swap of two neighbours. The check uses
//! no secret; `docs/key-format.md` specifies it for other implementations.

use std::fmt;
use std::str::FromStr;

use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The prefix a server uses unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "KS";

/// Crockford base32: a symbol's value is its index here.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

const BODY_LEN: usize = 24;
const DATA_LEN: usize = 20;
const GROUP_LEN: usize = 4;
const MIN_PREFIX_LEN: usize = 2;
const MAX_PREFIX_LEN: usize = 8;
const MAX_SYMBOLS: usize = MAX_PREFIX_LEN + BODY_LEN;

// ---- GF(32) and the Reed–Solomon code -------------------------------------

/// x^5 + x^2 + 1, primitive: α = x (the element 2) has order 31.
const FIELD_POLY: u8 = 0b10_0101;

/// `EXP[i]` = α^i, doubled in length so that `EXP[log a + log b]` needs no
/// reduction modulo 31.
const EXP: [u8; 62] = {
    let mut exp = [0u8; 62];
    let mut x = 1u8;
    let mut i = 0;
    while i < 31 {
        exp[i] = x;
        exp[i + 31] = x;
        x <<= 1;
        if x & 0b10_0000 != 0 {
            x ^= FIELD_POLY;
        }
        i += 1;
    }
    exp
};

/// `LOG[a]` = i such that α^i = a; `LOG[0]` is unused.
const LOG: [u8; 32] = {
    let mut log = [0u8; 32];
    let mut i = 0;
    while i < 31 {
        log[EXP[i] as usize] = i as u8;
        i += 1;
    }
    log
};

const fn gf_mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        0
    } else {
        EXP[LOG[a as usize] as usize + LOG[b as usize] as usize]
    }
}

/// g(x) = (x−α)(x−α²)(x−α³)(x−α⁴) = x⁴ + 30x³ + 6x² + 9x + 17, highest power
/// first, leading 1 included.
const GENERATOR: [u8; 5] = {
    let mut g = [1u8, 0, 0, 0, 0];
    let mut root = 1;
    while root <= 4 {
        // Multiply by (x + α^root); in characteristic 2, minus is plus.
        let alpha = EXP[root];
        let mut i = root;
        while i > 0 {
            g[i] ^= gf_mul(g[i - 1], alpha);
            i -= 1;
        }
        root += 1;
    }
    g
};

/// Symbol value of each ASCII byte in a key body, `INVALID` if none:
/// case-insensitive, with Crockford's `O`→0 and `I`/`L`→1.
const DECODE: [u8; 128] = {
    let mut table = [INVALID; 128];
    let mut v = 0;
    while v < 32 {
        let c = ALPHABET[v];
        table[c as usize] = v as u8;
        table[c.to_ascii_lowercase() as usize] = v as u8;
        v += 1;
    }
    let aliases = [(b'O', 0), (b'I', 1), (b'L', 1)];
    let mut i = 0;
    while i < aliases.len() {
        let (c, v) = aliases[i];
        table[c as usize] = v;
        table[c.to_ascii_lowercase() as usize] = v;
        i += 1;
    }
    table
};
const INVALID: u8 = 0xFF;

/// The 4 check symbols for 20 data symbols: the remainder of
/// data(x)·x⁴ divided by g(x), where the first data symbol is the coefficient
/// of the highest power. Returned highest power first, i.e. in the order they
/// are written after the data.
///
/// ```
/// use keysmith_core::key::check_symbols;
/// let mut data = [0u8; 20];
/// data[19] = 1;
/// // x⁴ mod g(x) = g(x) − x⁴: the generator's own coefficients.
/// assert_eq!(check_symbols(&data), [30, 6, 9, 17]);
/// ```
///
/// # Panics
///
/// If a data value is 32 or more.
pub fn check_symbols(data: &[u8; 20]) -> [u8; 4] {
    assert!(
        data.iter().all(|&s| s < 32),
        "key symbol values are below 32"
    );
    // Long division as a shift register: `rem[0]` holds the highest power.
    let mut rem = [0u8; 4];
    for &symbol in data {
        let factor = symbol ^ rem[0];
        rem = [
            rem[1] ^ gf_mul(factor, GENERATOR[1]),
            rem[2] ^ gf_mul(factor, GENERATOR[2]),
            rem[3] ^ gf_mul(factor, GENERATOR[3]),
            gf_mul(factor, GENERATOR[4]),
        ];
    }
    rem
}

// ---- Keys -------------------------------------------------------------------

/// Why a string is not a well-formed key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the key is empty")]
    Empty,
    #[error("the key prefix must be 2 to 8 letters or digits")]
    BadPrefix,
    #[error("a key has 24 symbols after its prefix, this one has {0}")]
    BadLength(usize),
    #[error("{0:?} is not a key symbol")]
    BadSymbol(char),
    /// A dash a word processor or mail program put in for `-` (U+2010 to
    /// U+2015, U+2212 minus, the small and full-width hyphen-minus).
    #[error("{0:?} is a typographic dash, not the key's \"-\": retype the dashes")]
    TypographicDash(char),
    #[error("the key's check symbols do not match: probably a typo")]
    Checksum,
    #[error("the key prefix {found:?} is not this server's {expected:?}")]
    WrongPrefix { expected: String, found: String },
}

/// A well-formed key, in canonical form: `PREFIX-XXXX-XXXX-XXXX-XXXX-XXXX-XXXX`,
/// uppercase. Only a key whose check symbols match can be built.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LicenseKey {
    canonical: String,
    prefix_len: usize,
}

impl LicenseKey {
    /// Reads a key typed or pasted by a person, with any valid prefix.
    ///
    /// Forgiving: case is ignored, so are ASCII whitespace and dashes
    /// anywhere; the last 24 symbols are the body and what precedes them the
    /// prefix. In the body, `O` reads as `0` and `I`/`L` as `1`.
    ///
    /// ```
    /// use keysmith_core::key::{KeyError, LicenseKey};
    ///
    /// let key = LicenseKey::parse(" ks 7h2k q9wm 4xrt 8cvp n3fj vcz9 ")?;
    /// assert_eq!(key.as_str(), "KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9");
    /// assert_eq!(key.prefix(), "KS");
    ///
    /// // One mistyped symbol is always caught.
    /// assert_eq!(
    ///     LicenseKey::parse("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ8"),
    ///     Err(KeyError::Checksum),
    /// );
    /// # Ok::<(), KeyError>(())
    /// ```
    pub fn parse(input: &str) -> Result<LicenseKey, KeyError> {
        split(input).map(|parts| parts.to_key())
    }

    /// Like [`parse`](Self::parse), and also requires `prefix` (compared
    /// without regard to case): [`KeyError::WrongPrefix`] otherwise. A
    /// malformed key is reported as such before its prefix is compared.
    pub fn parse_with_prefix(input: &str, prefix: &str) -> Result<LicenseKey, KeyError> {
        let key = Self::parse(input)?;
        if key.prefix().eq_ignore_ascii_case(prefix) {
            Ok(key)
        } else {
            Err(KeyError::WrongPrefix {
                expected: prefix.to_owned(),
                found: key.prefix().to_owned(),
            })
        }
    }

    /// A new random key: 100 bits from the operating system's CSPRNG.
    ///
    /// `prefix` must already be canonical (see [`is_valid_prefix`]), else
    /// [`KeyError::BadPrefix`].
    ///
    /// ```
    /// use keysmith_core::key::{LicenseKey, DEFAULT_PREFIX};
    ///
    /// let key = LicenseKey::generate(DEFAULT_PREFIX)?;
    /// assert_eq!(key.prefix(), "KS");
    /// assert_eq!(key.as_str().len(), "KS-XXXX-XXXX-XXXX-XXXX-XXXX-XXXX".len());
    /// assert_eq!(LicenseKey::parse(key.as_str())?, key);
    /// # Ok::<(), keysmith_core::key::KeyError>(())
    /// ```
    pub fn generate(prefix: &str) -> Result<LicenseKey, KeyError> {
        if !is_valid_prefix(prefix) {
            return Err(KeyError::BadPrefix);
        }
        let mut random = [0u8; DATA_LEN];
        OsRng.fill_bytes(&mut random);
        // 256 is a multiple of 32, so the low five bits are uniform.
        let data = random.map(|byte| byte & 0b1_1111);
        Ok(Parts::new(prefix.as_bytes(), &data).to_key())
    }

    /// The canonical form, e.g. `KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9`.
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// The prefix, e.g. `KS`.
    pub fn prefix(&self) -> &str {
        &self.canonical[..self.prefix_len]
    }

    /// Lowercase hex SHA-256 of the canonical form: how servers store and
    /// tokens name a key without holding it.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(self.canonical.as_bytes()))
    }

    /// The prefix, first group and last group, e.g. `KS-7H2K-…-VCZ9`: enough
    /// to tell keys apart in logs, far too little to use one.
    pub fn redacted(&self) -> String {
        let body = &self.canonical[self.prefix_len + 1..];
        let first = &body[..GROUP_LEN];
        let last = &body[body.len() - GROUP_LEN..];
        format!("{}-{first}-…-{last}", self.prefix())
    }
}

impl fmt::Display for LicenseKey {
    /// The canonical form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

impl FromStr for LicenseKey {
    type Err = KeyError;

    /// Same as [`LicenseKey::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for LicenseKey {
    /// As the canonical string.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.canonical)
    }
}

impl<'de> Deserialize<'de> for LicenseKey {
    /// From a string, through [`LicenseKey::parse`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether `prefix` can be a server's key prefix: 2 to 8 uppercase ASCII
/// letters or digits.
pub fn is_valid_prefix(prefix: &str) -> bool {
    (MIN_PREFIX_LEN..=MAX_PREFIX_LEN).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Checks a key as [`LicenseKey::parse`] does, without allocating.
pub fn check_key(input: &str) -> Result<(), KeyError> {
    split(input).map(|_| ())
}

// ---- Parsing ----------------------------------------------------------------

/// A checked key, not yet formatted.
struct Parts {
    prefix: [u8; MAX_PREFIX_LEN],
    prefix_len: usize,
    body: [u8; BODY_LEN],
}

impl Parts {
    /// From a canonical prefix and data symbol values.
    fn new(prefix: &[u8], data: &[u8; DATA_LEN]) -> Parts {
        let mut parts = Parts {
            prefix: [0; MAX_PREFIX_LEN],
            prefix_len: prefix.len(),
            body: [0; BODY_LEN],
        };
        parts.prefix[..prefix.len()].copy_from_slice(prefix);
        parts.body[..DATA_LEN].copy_from_slice(data);
        parts.body[DATA_LEN..].copy_from_slice(&check_symbols(data));
        parts
    }

    fn to_key(&self) -> LicenseKey {
        let mut canonical =
            String::with_capacity(self.prefix_len + BODY_LEN + BODY_LEN / GROUP_LEN);
        canonical.extend(
            self.prefix[..self.prefix_len]
                .iter()
                .map(|&b| char::from(b)),
        );
        for (i, &value) in self.body.iter().enumerate() {
            if i % GROUP_LEN == 0 {
                canonical.push('-');
            }
            canonical.push(char::from(ALPHABET[usize::from(value)]));
        }
        LicenseKey {
            canonical,
            prefix_len: self.prefix_len,
        }
    }
}

/// A dash a word processor or mail program puts in for `-` (U+2010 to
/// U+2015, U+2212 minus, the small and full-width hyphen-minus): not a
/// separator of the format, but what a pasted key often has.
pub fn is_typographic_dash(c: char) -> bool {
    matches!(
        c,
        '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{fe58}' | '\u{fe63}' | '\u{ff0d}'
    )
}

fn is_separator(c: char) -> bool {
    c == '-' || c.is_ascii_whitespace()
}

/// Accepts exactly the keys the format allows; when refusing one, picks the
/// error that best explains it.
fn split(input: &str) -> Result<Parts, KeyError> {
    if let Some(dash) = input.chars().find(|&c| is_typographic_dash(c)) {
        // Not a separator (the format's are ASCII), but what went wrong is
        // the dash, not the prefix or the length it would otherwise upset.
        return Err(KeyError::TypographicDash(dash));
    }
    let mut symbols = ['\0'; MAX_SYMBOLS];
    let mut count = 0;
    let mut first_segment_len = None;
    for c in input.chars() {
        if is_separator(c) {
            if count > 0 && first_segment_len.is_none() {
                first_segment_len = Some(count);
            }
        } else {
            if let Some(slot) = symbols.get_mut(count) {
                *slot = c;
            }
            count += 1;
        }
    }
    if count == 0 {
        return Err(KeyError::Empty);
    }
    let symbols = &symbols[..count.min(MAX_SYMBOLS)];
    split_symbols(symbols, count).map_err(|error| {
        // The normative rule ignores separators, but when a key is refused,
        // what the person wrote before the first separator is most likely the
        // prefix: "KS-" and five groups is a missing group, not a bad prefix.
        // Exception: six groups of four and no prefix is a missing prefix.
        match first_segment_len {
            Some(written_prefix_len)
                if written_prefix_len < count
                    && (MIN_PREFIX_LEN..=MAX_PREFIX_LEN).contains(&written_prefix_len)
                    && count - written_prefix_len != BODY_LEN
                    && !(count == BODY_LEN && written_prefix_len == GROUP_LEN) =>
            {
                KeyError::BadLength(count - written_prefix_len)
            }
            _ => error,
        }
    })
}

/// The format's rule: the last 24 symbols are the body, the rest the prefix.
/// `symbols` holds the first (at most 32) of `count` symbols.
fn split_symbols(symbols: &[char], count: usize) -> Result<Parts, KeyError> {
    if count < BODY_LEN {
        return Err(KeyError::BadLength(count));
    }
    let prefix_len = count - BODY_LEN;
    if !(MIN_PREFIX_LEN..=MAX_PREFIX_LEN).contains(&prefix_len) {
        return Err(KeyError::BadPrefix);
    }
    let mut parts = Parts {
        prefix: [0; MAX_PREFIX_LEN],
        prefix_len,
        body: [0; BODY_LEN],
    };
    for (slot, &c) in parts.prefix.iter_mut().zip(&symbols[..prefix_len]) {
        if !c.is_ascii_alphanumeric() {
            return Err(KeyError::BadPrefix);
        }
        *slot = c.to_ascii_uppercase() as u8;
    }
    for (slot, &c) in parts.body.iter_mut().zip(&symbols[prefix_len..]) {
        let value = if c.is_ascii() {
            DECODE[c as usize]
        } else {
            INVALID
        };
        if value == INVALID {
            return Err(KeyError::BadSymbol(c));
        }
        *slot = value;
    }
    let (data, check) = parts.body.split_at(DATA_LEN);
    let data: &[u8; DATA_LEN] = data.try_into().expect("20 data symbols");
    if check_symbols(data) != check {
        return Err(KeyError::Checksum);
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::seq::index::sample;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;

    /// (prefix, data symbols, canonical key): the same table is in
    /// docs/key-format.md.
    const VECTORS: &[(&str, &str, &str)] = &[
        (
            "KS",
            "00000000000000000000",
            "KS-0000-0000-0000-0000-0000-0000",
        ),
        (
            "KS",
            "00000000000000000001",
            "KS-0000-0000-0000-0000-0001-Y69H",
        ),
        (
            "KS",
            "10000000000000000000",
            "KS-1000-0000-0000-0000-0000-ED9K",
        ),
        (
            "KS",
            "0123456789ABCDEFGHJK",
            "KS-0123-4567-89AB-CDEF-GHJK-VQS3",
        ),
        (
            "KS",
            "ZZZZZZZZZZZZZZZZZZZZ",
            "KS-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-HQNZ",
        ),
        (
            "KS",
            "7H2KQ9WM4XRT8CVPN3FJ",
            "KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9",
        ),
        (
            "ACME2024",
            "KMNPQRSTVWXYZ0123456",
            "ACME2024-KMNP-QRST-VWXY-Z012-3456-ACX9",
        ),
        (
            "LOL1",
            "D4TA5YMB011CQ0DE8X2W",
            "LOL1-D4TA-5YMB-011C-Q0DE-8X2W-8QW0",
        ),
    ];

    /// (input, canonical key): also in docs/key-format.md.
    const NON_CANONICAL_VECTORS: &[(&str, &str)] = &[
        (
            "ks 7h2k q9wm 4xrt 8cvp n3fj vcz9",
            "KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9",
        ),
        (
            "KS-OOOO-oooo-0O0o-0000-000I-Y69H",
            "KS-0000-0000-0000-0000-0001-Y69H",
        ),
        (
            "lol1-D4TA-5YMB-OIIC-Q0DE-8X2W-8QW0",
            "LOL1-D4TA-5YMB-011C-Q0DE-8X2W-8QW0",
        ),
    ];

    /// Invalid keys and why: also in docs/key-format.md.
    fn invalid_vectors() -> [(&'static str, KeyError); 8] {
        [
            ("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ8", KeyError::Checksum),
            ("KS-7H2K-Q9MW-4XRT-8CVP-N3FJ-VCZ9", KeyError::Checksum),
            ("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VZC9", KeyError::Checksum),
            ("KS-0000-0000-0000-0000-0000-000U", KeyError::BadSymbol('U')),
            ("K-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9", KeyError::BadPrefix),
            ("7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9", KeyError::BadPrefix),
            ("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ", KeyError::BadLength(20)),
            (
                "KS\u{2013}7H2K\u{2013}Q9WM\u{2013}4XRT\u{2013}8CVP\u{2013}N3FJ\u{2013}VCZ9",
                KeyError::TypographicDash('\u{2013}'),
            ),
        ]
    }

    fn value(symbol: u8) -> u8 {
        ALPHABET.iter().position(|&a| a == symbol).unwrap() as u8
    }

    /// Canonical key → 24-symbol body as ASCII bytes.
    fn body(key: &LicenseKey) -> Vec<u8> {
        key.as_str()[key.prefix().len()..]
            .bytes()
            .filter(|&b| b != b'-')
            .collect()
    }

    fn assemble(prefix: &str, body: &[u8]) -> String {
        let groups: Vec<&str> = body
            .chunks(GROUP_LEN)
            .map(|g| std::str::from_utf8(g).unwrap())
            .collect();
        format!("{prefix}-{}", groups.join("-"))
    }

    /// The fixed vectors and 50 fresh keys.
    fn sample_keys() -> Vec<LicenseKey> {
        let mut keys: Vec<LicenseKey> = VECTORS
            .iter()
            .map(|(_, _, key)| LicenseKey::parse(key).unwrap())
            .collect();
        keys.extend((0..50).map(|_| LicenseKey::generate(DEFAULT_PREFIX).unwrap()));
        keys
    }

    #[test]
    fn field_tables_are_consistent() {
        // α has order 31, so the exp table runs through every non-zero element.
        let mut seen: Vec<u8> = EXP[..31].to_vec();
        seen.sort_unstable();
        assert_eq!(seen, (1..32).collect::<Vec<u8>>());
        for a in 1..32u8 {
            assert_eq!(EXP[LOG[a as usize] as usize], a);
            assert_eq!(gf_mul(a, 1), a);
        }
        assert_eq!(EXP[5], 0b00101, "α⁵ = α² + 1");
    }

    #[test]
    fn generator_is_as_documented_and_vanishes_at_alpha_1_to_4() {
        assert_eq!(GENERATOR, [1, 30, 6, 9, 17]);
        for (k, &root) in EXP[..5].iter().enumerate().skip(1) {
            let at_root = GENERATOR.iter().fold(0, |acc, &c| gf_mul(acc, root) ^ c);
            assert_eq!(at_root, 0, "g(α^{k})");
        }
    }

    #[test]
    fn test_vectors() {
        for &(prefix, data, expected) in VECTORS {
            let data: [u8; DATA_LEN] = data
                .bytes()
                .map(value)
                .collect::<Vec<_>>()
                .try_into()
                .unwrap();
            let built = Parts::new(prefix.as_bytes(), &data).to_key();
            assert_eq!(built.as_str(), expected);
            let parsed = LicenseKey::parse(expected).unwrap();
            assert_eq!(parsed, built);
            assert_eq!(parsed.prefix(), prefix);
            assert_eq!(check_key(expected), Ok(()));
        }
        for &(input, expected) in NON_CANONICAL_VECTORS {
            assert_eq!(
                LicenseKey::parse(input).unwrap().as_str(),
                expected,
                "{input}"
            );
        }
        for (input, error) in invalid_vectors() {
            assert_eq!(LicenseKey::parse(input), Err(error), "{input}");
        }
    }

    #[test]
    fn every_single_substitution_is_rejected() {
        for key in sample_keys() {
            let body = body(&key);
            for position in 0..BODY_LEN {
                for &symbol in ALPHABET.iter().filter(|&&s| s != body[position]) {
                    let mut typo = body.clone();
                    typo[position] = symbol;
                    let typo = assemble(key.prefix(), &typo);
                    assert_eq!(LicenseKey::parse(&typo), Err(KeyError::Checksum), "{typo}");
                }
            }
        }
    }

    #[test]
    fn every_adjacent_transposition_is_rejected() {
        for key in sample_keys() {
            let body = body(&key);
            for position in 0..BODY_LEN - 1 {
                if body[position] == body[position + 1] {
                    continue;
                }
                let mut swapped = body.clone();
                swapped.swap(position, position + 1);
                let swapped = assemble(key.prefix(), &swapped);
                assert_eq!(
                    LicenseKey::parse(&swapped),
                    Err(KeyError::Checksum),
                    "{swapped}"
                );
            }
        }
    }

    #[test]
    fn random_errors_in_up_to_four_symbols_are_rejected() {
        let mut rng = StdRng::seed_from_u64(0x4b53);
        for _ in 0..2_000 {
            let key = LicenseKey::generate(DEFAULT_PREFIX).unwrap();
            let body = body(&key);
            for errors in 2..=4 {
                let mut wrong = body.clone();
                for position in sample(&mut rng, BODY_LEN, errors).iter() {
                    // A different symbol: add a non-zero offset modulo 32.
                    let offset = rng.gen_range(1..32);
                    wrong[position] = ALPHABET[(usize::from(value(wrong[position])) + offset) % 32];
                }
                let wrong = assemble(key.prefix(), &wrong);
                assert_eq!(check_key(&wrong), Err(KeyError::Checksum), "{wrong}");
            }
        }
    }

    #[test]
    fn forgiving_input_reads_as_the_canonical_key() {
        let canonical = "KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9";
        for input in [
            canonical,
            "ks-7h2k-q9wm-4xrt-8cvp-n3fj-vcz9",
            "KS7H2KQ9WM4XRT8CVPN3FJVCZ9",
            "  KS 7H2K Q9WM 4XRT 8CVP N3FJ VCZ9\n",
            "K-S-7H2KQ9-WM4X-\tRT8C-VPN3-FJVC-Z9--",
            "Ks-7h2K-q9Wm-4xRt-8CvP-n3fJ-VcZ9",
        ] {
            assert_eq!(
                LicenseKey::parse(input).unwrap().as_str(),
                canonical,
                "{input:?}"
            );
        }
        // Crockford's look-alikes in the body.
        let with_look_alikes = "KS-0000-0000-0000-0000-0001-Y69H";
        for input in [
            "KS-OOOO-oooo-0O0o-0000-000I-Y69H",
            "KS-0000-0000-0000-0000-000L-Y69H",
            "KS-0000-0000-0000-0000-000i-Y69H",
            "KS-0000-0000-0000-0000-000l-Y69H",
        ] {
            assert_eq!(
                LicenseKey::parse(input).unwrap().as_str(),
                with_look_alikes,
                "{input:?}"
            );
        }
    }

    #[test]
    fn prefix_letters_are_kept_as_written() {
        let key = LicenseKey::parse("lol1-D4TA-5YMB-OIIC-Q0DE-8X2W-8QW0").unwrap();
        assert_eq!(key.prefix(), "LOL1");
        assert_eq!(key.as_str(), "LOL1-D4TA-5YMB-011C-Q0DE-8X2W-8QW0");
        // U may appear in a prefix, though never in a body.
        let key = LicenseKey::generate("USU").unwrap();
        assert_eq!(
            LicenseKey::parse(&key.as_str().to_lowercase()).unwrap(),
            key
        );
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        let body = "7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9";
        for prefix in ["K", "ACME20245", "K!", "K_", "KÄ", "ACME2024X"] {
            let input = format!("{prefix}-{body}");
            assert_eq!(
                LicenseKey::parse(&input),
                Err(KeyError::BadPrefix),
                "{input}"
            );
        }
        // No prefix at all, grouped or not.
        assert_eq!(LicenseKey::parse(body), Err(KeyError::BadPrefix));
        assert_eq!(
            LicenseKey::parse(&body.replace('-', "")),
            Err(KeyError::BadPrefix)
        );
        for prefix in ["", "K", "ks", "Ks", "ACME20245", "K-S", "KÄ", "K S"] {
            assert!(!is_valid_prefix(prefix), "{prefix:?}");
            assert_eq!(
                LicenseKey::generate(prefix),
                Err(KeyError::BadPrefix),
                "{prefix:?}"
            );
        }
        for prefix in ["KS", "ACME2024", "LOL1", "42"] {
            assert!(is_valid_prefix(prefix), "{prefix:?}");
        }
    }

    #[test]
    fn bad_symbols_are_named() {
        assert_eq!(
            LicenseKey::parse("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZU"),
            Err(KeyError::BadSymbol('U'))
        );
        assert_eq!(
            LicenseKey::parse("KS-7H2K-Q9WM-4XRT-8CVP-n3fj-ucz9"),
            Err(KeyError::BadSymbol('u'))
        );
        assert_eq!(
            LicenseKey::parse("KS-7H2K-Q9WM-4X!T-8CVP-N3FJ-VCZ9"),
            Err(KeyError::BadSymbol('!'))
        );
        assert_eq!(
            LicenseKey::parse("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZé"),
            Err(KeyError::BadSymbol('é'))
        );
    }

    #[test]
    fn wrong_lengths_are_counted_after_the_written_prefix() {
        for (input, symbols) in [
            ("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ", 20),
            ("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ", 23),
            ("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ99", 25),
            ("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9-AAAA", 28),
            ("ACME2024-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ", 23),
            ("KS-7H2K", 4),
            ("7H2K", 4),
            ("KS", 2),
        ] {
            assert_eq!(
                LicenseKey::parse(input),
                Err(KeyError::BadLength(symbols)),
                "{input}"
            );
        }
    }

    #[test]
    fn empty_input_is_empty() {
        for input in ["", "   ", "-", " - -\t\n"] {
            assert_eq!(LicenseKey::parse(input), Err(KeyError::Empty), "{input:?}");
        }
    }

    #[test]
    fn non_ascii_input_is_rejected_without_panic() {
        for input in [
            "ключ",
            "KS-ÄÄÄÄ-ÄÄÄÄ-ÄÄÄÄ-ÄÄÄÄ-ÄÄÄÄ-ÄÄÄÄ",
            "КS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9",
            "KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9\u{a0}",
            "🔑🔑-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9",
            "ßSSSS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9",
            "ıS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9",
            "\u{0}\u{ffff}\u{10ffff}",
        ] {
            assert!(LicenseKey::parse(input).is_err(), "{input:?}");
            assert!(check_key(input).is_err(), "{input:?}");
        }
        let long = "é".repeat(1000);
        assert!(LicenseKey::parse(&long).is_err());
    }

    #[test]
    fn generated_keys_read_back_and_are_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let key = LicenseKey::generate("ACME").unwrap();
            assert_eq!(key.prefix(), "ACME");
            assert_eq!(key.as_str().len(), "ACME".len() + 30);
            assert_eq!(LicenseKey::parse(key.as_str()).as_ref(), Ok(&key));
            assert!(seen.insert(key), "duplicate key");
        }
    }

    #[test]
    fn parse_with_prefix_requires_the_prefix() {
        let key = "ACME2024-KMNP-QRST-VWXY-Z012-3456-ACX9";
        assert_eq!(
            LicenseKey::parse_with_prefix(key, "ACME2024")
                .unwrap()
                .as_str(),
            key
        );
        assert_eq!(
            LicenseKey::parse_with_prefix(key, "acme2024")
                .unwrap()
                .as_str(),
            key
        );
        assert_eq!(
            LicenseKey::parse_with_prefix(key, "KS"),
            Err(KeyError::WrongPrefix {
                expected: "KS".into(),
                found: "ACME2024".into()
            })
        );
        // A typo is reported as a typo, whatever the prefix.
        assert_eq!(
            LicenseKey::parse_with_prefix("ACME2024-KMNP-QRST-VWXY-Z012-3456-ACX8", "KS"),
            Err(KeyError::Checksum)
        );
    }

    #[test]
    fn display_from_str_and_serde_use_the_canonical_form() {
        let canonical = "KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9";
        let key: LicenseKey = "ks 7h2k q9wm 4xrt 8cvp n3fj vcz9".parse().unwrap();
        assert_eq!(key.to_string(), canonical);
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{canonical}\""));
        let back: LicenseKey =
            serde_json::from_str("\"ks-7h2k-q9wm-4xrt-8cvp-n3fj-vcz9\"").unwrap();
        assert_eq!(back, key);
        let error = serde_json::from_str::<LicenseKey>("\"KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ8\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("check symbols"), "{error}");
        assert!(serde_json::from_str::<LicenseKey>("42").is_err());
    }

    #[test]
    fn sha256_is_of_the_canonical_form() {
        let key = LicenseKey::parse("ks7h2kq9wm4xrt8cvpn3fjvcz9").unwrap();
        let expected = hex::encode(Sha256::digest(b"KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9"));
        assert_eq!(key.sha256_hex(), expected);
        assert_eq!(key.sha256_hex().len(), 64);
        assert!(key
            .sha256_hex()
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }

    #[test]
    fn redacted_shows_prefix_first_and_last_group() {
        let key = LicenseKey::parse("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9").unwrap();
        assert_eq!(key.redacted(), "KS-7H2K-…-VCZ9");
        let key = LicenseKey::parse("ACME2024-KMNP-QRST-VWXY-Z012-3456-ACX9").unwrap();
        assert_eq!(key.redacted(), "ACME2024-KMNP-…-ACX9");
    }
}
