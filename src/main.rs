use std::process::ExitCode;

fn main() -> ExitCode {
    dedupfs::cli::main()
}
