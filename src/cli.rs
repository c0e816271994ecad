//! Command-line interfaces of the two binaries. The mains only parse and call [`operator`] or
//! [`linkerd_trust`]; everything they do lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Run in the cluster: the admission webhook (every replica), the reconciler and the admin
    /// server.
    Run(Box<RunArgs>),
    /// Print the TrustAnchorRotation CustomResourceDefinition as YAML.
    Crd,
    /// Print the MutatingWebhookConfiguration as YAML.
    WebhookConfig(WebhookConfigArgs),
    /// Print the operator's ServiceAccount and the RBAC objects it needs (ClusterRoles, Roles and
    /// their bindings) as YAML.
    Rbac(RbacArgs),
    /// Make certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// The whole story on this machine: a local control plane, a simulated Linkerd mesh under
    /// mTLS traffic, the operator, a full trust-anchor rotation with live progress and a summary.
    Demo(DemoArgs),
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Meshed workload pods to simulate (spread over a few namespaces and Deployments; the
    /// nearest count that factors evenly is used).
    #[arg(long, default_value_t = crate::demo::DEFAULT_PODS)]
    pub pods: usize,
    /// `automatic`: the operator restarts workloads and renews the issuer. `manual`: the demo
    /// stops where a person must act, prints the command and runs it a few seconds later.
    #[arg(long, value_enum, default_value_t = DemoPolicies::Automatic)]
    pub policies: DemoPolicies,
    /// Keep everything running after the summary, until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// `json`: after the run, print one JSON object on stdout (the rest goes to stderr).
    #[arg(long, value_enum, default_value_t = DemoOutput::Text)]
    pub output: DemoOutput,
    /// `spec.workloadCertificateRefreshInterval` of the rotation (simulated leaves live 20s).
    #[arg(long, default_value = crate::demo::DEFAULT_REFRESH_INTERVAL, value_parser = refresh_interval)]
    pub refresh_interval: String,
    /// `spec.dataPlaneRestart.maxConcurrentWorkloads` (default: the operator's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_workloads: Option<u32>,
    /// Replicas of each simulated Linkerd control-plane Deployment (Linkerd's HA mode runs 3).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub control_plane_replicas: u8,
    /// With several control-plane replicas: every second identity controller replica loads the
    /// renewed issuer this much later than the others (its node's kubelet updating its Secret
    /// volume late), which the operator sees in its metrics and waits for.
    #[arg(long, default_value = "0s", value_parser = parse_delay)]
    pub identity_reload_lag: Duration,
    /// A negative control for the demo's own test: renew the identity issuer right after the
    /// anchor and restart the identity controller by hand onto the expanded bundle at once,
    /// which breaks mTLS whatever the operator does; the demo must count the failed
    /// handshakes and exit 1.
    #[arg(long, hide = true)]
    pub break_the_order: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoPolicies {
    Automatic,
    Manual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoOutput {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Address of the HTTPS webhook server.
    #[arg(long, default_value = "0.0.0.0:9443", env = "TRO_WEBHOOK_ADDR")]
    pub webhook_addr: SocketAddr,
    /// Address of the plain-HTTP admin server (/live, /ready, /metrics).
    #[arg(long, default_value = "0.0.0.0:9990", env = "TRO_ADMIN_ADDR")]
    pub admin_addr: SocketAddr,
    /// PEM certificate chain the webhook serves; re-read when it changes.
    #[arg(long, default_value = "/var/run/trust-rotation-operator/tls/tls.crt")]
    pub tls_cert_file: PathBuf,
    /// PEM private key of that certificate; re-read when it changes.
    #[arg(long, default_value = "/var/run/trust-rotation-operator/tls/tls.key")]
    pub tls_key_file: PathBuf,
    /// How often the certificate files are checked for changes, as a duration.
    #[arg(long, default_value = "2s", value_parser = parse_period)]
    pub cert_reload_interval: Duration,
    /// Name of the TrustAnchorRotation to follow.
    #[arg(long, default_value = crate::crd::CLUSTER_ROTATION_NAME, value_parser = subdomain("TrustAnchorRotation"))]
    pub rotation_name: String,
    /// Linkerd's control-plane namespace.
    #[arg(long, default_value = "linkerd", value_parser = label("namespace"))]
    pub linkerd_namespace: String,
    /// The trust-bundle ConfigMap in the Linkerd namespace.
    #[arg(long, default_value = "linkerd-identity-trust-roots", value_parser = subdomain("ConfigMap"))]
    pub trust_roots_configmap: String,
    /// Run the reconciler in this process (`false`: serve the webhook only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub reconciler: bool,
    /// Namespace of cert-manager's trust-anchor Certificate and Secret.
    #[arg(long, default_value = "cert-manager", value_parser = label("namespace"))]
    pub trust_anchor_namespace: String,
    /// The trust anchor's Secret (cert-manager writes it).
    #[arg(long, default_value = "linkerd-trust-anchor", value_parser = subdomain("Secret"))]
    pub trust_anchor_secret: String,
    /// Secret in the Linkerd namespace holding the previous anchor's certificate.
    #[arg(long, default_value = "linkerd-previous-anchor", value_parser = subdomain("Secret"))]
    pub previous_anchor_secret: String,
    /// The identity issuer's Certificate and Secret in the Linkerd namespace.
    #[arg(long, default_value = "linkerd-identity-issuer", value_parser = subdomain("Certificate"))]
    pub identity_issuer: String,
    /// Linkerd's trust domain (pod identities end in it).
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// How often a rotation in progress is looked at without a watch event.
    #[arg(long, default_value = "2s", value_parser = parse_period)]
    pub reconcile_interval: Duration,
    /// How long after the identity issuer changes every replica of Linkerd's identity
    /// controller has surely loaded it: each one reads it from its Secret volume, which its
    /// node's kubelet updates on its own schedule (its sync period, 1m by default, plus up to
    /// half of it in jitter, plus its Secret cache's delay, up to 1m with the `Cache`
    /// strategy). If the identity controller has run several replicas since the operator's
    /// first look at the issuer in RenewingWorkloadCerts, or the operator started after the
    /// issuer changed, the old anchor stays in the bundle this long at least (counted again
    /// once an identity controller pod that was not ready is ready), and every proxy's leaf is
    /// checked again after it: until then a replica still on the old issuer may sign a proxy's
    /// next leaf. The replicas' metrics (`issuer_cert_ttl_seconds` on port 9990, Linkerd 2.18
    /// and later) decide before this: the wait ends once every one shows the issuer, and lasts
    /// while one shows another, whatever this says.
    #[arg(long, default_value = "3m", value_parser = parse_delay)]
    pub issuer_reload_grace: Duration,
    /// Run the reconciler only while holding a leader Lease (`false`: a single replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (the operator's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = crate::webhook::config::DEFAULT_OPERATOR_NAMESPACE, value_parser = label("namespace"))]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "trust-rotation-operator", value_parser = subdomain("Lease"))]
    pub lease_name: String,
    /// How long a leader that stopped renewing keeps the Lease; a replica takes over after it.
    /// Rounded up to whole seconds, as the Lease holds it.
    #[arg(long, default_value = "15s", value_parser = parse_period)]
    pub lease_duration: Duration,
    /// How long any request to the API server but a watch may take, its answer read whole,
    /// before it counts as failed and is tried again on a new connection. The API server gives
    /// up on such a request itself after 60s; this catches a connection that went quiet.
    #[arg(long, default_value = "60s", value_parser = parse_period)]
    pub api_request_timeout: Duration,
    /// This replica's identity in the Lease (the pod name in a cluster; default
    /// host-pid-random). A restarted container keeps its pod name, so it takes its Lease back at
    /// once.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// After SIGTERM: report not ready and keep serving this long before closing the webhook
    /// listener, so the API server stops calling this replica first (endpoint removal takes a
    /// few seconds). Keep it under the pod's terminationGracePeriodSeconds.
    #[arg(long, default_value = "5s", value_parser = parse_delay)]
    pub shutdown_delay: Duration,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct RbacArgs {
    /// The operator's ServiceAccount, in the operator's namespace (where its Lease lives).
    #[arg(long, default_value = crate::rbac::NAME, value_parser = subdomain("ServiceAccount"))]
    pub service_account: String,
    /// The operator's namespace.
    #[arg(long, default_value = crate::webhook::config::DEFAULT_OPERATOR_NAMESPACE, value_parser = label("namespace"))]
    pub namespace: String,
    /// Linkerd's control-plane namespace.
    #[arg(long, default_value = "linkerd", value_parser = label("namespace"))]
    pub linkerd_namespace: String,
    /// Namespace of the trust anchor's Secret.
    #[arg(long, default_value = "cert-manager", value_parser = label("namespace"))]
    pub trust_anchor_namespace: String,
    // The names below are the ones given to `run`, when they are not its defaults: the
    // permissions on these objects name them (`resourceNames`).
    /// The TrustAnchorRotation `run` reconciles (as `run --rotation-name`).
    #[arg(long, default_value = crate::crd::CLUSTER_ROTATION_NAME, value_parser = subdomain("TrustAnchorRotation"))]
    pub rotation_name: String,
    /// The trust-bundle ConfigMap in the Linkerd namespace (as `run --trust-roots-configmap`).
    #[arg(long, default_value = "linkerd-identity-trust-roots", value_parser = subdomain("ConfigMap"))]
    pub trust_roots_configmap: String,
    /// The Secret keeping the previous anchor during a rotation, in the Linkerd namespace (as
    /// `run --previous-anchor-secret`).
    #[arg(long, default_value = "linkerd-previous-anchor", value_parser = subdomain("Secret"))]
    pub previous_anchor_secret: String,
    /// The identity issuer's Certificate and Secret in the Linkerd namespace (as
    /// `run --identity-issuer`).
    #[arg(long, default_value = "linkerd-identity-issuer", value_parser = subdomain("Certificate"))]
    pub identity_issuer: String,
    /// The trust anchor's Secret in the trust anchor's namespace (as `run --trust-anchor-secret`).
    #[arg(long, default_value = "linkerd-trust-anchor", value_parser = subdomain("Secret"))]
    pub trust_anchor_secret: String,
    /// The leader-election Lease in the operator's namespace (as `run --lease-name`).
    #[arg(long, default_value = "trust-rotation-operator", value_parser = subdomain("Lease"))]
    pub lease_name: String,
    /// Let the operator restart workloads in this namespace only (repeat for more): a
    /// RoleBinding there instead of the cluster-wide binding. Without it, everywhere. The
    /// control plane's restarts in the Linkerd namespace are allowed either way.
    #[arg(long = "restart-namespace", value_name = "NAMESPACE", value_parser = label("namespace"))]
    pub restart_namespaces: Vec<String>,
}

/// A name Kubernetes accepts for a namespace or a Service (an RFC 1123 label), so that a typo
/// is refused here, not by the API server halfway through an apply, nor written into a
/// certificate's names or a YAML file. `what` names it in the message.
fn label(what: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync {
    move |name: &str| {
        if name.len() <= 63 && rfc1123_label(name) {
            Ok(name.to_owned())
        } else {
            Err(format!(
                "{name:?} is not a {what} name (at most 63 characters: lowercase letters, digits \
                 and '-', starting and ending with a letter or digit)"
            ))
        }
    }
}

/// One RFC 1123 label, of any length: lowercase letters, digits and '-', starting and ending
/// with a letter or digit.
fn rfc1123_label(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !part.starts_with('-')
        && !part.ends_with('-')
}

/// A name Kubernetes accepts for most objects, a ServiceAccount, ConfigMap, Secret, Lease or
/// TrustAnchorRotation among them (an RFC 1123 subdomain): refused here rather than by the
/// API server halfway through an apply, or written into a Role's `resourceNames`, where it
/// would grant nothing. `what` names it in the message.
fn subdomain(what: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync {
    move |name: &str| {
        if name.len() <= 253 && name.split('.').all(rfc1123_label) {
            Ok(name.to_owned())
        } else {
            Err(format!(
                "{name:?} is not a {what} name (at most 253 characters: lowercase letters, digits, \
                 '-' and '.', starting and ending with a letter or digit, and a letter or digit \
                 on each side of every '.')"
            ))
        }
    }
}

/// The webhook's URL as the API server accepts it in `clientConfig.url`: https, a host, no user
/// information, no query or fragment (not even an empty one), only well-formed `%` escapes,
/// nothing YAML would read otherwise.
fn webhook_url(url: &str) -> Result<String, String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{url:?} is not a URL: it holds a space or control character"
        ));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} must be https://host[:port]/path"));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(format!(
            "{url:?} must have no '?' or '#' (the API server refuses a query or a fragment)"
        ));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!(
            "{url:?} must have no user information (the API server refuses it, and the \
             configuration is readable by many)"
        ));
    }
    let bytes = url.as_bytes();
    let bad_escape = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if bad_escape {
        return Err(format!(
            "{url:?} is not a URL: a '%' is not followed by two hex digits"
        ));
    }
    Ok(url.to_owned())
}

