use clap::Parser;
use trust_rotation_operator::cli::{OperatorCli, operator};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    operator(OperatorCli::parse(), &mut std::io::stdout().lock()).await?;
    Ok(())
}
