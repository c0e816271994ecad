//! Command-line interfaces of the two binaries. The mains only parse and call [`operator`] or
//! [`linkerd_trust`]; everything they do lives in the library.

use clap::{Parser, Subcommand};

/// Rotates a Linkerd service mesh's trust anchor safely and automatically.
#[derive(Debug, Parser)]
#[command(name = "trust-rotation-operator", version, about)]
pub struct OperatorCli {
    #[command(subcommand)]
    pub command: OperatorCommand,
}

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Print the TrustAnchorRotation CustomResourceDefinition as YAML.
    Crd,
}

/// Runs the operator binary's subcommand, writing its output to `out`.
pub fn operator(cli: OperatorCli, out: &mut impl std::io::Write) -> Result<(), CliError> {
    match cli.command {
        OperatorCommand::Crd => {
            let yaml = crate::crd::crd_yaml().map_err(CliError::Yaml)?;
            out.write_all(yaml.as_bytes()).map_err(CliError::Output)?;
        }
    }
    Ok(())
}

/// Checks, bundles and inspects a Linkerd trust rotation (the `linkerd trust` extension).
#[derive(Debug, Parser)]
#[command(name = "linkerd-trust", version, about)]
pub struct LinkerdTrustCli {
    #[command(subcommand)]
    pub command: LinkerdTrustCommand,
}

#[derive(Debug, Subcommand)]
pub enum LinkerdTrustCommand {
    /// Print the canonical trust bundle (de-duplicated, ordered by SHA-256 of the DER) built
    /// from PEM files, and its fingerprint on stderr.
    Bundle {
        /// PEM files holding one or more certificates each.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

/// Runs the `linkerd-trust` subcommand.
pub fn linkerd_trust(
    cli: LinkerdTrustCli,
    out: &mut impl std::io::Write,
    err: &mut impl std::io::Write,
) -> Result<(), CliError> {
    match cli.command {
        LinkerdTrustCommand::Bundle { files } => {
            let mut pems = Vec::new();
            for f in &files {
                let text = std::fs::read_to_string(f).map_err(|source| CliError::Input {
                    path: f.display().to_string(),
                    source,
                })?;
                pems.push((f.display().to_string(), text));
            }
            let bundle = crate::bundle::Bundle::from_sources(&pems)?;
            out.write_all(bundle.to_pem().as_bytes())
                .map_err(CliError::Output)?;
            writeln!(err, "trust-root-sha256: {}", bundle.fingerprint())
                .map_err(CliError::Output)?;
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("rendering YAML: {0}")]
    Yaml(serde_yaml::Error),
    #[error("writing output: {0}")]
    Output(std::io::Error),
    #[error("reading {path}: {source}")]
    Input {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
}
