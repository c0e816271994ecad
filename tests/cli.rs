//! The command lines as a user meets them: `linkerd-trust bundle` run as a process, the
//! operator's flags, and `run` stopping when one of its parts stops.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Deserialize;
use trust_rotation_operator::bundle::Bundle;
use trust_rotation_operator::cli::OperatorCli;

/// A self-signed CA certificate as PEM, from the simulated cert-manager's PKI, valid from now
/// for an hour.
fn ca(cn: &str) -> String {
    certificate(cn, true, 0, 3600)
}

/// A self-signed certificate as PEM, valid from `from` to `to` seconds after now.
fn certificate(cn: &str, is_ca: bool, from: i64, to: i64) -> String {
    use trust_rotation_operator::sim::pki;
    let now = pki::now();
    let template = pki::Template {
        common_name: cn.to_owned(),
        dns_names: vec![],
        is_ca,
        not_before: now + time::Duration::seconds(from),
        not_after: now + time::Duration::seconds(to),
    };
    pki::to_pem(&template.self_signed(&pki::generate_key().unwrap()).unwrap())
}

/// `linkerd-trust` with `args`: (exit code, stdout, stderr).
fn linkerd_trust(args: &[&Path]) -> (i32, String, String) {
    let bundle = std::iter::once(Path::new("bundle"));
    run(
        env!("CARGO_BIN_EXE_linkerd-trust"),
        bundle.chain(args.iter().copied()),
    )
}

