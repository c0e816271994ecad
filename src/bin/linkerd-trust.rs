use clap::Parser;
use trust_rotation_operator::cli::{LinkerdTrustCli, linkerd_trust};

fn main() -> anyhow::Result<()> {
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    linkerd_trust(LinkerdTrustCli::parse(), &mut out, &mut err)?;
    Ok(())
}
