//! What the admin commands (`license`, `plan`, `webhook`) share: the server and its
//! admin token, a request and its answer, a refusal or no answer as an exit
//! code.
//!
//! The admin token comes from `KEYSMITH_ADMIN_TOKEN` only (never a flag, so
//! that it stays out of the process list and shell history). Exit codes: 0
//! done; 1 the server refused (not found, a change it does not allow, a
//! wrong token); 2 bad usage or no answer.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use keysmith_core::wire::ErrorBody;
use reqwest::{Method, Url};
use serde_json::Value;

use super::{parse_timeout, EXIT_INVALID, EXIT_NO_ANSWER, EXIT_VALID};

/// The environment variable that holds the admin token.
pub(super) const TOKEN_ENV: &str = "KEYSMITH_ADMIN_TOKEN";

/// Where an admin command goes and how it prints (global: they may follow
/// the subcommand).
#[derive(Debug, Args)]
pub(super) struct Target {
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

/// How to print an answer as text: to `out`, with notes for people on `err`.
pub(super) type Show = fn(&Value, &mut dyn Write, &mut dyn Write) -> std::io::Result<()>;

/// Runs an admin command: `execute` sends its request on the API of
/// `target`, and its answer is printed as JSON or with the `Show` it gives;
/// returns the exit code.
pub(super) fn run(
    target: Target,
    token: Option<String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
    execute: impl FnOnce(&Api) -> Result<(Value, Show), Failure>,
) -> u8 {
    let answer =
        Api::new(target.server.as_deref(), target.timeout, token).and_then(|api| execute(&api));
    match answer {
        Ok((answer, show)) => {
            let _ = if target.json {
                writeln!(out, "{answer}")
            } else {
                show(&answer, out, err)
            };
            EXIT_VALID
        }
        Err(f) => {
            let _ = if target.json {
                // For scripts: the server's code apart (null for a failure
                // found before or without an answer).
                let failure = serde_json::json!({
                    "error": {"code": f.server_code, "message": f.message}
                });
                writeln!(err, "{failure}")
            } else {
                writeln!(err, "keysmith: {}", f.message)
            };
            f.code
        }
    }
}

/// Why a command did not get its answer, and the exit code that says so:
/// `no_answer` (2) for bad usage or no answer, `refused` (1) for a refusal
/// by the server.
pub(super) struct Failure {
    code: u8,
    message: String,
    /// The server's error code (`LICENSE_NOT_FOUND`, …), when it refused.
    server_code: Option<String>,
}

impl Failure {
    pub(super) fn no_answer(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_NO_ANSWER,
            message: message.into(),
            server_code: None,
        }
    }

    pub(super) fn refused(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_INVALID,
            message: message.into(),
            server_code: None,
        }
    }

    /// Whether the server refused a conditional write: the record changed
    /// since it was read, or its existence is not what the request said.
    pub(super) fn is_precondition_failed(&self) -> bool {
        self.server_code.as_deref() == Some("PRECONDITION_FAILED")
    }
}

/// What a write asks of the record it changes.
#[derive(Clone, Copy)]
pub(super) enum Condition<'a> {
    None,
    /// `If-Match`: still the version with this `ETag`.
    Matches(&'a str),
    /// `If-None-Match: *`: no such record yet.
    Absent,
}

