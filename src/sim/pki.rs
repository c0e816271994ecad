//! Certificate helpers shared by the simulated cert-manager, identity controller and proxies:
//! PEM in and out, validity, and "was this certificate signed by that one".

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what}: not valid PEM: {message}")]
    Pem { what: String, message: String },
    #[error("{what}: holds no certificate")]
    NoCertificate { what: String },
    #[error("{what}: not a valid X.509 certificate: {message}")]
    X509 { what: String, message: String },
    #[error("{what}: private key is not usable: {message}")]
    Key { what: String, message: String },
    #[error("signing {what}: {source}")]
    Sign {
        what: String,
        #[source]
        source: rcgen::Error,
    },
}

/// What the simulator needs to know about one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub subject_common_name: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
    pub fingerprint: String,
    /// SHA-256 of the SubjectPublicKeyInfo: equal across renewals that keep the key.
    pub public_key_fingerprint: String,
}

/// The certificates of a PEM text, as DER, in order.
pub fn pem_certs(what: &str, text: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let blocks = pem::parse_many(text).map_err(|e| PkiError::Pem {
        what: what.to_owned(),
        message: e.to_string(),
    })?;
    let ders: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .collect();
    if ders.is_empty() {
        return Err(PkiError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(ders)
}

/// One certificate as PEM (64-character lines, `\n` endings).
pub fn to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Parses the fields the simulator reads.
pub fn info(what: &str, der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::X509 {
        what: what.to_owned(),
        message: e.to_string(),
    })?;
    let subject_common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok(CertInfo {
        subject_common_name,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        is_ca: cert.is_ca(),
        fingerprint: crate::bundle::sha256_hex(der),
        public_key_fingerprint: crate::bundle::sha256_hex(cert.public_key().raw),
    })
}

/// Whether `child` names `parent`'s subject as its issuer and carries a signature that
/// `parent`'s key verifies. Unparseable input is simply "not signed by".
pub fn signed_by(child: &[u8], parent: &[u8]) -> bool {
    let (Ok((_, child)), Ok((_, parent))) = (
        X509Certificate::from_der(child),
        X509Certificate::from_der(parent),
    ) else {
        return false;
    };
    child.issuer() == parent.subject() && child.verify_signature(Some(parent.public_key())).is_ok()
}

/// Whether `cert` is valid at `now`.
pub fn valid_at(cert: &CertInfo, now: OffsetDateTime) -> bool {
    cert.not_before <= now && now <= cert.not_after
}

/// Why a chain does not verify against a set of anchors. `index` counts from 0 (the end
/// certificate); messages count from 1, as a reader does.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("the chain is empty")]
    Empty,
    #[error("certificate {} of the chain is not valid X.509", .index + 1)]
    Unparseable { index: usize },
    #[error(
        "certificate {} of the chain ({subject}) is not valid now (valid {not_before} to {not_after})",
        .index + 1
    )]
    NotValidNow {
        index: usize,
        subject: String,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    #[error("certificate {} of the chain ({subject}) signs others but is not a CA", .index + 1)]
    NotACa { index: usize, subject: String },
    #[error("the chain ending in {subject} is not signed by any of the {anchors} trust anchor(s)")]
    UnknownIssuer { subject: String, anchors: usize },
}

