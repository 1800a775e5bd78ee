//! `keysmith plan …`: the plans licenses are issued on — their features,
//! default seat limits, duration and offline grace.
//!
//! The admin token, the server and the exit codes are `admin`'s.

use std::io::Write;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::admin::{self, number_or_none, or, strings, text, Api, Condition, Failure, Show};

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
    /// Create a plan (`--replace`: or replace one whole, what is left out unset).
    Put(PutArgs),
    /// Change some of a plan's features, limits, duration or grace; the rest stays.
    Update(UpdateArgs),
    /// Delete a plan no license is on.
    Delete {
        /// The plan's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub(super) struct PutArgs {
    /// The plan's name: 1 to 64 of A-Z a-z 0-9 - _ . (not only dots)
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
    /// Replace the plan if it exists (every field; without this, an existing plan is refused).
    #[arg(long)]
    replace: bool,
}

#[derive(Debug, Args)]
pub(super) struct UpdateArgs {
    /// The plan's name.
    name: String,
    /// A feature to grant (repeatable).
    #[arg(long = "add-feature", value_name = "FEATURE")]
    add: Vec<String>,
    /// A feature to take away (repeatable).
    #[arg(long = "remove-feature", value_name = "FEATURE")]
    remove: Vec<String>,
    /// Domain seats of its licenses, or `none` for no limit.
    #[arg(long, value_name = "N|none", value_parser = number_or_none)]
    max_domains: Option<Value>,
    /// Machine seats of its licenses, or `none` for no limit.
    #[arg(long, value_name = "N|none", value_parser = number_or_none)]
    max_machines: Option<Value>,
    /// Days a new license runs, or `none` for no expiry.
    #[arg(long, value_name = "DAYS|none", value_parser = number_or_none)]
    duration_days: Option<Value>,
    /// Days an app may trust its last answer offline.
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
            let condition = if plan.replace {
                Condition::None
            } else {
                Condition::Absent
            };
            match api.send_if(Method::PUT, url, Some(body), condition) {
                Ok((answer, _)) => (answer, show_plan),
                Err(f) if f.is_precondition_failed() => {
                    return Err(Failure::no_answer(format!(
                        "plan {:?} exists: `keysmith plan update` changes only what it is \
                         given, `put --replace` replaces the whole plan",
                        plan.name
                    )))
                }
                Err(f) => return Err(f),
            }
        }
        PlanCommand::Update(change) => {
            let fields = [
                ("max_domains", change.max_domains),
                ("max_machines", change.max_machines),
                ("duration_days", change.duration_days),
                (
                    "offline_grace_days",
                    change.offline_grace_days.map(Value::from),
                ),
            ];
            if change.add.is_empty()
                && change.remove.is_empty()
                && fields.iter().all(|(_, v)| v.is_none())
            {
                return Err(Failure::no_answer(
                    "nothing to change: give --add-feature, --remove-feature, --max-domains, \
                     --max-machines, --duration-days or --offline-grace-days",
                ));
            }
            let url = api.url(&["plans", &change.name]);
            let changed = |mut plan: Value| {
                let mut features: Vec<String> = strings(&plan, "features")
                    .into_iter()
                    .filter(|f| !change.remove.iter().any(|r| r == f))
                    .map(str::to_owned)
                    .collect();
                for added in &change.add {
                    if !features.contains(added) {
                        features.push(added.clone());
                    }
                }
                plan["features"] = json!(features);
                for (field, value) in &fields {
                    if let Some(value) = value {
                        plan[*field] = value.clone();
                    }
                }
                plan
            };
            (api.update(url, changed)?, show_plan)
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