#[derive(Debug, clap::Args)]
pub struct WebhookConfigArgs {
    /// Reach the webhook at this URL (local development) instead of through a Service.
    #[arg(long, conflicts_with_all = ["service_name"], value_parser = webhook_url)]
    pub url: Option<String>,
    /// Service in front of the webhook (cluster variant).
    #[arg(long, default_value = crate::webhook::config::DEFAULT_SERVICE_NAME, value_parser = label("Service"))]
    pub service_name: String,
    /// Namespace the operator (and its Service) runs in; excluded from the webhook.
    #[arg(long, default_value = crate::webhook::config::DEFAULT_OPERATOR_NAMESPACE, value_parser = label("namespace"))]
    pub namespace: String,
    /// PEM CA that signed the serving certificate, embedded as caBundle.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a dev CA and a webhook serving certificate (127.0.0.1, localhost, Service names).
    Dev {
        /// Folder to write ca.crt, ca.key, tls.crt, tls.key into.
        #[arg(long, default_value = "certs-dev")]
        out: PathBuf,
        /// Namespace of the webhook Service (for its DNS names).
        #[arg(long, default_value = crate::webhook::config::DEFAULT_OPERATOR_NAMESPACE, value_parser = label("namespace"))]
        namespace: String,
        /// The webhook Service's name (for its DNS names), as given to `webhook-config`.
        #[arg(long, default_value = crate::webhook::config::DEFAULT_SERVICE_NAME, value_parser = label("Service"))]
        service_name: String,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

/// The longest any of `run`'s durations may be: longer is a typo (`15h` for `15s`), and
/// unbounded values overflow the clocks and Lease fields they are added to.
const LONGEST: Duration = Duration::from_secs(3600);
/// The shortest period: shorter would spin (checking the certificate files every nanosecond).
const SHORTEST_PERIOD: Duration = Duration::from_millis(100);

/// The demo's refresh interval, checked before a control plane is started for it (the CRD
/// would refuse a malformed one only minutes later, and a zero one parks the rotation).
fn refresh_interval(s: &str) -> Result<String, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("{s:?} is zero: the rotation would park on it")),
        _ => Ok(s.to_owned()),
    }
}

