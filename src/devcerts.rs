//! `trust-rotation-operator certs dev`: a throwaway CA and a webhook serving certificate for
//! local development and tests.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum DevCertsError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The files written.
#[derive(Clone, Debug)]
pub struct DevCerts {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Names the serving certificate covers: loopback for a local API server, the Service's DNS
/// names for a cluster.
pub fn serving_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        "localhost".to_owned(),
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Writes `ca.crt`, `ca.key`, `tls.crt` and `tls.key` into `dir` (created if missing).
pub fn write(dir: &Path, dns_names: Vec<String>) -> Result<DevCerts, DevCertsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "trust-rotation-operator dev CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(dns_names)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .distinguished_name
        .push(DnType::CommonName, "trust-rotation-operator webhook");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca)?;

    let out = DevCerts {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    let write_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| DevCertsError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    for (path, pem) in [
        (&out.ca_cert, ca_cert.pem()),
        (&out.ca_key, ca.key().serialize_pem()),
        (&out.cert, cert.pem()),
        (&out.key, key.serialize_pem()),
    ] {
        std::fs::write(path, pem).map_err(write_err(path))?;
    }
    Ok(out)
}
