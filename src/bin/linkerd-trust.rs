use std::io::Write;

use clap::Parser;
use trust_rotation_operator::cli::{LinkerdTrustCli, linkerd_trust};

fn main() {
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    if let Err(e) = linkerd_trust(LinkerdTrustCli::parse(), &mut out, &mut err) {
        // Not eprintln!, which panics when stderr cannot be written (a full disk, say): the
        // exit code still tells.
        let _ = writeln!(err, "Error: {e}");
        std::process::exit(e.exit_code());
    }
}