/// A duration something is done every so often: zero would mean never waiting.
fn parse_period(s: &str) -> Result<Duration, String> {
    match parse_delay(s)? {
        Duration::ZERO => Err(format!("{s:?} is zero; it must be longer, like 2s")),
        period if period < SHORTEST_PERIOD => Err(format!(
            "{s:?} is too short: at least {}ms",
            SHORTEST_PERIOD.as_millis()
        )),
        period => Ok(period),
    }
}

/// A duration to wait, zero included, at most [`LONGEST`].
fn parse_delay(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d > LONGEST => Err(format!(
            "{s:?} is too long: at most {}h",
            LONGEST.as_secs() / 3600
        )),
        d => Ok(d),
    }
}

/// What is logged when `RUST_LOG` is not set: `info`, without kube's own line per failed
/// request ("failed with error client error (Connect)"), which the operator's own warning for
/// the same failure says with its cause and what was being done.
pub const DEFAULT_LOG_FILTER: &str = "info,kube_client::client::builder=off";

/// Installs the tracing subscriber: `RUST_LOG` filters (default [`DEFAULT_LOG_FILTER`]).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colour only for a person at a terminal: in a pod, stderr is a file or a pipe, and escape
    // codes would litter `kubectl logs` and every log store (and cost each line their writing).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        // tracing-subscriber's plain format, its string fields written faster (same output).
        LogFormat::Plain => builder.fmt_fields(crate::logging::PlainFields).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Without `POD_NAME` or `--identity`: the host name, the process id and a random part. Host
