//! `keysmith license …`: what support staff and scripts do with a
//! customer's license through the management API — issue one, find it by
//! key, id or e-mail, read it and its usage, change its plan, limits or
//! expiry, suspend, reinstate or revoke it, free a seat.
//!
//! The admin token, the server and the exit codes are `admin`'s.

use std::io::Write;

use clap::{Args, Subcommand};
use keysmith_core::wire::{License, Page};
use reqwest::Method;
use serde_json::{json, Value};

use super::admin::{self, next_page, number_or_none, or, strings, text, Api, Failure, Show};

#[derive(Debug, Args)]
pub(super) struct LicenseArgs {
    #[command(subcommand)]
    pub(super) command: LicenseCommand,
    #[command(flatten)]
    pub(super) target: admin::Target,
}

#[derive(Debug, Subcommand)]
pub(super) enum LicenseCommand {
    /// Show a license: status, plan, customer, seats, validations.
    Show {
        /// The license's key (any spelling the SDK accepts) or id (lic_…).
        license: String,
    },
    /// List licenses, newest first, by customer e-mail, status or plan.
    List {
        /// Only this customer's licenses.
        #[arg(long, value_name = "EMAIL")]
        email: Option<String>,
        /// Only licenses in this status (active, suspended, revoked, expired).
        #[arg(long)]
        status: Option<String>,
        /// Only licenses on this plan.
        #[arg(long)]
        plan: Option<String>,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// Where the previous page ended (printed after it).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// A license's validation history, newest first, with its totals.
    Usage {
        /// The license's key or id.
        license: String,
        /// At most this many records (1 to 500).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// Where the previous page ended (printed after it).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Issue a license; prints it, key included.
    Create(CreateArgs),
    /// Change a license's plan, customer, limits, expiry or metadata.
    Update(UpdateArgs),
    /// Suspend a license: its validations answer LICENSE_SUSPENDED until it is reinstated.
    Suspend {
        /// The license's key or id.
        license: String,
    },
    /// Make a suspended license active again.
    Reinstate {
        /// The license's key or id.
        license: String,
    },
    /// Revoke a license for good (it cannot be undone).
    Revoke {
        /// The license's key or id.
        license: String,
        /// Confirm: revoking is final.
        #[arg(long)]
        yes: bool,
    },
    /// Free a domain or machine seat, e.g. after the customer moved to a new host.
    FreeSeat(FreeSeatArgs),
}

#[derive(Debug, Args)]
pub(super) struct CreateArgs {
    /// The plan (its features, default limits, duration and offline grace).
    #[arg(long)]
    plan: String,
    /// The customer's e-mail.
    #[arg(long, value_name = "EMAIL")]
    email: String,
    #[command(flatten)]
    fields: Fields,
}

#[derive(Debug, Args)]
pub(super) struct UpdateArgs {
    /// The license's key or id.
    license: String,
    /// Move the license to this plan.
    #[arg(long)]
    plan: Option<String>,
    /// The customer's e-mail.
    #[arg(long, value_name = "EMAIL")]
    email: Option<String>,
    #[command(flatten)]
    fields: Fields,
    /// A metadata key to remove (repeatable).
    #[arg(long = "remove-metadata", value_name = "KEY")]
    remove_metadata: Vec<String>,
}

/// What `create` and `update` may set besides the plan and the e-mail.
#[derive(Debug, Args)]
pub(super) struct Fields {
    /// Domain seats: a number, or `none` for no limit (create: the plan's by default).
    #[arg(long, value_name = "N|none", value_parser = number_or_none)]
    max_domains: Option<Value>,
    /// Machine seats: a number, or `none` for no limit (create: the plan's by default).
    #[arg(long, value_name = "N|none", value_parser = number_or_none)]
    max_machines: Option<Value>,
    /// When it expires, RFC 3339 (2027-03-06T00:00:00Z), or `never` (create: the plan's duration by default).
    #[arg(long, value_name = "TIME|never", value_parser = parse_expiry)]
    expires_at: Option<Value>,
    /// Metadata as KEY=VALUE, repeatable (update: sets these keys, keeps the others).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_pair)]
    metadata: Vec<(String, String)>,
}

impl Fields {
    /// The request body: `base` with the fields given.
    fn body(self, mut base: serde_json::Map<String, Value>) -> Value {
        for (name, value) in [
            ("max_domains", self.max_domains),
            ("max_machines", self.max_machines),
            ("expires_at", self.expires_at),
        ] {
            if let Some(value) = value {
                base.insert(name.to_owned(), value);
            }
        }
        if !self.metadata.is_empty() {
            let metadata = self
                .metadata
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            base.insert("metadata".to_owned(), Value::Object(metadata));
        }
        Value::Object(base)
    }
}

fn parse_expiry(s: &str) -> Result<Value, String> {
    match s {
        "never" => Ok(Value::Null),
        _ => keysmith_core::time::parse_rfc3339(s)
            .map(|_| Value::from(s))
            .ok_or_else(|| "an RFC 3339 time such as 2027-03-06T00:00:00Z, or `never`".to_owned()),
    }
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| "KEY=VALUE".to_owned())
}

/// `(name, value)` pairs of the given ones, as a JSON object.
fn given(pairs: [(&str, Option<String>); 2]) -> serde_json::Map<String, Value> {
    pairs
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), Value::String(value?))))
        .collect()
}

