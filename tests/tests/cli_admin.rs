//! The real `keysmith license …`, `plan …` and `webhook …` commands
//! against a real server: what support staff and scripts do with plans,
//! webhooks and a customer's license, and what the customer's app then gets from
//! `/validate`.

mod common_sdk;

use std::process::Output;
use std::time::{Duration, Instant};

use common_sdk::{cli_with_env, closed_url, code_of, json_of, Licensed};
use keysmith_tests::receiver::Receiver;
use keysmith_tests::{ServerOptions, ADMIN_TOKEN};
use serde_json::{json, Value};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `keysmith license ARGS --server URL` with the admin token in the
/// environment, as support staff run it.
fn license_cli(url: &str, args: &[&str]) -> Output {
    license_cli_as(url, args, Some(ADMIN_TOKEN))
}

fn license_cli_as(url: &str, args: &[&str], token: Option<&str>) -> Output {
    admin_cli("license", url, args, token)
}

/// `keysmith plan ARGS --server URL` with the admin token.
fn plan_cli(url: &str, args: &[&str]) -> Output {
    admin_cli("plan", url, args, Some(ADMIN_TOKEN))
}

/// `keysmith webhook ARGS --server URL` with the admin token.
fn webhook_cli(url: &str, args: &[&str]) -> Output {
    admin_cli("webhook", url, args, Some(ADMIN_TOKEN))
}

fn admin_cli(group: &str, url: &str, args: &[&str], token: Option<&str>) -> Output {
    let mut all = vec![group];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--server", url]);
    let envs: Vec<(&str, &str)> = token
        .map(|t| ("KEYSMITH_ADMIN_TOKEN", t))
        .into_iter()
        .collect();
    cli_with_env(&all, &envs)
}

