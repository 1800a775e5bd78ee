//! The `keysmith` command line; see `keysmith --help` and [`keysmith::cli`].
fn main() -> std::process::ExitCode {
    keysmith::cli::main()
}