#[derive(Debug, Args)]
pub(super) struct FreeSeatArgs {
    /// The license's key or id.
    license: String,
    /// The domain whose seat to free.
    #[arg(long, required_unless_present = "machine", conflicts_with = "machine")]
    domain: Option<String>,
    /// The machine fingerprint whose seat to free.
    #[arg(long, value_name = "FINGERPRINT")]
    machine: Option<String>,
}

/// The id of the license `given` names: an id as it is, a key looked up.
fn license_id(api: &Api, given: &str) -> Result<String, Failure> {
    if given.starts_with("lic_") {
        return Ok(given.to_owned());
    }
    let key = crate::check_key(given).map_err(|e| {
        Failure::no_answer(format!(
            "{given:?} is neither a license id (lic_…) nor a valid key: {e}"
        ))
    })?;
    let mut url = api.url(&["licenses"]);
    url.query_pairs_mut()
        .append_pair("key", key.as_str())
        .append_pair("limit", "1");
    let page: Page<License> = serde_json::from_value(api.send(Method::GET, url, None)?)
        .map_err(|e| Failure::no_answer(format!("unexpected answer to a license search: {e}")))?;
    page.data
        .into_iter()
        .next()
        .map(|l| l.id)
        .ok_or_else(|| Failure::refused(format!("no license has the key {}", key.as_str())))
}

/// Sends what `command` asks for; its answer and how to print it as text.
pub(super) fn execute(api: &Api, command: LicenseCommand) -> Result<(Value, Show), Failure> {
    let set_status = |given: &str, status: &str| {
        let id = license_id(api, given)?;
        let url = api.url(&["licenses", &id]);
        api.send(Method::PUT, url, Some(json!({ "status": status })))
    };
    Ok(match command {
        LicenseCommand::Show { license } => {
            let id = license_id(api, &license)?;
            (
                api.send(Method::GET, api.url(&["licenses", &id]), None)?,
                show_license,
            )
        }
        LicenseCommand::List {
            email,
            status,
            plan,
            limit,
            cursor,
        } => {
            let mut url = api.url(&["licenses"]);
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("limit", &limit.to_string());
                for (name, value) in [
                    ("customer_email", email),
                    ("status", status),
                    ("plan", plan),
                    ("cursor", cursor),
                ] {
                    if let Some(value) = value {
                        query.append_pair(name, &value);
                    }
                }
            }
            (api.send(Method::GET, url, None)?, show_list)
        }
        LicenseCommand::Usage {
            license,
            limit,
            cursor,
        } => {
            let id = license_id(api, &license)?;
            let mut url = api.url(&["licenses", &id, "usage"]);
            url.query_pairs_mut()
                .append_pair("limit", &limit.to_string());
            if let Some(cursor) = cursor {
                url.query_pairs_mut().append_pair("cursor", &cursor);
            }
            (api.send(Method::GET, url, None)?, show_usage)
        }
        LicenseCommand::Create(args) => {
            let base = given([
                ("plan", Some(args.plan)),
                ("customer_email", Some(args.email)),
            ]);
            let body = args.fields.body(base);
            (
                api.send(Method::POST, api.url(&["licenses"]), Some(body))?,
                show_license,
            )
        }
        LicenseCommand::Update(args) => {
            let body = args
                .fields
                .body(given([("plan", args.plan), ("customer_email", args.email)]));
            if body.as_object().is_some_and(|b| b.is_empty()) && args.remove_metadata.is_empty() {
                return Err(Failure::no_answer(
                    "nothing to change: give --plan, --email, --max-domains, --max-machines, \
                     --expires-at, --metadata or --remove-metadata",
                ));
            }
            let id = license_id(api, &args.license)?;
            let url = api.url(&["licenses", &id]);
            if body.get("metadata").is_none() && args.remove_metadata.is_empty() {
                return Ok((api.send(Method::PUT, url, Some(body))?, show_license));
            }
            // The API replaces metadata whole: merge into what it holds,
            // written only over the version read.
            let set = body["metadata"].as_object().cloned().unwrap_or_default();
            let merged = |current: Value| {
                let mut metadata = current["metadata"].as_object().cloned().unwrap_or_default();
                for key in &args.remove_metadata {
                    metadata.remove(key);
                }
                metadata.extend(set.clone());
                let mut body = body.clone();
                body["metadata"] = Value::Object(metadata);
                body
            };
            (api.update(url, merged)?, show_license)
        }
        LicenseCommand::Suspend { license } => (set_status(&license, "suspended")?, show_license),
        LicenseCommand::Reinstate { license } => (set_status(&license, "active")?, show_license),
        LicenseCommand::Revoke { license, yes } => {
            if !yes {
                return Err(Failure::no_answer(
                    "revoking a license cannot be undone; add --yes to revoke it",
                ));
            }
            let id = license_id(api, &license)?;
            (
                api.send(Method::DELETE, api.url(&["licenses", &id]), None)?,
                show_license,
            )
        }
        LicenseCommand::FreeSeat(seat) => {
            let id = license_id(api, &seat.license)?;
            let url = match (&seat.domain, &seat.machine) {
                (Some(domain), _) => api.url(&["licenses", &id, "domains", domain]),
                (None, Some(machine)) => api.url(&["licenses", &id, "machines", machine]),
                (None, None) => unreachable!("clap requires --domain or --machine"),
            };
            (api.send(Method::DELETE, url, None)?, show_license)
        }
    })
}

