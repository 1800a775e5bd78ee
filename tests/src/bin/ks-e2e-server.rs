//! The server under test: exactly `keysmith-server`'s main, built inside this
//! package so that its integration tests can find it (`CARGO_BIN_EXE_*`).
fn main() -> std::process::ExitCode {
    // `TestServer` holds the other end of this server's stdin. When the test
    // process ends without dropping it (a fixture kept in a `static` is
    // never dropped), the pipe closes and the server goes too, instead of
    // outliving the test run.
    if std::env::var_os(keysmith_tests::EXIT_WITH_PARENT).is_some() {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
    keysmith_server::main()
}
