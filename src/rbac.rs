//! The permissions the operator needs, as RBAC objects (and the ServiceAccount they are for):
//! what `trust-rotation-operator rbac` prints and `rbac/rbac.yaml` commits. Every rule names the code that needs it; the
//! real-control-plane tests run the operator under exactly these objects, so a permission the
//! code needs and this file lacks fails a test.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::ObjectMeta;

/// Name of the operator's ClusterRole, bindings and Roles (Roles get a suffix).
pub const NAME: &str = "trust-rotation-operator";
/// The ClusterRole that lets the operator restart workloads (patch their pod templates). Bound
/// cluster-wide by default, or by RoleBindings in some namespaces only
/// ([`RbacConfig::restart_namespaces`]).
pub const RESTARTER: &str = "trust-rotation-operator-restarter";
/// Where the reconciler files its Events (`events.k8s.io/v1`) about the cluster-scoped
/// rotation. Kubernetes accepts an Event about a cluster-scoped object only in `kube-system`
/// (1.20) or in `default` or `kube-system` (later versions); kube's Recorder uses `default`,
/// which 1.20 refuses with 422, so the reconciler writes its own. `kubectl describe tar
/// cluster` finds them in any namespace.
pub const EVENTS_NAMESPACE: &str = "kube-system";

/// Who the objects are for, and the namespaces of what the operator reads and writes.
#[derive(Clone, Debug)]
pub struct RbacConfig {
    pub subject: Subject,
    /// The operator's own namespace (its leader Lease).
    pub operator_namespace: String,
    /// Linkerd's namespace: the bundle ConfigMap, the previous-anchor Secret, the issuer
    /// Certificate and Secret, the control-plane Deployments.
    pub linkerd_namespace: String,
    /// The trust anchor's Secret.
    pub trust_anchor_namespace: String,
    /// The objects the operator reads or writes by name: its permissions on them name them,
    /// so that it can read no other Secret in those namespaces and overwrite nothing else.
    pub names: ObjectNames,
    /// Where the operator may restart workloads: everywhere (`None`, a ClusterRoleBinding of
    /// [`RESTARTER`]) or in these namespaces only (a RoleBinding of it in each). The control
    /// plane's restarts are allowed apart from this, in Linkerd's namespace.
    pub restart_namespaces: Option<Vec<String>>,
}

/// The names of the objects the operator reads or writes one by one (`run`'s defaults).
#[derive(Clone, Debug)]
pub struct ObjectNames {
    /// The TrustAnchorRotation.
    pub rotation: String,
    /// The trust bundle ConfigMap, in Linkerd's namespace.
    pub trust_roots_configmap: String,
    /// The previous anchor's Secret, in Linkerd's namespace.
    pub previous_anchor_secret: String,
    /// The identity issuer's Certificate and Secret, in Linkerd's namespace.
    pub identity_issuer: String,
    /// The trust anchor's Secret.
    pub trust_anchor_secret: String,
    /// The leader Lease, in the operator's namespace.
    pub lease: String,
}

impl Default for ObjectNames {
    fn default() -> Self {
        Self {
            rotation: crate::crd::CLUSTER_ROTATION_NAME.to_owned(),
            trust_roots_configmap: "linkerd-identity-trust-roots".to_owned(),
            previous_anchor_secret: "linkerd-previous-anchor".to_owned(),
            identity_issuer: "linkerd-identity-issuer".to_owned(),
            trust_anchor_secret: "linkerd-trust-anchor".to_owned(),
            lease: NAME.to_owned(),
        }
    }
}

impl RbacConfig {
    /// For `subject`, with the operator running in `operator_namespace` and Linkerd's and
    /// cert-manager's default namespaces.
    pub fn new(subject: Subject, operator_namespace: &str) -> Self {
        Self {
            subject,
            operator_namespace: operator_namespace.to_owned(),
            linkerd_namespace: "linkerd".to_owned(),
            trust_anchor_namespace: "cert-manager".to_owned(),
            names: ObjectNames::default(),
            restart_namespaces: None,
        }
    }

    /// For the operator's ServiceAccount `namespace/name`.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        let subject = Subject {
            kind: "ServiceAccount".to_owned(),
            name: name.to_owned(),
            namespace: Some(namespace.to_owned()),
            api_group: None,
        };
        Self::new(subject, namespace)
    }
}

/// The objects, in the order they can be applied.
#[derive(Clone, Debug, Default)]
pub struct Rbac {
    /// The subject itself when it is a ServiceAccount, so that one `kubectl apply` is enough.
    pub service_accounts: Vec<ServiceAccount>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..Default::default()
    }
}

