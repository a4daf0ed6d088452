use clap::Parser;

// mimalloc rather than the system allocator: `cloudchain sim` allocates and frees
// millions of small objects (9 % of a `scale-1k` run's wall time went to glibc's
// malloc and free). An idle node holds about 58 MB with it, 33 MB with
// MIMALLOC_ARENA_EAGER_COMMIT=0 (see the README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = peer::cli::Cli::parse();
    let json = cli.json;
    if !matches!(cli.command, peer::cli::Command::Run(_)) {
        // A command whose output is piped into `head` ends quietly when the
        // reader goes, as other tools do (Rust ignores SIGPIPE, and a print
        // to a closed pipe panics). The node itself keeps ignoring it: its
        // sockets report a closed peer as an error.
        peer::cli::quiet_broken_pipe();
    }
    match peer::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if json {
                let code = e
                    .downcast_ref::<peer::control::CliError>()
                    .map_or("error", |c| c.code);
                println!(
                    "{}",
                    serde_json::json!({ "error": { "code": code, "message": format!("{e:#}") } })
                );
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
