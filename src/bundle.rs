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

/// The bundle's text under `key` in a ConfigMap's `data`, where Linkerd's chart, trust-manager
/// and the operator all keep it. The key under `binaryData` instead (where a write to `data`
/// would be refused, as a key may not be in both) is an error that says so.
pub fn configmap_text<'a>(
    configmap: &'a k8s_openapi::api::core::v1::ConfigMap,
    key: &str,
) -> Result<Option<&'a str>, String> {
    if let Some(text) = configmap.data.as_ref().and_then(|d| d.get(key)) {
        return Ok(Some(text));
    }
    if configmap
        .binary_data
        .as_ref()
        .is_some_and(|d| d.contains_key(key))
    {
        return Err(format!(
            "{key} is under binaryData; the bundle is read and written under data: move it there"
        ));
    }
    Ok(None)
}

/// `der` read as one X.509 certificate and nothing after it: bytes after the certificate
/// would be kept in every bundle built from it and change its fingerprint, though no TLS
/// library reads them.
pub fn whole_certificate(
    der: &[u8],
) -> Result<x509_parser::certificate::X509Certificate<'_>, String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes follow the certificate", rest.len()));
    }
    Ok(cert)
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
    /// `number` counts the source's PEM blocks from 1, out of `blocks`.
    #[error("{source_name}: PEM block {number} of {blocks} is a {tag}, not a CERTIFICATE")]
    NotACertificate {
        source_name: String,
        number: usize,
        blocks: usize,
        tag: String,
    },
    #[error(
        "{source_name}: the certificate in PEM block {number} of {blocks} is not valid X.509: {message}"
    )]
    NotX509 {
        source_name: String,
        number: usize,
        blocks: usize,
        message: String,
    },
}

/// What would make an anchor a poor one, though it can still be bundled: `linkerd-trust bundle`
/// warns of these and prints the bundle all the same (a rotation bundles the old anchor beside
/// the new, and the old one may be close to its end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Concern {
    /// `notAfter` (RFC 3339; valid through that second) has passed: verifiers that check a
    /// root's validity period, Linkerd's Go control plane among them, refuse chains that end
    /// at it.
    Expired { at: String },
    /// `notBefore` (RFC 3339) is still to come.
    NotYetValid { from: String },
    /// No `basicConstraints CA:TRUE`: not meant to sign certificates.
    NotACa,
    /// A CA whose `keyUsage` leaves out `keyCertSign`: Go's verifier (Linkerd's control plane,
    /// and the API server's webhook client) and OpenSSL refuse every certificate it signed.
    /// (rustls' webpki, in Linkerd's proxies, does not look.) A `keyUsage` with no bit set
    /// counts as none, as Go reads it.
    CannotSign,
}

/// A [`Concern`] about one certificate of a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorWarning {
    /// The subject, as `CN=root.linkerd.cluster.local` (old and new anchors often share it).
    pub subject: String,
    /// SHA-256 of the DER, as [`Bundle::fingerprints`].
    pub fingerprint: String,
    pub concern: Concern,
}

impl std::fmt::Display for AnchorWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = &self.fingerprint[..self.fingerprint.len().min(12)];
        let subject = if self.subject.is_empty() {
            "with no subject"
        } else {
            &self.subject
        };
        write!(f, "anchor {subject} (sha256 {short}...) ")?;
        match &self.concern {
            Concern::Expired { at } => write!(f, "has expired (not valid after {at})"),
            Concern::NotYetValid { from } => write!(f, "is not valid before {from}"),
            Concern::NotACa => write!(f, "is not a CA certificate (no basicConstraints CA:TRUE)"),
            Concern::CannotSign => write!(
                f,
                "may not sign certificates (its keyUsage leaves out keyCertSign)"
            ),
        }
    }
}

/// `unix` seconds as RFC 3339 (UTC), or the number itself if out of range.
fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix} (Unix time)"))
}

