//! The `keysmith` command line (feature `cli`): check a key, validate it
//! against a server, print this machine's fingerprint, and, for support
//! staff and scripts with the admin token, issue and manage licenses
//! (`license`), the plans they are on (`plan`) and the webhooks that
//! announce their changes (`webhook`).
//!
//! Exit codes of `validate` (SPEC §8): 0 the license is valid; 1 a decided
//! invalid answer (`KEY_MALFORMED`, a signed invalid answer — online or
//! replayed from the cache —, `OFFLINE_GRACE_EXPIRED`, `CLOCK_TAMPERED`); 2 no
//! answer at all (no network and no usable cache) or bad usage.

mod admin;
mod license;
mod plan;
mod webhook;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::blocking::Client;
use crate::{Source, ValidateOptions, Validation};

/// The app id the CLI uses unless `--app-id` says otherwise.
pub const CLI_APP_ID: &str = "keysmith-cli";

/// Exit code: the license is valid / the key is well-formed.
const EXIT_VALID: u8 = 0;
/// Exit code: decided not valid.
const EXIT_INVALID: u8 = 1;
/// Exit code: no answer, or bad usage (clap's own code for usage errors).
const EXIT_NO_ANSWER: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "keysmith",
    version,
    about = "Check and validate Keysmith license keys; issue and manage licenses (admin)",
    after_help = "Exit codes of `validate`: 0 valid, 1 decided not valid, 2 no answer or bad usage.\n\
                  Exit codes of `license`, `plan` and `webhook`: 0 done, 1 refused by the server, 2 no answer or bad usage."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a key's format and check symbols, offline.
    ///
    /// Exit 0 and print the canonical key when it is well-formed, 1 when it
    /// is not. Spaces, case and missing dashes do not matter.
    CheckKey {
        /// The key, e.g. KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9 (may be split over several arguments).
        #[arg(required = true, num_args = 1.., value_name = "KEY")]
        key: Vec<String>,
    },
    /// Validate a key with the license server, or from the cache when the server cannot be reached.
    Validate(ValidateArgs),
    /// Print this machine's fingerprint for an app id (a salted hash of the machine id).
    Fingerprint {
        /// The app id that salts the fingerprint.
        #[arg(long, env = "KEYSMITH_APP_ID", default_value = CLI_APP_ID)]
        app_id: String,
    },
    /// For support staff and scripts: issue, find, show, change, suspend, reinstate or revoke a license, read its usage, free a seat.
    ///
    /// Needs the server's admin token in KEYSMITH_ADMIN_TOKEN (never a flag,
    /// so that it stays out of the process list). A license is named by its
    /// key or its id (lic_…).
    License(license::LicenseArgs),
    /// For support staff and scripts: list, show, create or replace, and delete plans.
    ///
    /// Needs the server's admin token in KEYSMITH_ADMIN_TOKEN, as `license` does.
    Plan(plan::PlanArgs),
    /// For support staff and scripts: add, list, disable, enable or delete webhook endpoints, see their deliveries, redeliver an event.
    ///
    /// Needs the server's admin token in KEYSMITH_ADMIN_TOKEN, as `license` does.
    Webhook(webhook::WebhookArgs),
}

#[derive(Debug, Args)]
struct ValidateArgs {
    /// License server URL, e.g. https://license.example.com
    #[arg(long, env = "KEYSMITH_SERVER", value_name = "URL")]
    server: String,
    /// The server's public key (base64, from GET /api/v1/public-key); several separated by commas.
    #[arg(long, env = "KEYSMITH_PUBLIC_KEY", value_name = "B64")]
    public_key: String,
    /// The license key. KEYSMITH_KEY keeps it out of the process list.
    #[arg(long, env = "KEYSMITH_KEY", hide_env_values = true)]
    key: String,
    /// The domain the license is used on.
    #[arg(long, value_name = "D")]
    domain: Option<String>,
    /// The machine fingerprint (see `keysmith fingerprint`).
    #[arg(long, value_name = "F")]
    fingerprint: Option<String>,
    /// Directory of cached answers. Default: the platform cache dir for the app id.
    #[arg(long, env = "KEYSMITH_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// App id: names the default cache dir and salts cache file names.
    #[arg(long, env = "KEYSMITH_APP_ID", default_value = CLI_APP_ID)]
    app_id: String,
    /// Seconds to wait for the server before answering from the cache.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = parse_timeout)]
    timeout: f64,
    /// Print {"valid","code","source","plan","features","expires_at"} as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t > 0.0 && t <= 3600.0 => Ok(t),
        _ => Err("a number of seconds above 0 and at most 3600".into()),
    }
}

