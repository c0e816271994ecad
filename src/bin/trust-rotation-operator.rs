use clap::Parser;
use trust_rotation_operator::cli::{OperatorCli, operator};

#[tokio::main]
async fn main() {
    if let Err(e) = operator(OperatorCli::parse(), &mut std::io::stdout()).await {
        eprintln!("Error: {e}");
        std::process::exit(e.exit_code());
    }
}
