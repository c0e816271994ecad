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
                "a symbolic link that leads to no folder",
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
        // Where the old file is kept meanwhile must be free for a file too.
        for path in [path.to_path_buf(), temp_path(path, "old")] {
            if path.symlink_metadata().is_ok_and(|m| !m.is_file()) {
                let source = std::io::Error::other("not a regular file");
                return Err(write_err(&path)(source));
            }
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
    install(&written, &mut RealFiles).map_err(|(path, source)| write_err(&path)(source))?;
    Ok(out)
}

/// How the file a target held before is kept until the new set is in place.
enum Kept {
    /// The target did not exist.
    Nothing,
    /// A hard link under the second name: the target never leaves its place.
    Linked(PathBuf),
    /// Moved to the second name, where no hard link could be made (a file system without
    /// them, or another user's file under `fs.protected_hardlinks`): the target is missing
    /// until its new file is renamed in.
    Moved(PathBuf),
}

/// The file operations [`install`] uses: the real ones, or a test's that fail on cue.
trait FileOps {
    fn hard_link(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::hard_link(from, to)
    }
    fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }
}

struct RealFiles;

impl FileOps for RealFiles {}

/// Renames each written file (`temp`, `target`) into place, all or none: each target there
/// before is first kept under a second name (`.old`), and if a rename fails, every target gets
/// its old file back (or, if it had none, is removed) and the temporary files go. On failure:
/// the target that could not be written and why, and, if an old file could not be put back,
/// where it was left.
fn install(
    written: &[(PathBuf, &Path)],
    ops: &mut impl FileOps,
) -> Result<(), (PathBuf, std::io::Error)> {
    let mut kept: Vec<Kept> = Vec::new();
    let mut failure = None;
    for (_, target) in written {
        if target.symlink_metadata().is_err() {
            kept.push(Kept::Nothing);
            continue;
        }
        let old = temp_path(target, "old");
        let _ = std::fs::remove_file(&old);
        let result = match ops.hard_link(target, &old) {
            Ok(()) => Ok(Kept::Linked(old)),
            Err(_) => ops.rename(target, &old).map(|()| Kept::Moved(old)),
        };
        match result {
            Ok(k) => kept.push(k),
            Err(e) => {
                failure = Some((target.to_path_buf(), e));
                break;
            }
        }
    }
    let mut replaced = 0;
    if failure.is_none() {
        for (temp, target) in written {
            if let Err(e) = ops.rename(temp, target) {
                failure = Some((target.to_path_buf(), e));
                break;
            }
            replaced += 1;
        }
    }
    let Some((path, error)) = failure else {
        for k in &kept {
            if let Kept::Linked(old) | Kept::Moved(old) = k {
                let _ = std::fs::remove_file(old);
            }
        }
        return Ok(());
    };
    let mut stranded = Vec::new();
    for (i, (temp, target)) in written.iter().enumerate() {
        let in_place = i < replaced;
        match kept.get(i) {
            Some(Kept::Nothing) if in_place => {
                let _ = std::fs::remove_file(target);
            }
            Some(Kept::Linked(old)) if !in_place => {
                let _ = std::fs::remove_file(old);
            }
            Some(Kept::Linked(old) | Kept::Moved(old)) => {
                let put_back = ops.rename(old, target);
                stranded.extend(put_back.err().map(|_| old.display().to_string()));
            }
            _ => {}
        }
        if !in_place {
            let _ = std::fs::remove_file(temp);
        }
    }
    if stranded.is_empty() {
        return Err((path, error));
    }
    let error = std::io::Error::new(
        error.kind(),
        format!(
            "{error}; and the files it replaced could not all be put back: the old ones are at {}",
            stranded.join(", ")
        ),
    );
    Err((path, error))
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

        // A target, or the name its old file is kept under meanwhile, taken by a directory:
        // refused before anything is written, and named.
        std::fs::remove_file(dir.path().join("tls.crt")).unwrap();
        for taken in ["tls.crt", "ca.crt.old"] {
            std::fs::create_dir(dir.path().join(taken)).unwrap();
            let error = write(dir.path(), vec!["localhost".to_owned()]).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "writing {}: not a regular file",
                    dir.path().join(taken).display()
                )
            );
            assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), before[0]);
            std::fs::remove_dir(dir.path().join(taken)).unwrap();
        }
    }

    /// File operations that fail on cue: every hard link (a file system without them), and
    /// any rename of a file whose name is one of `fail_renames`.
    struct Failing {
        no_links: bool,
        fail_renames: Vec<&'static str>,
    }

    impl FileOps for Failing {
        fn hard_link(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
            if self.no_links {
                return Err(std::io::Error::other("no hard links here"));
            }
            std::fs::hard_link(from, to)
        }
        fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
            if self.fail_renames.iter().any(|f| from.ends_with(f)) {
                return Err(std::io::Error::other("refused"));
            }
            std::fs::rename(from, to)
        }
    }

    /// A rename that fails after others have replaced their files (an immutable file, a bind
    /// mount, another user's file in a sticky folder) puts the replaced ones back: the old set
    /// stays whole, or, on a first run, no part of the new one is left. So too where no hard
    /// link can be made and the old files are moved aside instead. An old file that cannot be
    /// put back is named in the error.
    #[test]
    fn a_rename_failing_midway_puts_back_the_files_already_replaced() {
        let names = ["ca.crt", "ca.key", "tls.crt", "tls.key"];
        for (had_old_set, no_links, restore_fails) in [
            (true, false, false),
            (false, false, false),
            (true, true, false),
            (true, false, true),
        ] {
            let case = format!(
                "old set {had_old_set}, no links {no_links}, restore fails {restore_fails}"
            );
            let dir = tempfile::tempdir().unwrap();
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
            let mut ops = Failing {
                no_links,
                fail_renames: if restore_fails {
                    vec!["tls.crt.tmp", "ca.crt.old"]
                } else {
                    vec!["tls.crt.tmp"]
                },
            };
            let (path, error) = install(&written, &mut ops).unwrap_err();
            assert_eq!(path, targets[2], "{case}");
            let mut left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            left.sort();
            if restore_fails {
                let old = dir.path().join("ca.crt.old");
                assert_eq!(
                    error.to_string(),
                    format!(
                        "refused; and the files it replaced could not all be put back: the old ones are at {}",
                        old.display()
                    )
                );
                assert_eq!(std::fs::read_to_string(&old).unwrap(), "old");
                assert_eq!(
                    left,
                    ["ca.crt", "ca.crt.old", "ca.key", "tls.crt", "tls.key"]
                );
                continue;
            }
            assert_eq!(error.to_string(), "refused", "{case}");
            if had_old_set {
                assert_eq!(left, names.map(String::from), "{case}");
                for target in &targets {
                    assert_eq!(std::fs::read_to_string(target).unwrap(), "old", "{case}");
                }
            } else {
                assert_eq!(left, Vec::<String>::new(), "{case}");
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
            (&dangling, "a symbolic link that leads to no folder"),
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
