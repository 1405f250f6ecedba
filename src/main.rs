//! The `conjure` command line (interface.md §1).

fn main() {
    eprintln!("conjure: the command line is being built; see README.md");
    std::process::exit(2);
}
