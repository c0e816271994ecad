//! Certificates as the reconciler reads them: PEM from Secrets and ConfigMaps into [`Cert`]s,
//! with problems that name the object.

use super::model::{Cert, Leaf, Problem};
use crate::bundle::sha256_hex;

/// Parses every CERTIFICATE block of `pem_text`; `object` names the source in problems.
pub fn parse_all(object: &str, key: &str, pem_text: &str) -> Result<Vec<Cert>, Problem> {
    let problem = |message: String| Problem {
        object: object.to_owned(),
        message: format!("{key}: {message}"),
    };
    let blocks = pem::parse_many(pem_text).map_err(|e| problem(format!("not valid PEM: {e}")))?;
    let mut out = Vec::new();
    for (number, block) in (1..).zip(&blocks) {
        if block.tag() != "CERTIFICATE" {
            continue;
        }
        let not_x509 = |e: String| {
            problem(format!(
                "the certificate in PEM block {number} of {} is not valid X.509: {e}",
                blocks.len()
            ))
        };
        // As a bundle holds it (`Bundle::from_pem`).
        let cert = crate::bundle::whole_certificate(block.contents()).map_err(not_x509)?;
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

/// The trust bundle's certificates, held to what a bundle may be, as the webhook and
/// `linkerd-trust bundle` hold it ([`crate::bundle::Bundle`]): certificates only, each block
/// whole. A Secret's `tls.crt` may sit beside its key; a bundle that carries a private key has
/// published it, and a cut-off block has lost an anchor.
pub fn parse_bundle(object: &str, key: &str, pem_text: &str) -> Result<Vec<Cert>, Problem> {
    crate::bundle::Bundle::from_pem(key, pem_text).map_err(|e| Problem {
        object: object.to_owned(),
        message: e.to_string(),
    })?;
    parse_all(object, key, pem_text)
}

/// The first certificate of `pem_text` (the leaf of a chain, or the one anchor).
pub fn parse_first(object: &str, key: &str, pem_text: &str) -> Result<Cert, Problem> {
    Ok(parse_all(object, key, pem_text)?.remove(0))
}

/// Whether `child` (DER) carries a valid signature by `parent`'s key (DER). The key only: see
/// [`signer_of`] and [`leaf_from`] for when that is not enough.
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

/// Which of `candidates` (in order of preference) signed `issuer` (DER): a candidate whose
/// subject the issuer names and whose key verifies its signature. When the anchor was renewed
/// with its old key (`rotationPolicy: Never`) several candidates pass that test; then the
/// signer is the newest one that already existed when the issuer was issued (its `notBefore`
/// no later than the issuer's), since a renewal onto the new anchor can only follow it.
pub fn signer_of<'a>(issuer: &[u8], candidates: &[&'a Cert]) -> Option<&'a Cert> {
    let Ok((_, child)) = x509_parser::parse_x509_certificate(issuer) else {
        return None;
    };
    let issued_at = child.validity().not_before.timestamp();
    let mut signers = Vec::new();
    for &candidate in candidates {
        let Some(der) = der(&candidate.pem) else {
            continue;
        };
        let Ok((_, parent)) = x509_parser::parse_x509_certificate(&der) else {
            continue;
        };
        if child.issuer() == parent.subject()
            && child.verify_signature(Some(parent.public_key())).is_ok()
        {
            signers.push((candidate, parent.validity().not_before.timestamp()));
        }
    }
    signers
        .iter()
        .filter(|(_, since)| *since <= issued_at)
        // The newest; among equals the first in order of preference (`max_by_key` keeps the
        // last of equals, hence the reversal).
        .rev()
        .max_by_key(|(_, since)| *since)
        .or(signers.first())
        .map(|(c, _)| *c)
}

