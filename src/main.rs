fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(popsync::cli::main())
}
