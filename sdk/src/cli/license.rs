//! `keysmith license …`: what support staff and scripts do with a
//! customer's license through the management API — issue one, find it by
//! key, id or e-mail, read it and its usage, change its plan, limits or
//! expiry, suspend, reinstate or revoke it, free a seat.
//!
//! The admin token comes from `KEYSMITH_ADMIN_TOKEN` only (never a flag, so
//! that it stays out of the process list and shell history). Exit codes: 0
//! done; 1 the server refused (no such license, a change its status does not
//! allow, a wrong token); 2 bad usage or no answer.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use keysmith_core::wire::{ErrorBody, License, Page};
use reqwest::{Method, Url};
use serde_json::{json, Value};

use super::{parse_timeout, EXIT_INVALID, EXIT_NO_ANSWER, EXIT_VALID};

/// The environment variable that holds the admin token.
pub(super) const TOKEN_ENV: &str = "KEYSMITH_ADMIN_TOKEN";

#[derive(Debug, Args)]
pub(super) struct LicenseArgs {
    #[command(subcommand)]
    command: LicenseCommand,
    /// License server URL, e.g. https://license.example.com
    #[arg(long, global = true, env = "KEYSMITH_SERVER", value_name = "URL")]
    server: Option<String>,
    /// Seconds to wait for the server.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 10.0, value_parser = parse_timeout)]
    timeout: f64,
    /// Print the server's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum LicenseCommand {
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
struct CreateArgs {
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
struct UpdateArgs {
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
}

/// What `create` and `update` may set besides the plan and the e-mail.
#[derive(Debug, Args)]
struct Fields {
    /// Domain seats: a number, or `none` for no limit (create: the plan's by default).
    #[arg(long, value_name = "N|none", value_parser = parse_limit)]
    max_domains: Option<Value>,
    /// Machine seats: a number, or `none` for no limit (create: the plan's by default).
    #[arg(long, value_name = "N|none", value_parser = parse_limit)]
    max_machines: Option<Value>,
    /// When it expires, RFC 3339 (2027-03-06T00:00:00Z), or `never` (create: the plan's duration by default).
    #[arg(long, value_name = "TIME|never", value_parser = parse_expiry)]
    expires_at: Option<Value>,
    /// Metadata as KEY=VALUE, repeatable (update: replaces all of it).
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

fn parse_limit(s: &str) -> Result<Value, String> {
    match s {
        "none" => Ok(Value::Null),
        _ => s
            .parse::<u32>()
            .map(Value::from)
            .map_err(|_| "a number of seats, or `none` for no limit".to_owned()),
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
struct FreeSeatArgs {
    /// The license's key or id.
    license: String,
    /// The domain whose seat to free.
    #[arg(long, required_unless_present = "machine", conflicts_with = "machine")]
    domain: Option<String>,
    /// The machine fingerprint whose seat to free.
    #[arg(long, value_name = "FINGERPRINT")]
    machine: Option<String>,
}

/// Why a command did not get its answer, and the exit code that says so:
/// `no_answer` (2) for bad usage or no answer, `refused` (1) for a refusal
/// by the server.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn no_answer(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_NO_ANSWER,
            message: message.into(),
        }
    }

    fn refused(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_INVALID,
            message: message.into(),
        }
    }
}

/// The management API of one server, with the admin token.
struct Api {
    http: reqwest::Client,
    base: Url,
    token: String,
    runtime: tokio::runtime::Runtime,
}

impl Api {
    fn new(server: Option<&str>, timeout: f64, token: Option<String>) -> Result<Api, Failure> {
        let server = server.ok_or_else(|| {
            Failure::no_answer("give the server with --server URL or KEYSMITH_SERVER")
        })?;
        let base = Url::parse(server)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| Failure::no_answer(format!("{server:?} is not an http(s) URL")))?;
        let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
            Failure::no_answer(format!("set {TOKEN_ENV} to the server's admin token"))
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(timeout))
            .user_agent(concat!("keysmith-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::no_answer(format!("cannot make an HTTP client: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::no_answer(format!("cannot start a runtime: {e}")))?;
        Ok(Api {
            http,
            base,
            token,
            runtime,
        })
    }