/// Verifies `chain` (end certificate first, each signed by the next) against `anchors` at `now`,
/// as Go's `x509.Certificate.Verify` does for the identity controller: every certificate valid
/// now, each signed by the next, the last signed by (or equal to) an anchor.
pub fn verify_chain(
    chain: &[Vec<u8>],
    anchors: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<(), ChainError> {
    let last = chain.last().ok_or(ChainError::Empty)?;
    for (index, der) in chain.iter().enumerate() {
        let cert = info("chain", der).map_err(|_| ChainError::Unparseable { index })?;
        if !valid_at(&cert, now) {
            return Err(ChainError::NotValidNow {
                index,
                subject: cert.subject_common_name,
                not_before: cert.not_before,
                not_after: cert.not_after,
            });
        }
        if index > 0 && !cert.is_ca {
            return Err(ChainError::NotACa {
                index,
                subject: cert.subject_common_name,
            });
        }
        if let Some(next) = chain.get(index + 1)
            && !signed_by(der, next)
        {
            return Err(ChainError::UnknownIssuer {
                subject: cert.subject_common_name,
                anchors: anchors.len(),
            });
        }
    }
    let is_ca = |der: &[u8]| info("anchor", der).is_ok_and(|i| i.is_ca);
    if anchors
        .iter()
        .any(|a| a == last || (signed_by(last, a) && is_ca(a)))
    {
        Ok(())
    } else {
        let subject = info("chain", last)
            .map(|c| c.subject_common_name)
            .unwrap_or_default();
        Err(ChainError::UnknownIssuer {
            subject,
            anchors: anchors.len(),
        })
    }
}

/// What to put in a certificate the simulator signs.
#[derive(Clone, Debug)]
pub struct Template {
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub is_ca: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Template {
    fn params(&self) -> Result<CertificateParams, PkiError> {
        let sign_err = |source| PkiError::Sign {
            what: self.common_name.clone(),
            source,
        };
        let mut params = CertificateParams::new(self.dns_names.clone()).map_err(sign_err)?;
        if !self.common_name.is_empty() {
            params
                .distinguished_name
                .push(DnType::CommonName, self.common_name.as_str());
        }
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        if self.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        } else {
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        }
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    /// A self-signed certificate for `key`.
    pub fn self_signed(&self, key: &KeyPair) -> Result<Vec<u8>, PkiError> {
        let cert = self
            .params()?
            .self_signed(key)
            .map_err(|source| PkiError::Sign {
                what: self.common_name.clone(),
                source,
            })?;
        Ok(cert.der().to_vec())
    }

    /// A certificate for `public_key` signed by the CA `ca_cert_der` with `ca_key`.
    pub fn signed_by(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        ca_cert_der: &[u8],
        ca_key: &KeyPair,
    ) -> Result<Vec<u8>, PkiError> {
        let sign_err = |source| PkiError::Sign {
            what: self.common_name.clone(),
            source,
        };
        let ca_der = rustls::pki_types::CertificateDer::from(ca_cert_der.to_vec());
        let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(sign_err)?;
        let cert = self
            .params()?
            .signed_by(public_key, &issuer)
            .map_err(sign_err)?;
        Ok(cert.der().to_vec())
    }
}

/// An ECDSA P-256 key (rcgen's default, and what Linkerd's and cert-manager's defaults use).
pub fn generate_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate().map_err(|e| PkiError::Key {
        what: "new key".to_owned(),
        message: e.to_string(),
    })
}

/// Parses a PEM private key.
pub fn parse_key(what: &str, pem_text: &str) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(pem_text).map_err(|e| PkiError::Key {
        what: what.to_owned(),
        message: e.to_string(),
    })
}

/// 16 random bytes with the top bit clear (a positive DER integer), from the OS's generator
/// through ring, which rustls already links.
fn random_serial() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut serial = [0u8; 16];
    // The system generator failing is not recoverable anyway; a fixed serial is still valid.
    let _ = ring::rand::SystemRandom::new().fill(&mut serial);
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    serial
}

/// Seconds since the epoch as an `OffsetDateTime`, truncated to whole seconds (X.509 times have
/// second precision, so comparisons with parsed certificates stay exact).
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn template(cn: &str, is_ca: bool, now: OffsetDateTime, lifetime: u64) -> Template {
        Template {
            common_name: cn.into(),
            dns_names: if is_ca { vec![] } else { vec![cn.into()] },
            is_ca,
            not_before: now,
            not_after: now + Duration::from_secs(lifetime),
        }
    }

    #[test]
    fn chains_verify_only_to_their_own_anchor_and_while_valid() {
        let now = now();
        let (ak, bk, ik, lk) = (
            generate_key().unwrap(),
            generate_key().unwrap(),
            generate_key().unwrap(),
            generate_key().unwrap(),
        );
        let a = template("root-a", true, now, 3600)
            .self_signed(&ak)
            .unwrap();
        let b = template("root-b", true, now, 3600)
            .self_signed(&bk)
            .unwrap();
        let i = template("issuer", true, now, 600)
            .signed_by(&ik, &a, &ak)
            .unwrap();
        let leaf = template(
            "web.shop.serviceaccount.identity.linkerd.cluster.local",
            false,
            now,
            60,
        )
        .signed_by(&lk, &i, &ik)
        .unwrap();
        let chain = vec![leaf.clone(), i.clone()];
        assert!(signed_by(&leaf, &i) && signed_by(&i, &a) && !signed_by(&i, &b));
        assert_eq!(verify_chain(&chain, std::slice::from_ref(&a), now), Ok(()));
        assert_eq!(verify_chain(&chain, &[b.clone(), a.clone()], now), Ok(()));
        assert!(matches!(
            verify_chain(&chain, std::slice::from_ref(&b), now),
            Err(ChainError::UnknownIssuer { .. })
        ));
        assert!(matches!(
            verify_chain(
                &chain,
                std::slice::from_ref(&a),
                now + Duration::from_secs(120)
            ),
            Err(ChainError::NotValidNow { index: 0, .. })
        ));
        // A certificate that is not a CA cannot sign for others.
        let fake = template("not-a-ca", false, now, 600)
            .signed_by(&ik, &a, &ak)
            .unwrap();
        let bad = template("x", false, now, 60)
            .signed_by(&lk, &fake, &ik)
            .unwrap();
        assert!(matches!(
            verify_chain(&[bad, fake], &[a], now),
            Err(ChainError::NotACa { index: 1, .. })
        ));
    }
}