/// name and pid alone are not unique: in containers the pid is 1, and two replicas sharing a
/// host name (`hostNetwork`, or a `hostname` in the pod template) would both take the Lease for
/// theirs and lead at once.
fn default_identity() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "trust-rotation-operator".to_owned());
    // std's hasher keys come from the operating system's random source.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{host}-{}-{:08x}", std::process::id(), random as u32)
}

/// Runs the operator binary's subcommand, writing its output to `out` and warnings to `err`.
pub async fn operator(
    cli: OperatorCli,
    out: &mut impl std::io::Write,
    err: &mut impl std::io::Write,
) -> Result<(), CliError> {
    match cli.command {
        OperatorCommand::Run(args) => {
            init_logging(args.log_format);
            let client = crate::apiclient::client(args.api_request_timeout)
                .await
                .map_err(CliError::Kube)?;
            let config = crate::run::RunConfig {
                webhook_addr: args.webhook_addr,
                admin_addr: args.admin_addr,
                tls_cert_file: args.tls_cert_file,
                tls_key_file: args.tls_key_file,
                cert_reload_interval: args.cert_reload_interval,
                shutdown_delay: args.shutdown_delay,
                view: crate::webhook::view::ViewConfig {
                    rotation_name: args.rotation_name.clone(),
                    linkerd_namespace: args.linkerd_namespace.clone(),
                    trust_roots_configmap: args.trust_roots_configmap.clone(),
                    ..Default::default()
                },
                reconciler: args.reconciler.then(|| {
                    let ns = &args.linkerd_namespace;
                    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
                    crate::reconcile::controller::ReconcilerConfig {
                        rotation_name: args.rotation_name.clone(),
                        names: crate::reconcile::decide::Names {
                            anchor_secret: pair(
                                &args.trust_anchor_namespace,
                                &args.trust_anchor_secret,
                            ),
                            previous_anchor_secret: pair(ns, &args.previous_anchor_secret),
                            bundle_configmap: pair(ns, &args.trust_roots_configmap),
                            issuer_certificate: pair(ns, &args.identity_issuer),
                        },
                        linkerd_namespace: ns.clone(),
                        trust_domain: args.trust_domain.clone(),
                        issuer_secret: pair(ns, &args.identity_issuer),
                        active_interval: args.reconcile_interval,
                        issuer_reload_grace: args.issuer_reload_grace,
                        ..Default::default()
                    }
                }),
                leader: (args.reconciler && args.leader_elect).then(|| {
                    let identity = args.identity.clone().unwrap_or_else(default_identity);
                    crate::reconcile::lease::LeaseConfig::new(
                        &args.lease_namespace,
                        &args.lease_name,
                        &identity,
                    )
                    .with_duration(args.lease_duration)
                }),
            };
            crate::run::run(config, client, shutdown_signal()).await?;
        }
        OperatorCommand::Crd => {
            let yaml = crate::crd::crd_yaml().map_err(CliError::Yaml)?;
            out.write_all(yaml.as_bytes()).map_err(CliError::Output)?;
        }
        OperatorCommand::Rbac(args) => {
            let config = crate::rbac::RbacConfig {
                linkerd_namespace: args.linkerd_namespace,
                trust_anchor_namespace: args.trust_anchor_namespace,
                names: crate::rbac::ObjectNames {
                    rotation: args.rotation_name,
                    trust_roots_configmap: args.trust_roots_configmap,
                    previous_anchor_secret: args.previous_anchor_secret,
                    identity_issuer: args.identity_issuer,
                    trust_anchor_secret: args.trust_anchor_secret,
                    lease: args.lease_name,
                },
                restart_namespaces: (!args.restart_namespaces.is_empty())
                    .then_some(args.restart_namespaces),
                ..crate::rbac::RbacConfig::service_account(&args.namespace, &args.service_account)
            };
            let yaml = crate::rbac::yaml(&crate::rbac::rbac(&config)).map_err(CliError::Yaml)?;
            out.write_all(yaml.as_bytes()).map_err(CliError::Output)?;
        }
        OperatorCommand::WebhookConfig(args) => {
            use crate::webhook::config::{Endpoint, render};
            // Only certificates go into caBundle, which anyone who can read the configuration
            // sees: a key file given by mistake is refused here, not published.
            // An expired CA there fails every admission's TLS handshake, which the API server
            // ignores (`failurePolicy: Ignore`): pods would go unstamped without a word. So a
            // certificate outside its validity is warned of. Not one that is no CA, or may not
            // sign: the serving certificate itself, self-signed, is a fine caBundle (Go trusts
            // a server certificate found among its roots as it is).
            let ca = match &args.ca_file {
                Some(p) => {
                    let name = source_name(p);
                    let bundle = crate::bundle::Bundle::from_pem(&name, &read_text(p)?)?;
                    let untimely = bundle.warnings(now_unix()).into_iter().filter(|w| {
                        matches!(
                            w.concern,
                            crate::bundle::Concern::Expired { .. }
                                | crate::bundle::Concern::NotYetValid { .. }
                        )
                    });
                    for warning in untimely {
                        writeln!(err, "warning: {name}: {warning}").map_err(CliError::Output)?;
                    }
                    Some(bundle.to_pem())
                }
                None => None,
            };
            let endpoint = match args.url {
                Some(url) => Endpoint::Url(url),
                None => Endpoint::Service {
                    namespace: args.namespace.clone(),
                    name: args.service_name,
                },
            };
            let yaml = render(&endpoint, ca.as_deref(), &args.namespace);
            out.write_all(yaml.as_bytes()).map_err(CliError::Output)?;
        }
        OperatorCommand::Demo(args) => demo(args, out).await?,
        OperatorCommand::Certs(CertsCommand::Dev {
            out: dir,
            namespace,
            service_name,
        }) => {
            let names = crate::devcerts::serving_names(&service_name, &namespace);
            let certs = crate::devcerts::write(&dir, names)?;
            writeln!(
                out,
                "wrote {}, {} (CA) and {}, {} (serving certificate)",
                certs.ca_cert.display(),
                certs.ca_key.display(),
                certs.cert.display(),
                certs.key.display()
            )
            .map_err(CliError::Output)?;
        }
    }
    Ok(())
}

