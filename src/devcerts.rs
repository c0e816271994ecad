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
    match (dir.metadata(), dir.symlink_metadata()) {
        (Ok(meta), _) if !meta.is_dir() => {
            return Err(write_err(dir)(std::io::Error::other("not a directory")));
        }
        (Err(_), Ok(link)) if link.is_symlink() => {
            return Err(write_err(dir)(std::io::Error::other(
                "a symbolic link to nothing",
            )));
        }
        _ => std::fs::create_dir_all(dir).map_err(write_err(dir))?,
    }
    // All four or none: a CA from this run with a serving pair from the last would not verify.
    // So every file is written beside its place first (a failure removes what was written and
    // leaves the old set as it was), and only then is each renamed into place.
    let files = [
        (&out.ca_cert, ca_cert.pem(), 0o644),
        (&out.ca_key, ca.key().serialize_pem(), 0o600),
        (&out.cert, cert.pem(), 0o644),
        (&out.key, key.serialize_pem(), 0o600),
    ];
    for (path, _, _) in &files {
        if path.symlink_metadata().is_ok_and(|m| !m.is_file()) {
            let source = std::io::Error::other("not a regular file");
            return Err(write_err(path)(source));
        }
    }
    let mut written: Vec<(PathBuf, &Path)> = Vec::new();
    for (path, pem, mode) in &files {
        let temp = temp_path(path, "tmp");
        if let Err(source) = write_new(&temp, pem.as_bytes(), *mode) {
            for (temp, _) in &written {
                let _ = std::fs::remove_file(temp);
            }
            return Err(write_err(&temp)(source));
        }
        written.push((temp, path));
    }
    install(&written, &mut |from, to| std::fs::rename(from, to))
        .map_err(|(path, source)| write_err(&path)(source))?;
    Ok(out)
}

/// Renames each written file (`temp`, `target`) into place with `rename`, all or none: each
/// target there before is first kept under a second name (a hard link, so it never leaves its
/// place), and if a rename fails, the targets replaced so far get their old files back. On
/// failure: the target that could not be written and why, with nothing of this run left.
fn install(
    written: &[(PathBuf, &Path)],
    rename: &mut dyn FnMut(&Path, &Path) -> std::io::Result<()>,
) -> Result<(), (PathBuf, std::io::Error)> {
    let mut kept: Vec<Option<PathBuf>> = Vec::new();
    let mut failure = None;
    for (_, target) in written {
        if !target.exists() {
            kept.push(None);
            continue;
        }
        let old = temp_path(target, "old");
        let _ = std::fs::remove_file(&old);
        match std::fs::hard_link(target, &old) {
            Ok(()) => kept.push(Some(old)),
            Err(e) => {
                failure = Some((target.to_path_buf(), e));
                break;
            }
        }
    }
    let mut replaced = 0;
    if failure.is_none() {
        for (temp, target) in written {
            if let Err(e) = rename(temp, target) {
                failure = Some((target.to_path_buf(), e));
                break;
            }
            replaced += 1;
        }
    }
    if failure.is_some() {
        for ((_, target), old) in written.iter().zip(&kept).take(replaced) {
            let _ = match old {
                Some(old) => std::fs::rename(old, target),
                None => std::fs::remove_file(target),
            };
        }
        for (temp, _) in &written[replaced..] {
            let _ = std::fs::remove_file(temp);
        }
    }
    // After a failure, an old file that could not be put back stays under its second name.
    let spare = if failure.is_some() { replaced } else { 0 };
    for old in kept[spare..].iter().flatten() {
        let _ = std::fs::remove_file(old);
    }
    failure.map_or(Ok(()), Err)
}

/// `path` with `.suffix` added: where a file is written before it is renamed into place
/// (`tmp`), or where the file it replaces is kept until then (`old`).
fn temp_path(path: &Path, suffix: &str) -> PathBuf {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".");
    temp.push(suffix);
    PathBuf::from(temp)
}

