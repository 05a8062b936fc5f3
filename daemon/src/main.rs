//! `store-gc`: the unprivileged collector. Everything lives in the library (`daemon::cli`).
fn main() -> std::process::ExitCode {
    daemon::cli::main()
}
