//! The `conjure` command line (docs/cli.md). Everything lives in [`cli`]; `main` only maps the
//! outcome to the exit status (0 done, 1 some inputs failed, 2 usage / spec / model error, 130 / 143 `run`
//! stopped by SIGINT / SIGTERM after finishing or discarding its in-flight batch: rerun to resume).

mod cli;

fn main() {
    std::process::exit(cli::main());
}