/// Writes `contents` to a new file at `temp` (one left by an earlier run is replaced),
/// readable by its owner only when `mode` says so, and flushed to disk: renamed into place, it
/// is never seen half written by a running server re-reading it.
fn write_new(temp: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(temp)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A set that cannot be written whole is not written at all: the old four files stay as
    /// they were (a new CA beside the old serving pair would not verify), no temporary file is
    /// left, and the error names the file it could not write.
    #[test]
    fn a_set_that_cannot_be_written_whole_leaves_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["ca.crt", "ca.key", "tls.crt", "tls.key"];
        write(dir.path(), vec!["localhost".to_owned()]).unwrap();
        let read_all = || names.map(|n| std::fs::read(dir.path().join(n)).unwrap());
        let before = read_all();

        // The last file's temporary path is taken (by a directory).
        std::fs::create_dir(dir.path().join("tls.key.tmp")).unwrap();
        let error = write(dir.path(), vec!["localhost".to_owned()]).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "writing {}",
                dir.path().join("tls.key.tmp").display()
            )),
            "{error}"
        );
        assert_eq!(read_all(), before);
        std::fs::remove_dir(dir.path().join("tls.key.tmp")).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert_eq!(left, Vec::<String>::new());

        // A target that is a directory: refused before anything is written.
        std::fs::remove_file(dir.path().join("tls.crt")).unwrap();
        std::fs::create_dir(dir.path().join("tls.crt")).unwrap();
        let error = write(dir.path(), vec!["localhost".to_owned()]).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "writing {}: not a regular file",
                dir.path().join("tls.crt").display()
            )
        );
        assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), before[0]);
    }

    /// A rename that fails after others have replaced their files (an immutable file, a bind
    /// mount, another user's file in a sticky folder) puts the replaced ones back: the old set
    /// stays whole, or, on a first run, no part of the new one is left.
    #[test]
    fn a_rename_failing_midway_puts_back_the_files_already_replaced() {
        for had_old_set in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let names = ["ca.crt", "ca.key", "tls.crt", "tls.key"];
            let targets = names.map(|n| dir.path().join(n));
            let temps = targets.clone().map(|t| temp_path(&t, "tmp"));
            for (target, temp) in targets.iter().zip(&temps) {
                if had_old_set {
                    std::fs::write(target, "old").unwrap();
                }
                std::fs::write(temp, "new").unwrap();
            }
            let written: Vec<(PathBuf, &Path)> = temps
                .iter()
                .cloned()
                .zip(targets.iter().map(PathBuf::as_path))
                .collect();
            let mut renames = 0;
            let (path, error) = install(&written, &mut |from, to| {
                renames += 1;
                if to.ends_with("tls.crt") {
                    return Err(std::io::Error::other("refused"));
                }
                std::fs::rename(from, to)
            })
            .unwrap_err();
            assert_eq!(
                (path, error.to_string()),
                (targets[2].clone(), "refused".into())
            );
            assert_eq!(renames, 3, "it stops at the first failure");
            let mut left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            left.sort();
            if had_old_set {
                assert_eq!(left, names.map(String::from));
                for target in &targets {
                    assert_eq!(std::fs::read_to_string(target).unwrap(), "old");
                }
            } else {
                assert_eq!(left, Vec::<String>::new());
            }
        }
    }

    /// `--out` naming a file, or a symbolic link to nothing, is named as such (not as "File
    /// exists", which is what creating the folder says).
    #[test]
    fn an_out_path_that_is_no_folder_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("afile");
        std::fs::write(&file, "x").unwrap();
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        for (out, says) in [
            (&file, "not a directory"),
            (&dangling, "a symbolic link to nothing"),
        ] {
            let error = write(out, vec!["localhost".to_owned()]).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("writing {}: {says}", out.display())
            );
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
        // A link to a folder is a folder.
        let linked = dir.path().join("linked");
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), &linked).unwrap();
        write(&linked, vec!["localhost".to_owned()]).unwrap();
        assert!(dir.path().join("real/tls.crt").is_file());
    }

    #[test]
    fn private_keys_are_readable_by_their_owner_only_even_when_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        // A key left world-readable by an older version is tightened too.
        std::fs::write(dir.path().join("tls.key"), "old").unwrap();
        std::fs::set_permissions(
            dir.path().join("tls.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let certs = write(dir.path(), vec!["localhost".to_owned()]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&certs.ca_key), 0o600);
        assert_eq!(mode(&certs.key), 0o600);
        assert_eq!(mode(&certs.ca_cert) & 0o077, 0o044 & !umask());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 4, "no temporary file left behind: {names:?}");
        assert!(
            std::fs::read_to_string(&certs.key)
                .unwrap()
                .contains("PRIVATE KEY")
        );
    }

    /// The process's umask, read from /proc (it cannot be read without changing it otherwise).
    fn umask() -> u32 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("Umask:"))?;
                u32::from_str_radix(line.split_whitespace().nth(1)?, 8).ok()
            })
            .unwrap_or(0o022)
    }
}
