//! The server under test: exactly `keysmith-server`'s main, built inside this
//! package so that its integration tests can find it (`CARGO_BIN_EXE_*`).
fn main() -> std::process::ExitCode {
    keysmith_server::main()
}