/// What a pod's presented chain (DER, leaf first) says about its leaf, given the current
/// issuer's certificate (DER). The leaf must be signed by the issuer's key *and* arrive with the
/// issuer's certificate: an issuer renewed with its old key (`rotationPolicy: Never`) verifies
/// leaves it did not issue, and a proxy still presenting the old issuer's certificate is only
/// trusted by peers that still hold the old issuer's anchor.
pub fn leaf_from(chain: &[Vec<u8>], issuer: &[u8]) -> Leaf {
    match chain {
        [] => Leaf::Unreachable("the proxy presented no certificate".to_owned()),
        [leaf, presented, ..] if presented.as_slice() == issuer && signed_by_der(leaf, issuer) => {
            Leaf::FromIssuer
        }
        _ => Leaf::FromOtherIssuer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::pki::{self, Template};
    use std::time::Duration;
    use time::OffsetDateTime;

    fn ca(cn: &str, not_before: OffsetDateTime) -> Template {
        Template {
            common_name: cn.to_owned(),
            dns_names: vec![],
            is_ca: true,
            not_before,
            not_after: not_before + Duration::from_secs(3600),
        }
    }

    fn cert(der: &[u8]) -> Cert {
        parse_first("test", "tls.crt", &pki::to_pem(der)).unwrap()
    }

    /// What the reconciler copies (into the previous-anchor Secret, into the bundle) is built
    /// from a [`Cert`]'s `pem`: a key that sits next to the certificate in the same text never
    /// travels with it.
    #[test]
    fn a_key_beside_the_certificate_is_never_carried() {
        let key = pki::generate_key().unwrap();
        let der = ca("anchor", pki::now()).self_signed(&key).unwrap();
        let key_pem = key.serialize_pem();
        assert!(key_pem.contains("PRIVATE KEY"));
        for text in [
            format!("{key_pem}{}", pki::to_pem(&der)),
            format!("{}{key_pem}", pki::to_pem(&der)),
        ] {
            let certs = parse_all("Secret x/y", "tls.crt", &text).unwrap();
            assert_eq!(certs.len(), 1);
            assert_eq!(certs[0].pem, pki::to_pem(&der));
            assert!(!certs[0].pem.contains("PRIVATE KEY"));
        }
        // A key alone is no certificate.
        let error = parse_all("Secret x/y", "tls.crt", &key_pem).unwrap_err();
        assert_eq!(
            error.to_string(),
            "Secret x/y: tls.crt: holds no certificate"
        );
    }

    /// A certificate with bytes after its DER is refused, as a bundle refuses it: every bundle
    /// the reconciler builds from what it read is one `Bundle` reads back whole.
    #[test]
    fn a_certificate_with_bytes_after_it_is_a_problem() {
        let key = pki::generate_key().unwrap();
        let der = ca("anchor", pki::now()).self_signed(&key).unwrap();
        let mut padded = der.clone();
        padded.extend_from_slice(&[0, 0]);
        let error = parse_all("Secret x/y", "tls.crt", &pki::to_pem(&padded)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "Secret x/y: tls.crt: the certificate in PEM block 1 of 1 is not valid X.509: 2 bytes follow the certificate"
        );
        let whole = cert(&der);
        let bundle = crate::reconcile::decide::bundle_of([&whole]);
        assert_eq!(
            bundle.fingerprints().collect::<Vec<_>>(),
            [&whole.fingerprint]
        );
    }

    /// A bundle is certificates only: a key in it, or a block cut off, is a problem naming the
    /// ConfigMap and the key (the rotation parks on it), not skipped.
    #[test]
    fn a_bundle_with_a_key_or_a_cut_off_block_is_a_problem() {
        let key = pki::generate_key().unwrap();
        let der = ca("anchor", pki::now()).self_signed(&key).unwrap();
        let (cert_pem, key_pem) = (pki::to_pem(&der), key.serialize_pem());
        let object = "ConfigMap linkerd/linkerd-identity-trust-roots";
        let problem = |text: &str| {
            parse_bundle(object, "ca-bundle.crt", text)
                .unwrap_err()
                .to_string()
        };
        assert!(
            problem(&format!("{cert_pem}{key_pem}")).starts_with(&format!(
                "{object}: ca-bundle.crt: PEM block 2 of 2 is a PRIVATE KEY"
            )),
            "{}",
            problem(&format!("{cert_pem}{key_pem}"))
        );
        let cut = &cert_pem[..cert_pem.len() / 2];
        assert_eq!(
            problem(&format!("{cert_pem}{cut}")),
            format!(
                "{object}: ca-bundle.crt: not valid PEM: 1 of 2 BEGIN lines start no complete block (cut off, or no END line)"
            )
        );
        assert_eq!(
            parse_bundle(object, "ca-bundle.crt", &cert_pem).unwrap(),
            parse_all(object, "ca-bundle.crt", &cert_pem).unwrap()
        );
    }

    #[test]
    fn an_issuer_renewed_with_its_old_key_converges_a_leaf_only_with_its_own_certificate() {
        let t0 = pki::now();
        let (anchor_key, issuer_key, leaf_key) = (
            pki::generate_key().unwrap(),
            pki::generate_key().unwrap(),
            pki::generate_key().unwrap(),
        );
        let anchor = ca("root", t0).self_signed(&anchor_key).unwrap();
        let old_issuer = ca("identity", t0)
            .signed_by(&issuer_key, &anchor, &anchor_key)
            .unwrap();
        let new_issuer = ca("identity", t0 + Duration::from_secs(60))
            .signed_by(&issuer_key, &anchor, &anchor_key)
            .unwrap();
        let mut leaf_template = ca("web", t0);
        leaf_template.is_ca = false;
        let leaf = leaf_template
            .signed_by(&leaf_key, &old_issuer, &issuer_key)
            .unwrap();
        // The same key signed both: the signature alone cannot tell them apart.
        assert!(signed_by_der(&leaf, &new_issuer));
        assert_eq!(
            leaf_from(&[leaf.clone(), old_issuer.clone()], &new_issuer),
            Leaf::FromOtherIssuer
        );
        assert_eq!(
            leaf_from(&[leaf.clone(), new_issuer.clone()], &new_issuer),
            Leaf::FromIssuer
        );
        assert_eq!(
            leaf_from(std::slice::from_ref(&leaf), &new_issuer),
            Leaf::FromOtherIssuer
        );
        assert!(matches!(leaf_from(&[], &new_issuer), Leaf::Unreachable(_)));
        // A leaf of another key presented with the right certificate is not from the issuer.
        let stranger = leaf_template
            .signed_by(&leaf_key, &anchor, &anchor_key)
            .unwrap();
        assert_eq!(
            leaf_from(&[stranger, new_issuer.clone()], &new_issuer),
            Leaf::FromOtherIssuer
        );
    }

    #[test]
    fn an_anchor_renewed_with_its_old_key_signed_only_what_came_after_it() {
        let t0 = pki::now() - Duration::from_secs(600);
        let (anchor_key, issuer_key) = (pki::generate_key().unwrap(), pki::generate_key().unwrap());
        let old_anchor = ca("root", t0).self_signed(&anchor_key).unwrap();
        let old_issuer = ca("identity", t0 + Duration::from_secs(10))
            .signed_by(&issuer_key, &old_anchor, &anchor_key)
            .unwrap();
        let new_anchor = ca("root", t0 + Duration::from_secs(100))
            .self_signed(&anchor_key)
            .unwrap();
        let new_issuer = ca("identity", t0 + Duration::from_secs(200))
            .signed_by(&issuer_key, &new_anchor, &anchor_key)
            .unwrap();
        let (old, new) = (cert(&old_anchor), cert(&new_anchor));
        // The current anchor is preferred, the old one second: both verify either issuer.
        let candidates = [&new, &old];
        assert_eq!(signer_of(&old_issuer, &candidates), Some(&old));
        assert_eq!(signer_of(&new_issuer, &candidates), Some(&new));
        // An issuer dated before both (a clock set back): the first that verifies.
        let early = ca("identity", t0 - Duration::from_secs(100))
            .signed_by(&issuer_key, &old_anchor, &anchor_key)
            .unwrap();
        assert_eq!(signer_of(&early, &candidates), Some(&new));
        // Two that both qualify and were issued the same second: the first preferred.
        let twin = cert(&ca("root", t0).self_signed(&anchor_key).unwrap());
        assert_ne!(twin.fingerprint, old.fingerprint, "a new serial");
        assert_eq!(signer_of(&old_issuer, &[&twin, &old]), Some(&twin));
        assert_eq!(signer_of(&old_issuer, &[&old, &twin]), Some(&old));
    }

    #[test]
    fn an_anchor_with_a_new_key_is_the_signer_only_of_what_it_signed() {
        let t0 = pki::now() - Duration::from_secs(600);
        let (k1, k2, ki) = (
            pki::generate_key().unwrap(),
            pki::generate_key().unwrap(),
            pki::generate_key().unwrap(),
        );
        let a1 = ca("root", t0).self_signed(&k1).unwrap();
        let a2 = ca("root", t0 + Duration::from_secs(100))
            .self_signed(&k2)
            .unwrap();
        // Issued after the new anchor existed, but by the old one.
        let late_old = ca("identity", t0 + Duration::from_secs(200))
            .signed_by(&ki, &a1, &k1)
            .unwrap();
        let (c1, c2) = (cert(&a1), cert(&a2));
        assert_eq!(signer_of(&late_old, &[&c2, &c1]), Some(&c1));
        // Another subject with the right key is not the signer.
        let other = ca("another-root", t0).self_signed(&k1).unwrap();
        assert_eq!(signer_of(&late_old, &[&cert(&other)]), None);
        assert_eq!(signer_of(b"not a certificate", &[&c1]), None);
    }
}
