//! The `store-gc` command line, built inside the tests package so tests can find it.
fn main() -> std::process::ExitCode {
    daemon::cli::main()
}
