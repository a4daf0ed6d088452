use clap::Parser;

// mimalloc rather than the system allocator: `cloudchain sim` allocates and frees
// millions of small objects (9 % of a `scale-1k` run's wall time went to glibc's
// malloc and free). An idle node holds about 58 MB with it, 33 MB with
// MIMALLOC_ARENA_EAGER_COMMIT=0 (see the README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
