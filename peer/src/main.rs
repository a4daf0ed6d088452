use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = peer::cli::Cli::parse();
    match peer::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