/// `binary` with `args`, run to its end: (exit code, stdout, stderr).
fn run(
    binary: &str,
    args: impl IntoIterator<Item = impl AsRef<std::ffi::OsStr>>,
) -> (i32, String, String) {
    let out = Command::new(binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {binary}: {e}"));
    (
        out.status.code().expect("exited"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn linkerd_trust_bundle_prints_the_canonical_bundle_and_its_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (ca("a"), ca("b"));
    let (first, second) = (dir.path().join("old.pem"), dir.path().join("new.pem"));
    std::fs::write(&first, format!("{b}{a}")).unwrap();
    std::fs::write(&second, &a).unwrap();
    let (code, stdout, stderr) = linkerd_trust(&[&first, &second]);
    assert_eq!(code, 0, "{stderr}");
    let expected = Bundle::from_pem("x", &format!("{a}{b}")).unwrap();
    assert_eq!(stdout, expected.to_pem());
    assert_eq!(
        stderr,
        format!("trust-root-sha256: {}\n", expected.fingerprint())
    );
}

/// An expired anchor or a certificate that is no CA goes in the bundle (a rotation bundles the
/// old anchor, which may be at its end), with a warning naming the file and the anchor: once
/// per anchor, however many files hold it.
#[test]
fn linkerd_trust_bundle_warns_of_expired_and_non_ca_anchors_and_bundles_them() {
    let dir = tempfile::tempdir().unwrap();
    let (good, expired, future, leaf) = (
        ca("good"),
        certificate("old", true, -7200, -3600),
        certificate("new", true, 3600, 7200),
        certificate("leaf", false, 0, 3600),
    );
    let (first, second) = (dir.path().join("old.pem"), dir.path().join("more.pem"));
    std::fs::write(&first, format!("{good}{expired}")).unwrap();
    std::fs::write(&second, format!("{expired}{future}{leaf}")).unwrap();
    let (code, stdout, stderr) = linkerd_trust(&[&first, &second]);
    assert_eq!(code, 0, "{stderr}");
    let expected = Bundle::from_pem("x", &format!("{good}{expired}{future}{leaf}")).unwrap();
    assert_eq!(stdout, expected.to_pem());
    // The warnings of a file come in canonical order (by the DER's hash), which differs per run.
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    let warned = |file: &Path, cn: &str, tail: &str| {
        lines[..3].iter().any(|l| {
            l.starts_with(&format!(
                "warning: {}: anchor CN={cn} (sha256 ",
                file.display()
            )) && l.contains(tail)
        })
    };
    assert!(
        warned(&first, "old", "...) has expired (not valid after 20"),
        "{stderr}"
    );
    assert!(
        warned(&second, "new", "...) is not valid before 20"),
        "{stderr}"
    );
    assert!(
        warned(
            &second,
            "leaf",
            "...) is not a CA certificate (no basicConstraints CA:TRUE)"
        ),
        "{stderr}"
    );
    assert!(lines[0].contains(&first.display().to_string()), "{stderr}");
    assert_eq!(
        lines[3],
        format!("trust-root-sha256: {}", expected.fingerprint())
    );
}

/// A stderr that cannot be written (a full disk) ends the command with an error code, not a
/// panic (`eprintln!` panics there, with code 101).
#[test]
fn linkerd_trust_with_an_unwritable_stderr_exits_1_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let anchors = dir.path().join("anchors.pem");
    std::fs::write(&anchors, ca("a")).unwrap();
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    for args in [vec![anchors.clone()], vec![dir.path().join("missing.pem")]] {
        let out = Command::new(env!("CARGO_BIN_EXE_linkerd-trust"))
            .arg("bundle")
            .args(&args)
            .stderr(full())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_trust-rotation-operator"))
        .args([
            "webhook-config",
            "--url",
            "https://127.0.0.1:9443/mutate",
            "--ca-file",
        ])
        .arg(dir.path().join("missing.crt"))
        .stderr(full())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn linkerd_trust_bundle_names_the_file_and_its_problem_once_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.pem");
    std::fs::write(&good, ca("good")).unwrap();
    let other = ca("cut");
    let cut = dir.path().join("cut.pem");
    std::fs::write(
        &cut,
        format!("{}{}", ca("whole"), &other[..other.len() / 2]),
    )
    .unwrap();
    let der = dir.path().join("anchor.der");
    std::fs::write(&der, pem::parse(ca("der")).unwrap().contents()).unwrap();
    let missing = dir.path().join("missing.pem");
    let binary = dir.path().join("random.bin");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x41]).unwrap();

    let cases = [
        (
            &cut,
            format!(
                "Error: {}: not valid PEM: 1 of 2 BEGIN lines start no complete block (cut off, or no END line)\n",
                cut.display()
            ),
        ),
        (
            &der,
            format!(
                "Error: {0}: not PEM text (a DER file? `openssl x509 -inform der -in {0}` prints it as PEM)\n",
                der.display()
            ),
        ),
        (
            &binary,
            format!(
                "Error: {}: not PEM text (binary, with no -----BEGIN line)\n",
                binary.display()
            ),
        ),
        (
            &missing,
            format!(
                "Error: reading {}: No such file or directory (os error 2)\n",
                missing.display()
            ),
        ),
    ];
    for (bad, message) in cases {
        let (code, stdout, stderr) = linkerd_trust(&[&good, bad]);
        assert_eq!(code, 1, "{}", bad.display());
        assert_eq!(stdout, "", "no partial bundle for {}", bad.display());
        assert_eq!(stderr, message);
    }
}

/// PEM allows any text around its blocks: a comment that is not UTF-8 (Latin-1, say) does not
/// make a file "not PEM". And `-` reads stdin (a bundle piped from `kubectl get`), named
/// `stdin` in warnings.
#[test]
fn linkerd_trust_bundle_reads_latin1_comments_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let (a, expired) = (ca("a"), certificate("old", true, -7200, -3600));
    let latin = dir.path().join("latin.pem");
    let mut bytes = b"# anchor \xe9t\xe9\n".to_vec();
    bytes.extend_from_slice(a.as_bytes());
    std::fs::write(&latin, bytes).unwrap();
    let (code, stdout, stderr) = linkerd_trust(&[&latin]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, Bundle::from_pem("x", &a).unwrap().to_pem());

    // `-` twice reads stdin once (the second would find it empty).
    let mut child = Command::new(env!("CARGO_BIN_EXE_linkerd-trust"))
        .args(["bundle", "-"])
        .arg(&latin)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(expired.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        Bundle::from_pem("x", &format!("{a}{expired}"))
            .unwrap()
            .to_pem()
    );
    assert!(
        stderr.starts_with("warning: stdin: anchor CN=old"),
        "{stderr}"
    );
}

