//! The CLI under test: exactly `keysmith`'s main, built inside this package so
//! that the end-to-end tests can run it (`keysmith_tests::bin_path`).
fn main() -> std::process::ExitCode {
    keysmith::cli::main()
}
