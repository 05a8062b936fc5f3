//! The `root-tracker` command line, built inside the tests package so tests can find it.
fn main() -> std::process::ExitCode {
    root_tracker::cli::main()
}