    /// `/api/v1/` followed by `segments`, each percent-encoded as needed.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("an http(s) URL has a path");
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }

    /// Sends the request; the answer's JSON on 2xx, else why not.
    fn send(&self, method: Method, url: Url, body: Option<Value>) -> Result<Value, Failure> {
        let mut request = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let base = self.base.as_str().trim_end_matches('/');
        self.runtime.block_on(async {
            let response = request
                .send()
                .await
                .map_err(|e| Failure::no_answer(format!("no answer from {base}: {}", cause(&e))))?;
            let status = response.status();
            let text = response
                .text()
                .await
                .map_err(|e| Failure::no_answer(format!("no answer from {base}: {}", cause(&e))))?;
            if status.is_success() {
                return serde_json::from_str(&text).map_err(|_| {
                    Failure::no_answer(format!(
                        "{base} answered {status} with something other than JSON"
                    ))
                });
            }
            let detail = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| format!("{}: {}", b.error.code, b.error.message))
                .unwrap_or_else(|_| format!("HTTP {status}"));
            if status == reqwest::StatusCode::UNAUTHORIZED {
                Err(Failure::refused(format!(
                    "the server refused the admin token ({detail}); check {TOKEN_ENV}"
                )))
            } else if status.is_client_error() {
                Err(Failure::refused(detail))
            } else {
                Err(Failure::no_answer(format!("{base} failed: {detail}")))
            }
        })
    }

    /// The id of the license `given` names: an id as it is, a key looked up.
    fn license_id(&self, given: &str) -> Result<String, Failure> {
        if given.starts_with("lic_") {
            return Ok(given.to_owned());
        }
        let key = crate::check_key(given).map_err(|e| {
            Failure::no_answer(format!(
                "{given:?} is neither a license id (lic_…) nor a valid key: {e}"
            ))
        })?;
        let mut url = self.url(&["licenses"]);
        url.query_pairs_mut()
            .append_pair("key", key.as_str())
            .append_pair("limit", "1");
        let page: Page<License> = serde_json::from_value(self.send(Method::GET, url, None)?)
            .map_err(|e| {
                Failure::no_answer(format!("unexpected answer to a license search: {e}"))
            })?;
        page.data
            .into_iter()
            .next()
            .map(|l| l.id)
            .ok_or_else(|| Failure::refused(format!("no license has the key {}", key.as_str())))
    }
}

/// The innermost cause of a request error ("connection refused", …).
fn cause(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

/// Runs `keysmith license …`; returns the exit code.
pub(super) fn run(
    args: LicenseArgs,
    token: Option<String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let json = args.json;
    let answer = Api::new(args.server.as_deref(), args.timeout, token)
        .and_then(|api| execute(&api, args.command));
    match answer {
        Ok((answer, show)) => {
            let _ = if json {
                writeln!(out, "{answer}")
            } else {
                show(&answer, out, err)
            };
            EXIT_VALID
        }
        Err(f) => {
            let _ = writeln!(err, "keysmith: {}", f.message);
            f.code
        }
    }
}

type Show = fn(&Value, &mut dyn Write, &mut dyn Write) -> std::io::Result<()>;

/// Sends what `command` asks for; its answer and how to print it as text.
fn execute(api: &Api, command: LicenseCommand) -> Result<(Value, Show), Failure> {
    let set_status = |given: &str, status: &str| {
        let id = api.license_id(given)?;
        let url = api.url(&["licenses", &id]);
        api.send(Method::PUT, url, Some(json!({ "status": status })))
    };
    Ok(match command {
        LicenseCommand::Show { license } => {
            let id = api.license_id(&license)?;
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
            let id = api.license_id(&license)?;
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
            if body.as_object().is_some_and(|b| b.is_empty()) {
                return Err(Failure::no_answer(
                    "nothing to change: give --plan, --email, --max-domains, --max-machines, --expires-at or --metadata",
                ));
            }
            let id = api.license_id(&args.license)?;
            (
                api.send(Method::PUT, api.url(&["licenses", &id]), Some(body))?,
                show_license,
            )
        }
        LicenseCommand::Suspend { license } => (set_status(&license, "suspended")?, show_license),
        LicenseCommand::Reinstate { license } => (set_status(&license, "active")?, show_license),
        LicenseCommand::Revoke { license, yes } => {
            if !yes {
                return Err(Failure::no_answer(
                    "revoking a license cannot be undone; add --yes to revoke it",
                ));
            }
            let id = api.license_id(&license)?;
            (
                api.send(Method::DELETE, api.url(&["licenses", &id]), None)?,
                show_license,
            )
        }
        LicenseCommand::FreeSeat(seat) => {
            let id = api.license_id(&seat.license)?;
            let url = match (&seat.domain, &seat.machine) {
                (Some(domain), _) => api.url(&["licenses", &id, "domains", domain]),
                (None, Some(machine)) => api.url(&["licenses", &id, "machines", machine]),
                (None, None) => unreachable!("clap requires --domain or --machine"),
            };
            (api.send(Method::DELETE, url, None)?, show_license)
        }
    })
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or("")
}

/// `value`, or `none` when it is null.
fn or<'a>(v: &'a Value, field: &str, none: &'a str) -> &'a str {
    v[field].as_str().unwrap_or(none)
}

/// "1 of 3: example.com" — the seats taken, the limit, the values.
fn seats(v: &Value, list: &str, max: &str) -> String {
    let taken: Vec<&str> = v[list]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
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

/// Where the next page starts, on stderr, so that stdout stays the list.
fn next_page(v: &Value, err: &mut dyn Write) -> std::io::Result<()> {
    if let Some(cursor) = v["next_cursor"].as_str() {
        writeln!(err, "(more: add --cursor {cursor})")?;
    }
    Ok(())
}

fn show_list(v: &Value, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<()> {
    let licenses = v["data"].as_array().map(Vec::as_slice).unwrap_or_default();
    if licenses.is_empty() {
        writeln!(err, "no license matches")?;
    }
    for l in licenses {
        writeln!(
            out,
            "{}  {:<9}  {}  {}  {}",
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
