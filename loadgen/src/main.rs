//! `hearth-loadgen`: see the library for what it does.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    hearth_loadgen::cli_main()
}