impl Bundle {
    /// The concerns about each certificate at `now` (Unix seconds), in canonical order. An
    /// anchor is valid from its `notBefore` second through its `notAfter` second (RFC 5280).
    pub fn warnings(&self, now: i64) -> Vec<AnchorWarning> {
        let mut out = Vec::new();
        for (fingerprint, der) in &self.certs {
            // Every certificate was parsed when it was added.
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
                continue;
            };
            let validity = cert.validity();
            let mut concerns = Vec::new();
            if validity.not_after.timestamp() < now {
                concerns.push(Concern::Expired {
                    at: rfc3339(validity.not_after.timestamp()),
                });
            }
            if validity.not_before.timestamp() > now {
                concerns.push(Concern::NotYetValid {
                    from: rfc3339(validity.not_before.timestamp()),
                });
            }
            if !cert.is_ca() {
                concerns.push(Concern::NotACa);
            } else if cert
                .key_usage()
                .ok()
                .flatten()
                .is_some_and(|usage| usage.value.flags != 0 && !usage.value.key_cert_sign())
            {
                concerns.push(Concern::CannotSign);
            }
            out.extend(concerns.into_iter().map(|concern| AnchorWarning {
                subject: cert.subject().to_string(),
                fingerprint: fingerprint.clone(),
                concern,
            }));
        }
        out
    }

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
        let count = blocks.len();
        for (number, block) in (1..).zip(blocks) {
            if block.tag() != "CERTIFICATE" {
                return Err(BundleError::NotACertificate {
                    source_name: source_name.to_owned(),
                    number,
                    blocks: count,
                    tag: block.tag().to_owned(),
                });
            }
            let der = block.into_contents();
            let not_x509 = |message: String| BundleError::NotX509 {
                source_name: source_name.to_owned(),
                number,
                blocks: count,
                message,
            };
            whole_certificate(&der).map_err(not_x509)?;
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
        // Blocks are counted from 1, as a reader counts them.
        let e = Bundle::from_pem("k", &format!("{}{key}", cert("a"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "k: PEM block 2 of 2 is a PRIVATE KEY, not a CERTIFICATE"
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
            "padded.pem: the certificate in PEM block 1 of 1 is not valid X.509: 2 bytes follow the certificate"
        );
    }

    #[test]
    fn concerns_name_expired_not_yet_valid_non_ca_and_non_signing_anchors() {
        let template_with = |cn: &str,
                             not_before: i64,
                             not_after: i64,
                             is_ca: bool,
                             usages: &[rcgen::KeyUsagePurpose]| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
            params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
            if is_ca {
                params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            }
            params.key_usages = usages.to_vec();
            params.self_signed(&key).unwrap().pem()
        };
        let template = |cn: &str, not_before: i64, not_after: i64, is_ca: bool| {
            template_with(cn, not_before, not_after, is_ca, &[])
        };
        let now = 1_800_000_000; // 2027-01-15T08:00:00Z
        let good = template("good", now - 10, now + 10, true);
        let expired = template("old", now - 20, now - 1, true);
        let future = template("new", now + 60, now + 120, true);
        let leaf = template("leaf", now - 10, now + 10, false);
        use rcgen::KeyUsagePurpose::{DigitalSignature, KeyCertSign};
        let unsigning = template_with("nosign", now - 10, now + 10, true, &[DigitalSignature]);
        // keyUsage with keyCertSign, or no keyUsage at all, is fine.
        let signing = template_with("sign", now - 10, now + 10, true, &[KeyCertSign]);
        let bundle = Bundle::from_pem(
            "b",
            &format!("{good}{expired}{future}{leaf}{unsigning}{signing}"),
        )
        .unwrap();
        let mut said: Vec<_> = bundle.warnings(now).iter().map(|w| w.to_string()).collect();
        said.sort();
        let fp = |pem_text: &str| {
            Bundle::from_pem("x", pem_text)
                .unwrap()
                .fingerprints()
                .next()
                .unwrap()[..12]
                .to_owned()
        };
        assert_eq!(
            said,
            [
                format!(
                    "anchor CN=leaf (sha256 {}...) is not a CA certificate (no basicConstraints CA:TRUE)",
                    fp(&leaf)
                ),
                format!(
                    "anchor CN=new (sha256 {}...) is not valid before 2027-01-15T08:01:00Z",
                    fp(&future)
                ),
                format!(
                    "anchor CN=nosign (sha256 {}...) may not sign certificates (its keyUsage leaves out keyCertSign)",
                    fp(&unsigning)
                ),
                format!(
                    "anchor CN=old (sha256 {}...) has expired (not valid after 2027-01-15T07:59:59Z)",
                    fp(&expired)
                ),
            ]
        );
        // An anchor is valid from its notBefore second through its notAfter second.
        let good = Bundle::from_pem("g", &good).unwrap();
        assert!(good.warnings(now + 10).is_empty());
        assert!(good.warnings(now - 10).is_empty());
        let concerns = |at: i64| -> Vec<Concern> {
            good.warnings(at).into_iter().map(|w| w.concern).collect()
        };
        assert_eq!(
            concerns(now + 11),
            [Concern::Expired {
                at: "2027-01-15T08:00:10Z".to_owned()
            }]
        );
        assert_eq!(
            concerns(now - 11),
            [Concern::NotYetValid {
                from: "2027-01-15T07:59:50Z".to_owned()
            }]
        );
    }

    #[test]
    fn a_bundle_under_binary_data_is_an_error_not_an_absent_bundle() {
        use k8s_openapi::ByteString;
        use k8s_openapi::api::core::v1::ConfigMap;
        let pem_text = cert("a");
        let mut cm = ConfigMap::default();
        assert_eq!(configmap_text(&cm, "ca-bundle.crt"), Ok(None));
        cm.binary_data = Some(
            [(
                "ca-bundle.crt".to_owned(),
                ByteString(pem_text.clone().into_bytes()),
            )]
            .into(),
        );
        assert_eq!(
            configmap_text(&cm, "ca-bundle.crt"),
            Err(
                "ca-bundle.crt is under binaryData; the bundle is read and written under data: move it there"
                    .to_owned()
            )
        );
        // Another key under binaryData is no concern of the bundle's.
        assert_eq!(configmap_text(&cm, "other.crt"), Ok(None));
        // The key in both is refused by the API server; were it not, data would win.
        cm.data = Some([("ca-bundle.crt".to_owned(), pem_text.clone())].into());
        assert_eq!(
            configmap_text(&cm, "ca-bundle.crt"),
            Ok(Some(pem_text.as_str()))
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
