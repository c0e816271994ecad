//! The canonical trust bundle (DESIGN.md section 2).
//!
//! Certificates de-duplicated and ordered by the SHA-256 of their DER (trust-manager's order),
//! each as PEM with 64-character lines, `\n` endings and one trailing newline. The bundle's
//! fingerprint is the SHA-256 of that text, so for a ConfigMap we wrote it equals Linkerd's own
//! `linkerd.io/trust-root-sha256`. Bundles compare as certificate sets, never as raw strings.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// A set of trust anchors in canonical order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bundle {
    /// Keyed by the lowercase hex SHA-256 of the DER, which orders them canonically.
    certs: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("{source_name}: not valid PEM: {message}")]
    Pem {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: holds no CERTIFICATE block")]
    Empty { source_name: String },
    #[error("{source_name}: PEM block {index} is a {tag}, not a CERTIFICATE")]
    NotACertificate {
        source_name: String,
        index: usize,
        tag: String,
    },
    #[error("{source_name}: certificate {index} is not valid X.509: {message}")]
    NotX509 {
        source_name: String,
        index: usize,
        message: String,
    },
}

impl Bundle {
    /// Parses PEM text; `source_name` names the object in errors (for example
    /// `ConfigMap linkerd/linkerd-identity-trust-roots key ca-bundle.crt`).
    pub fn from_pem(source_name: &str, pem_text: &str) -> Result<Self, BundleError> {
        let mut bundle = Bundle::default();
        bundle.add_pem(source_name, pem_text)?;
        Ok(bundle)
    }

    /// Builds one bundle from several named PEM sources.
    pub fn from_sources(sources: &[(String, String)]) -> Result<Self, BundleError> {
        let mut bundle = Bundle::default();
        for (name, text) in sources {
            bundle.add_pem(name, text)?;
        }
        Ok(bundle)
    }

    fn add_pem(&mut self, source_name: &str, pem_text: &str) -> Result<(), BundleError> {
        let blocks = pem::parse_many(pem_text).map_err(|e| BundleError::Pem {
            source_name: source_name.to_owned(),
            message: e.to_string(),
        })?;
        // pem skips a block that has no END line; a truncated file must not lose an anchor
        // without a word.
        let begun = pem_text.matches("-----BEGIN ").count();
        if begun > blocks.len() {
            return Err(BundleError::Pem {
                source_name: source_name.to_owned(),
                message: format!(
                    "{} of {begun} BEGIN lines start no complete block (cut off, or no END line)",
                    begun - blocks.len()
                ),
            });
        }
        if blocks.is_empty() {
            return Err(BundleError::Empty {
                source_name: source_name.to_owned(),
            });
        }
        for (index, block) in blocks.into_iter().enumerate() {
            if block.tag() != "CERTIFICATE" {
                return Err(BundleError::NotACertificate {
                    source_name: source_name.to_owned(),
                    index,
                    tag: block.tag().to_owned(),
                });
            }
            let der = block.into_contents();
            let not_x509 = |message: String| BundleError::NotX509 {
                source_name: source_name.to_owned(),
                index,
                message,
            };
            let (rest, _) =
                x509_parser::parse_x509_certificate(&der).map_err(|e| not_x509(e.to_string()))?;
            // Bytes after the certificate would be kept in the bundle and change its
            // fingerprint, though no TLS library reads them.
            if !rest.is_empty() {
                return Err(not_x509(format!(
                    "{} bytes follow the certificate",
                    rest.len()
                )));
            }
            self.insert_der(der);
        }
        Ok(())
    }

    /// Adds a certificate already known to be valid DER (a no-op if present).
    pub fn insert_der(&mut self, der: Vec<u8>) {
        self.certs.insert(sha256_hex(&der), der);
    }

    /// Removes the certificate with this fingerprint, if present.
    pub fn remove(&mut self, fingerprint: &str) -> bool {
        self.certs.remove(fingerprint).is_some()
    }