/// The server's own tag under `tag`: a proxy that compresses answers
/// (nginx's gzip) marks the tags it passes on weak (`W/"…"`), which
/// `If-Match` never matches, so every write would lose as if others kept
/// changing the record. A Keysmith tag names the record's version, not
/// its bytes, so the tag under the mark is still the version read.
fn strong(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// How often a read-modify-write tries before giving up on a record others
/// keep changing.
const ATTEMPTS: usize = 10;

/// The management API of one server, with the admin token.
pub(super) struct Api {
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
        // Trimmed as the server trims it: `$(cat token-file)` keeps a newline.
        let token = token
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
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
    pub(super) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("an http(s) URL has a path");
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }

    /// Sends the request; the answer's JSON on 2xx, else why not.
    pub(super) fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        self.send_if(method, url, body, Condition::None)
            .map(|(answer, _)| answer)
    }

    /// Reads the record at `url`, changes it with `change` into the body of
    /// a `PUT` and sends that only if no one wrote the record in between
    /// (`If-Match` with the `ETag` read); after such a write, reads again.
    pub(super) fn update(
        &self,
        url: Url,
        change: impl Fn(Value) -> Value,
    ) -> Result<Value, Failure> {
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                // Apart from the others who lost the same race.
                let pause = rand::Rng::gen_range(&mut rand::thread_rng(), 10..=40) * attempt as u64;
                std::thread::sleep(Duration::from_millis(pause));
            }
            let (current, tag) = self.send_if(Method::GET, url.clone(), None, Condition::None)?;
            let condition = tag
                .as_deref()
                .map_or(Condition::None, |t| Condition::Matches(strong(t)));
            match self.send_if(Method::PUT, url.clone(), Some(change(current)), condition) {
                Err(f) if f.is_precondition_failed() => continue,
                written => return written.map(|(answer, _)| answer),
            }
        }
        Err(Failure::refused(format!(
            "others changed it {ATTEMPTS} times while this change was being made; \
             nothing was changed, try again"
        )))
    }

    /// Sends the request under `condition`; the answer's JSON on 2xx and
    /// its `ETag`, else why not.
    pub(super) fn send_if(
        &self,
        method: Method,
        url: Url,
        body: Option<Value>,
        condition: Condition,
    ) -> Result<(Value, Option<String>), Failure> {
        let mut request = self.http.request(method, url).bearer_auth(&self.token);
        request = match condition {
            Condition::None => request,
            Condition::Matches(tag) => request.header(reqwest::header::IF_MATCH, tag),
            Condition::Absent => request.header(reqwest::header::IF_NONE_MATCH, "*"),
        };
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
            let tag = response
                .headers()
                .get(reqwest::header::ETAG)
                .and_then(|t| t.to_str().ok())
                .map(str::to_owned);
            let text = response
                .text()
                .await
                .map_err(|e| Failure::no_answer(format!("no answer from {base}: {}", cause(&e))))?;
            if status.is_success() && text.is_empty() {
                return Ok((Value::Null, tag)); // 204: done, nothing to show
            }
            if status.is_success() {
                return serde_json::from_str(&text)
                    .map(|answer| (answer, tag))
                    .map_err(|_| {
                        Failure::no_answer(format!(
                            "{base} answered {status} with something other than JSON"
                        ))
                    });
            }
            let error = serde_json::from_str::<ErrorBody>(&text)
                .ok()
                .map(|b| b.error);
            let detail = error
                .as_ref()
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_else(|| format!("HTTP {status}"));
            let server_code = error.map(|e| e.code);
            if status == reqwest::StatusCode::UNAUTHORIZED {
                Err(Failure {
                    server_code,
                    ..Failure::refused(format!(
                        "the server refused the admin token ({detail}); check {TOKEN_ENV}"
                    ))
                })
            } else if status.is_client_error() {
                Err(Failure {
                    server_code,
                    ..Failure::refused(detail)
                })
            } else {
                Err(Failure {
                    server_code,
                    ..Failure::no_answer(format!("{base} failed: {detail}"))
                })
            }
        })
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

pub(super) fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or("")
}

/// `value`, or `none` when it is null.
pub(super) fn or<'a>(v: &'a Value, field: &str, none: &'a str) -> &'a str {
    v[field].as_str().unwrap_or(none)
}

/// Where the next page starts, on stderr, so that stdout stays the list.
pub(super) fn next_page(v: &Value, err: &mut dyn Write) -> std::io::Result<()> {
    if let Some(cursor) = v["next_cursor"].as_str() {
        writeln!(err, "(more: add --cursor {cursor})")?;
    }
    Ok(())
}

/// The strings of the array `field` (features, events, seats).
pub(super) fn strings<'a>(v: &'a Value, field: &str) -> Vec<&'a str> {
    v[field]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A flag's value that may also be `none` (no limit, no expiry): a JSON
/// number or null.
pub(super) fn number_or_none(s: &str) -> Result<Value, String> {
    match s {
        "none" => Ok(Value::Null),
        _ => s
            .parse::<u32>()
            .map(Value::from)
            .map_err(|_| "a whole number, or `none`".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::strong;

    #[test]
    fn a_tag_a_proxy_made_weak_is_sent_back_strong() {
        assert_eq!(strong("W/\"3f2a\""), "\"3f2a\"");
        assert_eq!(strong("\"3f2a\""), "\"3f2a\"");
    }
}
