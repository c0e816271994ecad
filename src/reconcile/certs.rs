//! Certificates as the reconciler reads them: PEM from Secrets and ConfigMaps into [`Cert`]s,
//! with problems that name the object.

use super::model::{Cert, Problem};
use crate::bundle::sha256_hex;

/// Parses every CERTIFICATE block of `pem_text`; `object` names the source in problems.
pub fn parse_all(object: &str, key: &str, pem_text: &str) -> Result<Vec<Cert>, Problem> {
    let problem = |message: String| Problem {
        object: object.to_owned(),
        message: format!("{key}: {message}"),
    };
    let blocks = pem::parse_many(pem_text).map_err(|e| problem(format!("not valid PEM: {e}")))?;
    let mut out = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        if block.tag() != "CERTIFICATE" {
            continue;
        }
        let (_, cert) = x509_parser::parse_x509_certificate(block.contents())
            .map_err(|e| problem(format!("certificate {index} is not valid X.509: {e}")))?;
        out.push(Cert {
            fingerprint: sha256_hex(block.contents()),
            pem: pem::encode_config(
                block,
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            ),
            not_after: cert.validity().not_after.timestamp(),
        });
    }
    if out.is_empty() {
        return Err(problem("holds no certificate".to_owned()));
    }
    Ok(out)
}

/// The first certificate of `pem_text` (the leaf of a chain, or the one anchor).
pub fn parse_first(object: &str, key: &str, pem_text: &str) -> Result<Cert, Problem> {
    Ok(parse_all(object, key, pem_text)?.remove(0))
}

/// Whether `child` (PEM) carries a valid signature by `parent`'s key (PEM or DER).
pub fn signed_by_der(child: &[u8], parent: &[u8]) -> bool {
    let (Ok((_, c)), Ok((_, p))) = (
        x509_parser::parse_x509_certificate(child),
        x509_parser::parse_x509_certificate(parent),
    ) else {
        return false;
    };
    c.verify_signature(Some(p.public_key())).is_ok()
}

/// DER of a one-certificate PEM.
pub fn der(pem_text: &str) -> Option<Vec<u8>> {
    pem::parse(pem_text).ok().map(|p| p.contents().to_vec())
}