    pub fn contains(&self, fingerprint: &str) -> bool {
        self.certs.contains_key(fingerprint)
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// Fingerprints of the certificates, in canonical order.
    pub fn fingerprints(&self) -> impl Iterator<Item = &str> {
        self.certs.keys().map(String::as_str)
    }

    /// DER of the certificates, in canonical order.
    pub fn ders(&self) -> impl Iterator<Item = &[u8]> {
        self.certs.values().map(Vec::as_slice)
    }

    /// The canonical PEM text.
    pub fn to_pem(&self) -> String {
        let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        self.certs
            .values()
            .map(|der| pem::encode_config(&pem::Pem::new("CERTIFICATE", der.clone()), config))
            .collect()
    }

    /// SHA-256 of the canonical PEM text.
    pub fn fingerprint(&self) -> String {
        sha256_hex(self.to_pem().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn canonical_form_is_order_and_duplicate_independent() {
        let (a, b) = (cert("a"), cert("b"));
        let ab = Bundle::from_pem("ab", &format!("{a}{b}")).unwrap();
        let ba = Bundle::from_pem("ba", &format!("{b}\r\n{a}{a}")).unwrap();
        assert_eq!(ab, ba);
        assert_eq!(ab.len(), 2);
        assert_eq!(ab.to_pem(), ba.to_pem());
        assert_eq!(ab.fingerprint(), ba.fingerprint());
        let fps: Vec<_> = ab.fingerprints().collect();
        assert!(fps[0] < fps[1], "ordered by DER hash");
    }

    #[test]
    fn canonical_text_has_64_char_lines_lf_and_one_trailing_newline() {
        let text = Bundle::from_pem("x", &cert("x")).unwrap().to_pem();
        assert!(!text.contains('\r'));
        assert!(text.ends_with("-----END CERTIFICATE-----\n"));
        assert!(!text.ends_with("\n\n"));
        assert!(text.lines().all(|l| l.len() <= 64));
        // The fingerprint is the hash of exactly this text.
        assert_eq!(
            Bundle::from_pem("x", &text).unwrap().fingerprint(),
            sha256_hex(text.as_bytes())
        );
    }

    #[test]
    fn errors_name_the_source_and_the_problem() {
        let e = Bundle::from_pem("Secret cert-manager/linkerd-trust-anchor", "junk").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Secret cert-manager/linkerd-trust-anchor: holds no CERTIFICATE block"
        );
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let e = Bundle::from_pem("k", &key).unwrap_err();
        assert!(
            matches!(e, BundleError::NotACertificate { index: 0, .. }),
            "{e}"
        );
        let bogus = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        let e = Bundle::from_pem("b", &bogus).unwrap_err();
        assert!(matches!(e, BundleError::NotX509 { .. }), "{e}");
    }

    #[test]
    fn a_cut_off_block_or_bytes_after_a_certificate_are_errors_not_lost_anchors() {
        let (a, b) = (cert("a"), cert("b"));
        let cut = &b[..b.len() / 2];
        let e = Bundle::from_pem("anchors.pem", &format!("{a}{cut}")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "anchors.pem: not valid PEM: 1 of 2 BEGIN lines start no complete block (cut off, or no END line)"
        );
        let e = Bundle::from_pem("anchors.pem", cut).unwrap_err();
        assert!(matches!(e, BundleError::Pem { .. }), "{e}");
        // Text around the blocks is allowed, as PEM allows it.
        let commented = format!("# the anchors\n{a}between\n{b}");
        assert_eq!(Bundle::from_pem("c", &commented).unwrap().len(), 2);

        let mut der = pem::parse(&a).unwrap().into_contents();
        der.extend_from_slice(&[0, 0]);
        let padded = pem::encode(&pem::Pem::new("CERTIFICATE", der));
        let e = Bundle::from_pem("padded.pem", &padded).unwrap_err();
        assert_eq!(
            e.to_string(),
            "padded.pem: certificate 0 is not valid X.509: 2 bytes follow the certificate"
        );
    }

    #[test]
    fn sha256_hex_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