/// The `--json` answer, fields in SPEC §8's order.
#[derive(Debug, Serialize)]
struct JsonAnswer<'a> {
    valid: bool,
    code: &'a str,
    source: Source,
    plan: Option<&'a str>,
    features: &'a [String],
    expires_at: Option<String>,
}

/// Runs the `keysmith` command line with the process's arguments; the
/// binary's `main` is this function.
pub fn main() -> ExitCode {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    ExitCode::from(run(
        std::env::args_os(),
        &mut stdout.lock(),
        &mut stderr.lock(),
    ))
}

/// Runs the command line `args` (program name first), writing answers to
/// `out` and problems to `err`; returns the exit code.
pub fn run(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let text = e.render().to_string();
            let code = u8::try_from(e.exit_code()).unwrap_or(EXIT_NO_ANSWER);
            let _ = if code == 0 {
                write!(out, "{text}")
            } else {
                write!(err, "{text}")
            };
            return code;
        }
    };
    match cli.command {
        Command::CheckKey { key } => check_key(&key.concat(), out, err),
        Command::Validate(args) => validate(args, out, err),
        Command::Fingerprint { app_id } => match crate::machine_fingerprint(&app_id) {
            Ok(fp) => {
                let _ = writeln!(out, "{fp}");
                EXIT_VALID
            }
            Err(e) => {
                let _ = writeln!(err, "keysmith: {e}");
                EXIT_NO_ANSWER
            }
        },
        Command::License(a) => admin::run(a.target, admin_token(), out, err, |api| {
            license::execute(api, a.command)
        }),
        Command::Plan(a) => admin::run(a.target, admin_token(), out, err, |api| {
            plan::execute(api, a.command)
        }),
        Command::Webhook(a) => admin::run(a.target, admin_token(), out, err, |api| {
            webhook::execute(api, a.command)
        }),
    }
}

/// The admin token of `license`, `plan` and `webhook`, from the environment only.
fn admin_token() -> Option<String> {
    std::env::var(admin::TOKEN_ENV).ok()
}

fn check_key(key: &str, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match crate::check_key(key) {
        Ok(key) => {
            let _ = writeln!(out, "{key}");
            EXIT_VALID
        }
        Err(e) => {
            let _ = writeln!(err, "keysmith: not a valid key: {e}");
            EXIT_INVALID
        }
    }
}

fn validate(args: ValidateArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut builder = Client::builder(&args.server)
        .public_key(&args.public_key)
        .app_id(&args.app_id)
        .timeout(Duration::from_secs_f64(args.timeout))
        .user_agent(concat!("keysmith-cli/", env!("CARGO_PKG_VERSION")));
    if let Some(dir) = &args.cache_dir {
        builder = builder.cache_dir(dir);
    }
    let client = match builder.build() {
        Ok(client) => client,
        Err(e) => {
            let _ = writeln!(err, "keysmith: {e}");
            return EXIT_NO_ANSWER;
        }
    };
    let mut options = ValidateOptions::new();
    if let Some(domain) = args.domain {
        options = options.domain(domain);
    }
    if let Some(fp) = args.fingerprint {
        options = options.fingerprint(fp);
    }
    let answer = match client.validate(&args.key, &options) {
        Ok(answer) => answer,
        // A domain or fingerprint the SDK refuses is bad usage, not a
        // server that did not answer.
        Err(e) if e.is_invalid_argument() => {
            let _ = writeln!(err, "keysmith: {e:#}");
            return EXIT_NO_ANSWER;
        }
        Err(e) => {
            let _ = writeln!(err, "keysmith: no answer: {e:#}");
            return EXIT_NO_ANSWER;
        }
    };
    let _ = if args.json {
        writeln!(out, "{}", json_answer(&answer))
    } else {
        write_human(&answer, out)
    };
    if answer.valid {
        EXIT_VALID
    } else {
        EXIT_INVALID
    }
}

fn json_answer(v: &Validation) -> String {
    let answer = JsonAnswer {
        valid: v.valid,
        code: v.code.as_str(),
        source: v.source,
        plan: v.plan.as_deref(),
        features: &v.features,
        expires_at: v.expires_at.map(keysmith_core::time::format_rfc3339),
    };
    serde_json::to_string(&answer).expect("answer serialises")
}