/// `demo`: the human output goes to stdout, or to stderr when stdout carries the JSON.
async fn demo(args: DemoArgs, out: &mut impl std::io::Write) -> Result<(), CliError> {
    use std::io::IsTerminal;
    // The operator's and the simulator's logs would garble the progress: warnings only, unless
    // RUST_LOG says otherwise.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kube_client=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let json = args.output == DemoOutput::Json;
    let (human, tty): (Box<dyn std::io::Write + Send>, bool) = if json {
        (Box::new(std::io::stderr()), std::io::stderr().is_terminal())
    } else {
        (Box::new(std::io::stdout()), std::io::stdout().is_terminal())
    };
    let config = crate::demo::DemoConfig {
        pods: args.pods,
        policies: match args.policies {
            DemoPolicies::Automatic => crate::demo::PolicyMode::Automatic,
            DemoPolicies::Manual => crate::demo::PolicyMode::Manual,
        },
        keep: args.keep,
        json,
        operator_binary: std::env::current_exe().map_err(CliError::Output)?,
        refresh_interval: args.refresh_interval,
        max_concurrent_workloads: args.max_concurrent_workloads,
        control_plane_replicas: args.control_plane_replicas.into(),
        identity_reload_lag: args.identity_reload_lag,
        break_the_order: args.break_the_order,
        ..Default::default()
    };
    let mut ui = crate::demo::Ui::new(human, tty);
    let mut json_out: Vec<u8> = Vec::new();
    // Ctrl-C, SIGTERM (a CI's timeout, `make` stopped) and SIGHUP (the terminal closed) all
    // stop what the demo started and remove its folders before it exits.
    let result = crate::demo::run(config, &mut ui, &mut json_out, demo_stop_signal()).await;
    out.write_all(&json_out).map_err(CliError::Output)?;
    out.flush().map_err(CliError::Output)?;
    result?;
    Ok(())
}

