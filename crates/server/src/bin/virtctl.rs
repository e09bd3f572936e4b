//! `virtctl`: the user CLI (all of it lives in the `virtctl` library crate).

fn main() -> std::process::ExitCode {
    virtctl::main()
}