fn write_human(v: &Validation, out: &mut dyn Write) -> std::io::Result<()> {
    let from = match v.source {
        Source::Online => "answered by the server".to_owned(),
        Source::Cache => "answered from the cache: the server could not be reached".to_owned(),
        Source::Local => "checked locally, nothing was sent".to_owned(),
    };
    if v.valid {
        writeln!(out, "✓ valid license ({from})")?;
        if let Some(plan) = &v.plan {
            writeln!(out, "  plan:      {plan}")?;
        }
        if !v.features.is_empty() {
            writeln!(out, "  features:  {}", v.features.join(", "))?;
        }
        match v.expires_at {
            Some(t) => writeln!(
                out,
                "  expires:   {}",
                keysmith_core::time::format_rfc3339(t)
            )?,
            None => writeln!(out, "  expires:   never")?,
        }
        if let Some(t) = v.offline_until {
            writeln!(
                out,
                "  offline until: {}",
                keysmith_core::time::format_rfc3339(t)
            )?;
        }
    } else {
        writeln!(out, "✗ not valid: {} — {} ({from})", v.code, v.message())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(
            std::iter::once("keysmith").chain(args.iter().copied()),
            &mut out,
            &mut err,
        );
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    /// `keysmith license ARGS` with `token` as the admin token.
    fn run_license(args: &[&str], token: Option<&str>) -> (u8, String, String) {
        let argv = ["keysmith", "license"]
            .into_iter()
            .chain(args.iter().copied());
        let Command::License(parsed) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!("parsed as `license`");
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let token = token.map(str::to_owned);
        let code = admin::run(parsed.target, token, &mut out, &mut err, |api| {
            license::execute(api, parsed.command)
        });
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn check_key_exit_codes() {
        let key = keysmith_core::LicenseKey::generate("KS").unwrap();
        let (code, out, _) = run_args(&["check-key", &key.as_str().to_lowercase()]);
        assert_eq!((code, out.trim()), (0, key.as_str()));
        let mut typo = key.as_str().to_owned();
        let last = typo.pop().unwrap();
        typo.push(if last == '0' { '1' } else { '0' });
        let (code, out, err) = run_args(&["check-key", &typo]);
        assert_eq!((code, out.as_str()), (1, ""));
        assert!(err.contains("not a valid key"), "{err}");
        // A key split over arguments, as typed with spaces.
        let spaced: Vec<&str> = key.as_str().split('-').collect();
        let args: Vec<&str> = std::iter::once("check-key").chain(spaced).collect();
        assert_eq!(run_args(&args).0, 0);
    }

    #[test]
    fn bad_usage_is_2_and_help_is_0() {
        assert_eq!(run_args(&[]).0, 2);
        assert_eq!(run_args(&["check-key"]).0, 2);
        assert_eq!(
            run_args(&["validate", "--key", "x"]).0,
            2,
            "missing --server"
        );
        assert_eq!(run_args(&["frobnicate"]).0, 2);
        let (code, out, _) = run_args(&["--help"]);
        assert_eq!(code, 0);
        assert!(
            out.contains("check-key") && out.contains("validate") && out.contains("license"),
            "{out}"
        );
        // The admin commands without a token: bad usage, nothing sent.
        let (code, _, err) =
            run_license(&["show", "lic_X", "--server", "http://127.0.0.1:9"], None);
        assert_eq!(code, 2);
        assert!(err.contains("KEYSMITH_ADMIN_TOKEN"), "{err}");
        if std::env::var_os("KEYSMITH_SERVER").is_none() {
            let (code, _, err) = run_license(&["show", "lic_X"], Some("a-token-of-16-chars"));
            assert_eq!(code, 2, "no server named");
            assert!(err.contains("--server"), "{err}");
        }
        let (code, _, err) = run_args(&[
            "validate",
            "--server",
            "http://127.0.0.1:9",
            "--public-key",
            "AAAA",
            "--key",
            "x",
        ]);
        assert_eq!(code, 2);
        assert!(err.contains("public key"), "{err}");
    }

    #[test]
    fn json_has_exactly_the_pinned_fields_in_order() {
        let v = Validation::malformed(Source::Local);
        assert_eq!(
            json_answer(&v),
            r#"{"valid":false,"code":"KEY_MALFORMED","source":"local","plan":null,"features":[],"expires_at":null}"#
        );
    }
}