/// Completes on Ctrl-C, SIGTERM or SIGHUP.
async fn demo_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            tokio::select! {
                () = shutdown_signal() => {}
                _ = hup.recv() => {}
            }
            return;
        }
    }
    shutdown_signal().await;
}

/// Completes on SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Builds trust bundles for a Linkerd trust rotation (the `linkerd trust` extension).
#[derive(Debug, Parser)]
#[command(name = "linkerd-trust", version)]
pub struct LinkerdTrustCli {
    #[command(subcommand)]
    pub command: LinkerdTrustCommand,
}

#[derive(Debug, Subcommand)]
pub enum LinkerdTrustCommand {
    /// Print the canonical trust bundle (de-duplicated, ordered by SHA-256 of the DER) built
    /// from PEM files, and its fingerprint on stderr, after a warning for each anchor that has
    /// expired, is not yet valid, is not a CA or may not sign certificates (bundled all the
    /// same).
    Bundle {
        /// PEM files holding one or more certificates each (`-`: stdin).
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
            let mut bundle = crate::bundle::Bundle::default();
            let mut warnings = Vec::new();
            let now = now_unix();
            // A file given twice adds nothing the first did not; stdin (`-`) can be read once.
            let mut seen = std::collections::HashSet::new();
            for f in files.iter().filter(|f| seen.insert(*f)) {
                let name = source_name(f);
                let part = crate::bundle::Bundle::from_pem(&name, &read_text(f)?)?;
                for warning in part.warnings(now) {
                    if !bundle.contains(&warning.fingerprint) {
                        warnings.push(format!("warning: {name}: {warning}"));
                    }
                }
                for der in part.ders() {
                    bundle.insert_der(der.to_vec());
                }
            }
            out.write_all(bundle.to_pem().as_bytes())
                .map_err(CliError::Output)?;
            for warning in warnings {
                writeln!(err, "{warning}").map_err(CliError::Output)?;
            }
            writeln!(err, "trust-root-sha256: {}", bundle.fingerprint())
                .map_err(CliError::Output)?;
        }
    }
    Ok(())
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// How errors and warnings name a file given on the command line (`-` is stdin).
fn source_name(file: &std::path::Path) -> String {
    if file == std::path::Path::new("-") {
        "stdin".to_owned()
    } else {
        file.display().to_string()
    }
}