/// "1 of 3: example.com" — the seats taken, the limit, the values.
fn seats(v: &Value, list: &str, max: &str) -> String {
    let taken = strings(v, list);
    let limit = match v[max].as_u64() {
        Some(max) => format!(" of {max}"),
        None => " (no limit)".to_owned(),
    };
    if taken.is_empty() {
        format!("0{limit}")
    } else {
        format!("{}{limit}: {}", taken.len(), taken.join(", "))
    }
}

fn show_license(v: &Value, out: &mut dyn Write, _: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "{}  {}", text(v, "id"), text(v, "status"))?;
    writeln!(out, "  key:          {}", text(v, "key"))?;
    writeln!(out, "  plan:         {}", text(v, "plan"))?;
    writeln!(out, "  customer:     {}", text(v, "customer_email"))?;
    writeln!(out, "  expires:      {}", or(v, "expires_at", "never"))?;
    writeln!(
        out,
        "  domains:      {}",
        seats(v, "domains", "max_domains")
    )?;
    writeln!(
        out,
        "  machines:     {}",
        seats(v, "machines", "max_machines")
    )?;
    writeln!(
        out,
        "  validations:  {}, last {}",
        v["validation_count"].as_u64().unwrap_or(0),
        or(v, "last_validated_at", "never")
    )?;
    writeln!(out, "  created:      {}", text(v, "created_at"))?;
    if v["metadata"].as_object().is_some_and(|m| !m.is_empty()) {
        writeln!(out, "  metadata:     {}", v["metadata"])?;
    }
    Ok(())
}

fn show_list(v: &Value, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<()> {
    let licenses = v["data"].as_array().map(Vec::as_slice).unwrap_or_default();
    if licenses.is_empty() {
        writeln!(err, "no license matches")?;
    }
    // The plan column as wide as the page's longest plan name, so that the
    // e-mails line up.
    let plan_width = licenses
        .iter()
        .map(|l| text(l, "plan").chars().count())
        .max()
        .unwrap_or(0);
    for l in licenses {
        writeln!(
            out,
            "{}  {:<9}  {}  {:<plan_width$}  {}",
            text(l, "id"),
            text(l, "status"),
            text(l, "key"),
            text(l, "plan"),
            text(l, "customer_email")
        )?;
    }
    next_page(v, err)
}

fn show_usage(v: &Value, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<()> {
    let totals = &v["totals"];
    writeln!(
        out,
        "{} validations, {} valid",
        totals["validations"].as_u64().unwrap_or(0),
        totals["valid"].as_u64().unwrap_or(0)
    )?;
    if let Some(by_code) = totals["by_code"].as_object() {
        let refused: Vec<String> = by_code
            .iter()
            .filter(|(code, _)| code.as_str() != "VALID")
            .map(|(code, n)| format!("{code} ({n})"))
            .collect();
        if !refused.is_empty() {
            writeln!(out, "refused: {}", refused.join(", "))?;
        }
    }
    if let Some(domains) = totals["domains"].as_object().filter(|d| !d.is_empty()) {
        let list: Vec<String> = domains.iter().map(|(d, n)| format!("{d} ({n})")).collect();
        writeln!(out, "domains: {}", list.join(", "))?;
    }
    for r in v["data"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let mut line = format!("{}  {}", text(r, "at"), text(r, "code"));
        for (label, field) in [
            ("domain", "domain"),
            ("machine", "fingerprint"),
            ("ip", "ip"),
            ("country", "country"),
        ] {
            if let Some(value) = r[field].as_str() {
                line.push_str(&format!("  {label} {value}"));
            }
        }
        writeln!(out, "{line}")?;
    }
    next_page(v, err)
}
