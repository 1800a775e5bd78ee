//! `keysmith plan …`: the plans licenses are issued on — their features,
//! default seat limits, duration and offline grace.
//!
//! The admin token, the server and the exit codes are `admin`'s.

use std::io::Write;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::admin::{self, or, strings, text, Api, Failure, Show};

#[derive(Debug, Args)]
pub(super) struct PlanArgs {
    #[command(subcommand)]
    pub(super) command: PlanCommand,
    #[command(flatten)]
    pub(super) target: admin::Target,
}

#[derive(Debug, Subcommand)]
pub(super) enum PlanCommand {
    /// Every plan, by name.
    List,
    /// One plan.
    Show {
        /// The plan's name.
        name: String,
    },
    /// Create a plan, or replace it whole (what is left out is unset).
    Put(PutArgs),
    /// Delete a plan no license is on.
    Delete {
        /// The plan's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub(super) struct PutArgs {
    /// The plan's name: 1 to 64 of A-Z a-z 0-9 - _ .
    name: String,
    /// A feature the plan grants (repeatable).
    #[arg(long = "feature", value_name = "FEATURE")]
    features: Vec<String>,
    /// Domain seats of its licenses (default: no limit).
    #[arg(long, value_name = "N")]
    max_domains: Option<u32>,
    /// Machine seats of its licenses (default: no limit).
    #[arg(long, value_name = "N")]
    max_machines: Option<u32>,
    /// Days a new license runs (default: no expiry).
    #[arg(long, value_name = "DAYS")]
    duration_days: Option<u32>,
    /// Days an app may trust its last answer offline (default: the server's, 7).
    #[arg(long, value_name = "DAYS")]
    offline_grace_days: Option<u32>,
}

/// Sends what `command` asks for; its answer and how to print it as text.
pub(super) fn execute(api: &Api, command: PlanCommand) -> Result<(Value, Show), Failure> {
    Ok(match command {
        PlanCommand::List => (
            api.send(Method::GET, api.url(&["plans"]), None)?,
            show_plans,
        ),
        PlanCommand::Show { name } => (
            api.send(Method::GET, api.url(&["plans", &name]), None)?,
            show_plan,
        ),
        PlanCommand::Put(plan) => {
            let mut body = json!({ "features": plan.features });
            for (field, value) in [
                ("max_domains", plan.max_domains),
                ("max_machines", plan.max_machines),
                ("duration_days", plan.duration_days),
                ("offline_grace_days", plan.offline_grace_days),
            ] {
                if let Some(value) = value {
                    body[field] = json!(value);
                }
            }
            let url = api.url(&["plans", &plan.name]);
            (api.send(Method::PUT, url, Some(body))?, show_plan)
        }
        PlanCommand::Delete { name } => {
            api.send(Method::DELETE, api.url(&["plans", &name]), None)?;
            (json!({ "deleted": name }), show_deleted)
        }
    })
}

/// A limit or a number of days, or `none` when it is null.
fn number(v: &Value, field: &str, none: &str) -> String {
    v[field]
        .as_u64()
        .map_or_else(|| none.to_owned(), |n| n.to_string())
}

fn show_plan(v: &Value, out: &mut dyn Write, _: &mut dyn Write) -> std::io::Result<()> {
    let features = match strings(v, "features") {
        none if none.is_empty() => "none".to_owned(),
        some => some.join(", "),
    };
    writeln!(out, "{}", text(v, "name"))?;
    writeln!(out, "  features:       {features}")?;
    for (label, field, none) in [
        ("max domains:", "max_domains", "no limit"),
        ("max machines:", "max_machines", "no limit"),
        ("duration days:", "duration_days", "no expiry"),
    ] {
        writeln!(out, "  {label:<15} {}", number(v, field, none))?;
    }
    writeln!(
        out,
        "  offline grace:  {} days",
        number(v, "offline_grace_days", "?")
    )?;
    Ok(())
}

fn show_plans(v: &Value, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<()> {
    let plans = v["data"].as_array().map(Vec::as_slice).unwrap_or_default();
    if plans.is_empty() {
        writeln!(err, "no plans yet: add one with `keysmith plan put NAME`")?;
    }
    for plan in plans {
        show_plan(plan, out, err)?;
    }
    Ok(())
}

fn show_deleted(v: &Value, out: &mut dyn Write, _: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "deleted plan {}", or(v, "deleted", ""))
}
