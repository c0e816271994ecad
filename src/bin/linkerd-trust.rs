use clap::Parser;
use trust_rotation_operator::cli::{LinkerdTrustCli, linkerd_trust};

fn main() {
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    if let Err(e) = linkerd_trust(LinkerdTrustCli::parse(), &mut out, &mut err) {
        eprintln!("Error: {e}");
        std::process::exit(e.exit_code());
    }
}
