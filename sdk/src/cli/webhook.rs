//! `keysmith webhook …`: the endpoints that receive license events — add
//! one (its signing secret is shown only then), list them, turn one off or
//! on, see every delivery attempt, send a failed event again, delete one.
//!
//! The admin token, the server and the exit codes are `admin`'s.

use std::io::Write;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::admin::{self, next_page, or, strings, text, Api, Failure, Show};

#[derive(Debug, Args)]
pub(super) struct WebhookArgs {
    #[command(subcommand)]
    pub(super) command: WebhookCommand,
    #[command(flatten)]
    pub(super) target: admin::Target,
}

#[derive(Debug, Subcommand)]
pub(super) enum WebhookCommand {
    /// Register an endpoint; prints its signing secret, shown only this once.
    Create {
        /// The endpoint's http(s) URL.
        url: String,
        /// An event to send it (repeatable): license.created, license.activated,
        /// license.updated, license.suspended, license.reinstated, license.expired, license.revoked.
        #[arg(long = "event", value_name = "EVENT", required = true)]
        events: Vec<String>,
    },
    /// The endpoints, newest first.
    List {
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// Where the previous page ended (printed after it).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Every delivery attempt to an endpoint, newest first, and where each event stands.
    Deliveries {
        /// The endpoint's id (wh_…).
        webhook: String,
        /// At most this many attempts (1 to 500).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// Where the previous page ended (printed after it).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Send an event to an endpoint again (after it failed for good, say).
    Redeliver {
        /// The endpoint's id (wh_…).
        webhook: String,
        /// The event's id (evt_…), as `deliveries` lists it.
        event: String,
    },
    /// Stop sending events to an endpoint (they are not queued while it is off).
    Disable {
        /// The endpoint's id (wh_…).
        webhook: String,
    },
    /// Send events to an endpoint again.
    Enable {
        /// The endpoint's id (wh_…).
        webhook: String,
    },
    /// Replace an endpoint's signing secret (e.g. after a leak); prints the
    /// new one, shown only this once. Deliveries from now on are signed with it.
    RotateSecret {
        /// The endpoint's id (wh_…).
        webhook: String,
    },
    /// Delete an endpoint and its delivery history (it cannot be undone).
    Delete {
        /// The endpoint's id (wh_…).
        webhook: String,
        /// Confirm: the delivery history goes too.
        #[arg(long)]
        yes: bool,
    },
}

/// `?limit=…&cursor=…` on `url`.
fn paged(mut url: reqwest::Url, limit: u32, cursor: Option<String>) -> reqwest::Url {
    url.query_pairs_mut()
        .append_pair("limit", &limit.to_string());
    if let Some(cursor) = cursor {
        url.query_pairs_mut().append_pair("cursor", &cursor);
    }
    url
}

/// Sends what `command` asks for; its answer and how to print it as text.
pub(super) fn execute(api: &Api, command: WebhookCommand) -> Result<(Value, Show), Failure> {
    let enable = |id: &str, enabled: bool| {
        let url = api.url(&["webhooks", id]);
        api.send(Method::PUT, url, Some(json!({ "enabled": enabled })))
    };
    Ok(match command {
        WebhookCommand::Create { url, events } => {
            let body = json!({ "url": url, "events": events });
            (
                api.send(Method::POST, api.url(&["webhooks"]), Some(body))?,
                show_webhook,
            )
        }
        WebhookCommand::List { limit, cursor } => {
            let url = paged(api.url(&["webhooks"]), limit, cursor);
            (api.send(Method::GET, url, None)?, show_webhooks)
        }
        WebhookCommand::Deliveries {
            webhook,
            limit,
            cursor,
        } => {
            let url = paged(
                api.url(&["webhooks", &webhook, "deliveries"]),
                limit,
                cursor,
            );
            (api.send(Method::GET, url, None)?, show_attempts)
        }
        WebhookCommand::Redeliver { webhook, event } => {
            let url = api.url(&["webhooks", &webhook, "deliveries", &event, "redeliver"]);
            api.send(Method::POST, url, None)?;
            (json!({ "redelivering": event }), show_redelivering)
        }
        WebhookCommand::Disable { webhook } => (enable(&webhook, false)?, show_webhook),
        WebhookCommand::Enable { webhook } => (enable(&webhook, true)?, show_webhook),
        WebhookCommand::RotateSecret { webhook } => {
            let body = json!({ "rotate_secret": true });
            (
                api.send(Method::PUT, api.url(&["webhooks", &webhook]), Some(body))?,
                show_webhook,
            )
        }
        WebhookCommand::Delete { webhook, yes } => {
            if !yes {
                return Err(Failure::no_answer(
                    "deleting an endpoint deletes its delivery history too; add --yes to delete it",
                ));
            }
            api.send(Method::DELETE, api.url(&["webhooks", &webhook]), None)?;
            (json!({ "deleted": webhook }), show_deleted)
        }
    })
}

fn show_webhook(v: &Value, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<()> {
    let state = if v["enabled"].as_bool() == Some(false) {
        "disabled"
    } else {
        "enabled"
    };
    writeln!(out, "{}  {state}  {}", text(v, "id"), text(v, "url"))?;
    writeln!(out, "  events:   {}", strings(v, "events").join(", "))?;
    writeln!(out, "  created:  {}", text(v, "created_at"))?;
    if let Some(pending) = v["pending"].as_u64().filter(|n| *n > 0) {
        writeln!(
            out,
            "  pending:  {pending} events not yet delivered or failed"
        )?;
    }
    if let Some(secret) = v["secret"].as_str() {
        writeln!(out, "  secret:   {secret}")?;
        writeln!(
            err,
            "Keep the secret: it signs every delivery (Keysmith-Signature) and is not shown again."
        )?;
    }
    Ok(())
}

fn show_webhooks(v: &Value, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<()> {
    let hooks = v["data"].as_array().map(Vec::as_slice).unwrap_or_default();
    if hooks.is_empty() {
        writeln!(
            err,
            "no webhooks yet: add one with `keysmith webhook create URL --event …`"
        )?;
    }
    for hook in hooks {
        show_webhook(hook, out, err)?;
    }
    next_page(v, err)
}

fn show_attempts(v: &Value, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<()> {
    let attempts = v["data"].as_array().map(Vec::as_slice).unwrap_or_default();
    if attempts.is_empty() {
        writeln!(err, "no delivery attempts yet")?;
    }
    for a in attempts {
        let outcome = match (a["status_code"].as_u64(), a["error"].as_str()) {
            (Some(code), _) => format!("HTTP {code}"),
            (None, Some(error)) => error.to_owned(),
            (None, None) => "no answer".to_owned(),
        };
        writeln!(
            out,
            "{}  {}  {}  attempt {}  {}  {} ms  now {}",
            text(a, "at"),
            text(a, "event_id"),
            text(a, "type"),
            a["attempt"].as_u64().unwrap_or(0),
            outcome,
            a["duration_ms"].as_u64().unwrap_or(0),
            text(a, "state"),
        )?;
    }
    next_page(v, err)
}

fn show_redelivering(v: &Value, out: &mut dyn Write, _: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "queued {} for delivery again",
        or(v, "redelivering", "")
    )
}

fn show_deleted(v: &Value, out: &mut dyn Write, _: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "deleted webhook {}", or(v, "deleted", ""))
}
