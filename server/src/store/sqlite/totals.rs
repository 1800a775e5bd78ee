//! The usage history's totals, counted once and then only for the rows
//! added since.
//!
//! A license's usage rows are found by walking its chain one pointer at a
//! time (`USAGE_CHAIN`): ~1.4 µs a row, so the totals of a license with a
//! million rows kept took ~1.4 s, on every page of its history. Rows only
//! ever join a chain at its newest end (`append_usage`), so the totals of
//! the rows up to one row stay right until retention deletes some at the
//! other end; the store then calls [`Counted::pruned`], which makes every
//! entry stale. So the first page of a license's history walks all of it,
//! and each page or refresh after that walks the rows added in between.
//!
//! The entries live in the process (a read connection cannot write), for
//! the `CACHED_LICENSES` licenses whose history was read last, each with at
//! most `CACHED_DOMAINS` domains.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rusqlite::{params, Connection};

use super::{Result, CHAIN_ROWS, USAGE_CHAIN_ABOVE};
use crate::store::UsageTotals;

pub const CACHED_LICENSES: usize = 64;
pub const CACHED_DOMAINS: usize = 1_000;

/// The totals counted so far, per license.
#[derive(Default)]
pub struct Counted {
    /// Bumped by every retention pass that deleted rows.
    prunings: AtomicU64,
    entries: Mutex<Entries>,
    /// Rows walked, for the tests.
    walked: AtomicU64,
}

#[derive(Default)]
struct Entries {
    by_license: HashMap<i64, Counts>,
    /// A clock for `Counts::used`.
    ticks: u64,
}

#[derive(Clone)]
struct Counts {
    /// The newest row counted.
    through: i64,
    /// `Counted::prunings` before the first of the rows was counted.
    prunings: u64,
    by_code: BTreeMap<String, u64>,
    domains: BTreeMap<String, u64>,
    used: u64,
}

impl Counted {
    /// Makes every entry stale: retention deleted rows that they count.
    /// Called after the deletion has committed.
    pub fn pruned(&self) {
        self.prunings.fetch_add(1, Ordering::AcqRel);
    }

    /// The totals of license `license`'s rows from `newest` down.
    pub fn totals(
        &self,
        conn: &Connection,
        license: i64,
        newest: Option<i64>,
    ) -> Result<UsageTotals> {
        let Some(newest) = newest else {
            return Ok(UsageTotals::default());
        };
        // Read before the walk's snapshot begins: a pruning that commits
        // after this read leaves the entry stale, never wrong.
        let prunings = self.prunings.load(Ordering::Acquire);
        let cached = self
            .lock()
            .by_license
            .get(&license)
            .filter(|c| c.prunings == prunings && c.through <= newest)
            .cloned();
        let mut counts = cached.unwrap_or(Counts {
            through: i64::MIN,
            prunings,
            by_code: BTreeMap::new(),
            domains: BTreeMap::new(),
            used: 0,
        });
        let mut walk = conn.prepare_cached(&format!(
            "{USAGE_CHAIN_ABOVE} SELECT u.code, u.domain, COUNT(*) {CHAIN_ROWS} \
             GROUP BY u.code, u.domain"
        ))?;
        let mut rows = walk.query(params![license, newest, counts.through])?;
        while let Some(row) = rows.next()? {
            let (code, domain, n): (String, Option<String>, i64) =
                (row.get(0)?, row.get(1)?, row.get(2)?);
            let n = n as u64;
            self.walked.fetch_add(n, Ordering::Relaxed);
            *counts.by_code.entry(code).or_default() += n;
            if let Some(domain) = domain {
                *counts.domains.entry(domain).or_default() += n;
            }
        }
        counts.through = newest;
        let totals = counts.totals();
        if counts.domains.len() <= CACHED_DOMAINS {
            self.keep(license, counts);
        }
        Ok(totals)
    }

    fn keep(&self, license: i64, mut counts: Counts) {
        let mut entries = self.lock();
        entries.ticks += 1;
        counts.used = entries.ticks;
        if entries.by_license.len() >= CACHED_LICENSES && !entries.by_license.contains_key(&license)
        {
            let oldest = entries
                .by_license
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(&l, _)| l);
            if let Some(oldest) = oldest {
                entries.by_license.remove(&oldest);
            }
        }
        entries.by_license.insert(license, counts);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rows walked so far.
    #[cfg(test)]
    pub fn walked(&self) -> u64 {
        self.walked.load(Ordering::Relaxed)
    }
}

impl Counts {
    fn totals(&self) -> UsageTotals {
        let mut totals = UsageTotals {
            domains: self.domains.clone(),
            ..UsageTotals::default()
        };
        for (code, &n) in &self.by_code {
            totals.add_code(code.clone(), n as i64);
        }
        totals
    }
}
