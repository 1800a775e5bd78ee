//! A vendor's app checking its license at start-up — copy and adapt.
//!
//! Build with your license server's public key compiled in, then run with a
//! license key:
//!
//! ```text
//! KEYSMITH_PUBLIC_KEY=$(curl -s localhost:8080/api/v1/public-key | jq -r .public_key) \
//!     cargo run -p keysmith-example -- KS-XXXX-XXXX-XXXX-XXXX-XXXX-XXXX
//! ```
//!
//! `KEYSMITH_SERVER` (run time) points it at another server than
//! `http://127.0.0.1:8080`; the key may also come from `KEYSMITH_KEY`.

use std::process::ExitCode;
use std::time::Duration;

use keysmith::blocking::Client;
use keysmith::{Code, Source, ValidateOptions};

/// The server's public key, compiled into the app: never fetch it at run
/// time, or whoever answers the request could pick it. In your app, paste it
/// here as a plain string literal.
const PUBLIC_KEY: Option<&str> = option_env!("KEYSMITH_PUBLIC_KEY");

/// Names your app: salts its machine fingerprint and its cache files.
const APP_ID: &str = "acme-editor";

fn main() -> ExitCode {
    let Some(public_key) = PUBLIC_KEY else {
        eprintln!("build me with KEYSMITH_PUBLIC_KEY=<the server's public key> (see GET /api/v1/public-key)");
        return ExitCode::from(2);
    };
    let server =
        std::env::var("KEYSMITH_SERVER").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let Some(key) = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("KEYSMITH_KEY").ok())
    else {
        eprintln!("usage: keysmith-example LICENSE-KEY");
        return ExitCode::from(2);
    };

    // 1. A typo is caught at once, before anything is sent: tell the user.
    if let Err(e) = keysmith::check_key(&key) {
        eprintln!("That license key looks mistyped ({e}). Please check it.");
        return ExitCode::from(1);
    }

    // 2. One client for the whole app (cheap to clone, fine across threads).
    let client = match Client::builder(server)
        .public_key(public_key)
        .app_id(APP_ID)
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            eprintln!("license client: {e}");
            return ExitCode::from(2);
        }
    };

    // 3. Bind the license to this machine where the OS has a machine id.
    let mut options = ValidateOptions::new();
    match keysmith::machine_fingerprint(APP_ID) {
        Ok(fp) => options = options.fingerprint(fp),
        Err(e) => eprintln!("(no machine binding: {e})"),
    }

    // 4. Validate: online when the server answers, else from the cache.
    let license = match client.validate(&key, &options) {
        Ok(license) => license,
        Err(e) if e.is_network() => {
            eprintln!("Cannot reach the license server and no earlier check is cached: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("License check failed: {e}");
            return ExitCode::from(2);
        }
    };

    match license.code {
        Code::Valid => {
            let plan = license.plan.as_deref().unwrap_or("?");
            println!("Licensed: plan {plan}.");
            if license.source == Source::Cache {
                if let Some(until) = license.offline_until {
                    println!("(offline: working from the last check until {until})");
                }
            }
            if license.has_feature("sso") {
                println!("Single sign-on: enabled.");
            } else {
                println!("Single sign-on: upgrade to a plan with `sso`.");
            }
            ExitCode::SUCCESS
        }
        Code::OfflineGraceExpired => {
            eprintln!("Please connect to the internet once to renew the license check.");
            ExitCode::from(1)
        }
        Code::ClockTampered => {
            eprintln!("The system clock looks wrong; please correct it.");
            ExitCode::from(1)
        }
        _ => {
            eprintln!("Not licensed: {} ({}).", license.message(), license.code);
            ExitCode::from(1)
        }
    }
}
