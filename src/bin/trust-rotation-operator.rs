use std::io::Write;

use clap::Parser;
use trust_rotation_operator::cli::{OperatorCli, operator};

#[tokio::main]
async fn main() {
    if let Err(e) = operator(
        OperatorCli::parse(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    )
    .await
    {
        // Not eprintln!, which panics when stderr cannot be written (a full disk, say): the
        // exit code still tells.
        let _ = writeln!(std::io::stderr(), "Error: {e}");
        std::process::exit(e.exit_code());
    }
}