/// A PEM file's text (`-`: stdin's). Bytes that are not UTF-8 are read as U+FFFD when the file
/// has a PEM block (a comment in Latin-1, say: PEM allows any text around blocks, and only the
/// blocks are read); a binary file without one is named as such, as DER when it looks like DER.
fn read_text(file: &std::path::Path) -> Result<String, CliError> {
    let stdin = file == std::path::Path::new("-");
    let path = source_name(file);
    let bytes = if stdin {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map(|_| bytes)
    } else {
        std::fs::read(file)
    }
    .map_err(|source| CliError::Input {
        path: path.clone(),
        source,
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(e) if e.as_bytes().windows(11).any(|w| w == b"-----BEGIN ") => {
            Ok(String::from_utf8_lossy(e.as_bytes()).into_owned())
        }
        // A DER certificate starts with a SEQUENCE.
        Err(e) if e.as_bytes().first() == Some(&0x30) => Err(CliError::NotText { path }),
        Err(_) => Err(CliError::NotPem { path }),
    }
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
        source: std::io::Error,
    },
    #[error(
        "{path}: not PEM text (a DER file? `openssl x509 -inform der -in {path}` prints it as PEM)"
    )]
    NotText { path: String },
    #[error("{path}: not PEM text (binary, with no -----BEGIN line)")]
    NotPem { path: String },
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    #[error("connecting to Kubernetes: {0}")]
    Kube(kube::Error),
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
    #[error(transparent)]
    DevCerts(#[from] crate::devcerts::DevCertsError),
    #[error("demo: {0}")]
    Demo(#[from] crate::demo::DemoError),
}

impl CliError {
    /// The process exit code: 130 after Ctrl-C (as shells report SIGINT), else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Demo(crate::demo::DemoError::Interrupted) => 130,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two processes on one host name with one pid (containers sharing a host name) still
    /// differ: the identity has a random part, drawn anew each time.
    #[test]
    fn the_default_identity_has_a_random_part() {
        let prefix = format!("-{}-", std::process::id());
        let (a, b) = (default_identity(), default_identity());
        assert!(a.contains(&prefix), "{a}");
        let random = |id: &str| id.rsplit_once('-').unwrap().1.to_owned();
        assert_eq!(random(&a).len(), 8, "{a}");
        assert_ne!(random(&a), random(&b));
    }
}
