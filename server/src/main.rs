fn main() -> std::process::ExitCode {
    keysmith_server::main()
}