/// A rule on the named objects only. A list or watch is allowed by it only when it asks for
/// one of them by `metadata.name` field selector, as every watch of the operator's does.
fn named(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
    PolicyRule {
        resource_names: Some(names.iter().map(|x| (*x).to_owned()).collect()),
        ..rule(groups, resources, verbs)
    }
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(
            [(
                "app.kubernetes.io/name".to_owned(),
                "trust-rotation-operator".to_owned(),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
    }
}

/// The operator's RBAC objects.
pub fn rbac(config: &RbacConfig) -> Rbac {
    let workloads = ["deployments", "statefulsets", "daemonsets"];
    let n = &config.names;
    let cluster_roles = vec![
        ClusterRole {
            metadata: meta(NAME, None),
            rules: Some(vec![
                // The rotation it follows (webhook view and reconciler) and the status it writes
                // (server-side apply).
                named(
                    &["trust.linkerd.io"],
                    &["trustanchorrotations"],
                    &["get", "list", "watch"],
                    &[&n.rotation],
                ),
                named(
                    &["trust.linkerd.io"],
                    &["trustanchorrotations/status"],
                    &["patch"],
                    &[&n.rotation],
                ),
                // Meshed pods everywhere (their proxies' env and leaves); namespaces for the
                // webhook's `linkerd.io/inject` rule.
                rule(&[""], &["pods", "namespaces"], &["get", "list", "watch"]),
                // The owners it may restart, and their rollout progress.
                rule(&["apps"], &workloads, &["get", "list", "watch"]),
            ]),
            ..Default::default()
        },
        ClusterRole {
            metadata: meta(RESTARTER, None),
            // A restart is a patch of the pod template's annotations.
            rules: Some(vec![rule(&["apps"], &workloads, &["patch"])]),
            ..Default::default()
        },
    ];
    let binding = |name: &str| ClusterRoleBinding {
        metadata: meta(name, None),
        role_ref: role_ref("ClusterRole", name),
        subjects: Some(vec![config.subject.clone()]),
    };
    let mut cluster_role_bindings = vec![binding(NAME)];
    if config.restart_namespaces.is_none() {
        cluster_role_bindings.push(binding(RESTARTER));
    }

    let linkerd = config.linkerd_namespace.as_str();
    let roles: Vec<(String, &str, Vec<PolicyRule>)> = vec![
        (
            format!("{NAME}-linkerd"),
            linkerd,
            vec![
                // The trust bundle ConfigMap and the previous-anchor Secret, written by
                // server-side apply (which creates them when missing; the API server asks for
                // `create` on the named object then); the issuer's Secret, read.
                named(
                    &[""],
                    &["configmaps"],
                    &["get", "list", "watch", "create", "patch"],
                    &[&n.trust_roots_configmap],
                ),
                named(
                    &[""],
                    &["secrets"],
                    &["get", "list", "watch"],
                    &[&n.previous_anchor_secret, &n.identity_issuer],
                ),
                named(
                    &[""],
                    &["secrets"],
                    &["create", "patch"],
                    &[&n.previous_anchor_secret],
                ),
                // Control-plane restarts, even where workload restarts are not allowed.
                rule(&["apps"], &["deployments"], &["patch"]),
                // The issuer Certificate: read, and renewed as `cmctl renew` does (a status
                // update).
                named(
                    &["cert-manager.io"],
                    &["certificates"],
                    &["get"],
                    &[&n.identity_issuer],
                ),
                named(
                    &["cert-manager.io"],
                    &["certificates/status"],
                    &["update"],
                    &[&n.identity_issuer],
                ),
            ],
        ),
        (
            format!("{NAME}-trust-anchor"),
            config.trust_anchor_namespace.as_str(),
            vec![named(
                &[""],
                &["secrets"],
                &["get", "list", "watch"],
                &[&n.trust_anchor_secret],
            )],
        ),
        (
            format!("{NAME}-leader"),
            config.operator_namespace.as_str(),
            vec![
                named(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["get", "update"],
                    &[&n.lease],
                ),
                // A plain create (POST), which the API server authorizes without a name.
                rule(&["coordination.k8s.io"], &["leases"], &["create"]),
            ],
        ),
        (
            format!("{NAME}-events"),
            EVENTS_NAMESPACE,
            vec![rule(&["events.k8s.io"], &["events"], &["create"])],
        ),
    ];
    let role_binding = |name: &str, ns: &str, kind: &str| RoleBinding {
        metadata: meta(name, Some(ns)),
        role_ref: role_ref(kind, name),
        subjects: Some(vec![config.subject.clone()]),
    };
    let role_bindings = roles
        .iter()
        .map(|(name, ns, _)| role_binding(name, ns, "Role"))
        .chain(
            config
                .restart_namespaces
                .iter()
                .flatten()
                .map(|ns| role_binding(RESTARTER, ns, "ClusterRole")),
        )
        .collect();
    let roles = roles
        .into_iter()
        .map(|(name, ns, rules)| Role {
            metadata: meta(&name, Some(ns)),
            rules: Some(rules),
        })
        .collect();
    let subject = &config.subject;
    let service_accounts = match (subject.kind.as_str(), subject.namespace.as_deref()) {
        ("ServiceAccount", Some(namespace)) => vec![ServiceAccount {
            metadata: meta(&subject.name, Some(namespace)),
            ..Default::default()
        }],
        _ => Vec::new(),
    };
    Rbac {
        service_accounts,
        cluster_roles,
        cluster_role_bindings,
        roles,
        role_bindings,
    }
}

/// The objects as one YAML stream.
pub fn yaml(rbac: &Rbac) -> Result<String, serde_yaml::Error> {
    fn doc<T: serde::Serialize + k8s_openapi::Resource>(
        object: &T,
    ) -> Result<String, serde_yaml::Error> {
        let mut value = serde_yaml::to_value(object)?;
        if let serde_yaml::Value::Mapping(m) = &mut value {
            // apiVersion and kind first, as kubectl writes them.
            let mut ordered = serde_yaml::Mapping::new();
            ordered.insert("apiVersion".into(), T::API_VERSION.into());
            ordered.insert("kind".into(), T::KIND.into());
            for (k, v) in std::mem::take(m) {
                if k != "apiVersion" && k != "kind" {
                    ordered.insert(k, v);
                }
            }
            value = serde_yaml::Value::Mapping(ordered);
        }
        serde_yaml::to_string(&value)
    }
    let mut docs = Vec::new();
    for o in &rbac.service_accounts {
        docs.push(doc(o)?);
    }
    for o in &rbac.cluster_roles {
        docs.push(doc(o)?);
    }
    for o in &rbac.cluster_role_bindings {
        docs.push(doc(o)?);
    }
    for o in &rbac.roles {
        docs.push(doc(o)?);
    }
    for o in &rbac.role_bindings {
        docs.push(doc(o)?);
    }
    Ok(format!(
        "# Generated by `trust-rotation-operator rbac`: regenerate it with `make generate`.\n\
         # To let the operator restart workloads in some namespaces only, generate it with\n\
         # `--restart-namespace` for each of them: RoleBindings of the ClusterRole\n\
         # `{RESTARTER}` there instead of its ClusterRoleBinding. Pods it may not restart are\n\
         # named in the rotation's status.\n---\n{}",
        docs.join("---\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_is_bound_to_the_subject_in_its_namespace() {
        let r = rbac(&RbacConfig::service_account("tro", "operator"));
        assert_eq!(r.roles.len(), r.role_bindings.len());
        for (role, binding) in r.roles.iter().zip(&r.role_bindings) {
            assert_eq!(role.metadata.name, binding.metadata.name);
            assert_eq!(role.metadata.namespace, binding.metadata.namespace);
            assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
            let subject = &binding.subjects.as_ref().unwrap()[0];
            assert_eq!(
                (subject.kind.as_str(), subject.name.as_str()),
                ("ServiceAccount", "operator")
            );
        }
        let leader = r
            .roles
            .iter()
            .find(|x| x.metadata.name.as_deref() == Some("trust-rotation-operator-leader"))
            .unwrap();
        assert_eq!(leader.metadata.namespace.as_deref(), Some("tro"));
    }

    #[test]
    fn restarts_in_some_namespaces_are_role_bindings_of_the_restarter_there_only() {
        let config = RbacConfig::service_account("linkerd", NAME);
        // (cluster-wide bindings of the restarter, namespaces of its RoleBindings)
        let restarter_bindings = |r: &Rbac| {
            let cluster_wide = r
                .cluster_role_bindings
                .iter()
                .filter(|b| b.role_ref.name == RESTARTER)
                .count();
            let per_namespace: Vec<String> = r
                .role_bindings
                .iter()
                .filter(|b| b.role_ref.name == RESTARTER)
                .map(|b| {
                    assert_eq!(b.role_ref.kind, "ClusterRole");
                    assert_eq!(b.subjects, Some(vec![config.subject.clone()]));
                    b.metadata.namespace.clone().unwrap()
                })
                .collect();
            (cluster_wide, per_namespace)
        };
        let everywhere = rbac(&config);
        assert_eq!(restarter_bindings(&everywhere), (1, vec![]));

        let some = rbac(&RbacConfig {
            restart_namespaces: Some(vec!["shop".to_owned(), "payments".to_owned()]),
            ..config.clone()
        });
        assert_eq!(
            restarter_bindings(&some),
            (0, vec!["shop".to_owned(), "payments".to_owned()])
        );
        // Nothing else changes.
        assert_eq!(some.cluster_roles, everywhere.cluster_roles);
        assert_eq!(
            some.cluster_role_bindings[..],
            everywhere.cluster_role_bindings[..1]
        );
        assert_eq!(some.roles, everywhere.roles);
        assert_eq!(
            some.role_bindings[..everywhere.role_bindings.len()],
            everywhere.role_bindings[..]
        );
    }

    #[test]
    fn the_yaml_reads_back_as_the_objects() {
        let r = rbac(&RbacConfig::service_account("linkerd", NAME));
        let text = yaml(&r).unwrap();
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 1 + 2 + 2 + 4 + 4);
        assert_eq!(docs[0]["kind"], "ServiceAccount");
        assert_eq!(docs[0]["apiVersion"], "v1");
        assert_eq!(docs[0]["metadata"]["namespace"], "linkerd");
        assert_eq!(docs[0]["metadata"]["name"], NAME);
        assert_eq!(docs[1]["kind"], "ClusterRole");
        assert_eq!(docs[1]["apiVersion"], "rbac.authorization.k8s.io/v1");
        let back: ClusterRole = serde_yaml::from_value(docs[1].clone()).unwrap();
        assert_eq!(back, r.cluster_roles[0]);
    }
}
