//! `keyward`: the Keyward server binary (see the library's `# Layout`).

use std::process::ExitCode;

fn main() -> ExitCode {
    keyward_server::cli::main()
}
