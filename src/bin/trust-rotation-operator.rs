use clap::Parser;
use trust_rotation_operator::cli::{OperatorCli, operator};

fn main() -> anyhow::Result<()> {
    operator(OperatorCli::parse(), &mut std::io::stdout().lock())?;
    Ok(())
}
