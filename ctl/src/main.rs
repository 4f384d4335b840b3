//! hearthctl: the Hearth operator's control CLI (a thin shell over the `hearth_ctl` library).

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = hearth_ctl::Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match hearth_ctl::run(&cli, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearthctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