/// What `/validate` answers for `key` on `domain`.
fn validation_code(l: &Licensed, key: &str, domain: &str) -> String {
    let (_, body) = l.server.validate(json!({"key": key, "domain": domain}));
    body["code"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_license_is_found_by_key_id_or_email_and_shown_with_its_usage() {
    let l = Licensed::start();
    let url = &l.server.url;
    assert_eq!(validation_code(&l, &l.key, "example.com"), "VALID");
    assert_eq!(validation_code(&l, &l.key, "shop.example.com"), "VALID");

    // By key, spelled as a customer reads it out (lower case, no dashes),
    // and by id: the same license, in words.
    let spoken = l.key.to_lowercase().replace('-', " ");
    for name in [spoken.as_str(), l.id.as_str()] {
        let out = license_cli(url, &["show", name]);
        assert_eq!(code_of(&out), 0, "{}", stderr(&out));
        let text = stdout(&out);
        for expected in [
            l.id.as_str(),
            "active",
            l.key.as_str(),
            "pro",
            "2099-01-01T00:00:00Z",
            "2 (no limit): ",
            "example.com",
            "validations:  2",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
        }
    }
    // --json is the management API's object.
    let out = license_cli(url, &["show", &l.key, "--json"]);
    assert_eq!(code_of(&out), 0);
    assert_eq!(json_of(&out), l.license());

    // By the customer's e-mail: one line per license, newest first.
    let other = l.server.license(
        "pro",
        json!({"customer_email": "ops@example.org", "metadata": {"order": "7"}}),
    );
    let out = license_cli(url, &["list", "--email", "ops@example.org"]);
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains(other["id"].as_str().unwrap()) && !text.contains(&l.id),
        "{text}"
    );
    // Plans of different lengths: the e-mails still line up.
    l.server.plan("enterprise-annual", json!({"features": []}));
    l.server.license(
        "enterprise-annual",
        json!({"customer_email": "ops@example.org"}),
    );
    let out = license_cli(url, &["list", "--email", "ops@example.org"]);
    let text = stdout(&out);
    let columns: Vec<Option<usize>> = text.lines().map(|line| line.find("ops@")).collect();
    assert_eq!(columns.len(), 2, "{text}");
    assert_eq!(columns[0], columns[1], "{text}");
    let out = license_cli(url, &["list", "--email", "nobody@example.net"]);
    assert_eq!((code_of(&out), stdout(&out).as_str()), (0, ""));
    assert!(
        stderr(&out).contains("no license matches"),
        "{}",
        stderr(&out)
    );

    // Usage: the totals, then each validation, newest first; a page at a time.
    let out = license_cli(url, &["usage", &l.key]);
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "2 validations, 2 valid", "{text}");
    assert!(lines[1].contains("example.com (1)") && lines[1].contains("shop.example.com (1)"));
    assert!(lines[2].contains("VALID") && lines[2].contains("domain shop.example.com"));
    assert!(
        lines[3].contains("domain example.com") && lines.len() == 4,
        "{text}"
    );
    let out = license_cli(url, &["usage", &l.id, "--limit", "1", "--json"]);
    let page = json_of(&out);
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let out = license_cli(url, &["usage", &l.id, "--limit", "1", "--cursor", &cursor]);
    assert!(
        stdout(&out).contains("domain example.com"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_script_issues_a_license_and_support_raises_its_limit_and_extends_it() {
    let l = Licensed::start();
    let url = &l.server.url;
    let out = license_cli(
        url,
        &[
            "create",
            "--plan",
            "pro",
            "--email",
            "new@example.com",
            "--max-domains",
            "1",
            "--expires-at",
            "2030-01-01T00:00:00Z",
            "--metadata",
            "order=77",
            "--json",
        ],
    );
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    let created = json_of(&out);
    let key = created["key"].as_str().expect("the new key").to_owned();
    assert_eq!(
        (
            &created["max_domains"],
            &created["expires_at"],
            &created["metadata"]
        ),
        (
            &json!(1),
            &json!("2030-01-01T00:00:00Z"),
            &json!({"order": "77"})
        )
    );
    assert_eq!(validation_code(&l, &key, "a.example.com"), "VALID");
    assert_eq!(
        validation_code(&l, &key, "b.example.com"),
        "DOMAIN_LIMIT_REACHED"
    );

    let out = license_cli(
        url,
        &[
            "update",
            &key,
            "--max-domains",
            "2",
            "--expires-at",
            "never",
            "--metadata",
            "seats=2",
        ],
    );
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("expires:      never") && text.contains("1 of 2: a.example.com"),
        "{text}"
    );
    assert_eq!(validation_code(&l, &key, "b.example.com"), "VALID");
    // Metadata keys are set and removed one by one; the others stay.
    assert!(text.contains(r#"{"order":"77","seats":"2"}"#), "{text}");
    let out = license_cli(
        url,
        &["update", &key, "--remove-metadata", "order", "--json"],
    );
    assert_eq!(json_of(&out)["metadata"], json!({"seats": "2"}));

    // Nothing to change is bad usage, and nothing is sent; a plan the
    // server does not have is refused with its reason; neither changes it.
    let before = l.server.admin(
        "GET",
        &format!("/licenses/{}", created["id"].as_str().unwrap()),
        None,
    );
    let out = license_cli(url, &["update", &key]);
    assert_eq!(code_of(&out), 2);
    assert!(
        stderr(&out).contains("nothing to change"),
        "{}",
        stderr(&out)
    );
    let out = license_cli(url, &["update", &key, "--plan", "platinum"]);
    assert_eq!(code_of(&out), 1);
    assert!(stderr(&out).contains("PLAN_NOT_FOUND"), "{}", stderr(&out));
    let out = license_cli(url, &["update", &key, "--expires-at", "next week"]);
    assert_eq!(code_of(&out), 2);
    let after = l.server.admin(
        "GET",
        &format!("/licenses/{}", created["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(before, after);
}

#[test]
fn editors_at_the_same_moment_lose_no_change() {
    // Each `update` reads the record, changes it and writes it back: without
    // a condition on the write, one editor's write replaces what another
    // wrote in between.
    const EDITORS: usize = 8;
    let l = Licensed::start();
    let url = l.server.url.as_str();
    let key = l.key.as_str();
    let outputs: Vec<(Output, Output)> = std::thread::scope(|s| {
        let editors: Vec<_> = (0..EDITORS)
            .map(|i| {
                s.spawn(move || {
                    let pair = format!("k{i}={i}");
                    let feature = format!("f{i}");
                    (
                        license_cli(url, &["update", key, "--metadata", &pair]),
                        plan_cli(url, &["update", "pro", "--add-feature", &feature]),
                    )
                })
            })
            .collect();
        editors.into_iter().map(|e| e.join().unwrap()).collect()
    });
    for (license, plan) in &outputs {
        assert_eq!(code_of(license), 0, "{}", stderr(license));
        assert_eq!(code_of(plan), 0, "{}", stderr(plan));
    }
    let (_, license) = l.server.admin("GET", &format!("/licenses/{}", l.id), None);
    let metadata = license["metadata"].as_object().unwrap();
    let (_, plan) = l.server.admin("GET", "/plans/pro", None);
    let features = plan["features"].as_array().unwrap();
    for i in 0..EDITORS {
        assert_eq!(
            metadata.get(&format!("k{i}")),
            Some(&json!(i.to_string())),
            "{license}"
        );
        assert!(features.contains(&json!(format!("f{i}"))), "{plan}");
    }
}

#[test]
fn suspend_reinstate_and_revoke_change_what_the_app_is_told() {
    let l = Licensed::start();
    let url = &l.server.url;

    let out = license_cli(url, &["suspend", &l.key]);
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with(&format!("{}  suspended", l.id)));
    assert_eq!(
        validation_code(&l, &l.key, "example.com"),
        "LICENSE_SUSPENDED"
    );

    let out = license_cli(url, &["reinstate", &l.id]);
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    assert_eq!(validation_code(&l, &l.key, "example.com"), "VALID");
    // What support is asked about: why the app was refused, and how often.
    let out = license_cli(url, &["usage", &l.id]);
    let text = stdout(&out);
    assert!(text.starts_with("2 validations, 1 valid\n"), "{text}");
    assert!(
        text.lines()
            .any(|line| line == "refused: LICENSE_SUSPENDED (1)"),
        "{text}"
    );

    // Revoking is final, so it asks for --yes and changes nothing without it.
    let out = license_cli(url, &["revoke", &l.key]);
    assert_eq!(code_of(&out), 2);
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert_eq!(l.license()["status"], "active");
    let out = license_cli(url, &["revoke", &l.key, "--yes", "--json"]);
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    assert_eq!(json_of(&out)["status"], "revoked");
    assert_eq!(
        validation_code(&l, &l.key, "example.com"),
        "LICENSE_REVOKED"
    );

    // The server refuses to bring it back: exit 1, its reason on stderr.
    let out = license_cli(url, &["reinstate", &l.key]);
    assert_eq!(code_of(&out), 1);
    assert!(stderr(&out).contains("LICENSE_REVOKED"), "{}", stderr(&out));
    assert_eq!(l.license()["status"], "revoked");
}

#[test]
fn freeing_a_seat_lets_the_customer_move_to_another_domain() {
    let l = Licensed::start();
    let url = &l.server.url;
    let license = l.server.license("pro", json!({"max_domains": 1}));
    let key = license["key"].as_str().unwrap();
    assert_eq!(validation_code(&l, key, "old.example.com"), "VALID");
    assert_eq!(
        validation_code(&l, key, "new.example.com"),
        "DOMAIN_LIMIT_REACHED"
    );

    // The domain as typed (upper case) names the seat.
    let out = license_cli(url, &["free-seat", key, "--domain", "OLD.example.com"]);
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("domains:      0 of 1"),
        "{}",
        stdout(&out)
    );
    assert_eq!(validation_code(&l, key, "new.example.com"), "VALID");

    // A seat the license does not hold, and neither or both kinds named.
    let out = license_cli(url, &["free-seat", key, "--machine", "abc"]);
    assert_eq!(code_of(&out), 1);
    assert!(
        stderr(&out).contains("MACHINE_NOT_FOUND"),
        "{}",
        stderr(&out)
    );
    assert_eq!(code_of(&license_cli(url, &["free-seat", key])), 2);
    let both = [
        "free-seat",
        key,
        "--domain",
        "a.example",
        "--machine",
        "abc",
    ];
    assert_eq!(code_of(&license_cli(url, &both)), 2);
}

#[test]
fn a_missing_or_wrong_token_and_an_unknown_license_are_clear_errors() {
    let l = Licensed::start();
    let url = &l.server.url;

    // Without the token nothing is sent; a wrong one is refused (1) and
    // never echoed.
    let out = license_cli_as(url, &["show", &l.key], None);
    assert_eq!(code_of(&out), 2);
    assert!(
        stderr(&out).contains("KEYSMITH_ADMIN_TOKEN"),
        "{}",
        stderr(&out)
    );
    let wrong = "not-the-admin-token-4242";
    let out = license_cli_as(url, &["suspend", &l.key], Some(wrong));
    assert_eq!(code_of(&out), 1);
    let text = stderr(&out);
    assert!(
        text.contains("refused the admin token") && !text.contains(wrong),
        "{text}"
    );
    assert_eq!(l.license()["status"], "active");

    // A token read from a file with its newline works as it is.
    let out = license_cli_as(url, &["show", &l.key], Some(&format!("{ADMIN_TOKEN}\n")));
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));

    // A well-formed key no license has, an id no license has: refused (1).
    let unknown = keysmith_core::LicenseKey::generate("KS").unwrap();
    let out = license_cli(url, &["show", unknown.as_str()]);
    assert_eq!(code_of(&out), 1);
    assert!(
        stderr(&out).contains("no license has the key"),
        "{}",
        stderr(&out)
    );
    let out = license_cli(url, &["suspend", "lic_NOSUCHTHING"]);
    assert_eq!(code_of(&out), 1);
    assert!(
        stderr(&out).contains("LICENSE_NOT_FOUND"),
        "{}",
        stderr(&out)
    );
    // With --json a script gets the failure as JSON too, the server's code
    // apart; none for a failure of its own (here, bad usage).
    let out = license_cli(url, &["suspend", "lic_NOSUCHTHING", "--json"]);
    assert_eq!(code_of(&out), 1);
    let failure: Value = serde_json::from_str(stderr(&out).trim())
        .unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert_eq!(failure["error"]["code"], "LICENSE_NOT_FOUND", "{failure}");
    assert!(failure["error"]["message"].is_string(), "{failure}");
    let out = license_cli(url, &["revoke", "lic_NOSUCHTHING", "--json"]);
    assert_eq!(code_of(&out), 2);
    let failure: Value = serde_json::from_str(stderr(&out).trim())
        .unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert!(failure["error"]["code"].is_null(), "{failure}");
    assert!(
        failure["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--yes"),
        "{failure}"
    );

    // A mistyped key is caught locally (2), and no server is no answer (2).
    let mut typo = l.key.clone();
    let last = typo.pop().unwrap();
    typo.push(if last == 'X' { 'Y' } else { 'X' });
    let out = license_cli(url, &["show", &typo]);
    assert_eq!(code_of(&out), 2);
    assert!(stderr(&out).contains("nor a valid key"), "{}", stderr(&out));
    let out = license_cli(&closed_url(), &["show", &l.key]);
    assert_eq!(code_of(&out), 2);
    assert!(stderr(&out).contains("no answer from"), "{}", stderr(&out));
    let out = license_cli("ftp://example.com", &["show", &l.key]);
    assert_eq!(code_of(&out), 2);

    // Nothing above changed the license.
    let license: Value = l.license();
    assert_eq!(license["status"], "active");
}

#[test]
fn a_plan_is_set_up_from_the_command_line_and_its_licenses_follow_it() {
    let l = Licensed::start();
    let url = &l.server.url;
    let put = [
        "put",
        "team",
        "--feature",
        "sso",
        "--feature",
        "export",
        "--max-domains",
        "2",
        "--offline-grace-days",
        "3",
    ];
    let out = plan_cli(url, &put);
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("sso, export") && text.contains("max domains:    2"),
        "{text}"
    );
    let out = plan_cli(url, &["show", "team", "--json"]);
    assert_eq!(
        json_of(&out),
        json!({"name": "team", "features": ["sso", "export"], "max_domains": 2,
               "max_machines": null, "duration_days": null, "offline_grace_days": 3})
    );
    let out = plan_cli(url, &["list"]);
    let text = stdout(&out);
    assert!(text.contains("pro\n") && text.contains("team\n"), "{text}");

    // `put` does not replace an existing plan by accident (its features
    // would go): refused unless --replace; `update` changes only what it
    // is given.
    let out = plan_cli(url, &["put", "team", "--max-domains", "5"]);
    assert_eq!(code_of(&out), 2);
    assert!(stderr(&out).contains("plan update"), "{}", stderr(&out));
    let out = plan_cli(
        url,
        &[
            "update",
            "team",
            "--add-feature",
            "audit",
            "--remove-feature",
            "export",
            "--max-domains",
            "none",
            "--json",
        ],
    );
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    assert_eq!(
        json_of(&out),
        json!({"name": "team", "features": ["sso", "audit"], "max_domains": null,
               "max_machines": null, "duration_days": null, "offline_grace_days": 3})
    );
    assert_eq!(
        code_of(&plan_cli(url, &["update", "team"])),
        2,
        "nothing to change"
    );
    let out = plan_cli(url, &["update", "nosuch", "--max-domains", "1"]);
    assert_eq!(code_of(&out), 1);
    assert!(stderr(&out).contains("PLAN_NOT_FOUND"), "{}", stderr(&out));
    let out = plan_cli(
        url,
        &put.iter().copied().chain(["--replace"]).collect::<Vec<_>>(),
    );
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("sso, export"), "{}", stdout(&out));

    // A license issued on it takes its limit and grants its features.
    let out = license_cli(
        url,
        &[
            "create",
            "--plan",
            "team",
            "--email",
            "t@example.com",
            "--json",
        ],
    );
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    let key = json_of(&out)["key"].as_str().unwrap().to_owned();
    let (_, answer) = l
        .server
        .validate(json!({"key": key, "domain": "a.example.com"}));
    assert_eq!(answer["license"]["features"], json!(["sso", "export"]));
    assert_eq!(json_of(&out)["max_domains"], 2);

    // A plan with licenses is not deleted (1, the server's reason); an
    // unused one is, and is gone after.
    let out = plan_cli(url, &["delete", "team"]);
    assert_eq!(code_of(&out), 1);
    assert!(stderr(&out).contains("PLAN_IN_USE"), "{}", stderr(&out));
    plan_cli(url, &["put", "spare"]);
    let out = plan_cli(url, &["delete", "spare"]);
    assert_eq!(
        (code_of(&out), stdout(&out).trim()),
        (0, "deleted plan spare")
    );
    let out = plan_cli(url, &["show", "spare"]);
    assert_eq!(code_of(&out), 1);
    assert!(stderr(&out).contains("PLAN_NOT_FOUND"), "{}", stderr(&out));
}

#[test]
fn a_webhook_is_added_its_failed_delivery_seen_and_the_event_sent_again() {
    let receiver = Receiver::start();
    receiver.set_status(503);
    let fast = [
        "--webhook-retry-base-ms",
        "200",
        "--webhook-retry-max-ms",
        "400",
        "--webhook-give-up",
        "1",
    ];
    let l = Licensed::start_with(
        7,
        ServerOptions {
            args: fast.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        },
    );
    let url = &l.server.url;
    let out = webhook_cli(
        url,
        &["create", &receiver.url, "--event", "license.suspended"],
    );
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let id = text.split_whitespace().next().unwrap().to_owned();
    assert!(
        id.starts_with("wh_") && text.contains("secret:   whsec_"),
        "{text}"
    );
    assert!(stderr(&out).contains("not shown again"), "{}", stderr(&out));
    let out = webhook_cli(url, &["list"]);
    let text = stdout(&out);
    assert!(text.contains(&id) && !text.contains("whsec_"), "{text}");
    // A leaked secret is replaced; the new one is shown this once.
    let out = webhook_cli(url, &["rotate-secret", &id]);
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("secret:   whsec_"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("not shown again"), "{}", stderr(&out));

    // A suspension fires the event; the receiver refuses it until the
    // server gives up, and `deliveries` shows each attempt and the outcome.
    assert_eq!(code_of(&license_cli(url, &["suspend", &l.key])), 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let event = loop {
        let page = json_of(&webhook_cli(url, &["deliveries", &id, "--json"]));
        if page["data"][0]["state"] == "failed" {
            break page["data"][0]["event_id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "never failed: {page}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = webhook_cli(url, &["deliveries", &id]);
    let text = stdout(&out);
    assert!(
        text.contains(&event) && text.contains("license.suspended") && text.contains("HTTP 503"),
        "{text}"
    );
    assert!(text.contains("now failed"), "{text}");

    receiver.set_status(200);
    let out = webhook_cli(url, &["redeliver", &id, &event]);
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("queued {event} for delivery again")
    );
    receiver.wait_until(Duration::from_secs(10), "the redelivery", |r| {
        r.iter().any(|x| x.status == 200 && x.body.contains(&event))
    });
    let out = webhook_cli(url, &["redeliver", &id, "evt_NOPE"]);
    assert_eq!(code_of(&out), 1);
    assert!(
        stderr(&out).contains("DELIVERY_NOT_FOUND"),
        "{}",
        stderr(&out)
    );

    // Off and on again, then gone.
    let out = webhook_cli(url, &["disable", &id, "--json"]);
    assert_eq!(json_of(&out)["enabled"], false);
    let out = webhook_cli(url, &["enable", &id]);
    assert!(
        stdout(&out).starts_with(&format!("{id}  enabled")),
        "{}",
        stdout(&out)
    );
    // Its delivery history goes with it, so only with --yes.
    let out = webhook_cli(url, &["delete", &id]);
    assert_eq!(code_of(&out), 2);
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert_eq!(code_of(&webhook_cli(url, &["deliveries", &id])), 0);
    let out = webhook_cli(url, &["delete", &id, "--yes"]);
    assert_eq!(
        (code_of(&out), stdout(&out).trim()),
        (0, format!("deleted webhook {id}").as_str())
    );
    let out = webhook_cli(url, &["deliveries", &id]);
    assert_eq!(code_of(&out), 1);
    assert!(
        stderr(&out).contains("WEBHOOK_NOT_FOUND"),
        "{}",
        stderr(&out)
    );

    // An event the server does not know is refused with the list it knows.
    let out = webhook_cli(
        url,
        &["create", &receiver.url, "--event", "license.exploded"],
    );
    assert_eq!(code_of(&out), 1);
    assert!(stderr(&out).contains("license.revoked"), "{}", stderr(&out));
}