#[test]
fn durations_are_refused_where_zero_never_waits_and_out_of_bounds() {
    let run = |flag: &str, value: &str| {
        OperatorCli::try_parse_from(["trust-rotation-operator", "run", flag, value])
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for flag in [
        "--cert-reload-interval",
        "--reconcile-interval",
        "--lease-duration",
        // Zero would fail every request before it is answered.
        "--api-request-timeout",
    ] {
        let error = run(flag, "0s").unwrap_err();
        assert!(error.contains("\"0s\" is zero"), "{flag}: {error}");
        assert!(run(flag, "250ms").is_ok(), "{flag}");
    }
    // Not waiting before closing the listener is a choice, not a mistake.
    assert!(run("--shutdown-delay", "0s").is_ok());

    // Bounded both ways: a period short enough to spin, or a duration long enough to overflow
    // a clock or the Lease's leaseDurationSeconds (which once wrapped 4294967297s into 1s and let
    // a second replica lead), is refused with the bound.
    for flag in [
        "--cert-reload-interval",
        "--reconcile-interval",
        "--lease-duration",
        "--api-request-timeout",
    ] {
        let error = run(flag, "1ns").unwrap_err();
        assert!(
            error.contains("\"1ns\" is too short: at least 100ms"),
            "{flag}: {error}"
        );
    }
    for flag in [
        "--cert-reload-interval",
        "--reconcile-interval",
        "--lease-duration",
        "--api-request-timeout",
        "--shutdown-delay",
    ] {
        for long in ["61m", "4294967297s", "2562047788015216h"] {
            let error = run(flag, long).unwrap_err();
            assert!(
                error.contains(&format!("{long:?} is too long: at most 1h")),
                "{flag}: {error}"
            );
        }
        assert!(run(flag, "1h").is_ok(), "{flag}");
    }
}

#[test]
fn rbac_restart_namespaces_bind_the_restarter_there_and_typos_are_refused() {
    let rbac = |args: &[&str]| {
        let rbac = std::iter::once("rbac").chain(args.iter().copied());
        run(env!("CARGO_BIN_EXE_trust-rotation-operator"), rbac)
    };
    let (code, yaml, _) = rbac(&["--restart-namespace", "shop", "--restart-namespace", "pay"]);
    assert_eq!(code, 0);
    let restarter: Vec<(String, Option<String>)> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .filter(|o| o["roleRef"]["name"] == "trust-rotation-operator-restarter")
        .map(|o| {
            let ns = o["metadata"]["namespace"].as_str().map(str::to_owned);
            (o["kind"].as_str().unwrap().to_owned(), ns)
        })
        .collect();
    assert_eq!(
        restarter,
        [
            ("RoleBinding".to_owned(), Some("shop".to_owned())),
            ("RoleBinding".to_owned(), Some("pay".to_owned()))
        ]
    );

    let (code, yaml, stderr) = rbac(&["--restart-namespace", "Shop"]);
    assert_eq!((code, yaml.as_str()), (2, ""));
    assert!(
        stderr.contains("\"Shop\" is not a namespace name"),
        "{stderr}"
    );
}

/// Names and the URL that go into YAML or certificates are checked first: a value YAML would
/// read otherwise (`#` starts a comment, `: ` a key), or that no namespace, Service or other
/// object could have, is refused with the flag's value, never written.
#[test]
fn names_and_urls_bound_for_yaml_or_certificates_are_checked() {
    let parse = |args: &[&str]| {
        OperatorCli::try_parse_from(
            std::iter::once("trust-rotation-operator").chain(args.iter().copied()),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    for (args, says) in [
        (
            &["webhook-config", "--url", "https://a/#: b"][..],
            "is not a URL",
        ),
        (
            &["webhook-config", "--url", "https://a/x\nservice: {}"][..],
            "is not a URL",
        ),
        (
            &["webhook-config", "--url", "not-a-url"][..],
            "must be https://",
        ),
        (
            &["webhook-config", "--url", "https://a/x#frag"][..],
            "must have no '?' or '#'",
        ),
        (
            &["webhook-config", "--url", "https://a/x?q=1"][..],
            "must have no '?' or '#'",
        ),
        (
            &["webhook-config", "--url", "http://127.0.0.1:9443/mutate"][..],
            "must be https://",
        ),
        (
            &[
                "webhook-config",
                "--url",
                "https://user:pw@127.0.0.1:9443/mutate",
            ][..],
            "must have no user information",
        ),
        (
            &["webhook-config", "--url", "https://h/x%zz"][..],
            "a '%' is not followed by two hex digits",
        ),
        (
            &["webhook-config", "--url", "https://h/x%4"][..],
            "a '%' is not followed by two hex digits",
        ),
        (
            &["webhook-config", "--namespace", ""][..],
            "\"\" is not a namespace name",
        ),
        (
            &["webhook-config", "--service-name", "Web Hook"][..],
            "is not a Service name",
        ),
        (
            &["certs", "dev", "--namespace", "bad ns"][..],
            "is not a namespace name",
        ),
        (
            &["certs", "dev", "--service-name", ""][..],
            "is not a Service name",
        ),
        (
            &["rbac", "--linkerd-namespace", "x-"][..],
            "is not a namespace name",
        ),
        (
            &["run", "--trust-anchor-namespace", "Cert-Manager"][..],
            "is not a namespace name",
        ),
        (
            &["rbac", "--service-account", "UPPER"][..],
            "\"UPPER\" is not a ServiceAccount name",
        ),
        (
            &["rbac", "--rotation-name", "Bad Name"][..],
            "is not a TrustAnchorRotation name",
        ),
        (
            &["rbac", "--trust-roots-configmap", ""][..],
            "\"\" is not a ConfigMap name",
        ),
        (
            &["run", "--identity-issuer", "issuer."][..],
            "is not a Certificate name",
        ),
        (&["run", "--lease-name", "a..b"][..], "is not a Lease name"),
        (
            &["run", "--trust-anchor-secret=anchor-"][..],
            "is not a Secret name",
        ),
        (
            &["run", "--lease-namespace", "my.ns"][..],
            "is not a namespace name",
        ),
    ] {
        let error = parse(args).unwrap_err();
        assert!(error.contains(says), "{args:?}: {error}");
    }
    for args in [
        &["webhook-config", "--url", "https://127.0.0.1:9443/mutate"][..],
        &["webhook-config", "--url", "https://hook.example/mu%2Ftate"][..],
        &[
            "webhook-config",
            "--namespace",
            "tro",
            "--service-name",
            "hook-1",
        ][..],
        &["certs", "dev", "--namespace", "linkerd"][..],
        &[
            "rbac",
            "--service-account",
            "tro.v2",
            "--lease-name",
            "a-1.b",
        ][..],
        &["run", "--trust-roots-configmap", "x"][..],
    ] {
        assert!(parse(args).is_ok(), "{args:?}");
    }
}

/// The demo's own flags are checked before it starts a control plane (minutes on a first
/// run), not by the CRD when the rotation is applied.
#[test]
fn demo_flags_are_checked_before_anything_starts() {
    let demo = |flag: &str, value: &str| {
        OperatorCli::try_parse_from(["trust-rotation-operator", "demo", flag, value])
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(demo("--refresh-interval", "5x").is_err());
    let zero = demo("--refresh-interval", "0s").unwrap_err();
    assert!(zero.contains("\"0s\" is zero"), "{zero}");
    assert!(demo("--refresh-interval", "3s").is_ok());
    assert!(demo("--max-concurrent-workloads", "0").is_err());
    assert!(demo("--max-concurrent-workloads", "1").is_ok());
    assert!(demo("--control-plane-replicas", "0").is_err());
    assert!(demo("--control-plane-replicas", "6").is_err());
    assert!(demo("--control-plane-replicas", "2").is_ok());
    let long = demo("--identity-reload-lag", "2h").unwrap_err();
    assert!(long.contains("too long"), "{long}");
    assert!(demo("--identity-reload-lag", "20s").is_ok());
}

#[test]
fn webhook_config_embeds_only_certificates_as_the_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let certs =
        trust_rotation_operator::devcerts::write(dir.path(), vec!["localhost".to_owned()]).unwrap();
    let config = |ca_file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_trust-rotation-operator"))
            .args(["webhook-config", "--url", "https://127.0.0.1:9443/mutate"])
            .arg("--ca-file")
            .arg(ca_file)
            .output()
            .unwrap()
    };
    let ok = config(&certs.ca_cert);
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("caBundle: "));
    assert!(ok.stderr.is_empty(), "no warning for a good CA: {ok:?}");
    // Nor for a self-signed serving certificate that is no CA: a fine caBundle for itself.
    let own = dir.path().join("own.crt");
    std::fs::write(&own, certificate("hook", false, 0, 3600)).unwrap();
    let own = config(&own);
    assert!(own.status.success(), "{own:?}");
    assert!(own.stderr.is_empty(), "no warning: {own:?}");

    // An expired CA would fail every admission's handshake, ignored by the API server: it is
    // embedded as asked, with a warning naming the file.
    let expired = dir.path().join("expired.crt");
    std::fs::write(&expired, certificate("old-ca", true, -7200, -3600)).unwrap();
    let old = config(&expired);
    assert!(old.status.success(), "{old:?}");
    assert!(String::from_utf8_lossy(&old.stdout).contains("caBundle: "));
    let warning = String::from_utf8(old.stderr).unwrap();
    assert!(
        warning.starts_with(&format!("warning: {}: anchor CN=old-ca", expired.display()))
            && warning.contains("has expired"),
        "{warning}"
    );
    let key = config(&certs.ca_key);
    assert_eq!(key.status.code(), Some(1));
    assert!(key.stdout.is_empty(), "nothing printed: {key:?}");
    assert_eq!(
        String::from_utf8(key.stderr).unwrap(),
        format!(
            "Error: {}: PEM block 1 of 1 is a PRIVATE KEY, not a CERTIFICATE\n",
            certs.ca_key.display()
        )
    );
}

/// `run` with nothing behind its Kubernetes client (the view keeps retrying) and certificates
/// re-read every `reload`: how it ended, and after how long.
async fn run_until(
    reload: Duration,
    stop_after: Duration,
) -> (Result<(), trust_rotation_operator::run::RunError>, Duration) {
    use trust_rotation_operator::run::{RunConfig, run};
    let dir = tempfile::tempdir().unwrap();
    let certs =
        trust_rotation_operator::devcerts::write(dir.path(), vec!["localhost".to_owned()]).unwrap();
    let config = RunConfig {
        webhook_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        tls_cert_file: certs.cert,
        tls_key_file: certs.key,
        cert_reload_interval: reload,
        view: Default::default(),
        reconciler: None,
        leader: None,
        shutdown_delay: Duration::from_millis(100),
    };
    // Port 9 on loopback: nothing answers, so the view's watches retry for as long as it runs.
    let kube = kube::Config::new("https://127.0.0.1:9".parse().unwrap());
    let client = kube::Client::try_from(kube).unwrap();
    let started = Instant::now();
    let ended = tokio::time::timeout(
        Duration::from_secs(30),
        run(config, client, tokio::time::sleep(stop_after)),
    )
    .await
    .expect("run ends");
    (ended, started.elapsed())
}

#[tokio::test]
async fn run_stops_with_an_error_naming_the_part_that_stopped() {
    // A zero period makes the certificate reloader panic (tokio refuses it): the part is gone,
    // and a process that kept serving would never pick up a renewed certificate.
    let (ended, took) = run_until(Duration::ZERO, Duration::from_secs(60)).await;
    let error = ended
        .expect_err("run must not outlive one of its parts")
        .to_string();
    assert!(
        error.starts_with("the serving certificate reloader stopped unexpectedly (it panicked: "),
        "{error}"
    );
    assert!(
        error.ends_with("; the operator stops so that it is restarted"),
        "{error}"
    );
    assert!(took < Duration::from_secs(10), "stopped after {took:?}");

    // The same run with its parts healthy lasts until it is told to stop, and ends well.
    let (ended, took) = run_until(Duration::from_millis(200), Duration::from_secs(2)).await;
    ended.expect("a run told to stop ends without an error");
    assert!(took >= Duration::from_secs(2), "stopped after {took:?}");
}

#[test]
fn certs_dev_covers_the_service_it_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trust-rotation-operator"))
        .args([
            "certs",
            "dev",
            "--namespace",
            "ops",
            "--service-name",
            "tro-hook",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pem = std::fs::read_to_string(dir.path().join("tls.crt")).unwrap();
    let der = pem::parse(pem).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect();
    assert!(names.contains(&"tro-hook.ops.svc".to_owned()), "{names:?}");
    assert!(names.contains(&"localhost".to_owned()), "{names:?}");
}
