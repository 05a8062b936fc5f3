fn main() -> std::process::ExitCode {
    root_tracker::cli::main()
}
