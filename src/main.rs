//! The `conjure` command line (interface.md §1). Everything lives in [`cli`]; `main` only maps the
//! outcome to the exit status (0 done, 1 some inputs failed, 2 usage / spec / model error).

mod cli;

fn main() {
    std::process::exit(cli::main());
}
