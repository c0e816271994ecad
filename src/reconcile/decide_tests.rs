//! Table tests of [`super::decide::decide`]: every phase against the observations that move it,
//! hold it, or park it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

use super::decide::*;
use super::model::*;
use crate::crd::{
    Condition, ConditionStatus, ConvergenceStatus, Phase, RenewalPolicy, RestartPolicy,
    TrustAnchorRotationStatus,
};
use crate::sim::pki;

const NOW: i64 = 1_800_000_000;

/// Three real anchors (the decision builds canonical bundles from their PEM).
fn anchors() -> &'static [Cert; 3] {
    static A: OnceLock<[Cert; 3]> = OnceLock::new();
    A.get_or_init(|| {
        std::array::from_fn(|i| {
            let key = pki::generate_key().unwrap();
            let now = pki::now();
            let der = pki::Template {
                common_name: "root.linkerd.cluster.local".to_owned(),
                dns_names: vec![],
                is_ca: true,
                not_before: now - Duration::from_secs(60 + i as u64),
                not_after: now + Duration::from_secs(3600),
            }
            .self_signed(&key)
            .unwrap();
            Cert {
                fingerprint: crate::bundle::sha256_hex(&der),
                pem: pki::to_pem(&der),
                not_after: NOW + 365 * 86400,
            }
        })
    })
}

fn a(i: usize) -> Cert {
    anchors()[i].clone()
}

fn fp(i: usize) -> String {
    a(i).fingerprint
}

fn issuer(signed_by: usize) -> Issuer {
    Issuer {
        cert: Cert {
            fingerprint: format!("{:0>64}", format!("1550e{signed_by}")),
            pem: String::new(),
            not_after: NOW + 2 * 86400,
        },
        signed_by: Some(fp(signed_by)),
        issuing: false,
        failure: None,
    }
}

fn set(ids: &[usize]) -> BTreeSet<String> {
    ids.iter().map(|&i| fp(i)).collect()
}

fn bundle_fp(ids: &[usize]) -> String {
    bundle_of(ids.iter().map(|&i| &anchors()[i])).fingerprint()
}

/// What the I/O layer reads from `pods`' env: each anchor they hold, once.
fn held_anchors(pods: &[MeshedPod]) -> Vec<Cert> {
    let held: BTreeSet<&String> = pods
        .iter()
        .flat_map(|p| p.anchors.iter().flatten())
        .collect();
    anchors()
        .iter()
        .filter(|c| held.contains(&c.fingerprint))
        .cloned()
        .collect()
}

fn pod(ns: &str, name: &str, holds: &[usize]) -> MeshedPod {
    MeshedPod {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        control_plane: false,
        identity_controller: false,
        ready: true,
        anchors: Some(set(holds)),
        restarted_for: None,
        control_plane_deployment: None,
        // Restarted while the rotation published its interval (the tests' 5m).
        max_refresh: Some(Duration::from_secs(300)),
        owner: Ok(Workload {
            kind: "Deployment".to_owned(),
            namespace: ns.to_owned(),
            name: name
                .rsplit_once('-')
                .map(|(d, _)| d)
                .unwrap_or(name)
                .to_owned(),
        }),
        leaf: None,
        addr: None,
        identity: String::new(),
    }
}

/// The Deployment `web` in `namespace`, owner of [`World`]'s pods there.
fn web(namespace: &str) -> Workload {
    Workload {
        kind: "Deployment".to_owned(),
        namespace: namespace.to_owned(),
        name: "web".to_owned(),
    }
}

/// `workload` restarted for `restart_for`, its rollout still running.
fn rolling(o: &mut Observed, workload: Workload, restart_for: RestartFor) {
    let markers = o.restart_markers.entry(workload).or_default();
    match restart_for {
        RestartFor::Bundle(fp) => markers.bundle = Some(fp),
        RestartFor::Issuer(fp) => markers.issuer = Some(fp),
    }
    markers.rollout_complete = false;
    markers.replacing = true;
}

/// The Deployment `w<i>` in `app`.
fn w(i: usize) -> Workload {
    Workload {
        kind: "Deployment".to_owned(),
        namespace: "app".to_owned(),
        name: format!("w{i}"),
    }
}

/// Each workload pod of `o` owned by a Deployment of its own, `w0`, `w1`, ... in turn.
fn one_workload_each(o: &mut Observed) {
    for (i, p) in o.pods.iter_mut().filter(|p| !p.control_plane).enumerate() {
        p.owner = Ok(w(i));
    }
}

/// A pod of the control-plane Deployment its name leads with, as `linkerd install` makes it:
/// its owner reads as injected by the CLI, its anchors are not in its spec.
fn cp_pod(name: &str, restarted_for: Option<String>) -> MeshedPod {
    let deployment = name.rsplit_once('-').map_or(name, |(d, _)| d).to_owned();
    MeshedPod {
        control_plane: true,
        identity_controller: name.starts_with("linkerd-identity"),
        anchors: None,
        restarted_for,
        control_plane_deployment: Some(deployment),
        owner: Err(Unfixable::ManuallyInjected),
        ..pod("linkerd", name, &[])
    }
}

fn cp(restarted_for: Option<String>, complete: bool) -> Vec<ControlPlaneDeployment> {
    [
        "linkerd-identity",
        "linkerd-destination",
        "linkerd-proxy-injector",
    ]
    .iter()
    .map(|n| ControlPlaneDeployment {
        name: (*n).to_owned(),
        identity_controller: *n == "linkerd-identity",
        restarted_for: restarted_for.clone(),
        rollout_complete: complete,
        proxy: Some(ControlPlaneProxy {
            list: ProxyList::Containers,
            max_refresh: None,
        }),
        refresh_set_by_operator: None,
        replicas: 1,
    })
    .collect()
}

/// A world: anchor A, previous P, bundle B, issuer signed by `signer`, workload pods holding
/// `holds`, the control plane restarted for `cp_for`.
#[derive(Clone)]
struct World {
    anchor: usize,
    previous: Option<usize>,
    bundle: Option<Vec<usize>>,
    signer: usize,
    holds: Vec<usize>,
    cp_for: Option<String>,
}

impl World {
    fn synced() -> Self {
        World {
            anchor: 0,
            previous: Some(0),
            bundle: Some(vec![0]),
            signer: 0,
            holds: vec![0],
            cp_for: None,
        }
    }

    /// The anchor just renewed and the bundle expanded to {old, new}; nothing else moved yet.
    fn expanded() -> Self {
        World {
            anchor: 1,
            bundle: Some(vec![0, 1]),
            ..World::synced()
        }
    }

    /// Anchor 1 in use everywhere: the bundle reduced to it, the control plane restarted onto
    /// that, every pod holding it.
    fn reduced() -> Self {
        World {
            anchor: 1,
            previous: Some(1),
            bundle: Some(vec![1]),
            signer: 1,
            holds: vec![1],
            cp_for: Some(bundle_fp(&[1])),
        }
    }

    fn observed(&self) -> Observed {
        let mut pods: Vec<MeshedPod> = (0..4)
            .map(|i| pod(&format!("app-{}", i % 2), &format!("web-{i}"), &self.holds))
            .collect();
        pods.push(cp_pod("linkerd-identity-1", self.cp_for.clone()));
        Observed {
            now: NOW,
            anchor: Ok(a(self.anchor)),
            previous: Ok(self.previous.map(a)),
            bundle: Ok(self
                .bundle
                .as_ref()
                .map(|b| b.iter().map(|&i| a(i)).collect())),
            issuer: Ok(issuer(self.signer)),
            control_plane: cp(self.cp_for.clone(), true),
            pods,
            starting: Vec::new(),
            draining: Vec::new(),
            restart_markers: BTreeMap::new(),
            refused_restarts: BTreeMap::new(),
            bundle_meta: BundleMeta::default(),
            baked_templates: BTreeMap::new(),
            held_anchors: self.holds.iter().map(|&i| a(i)).collect(),
            issuer_reload: None,
        }
    }
}

fn manual() -> Policies {
    Policies {
        restart: RestartPolicy::Manual,
        max_concurrent_workloads: 2,
        issuer_renewal: RenewalPolicy::Manual,
        paused: false,
        refresh_interval: "5m".to_owned(),
    }
}

fn automatic() -> Policies {
    Policies {
        restart: RestartPolicy::Automatic,
        issuer_renewal: RenewalPolicy::Automatic,
        ..manual()
    }
}

fn in_phase(phase: Phase) -> TrustAnchorRotationStatus {
    TrustAnchorRotationStatus {
        phase,
        ..Default::default()
    }
}

fn run(policies: &Policies, phase: Phase, observed: &Observed) -> Decision {
    decide(policies, &Names::default(), &in_phase(phase), observed)
}

fn writes(d: &Decision) -> Vec<&Effect> {
    d.effects
        .iter()
        .filter(|e| !matches!(e, Effect::Event { .. }))
        .collect()
}

fn written_bundle(d: &Decision) -> Option<BTreeSet<String>> {
    d.effects.iter().find_map(|e| match e {
        Effect::WriteBundle { pem, .. } => Some(
            crate::bundle::Bundle::from_pem("test", pem)
                .unwrap()
                .fingerprints()
                .map(str::to_owned)
                .collect(),
        ),
        _ => None,
    })
}

fn blocking(d: &Decision) -> &str {
    d.status.blocking_message.as_deref().unwrap_or("")
}

fn out_of_order(d: &Decision) -> Option<ConditionStatus> {
    d.status
        .conditions
        .iter()
        .find(|c| c.type_ == OUT_OF_ORDER_CONDITION)
        .map(|c| c.status)
}

#[test]
fn synced_steady_state_writes_nothing_and_idles() {
    let d = run(&manual(), Phase::Synced, &World::synced().observed());
    assert_eq!(d.status.phase, Phase::Synced);
    assert!(d.effects.is_empty(), "{:?}", d.effects);
    assert_eq!(d.requeue, Requeue::Idle);
    assert_eq!(
        d.status.trust_bundle.as_ref().unwrap().progress.as_deref(),
        Some("4/4")
    );
    assert_eq!(out_of_order(&d), Some(ConditionStatus::False));
    assert_eq!(d.status.source_fingerprints.len(), 1);
    assert_eq!(
        d.status.active_issuer_fingerprint,
        Some(issuer(0).cert.fingerprint)
    );
}

#[test]
fn bootstrap_writes_the_previous_anchor_from_the_anchor_in_use() {
    let w = World {
        previous: None,
        ..World::synced()
    };
    let d = run(&manual(), Phase::Synced, &w.observed());
    assert_eq!(
        writes(&d),
        [&Effect::WritePreviousAnchor {
            pem: a(0).pem,
            fingerprint: fp(0)
        }]
    );
    // Installed after the anchor was already renewed: P is the anchor the issuer chains to,
    // so the rotation that follows knows what "previous" is.
    let w = World {
        anchor: 1,
        previous: None,
        ..World::synced()
    };
    let d = run(&manual(), Phase::Synced, &w.observed());
    assert!(
        matches!(writes(&d)[..], [Effect::WritePreviousAnchor { fingerprint, .. }] if *fingerprint == fp(0))
    );
}

/// Installed after both the anchor and the issuer were renewed (cert-manager renews the issuer
/// on its own schedule, or a CronJob renewed both), with the bundle still on the old anchor:
/// Linkerd's identity controller skipped the new issuer and signs with its earlier one, whose
/// anchor is the bundle's. That is the previous anchor, and the rotation onto the new one
/// expands the bundle (never restores it to the new anchor alone, which every leaf in use
/// would fail). The identity controller's restart is held until every proxy trusts the new
/// anchor, since it would take the new issuer up at once; the rest of the control plane
/// restarts. Then it restarts too, before the issuer is awaited.
#[test]
fn installed_after_an_early_issuer_renewal_the_identity_controller_is_held_until_proxies_trust_the_new_anchor()
 {
    let early = World {
        anchor: 1,
        previous: None,
        bundle: Some(vec![0]),
        signer: 1,
        ..World::synced()
    };
    let d = run(&automatic(), Phase::Synced, &early.observed());
    assert!(
        matches!(writes(&d)[..], [Effect::WritePreviousAnchor { fingerprint, .. }] if *fingerprint == fp(0)),
        "{:?}",
        d.effects
    );
    assert!(
        d.effects
            .iter()
            .any(|e| matches!(e, Effect::Event { message, .. }
        if message.contains("which the bundle lacks")))
    );

    // The next look: a renewal, the bundle expanded with the anchor in use kept.
    let mut o = World {
        previous: Some(0),
        ..early
    }
    .observed();
    let d = run(&automatic(), Phase::Synced, &o);
    assert_eq!(written_bundle(&d), Some(set(&[0, 1])), "{:?}", d.effects);
    assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
    assert_eq!(out_of_order(&d), Some(ConditionStatus::True));

    // Onto the expanded bundle: all but the identity controller restart.
    o.bundle = Ok(Some(vec![a(0), a(1)]));
    let marker = bundle_fp(&[0, 1]);
    let d = run(&automatic(), Phase::RefreshingControlPlane, &o);
    assert_eq!(
        control_plane_restarted(&d),
        ["linkerd-destination", "linkerd-proxy-injector"]
    );
    let held = "the identity controller (linkerd-identity) is held until every proxy trusts anchor";
    assert!(
        d.effects
            .iter()
            .any(|e| matches!(e, Effect::Event { reason, message, .. }
        if reason == "RestartingControlPlane" && message.contains(held)))
    );

    // Those done, propagation starts; the identity controller is not behind, only held.
    for c in o
        .control_plane
        .iter_mut()
        .filter(|c| !c.identity_controller)
    {
        c.restarted_for = Some(marker.clone());
    }
    let d = run(&automatic(), Phase::RefreshingControlPlane, &o);
    assert_eq!(
        d.status.phase,
        Phase::PropagatingTrustRoots,
        "{:?}",
        d.status
    );
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert_eq!(d.status.phase, Phase::PropagatingTrustRoots);
    // The workloads are restarted; nothing else is written (the identity controller's restart
    // least of all).
    assert!(
        !writes(&d).is_empty()
            && writes(&d)
                .iter()
                .all(|e| matches!(e, Effect::RestartWorkloads { .. })),
        "{:?}",
        d.effects
    );
    let message = d.status.blocking_message.unwrap_or_default();
    assert!(message.contains(held), "{message}");

    // Every running proxy trusts the new anchor, but the pods the restarts replaced still
    // drain on the old bundle alone (a control-plane one too): the identity controller, which
    // takes the new issuer up as it starts, waits for them, writing nothing.
    for p in o.pods.iter_mut().filter(|p| !p.control_plane) {
        p.anchors = Some(set(&[0, 1]));
    }
    o.draining = vec![
        pod("app-0", "web-old", &[0]),
        cp_pod("linkerd-destination-old", None),
    ];
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert_eq!(d.status.phase, Phase::PropagatingTrustRoots);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    let message = d.status.blocking_message.unwrap_or_default();
    assert!(
        message.contains("waiting for 2 pod(s) that may not trust anchor")
            && message.contains("web-old")
            && message.contains("linkerd-identity"),
        "{message}"
    );
    // Draining with the new anchor (a control-plane pod: started onto the bundle) is no
    // reason to wait.
    o.draining = vec![
        pod("app-0", "web-old", &[0, 1]),
        cp_pod("linkerd-destination-new", Some(marker.clone())),
    ];

    // Every proxy trusts the new anchor: the identity controller is restarted onto the bundle.
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
    let d = run(&automatic(), Phase::RefreshingControlPlane, &o);
    assert!(
        matches!(&writes(&d)[..], [Effect::RestartControlPlane { deployments, .. }]
            if deployments.iter().map(|r| r.name.as_str()).eq(["linkerd-identity"])),
        "{:?}",
        d.effects
    );
}

/// The identity controller's hold lasts as long as any other pod may not trust the new anchor,
/// not only the running workloads: here every running workload pod already holds the expanded
/// bundle while the control plane restarts onto it (a person restarted them, as the urgent
/// message asks), but the pods they replaced still drain on the old bundle, and then the rest
/// of the control plane's old pods do. The identity controller, which takes the renewed
/// issuer up as it starts, is restarted only once they are gone.
#[test]
fn the_identity_controllers_hold_outlasts_draining_pods_and_the_rest_of_the_control_plane() {
    let mut o = World {
        anchor: 1,
        previous: Some(0),
        bundle: Some(vec![0, 1]),
        signer: 1,
        holds: vec![0, 1],
        ..World::synced()
    }
    .observed();
    let marker = bundle_fp(&[0, 1]);
    o.draining = vec![pod("app-0", "web-old", &[0])];
    let d = run(&automatic(), Phase::RefreshingControlPlane, &o);
    assert_eq!(
        control_plane_restarted(&d),
        ["linkerd-destination", "linkerd-proxy-injector"]
    );
    assert!(
        d.effects
            .iter()
            .any(|e| matches!(e, Effect::Event { message, .. }
            if message.contains("the identity controller (linkerd-identity) is held") && message.contains("app-0/web-old"))),
        "{:?}",
        d.effects
    );

    // The workloads' old pods gone; the control plane's rolling (its new pods up, its old ones
    // draining): still held, and named.
    for c in o
        .control_plane
        .iter_mut()
        .filter(|c| !c.identity_controller)
    {
        c.restarted_for = Some(marker.clone());
    }
    o.pods
        .push(cp_pod("linkerd-destination-2", Some(marker.clone())));
    o.draining = vec![cp_pod("linkerd-destination-1", None)];
    let d = run(&automatic(), Phase::RefreshingControlPlane, &o);
    assert_eq!(control_plane_restarted(&d), Vec::<&str>::new());
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    assert!(
        blocking(&d).contains("linkerd/linkerd-destination-1")
            && blocking(&d).contains("before the identity controller (linkerd-identity)"),
        "{}",
        blocking(&d)
    );

    // Nothing left that may not trust the new anchor: the identity controller restarts. (A pod
    // labelled as control plane that none of the operator's Deployments owns has no restart
    // marker to be known by, nor anchors in its spec: it holds nothing up.)
    o.draining.clear();
    let mut stray = cp_pod("linkerd-mirror-0", None);
    stray.namespace = "linkerd-multicluster".to_owned();
    stray.control_plane_deployment = None;
    stray.owner = Ok(Workload {
        kind: "StatefulSet".to_owned(),
        namespace: "linkerd-multicluster".to_owned(),
        name: "linkerd-mirror".to_owned(),
    });
    o.pods.push(stray);
    let d = run(&automatic(), Phase::RefreshingControlPlane, &o);
    assert_eq!(control_plane_restarted(&d), ["linkerd-identity"]);
    // Its restart done, the control plane runs on the bundle: propagation.
    for c in o.control_plane.iter_mut() {
        c.restarted_for = Some(marker.clone());
    }
    for p in o.pods.iter_mut().filter(|p| p.identity_controller) {
        p.restarted_for = Some(marker.clone());
    }
    let d = run(&automatic(), Phase::RefreshingControlPlane, &o);
    assert_eq!(
        d.status.phase,
        Phase::PropagatingTrustRoots,
        "{}",
        blocking(&d)
    );
}

/// The issuer renewed early onto anchor 1, then the anchor renewed again, to 2: the issuer's
/// anchor is no longer the current one, but the pods on the old bundle still lack it, and an
/// identity controller restarted now would take that issuer up. It stays held, for anchor 1,
/// and the out-of-order alarm is raised, even by an operator that never saw the first
/// renewal on its own (stopped, or not yet installed, through both).
#[test]
fn an_anchor_renewed_again_keeps_the_identity_controller_held_for_the_issuers_anchor() {
    let o = World {
        anchor: 2,
        previous: Some(0),
        bundle: Some(vec![0, 1, 2]),
        signer: 1,
        holds: vec![0],
        cp_for: None,
    }
    .observed();
    let d = run(&automatic(), Phase::RefreshingControlPlane, &o);
    assert_eq!(
        control_plane_restarted(&d),
        ["linkerd-destination", "linkerd-proxy-injector"]
    );
    let held = format!(
        "the identity controller (linkerd-identity) is held until every proxy trusts anchor {}",
        short(&fp(1))
    );
    assert!(
        d.effects
            .iter()
            .any(|e| matches!(e, Effect::Event { message, .. } if message.contains(&held))),
        "{:?}",
        d.effects
    );
    assert_eq!(out_of_order(&d), Some(ConditionStatus::True));
    // Every pod trusting anchor 1 (as the propagation leaves them): restarted with the rest.
    let mut o = o;
    for p in o.pods.iter_mut().filter(|p| !p.control_plane) {
        p.anchors = Some(set(&[0, 1, 2]));
    }
    let d = run(&automatic(), Phase::RefreshingControlPlane, &o);
    assert!(
        control_plane_restarted(&d).contains(&"linkerd-identity"),
        "{:?}",
        d.effects
    );
}

/// The previous-anchor Secret deleted after the issuer's renewal: the anchor in use is the new
/// one, so rebuilding from it would make the rotation forget it is under way. It is rebuilt
/// as the status records it, from the old anchor's copy in the bundle; the next look goes on
/// with the rotation (and a bundle written over meanwhile would be grown back with the old
/// anchor, never restored without it).
#[test]
fn a_previous_anchor_deleted_mid_rotation_is_rebuilt_as_the_status_records_it() {
    let mut o = issuer_renewed().observed();
    o.previous = Ok(None);
    let mut status = in_phase(Phase::RenewingWorkloadCerts);
    status.previous_anchor_fingerprint = Some(fp(0));
    // Paused meanwhile: the record is kept, not taken for the Secret's absence.
    let paused = Policies {
        paused: true,
        ..automatic()
    };
    let held = decide(&paused, &Names::default(), &status, &o);
    assert_eq!(writes(&held), Vec::<&Effect>::new());
    assert_eq!(held.status.previous_anchor_fingerprint, Some(fp(0)));
    let d = decide(&automatic(), &Names::default(), &held.status, &o);
    assert_eq!(
        writes(&d),
        [&Effect::WritePreviousAnchor {
            pem: a(0).pem,
            fingerprint: fp(0)
        }]
    );
    assert_eq!(d.status.phase, Phase::RenewingWorkloadCerts);
    assert!(
        d.effects
            .iter()
            .any(|e| matches!(e, Effect::Event { message, .. }
        if message.ends_with(", the previous anchor its status records")))
    );

    // A record of no anchor at hand (nor of one), and the anchor in use it is.
    for recorded in [Some("f".repeat(64)), None] {
        status.previous_anchor_fingerprint = recorded;
        let d = decide(&automatic(), &Names::default(), &status, &o);
        assert!(
            matches!(writes(&d)[..], [Effect::WritePreviousAnchor { fingerprint, .. }] if *fingerprint == fp(1))
        );
    }
}

#[test]
fn bootstrap_writes_a_missing_bundle_with_every_anchor_in_use() {
    let w = World {
        anchor: 1,
        previous: Some(0),
        bundle: None,
        ..World::synced()
    };
    let d = run(&manual(), Phase::Synced, &w.observed());
    assert_eq!(written_bundle(&d), Some(set(&[0, 1])));
    assert_eq!(d.status.phase, Phase::Synced);
}

/// A second renewal (anchor 2) after the issuer had moved onto the first renewal's anchor 1:
/// once the issuer is renewed onto anchor 2, anchor 1 is in no Secret and signs no issuer, yet
/// leaves from the issuer it signed live until they refresh, and the pods started meanwhile
/// must trust it. A bundle ConfigMap deleted, or written over with the newest anchor alone,
/// comes back with it, found by its fingerprint in the proxies' env; and outside a renewal
/// nothing the status recorded comes back.
#[test]
fn a_bundle_lost_after_a_second_renewal_keeps_the_anchor_the_first_one_left_in_it() {
    let intact = World {
        anchor: 2,
        previous: Some(0),
        bundle: Some(vec![0, 1, 2]),
        signer: 2,
        holds: vec![0, 1, 2],
        cp_for: Some(bundle_fp(&[0, 1, 2])),
    };
    let mut o = intact.observed();
    for p in o.pods.iter_mut() {
        p.leaf = Some(Leaf::FromOtherIssuer);
    }
    let last = run(&manual(), Phase::RenewingWorkloadCerts, &o);
    assert_eq!(last.status.phase, Phase::RenewingWorkloadCerts);
    assert_eq!(written_bundle(&last), None);

    let deleted = World {
        bundle: None,
        ..intact.clone()
    };
    let d = decide(
        &manual(),
        &Names::default(),
        &last.status,
        &deleted.observed(),
    );
    assert_eq!(written_bundle(&d), Some(set(&[0, 1, 2])), "{:?}", d.effects);

    let mut o = World {
        bundle: Some(vec![2]),
        ..intact.clone()
    }
    .observed();
    o.bundle_meta.overwritten_by = vec!["argocd-controller".to_owned()];
    let d = decide(&manual(), &Names::default(), &last.status, &o);
    assert_eq!(written_bundle(&d), Some(set(&[0, 1, 2])), "{:?}", d.effects);
    // What is written is what the status names, so a failed write still keeps anchor 1.
    let named: BTreeSet<String> = (d.status.source_fingerprints.iter())
        .map(|s| s.fingerprint.clone())
        .collect();
    assert_eq!(named, set(&[0, 1, 2]));
    let again = decide(&manual(), &Names::default(), &d.status, &o);
    assert_eq!(written_bundle(&again), Some(set(&[0, 1, 2])));

    // Anchor 1 found nowhere (no pod holds it): nothing can bring it back, and the rest is
    // written as before.
    let mut o = deleted.observed();
    o.held_anchors.retain(|c| c.fingerprint != fp(1));
    let d = decide(&manual(), &Names::default(), &last.status, &o);
    assert_eq!(written_bundle(&d), Some(set(&[0, 2])));

    // A status from before the reduction (its write lost with the reduction's), then anchor 1
    // renewed again: the record belongs to the rotation before (its previous anchor is not
    // the Secret's) and brings back nothing it let go of.
    let next_rotation = World {
        anchor: 1,
        previous: Some(2),
        bundle: None,
        signer: 2,
        holds: vec![0, 1, 2],
        cp_for: Some(bundle_fp(&[2])),
    };
    let d = decide(
        &manual(),
        &Names::default(),
        &last.status,
        &next_rotation.observed(),
    );
    assert_eq!(written_bundle(&d), Some(set(&[1, 2])), "{:?}", d.effects);

    // Outside a renewal (the previous anchor is the current one), only the anchor in use.
    let reduced = World {
        anchor: 2,
        previous: Some(2),
        bundle: None,
        signer: 2,
        holds: vec![0, 1, 2],
        cp_for: Some(bundle_fp(&[0, 1, 2])),
    };
    let d = decide(
        &manual(),
        &Names::default(),
        &last.status,
        &reduced.observed(),
    );
    assert_eq!(written_bundle(&d), Some(set(&[2])));
}

/// The same second renewal before the issuer moved on: it is still signed by anchor 1, which
/// only the bundle and the proxies hold. With the ConfigMap deleted the issuer's anchor, which
/// the bundle held at the last look, is found in the proxies' env and the bundle rebuilt with
/// it, rather than the rotation parked with advice to renew the issuer onto an anchor the pods
/// do not hold yet. An anchor only the proxies hold is taken on no other terms: not one the
/// status did not record in the bundle, and not outside a renewal (an old issuer, signed by an
/// anchor retired long ago that a `linkerd inject`-ed template still carries, restored from a
/// backup, must not bring that anchor back and have the control plane restarted onto it).
#[test]
fn an_issuer_signed_by_an_anchor_only_the_proxies_hold_keeps_it_trusted_during_a_renewal() {
    // The last look: anchor 1 propagated, the issuer on it, waiting for the workloads' leaves.
    let before = World {
        anchor: 1,
        previous: Some(0),
        bundle: Some(vec![0, 1]),
        signer: 1,
        holds: vec![0, 1],
        cp_for: Some(bundle_fp(&[0, 1])),
    };
    let mut o = before.observed();
    every_leaf(&mut o, Leaf::FromOtherIssuer);
    let last = run(&manual(), Phase::RenewingWorkloadCerts, &o);
    assert_eq!(written_bundle(&last), None);
    // Then anchor 2, and the ConfigMap deleted.
    let w = World {
        anchor: 2,
        bundle: None,
        ..before
    };
    let d = decide(&manual(), &Names::default(), &last.status, &w.observed());
    assert_eq!(
        written_bundle(&d),
        Some(set(&[0, 1, 2])),
        "{}",
        blocking(&d)
    );
    assert!(!blocking(&d).contains("cmctl renew"), "{}", blocking(&d));

    // Not recorded (the status lost with the resource): parked, nothing written.
    let d = run(&manual(), Phase::RenewingWorkloadCerts, &w.observed());
    assert!(
        blocking(&d).contains("signed by none of the known anchors"),
        "{}",
        blocking(&d)
    );
    assert_eq!(writes(&d), Vec::<&Effect>::new());

    // Outside a renewal: an issuer signed by anchor 0, which a proxy still holds, recorded or
    // not, parks the rotation; the bundle and the control plane are left alone.
    let retired = World {
        anchor: 1,
        previous: Some(1),
        bundle: Some(vec![1]),
        signer: 0,
        holds: vec![0, 1],
        cp_for: Some(bundle_fp(&[1])),
    };
    for status in [in_phase(Phase::Synced), last.status.clone()] {
        let d = decide(&manual(), &Names::default(), &status, &retired.observed());
        assert!(
            blocking(&d).contains("signed by none of the known anchors"),
            "{}",
            blocking(&d)
        );
        assert_eq!(writes(&d), Vec::<&Effect>::new());
    }
}

#[test]
fn renewed_anchor_expands_the_bundle_and_refreshes_the_control_plane() {
    let w = World {
        anchor: 1,
        ..World::synced()
    };
    // The last rotation's certificate count goes: it would read as this one's.
    let mut synced = in_phase(Phase::Synced);
    synced.workload_certificates = Some(ConvergenceStatus::new(4, 4));
    let d = decide(&manual(), &Names::default(), &synced, &w.observed());
    assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
    assert_eq!(written_bundle(&d), Some(set(&[0, 1])));
    assert_eq!(out_of_order(&d), Some(ConditionStatus::False));
    assert_eq!(d.status.workload_certificates, None);
    assert!(d.status.last_phase_transition_time.is_some());
    assert!(
        d.effects.iter().any(
            |e| matches!(e, Effect::Event { reason, .. } if reason == "RefreshingControlPlane")
        )
    );
}

#[test]
fn issuer_renewed_with_the_anchor_raises_out_of_order_and_still_expands() {
    let w = World {
        anchor: 1,
        signer: 1,
        ..World::synced()
    };
    let d = run(&manual(), Phase::Synced, &w.observed());
    assert_eq!(out_of_order(&d), Some(ConditionStatus::True));
    assert_eq!(written_bundle(&d), Some(set(&[0, 1])));
    assert!(d.effects.iter().any(|e| matches!(e, Effect::Event { reason, warning: true, .. } if reason == "OutOfOrderIssuerRotation")));
    // And while the bundle propagates.
    let w = World {
        anchor: 1,
        signer: 1,
        bundle: Some(vec![0, 1]),
        holds: vec![0],
        cp_for: Some(bundle_fp(&[0, 1])),
        ..World::synced()
    };
    let d = run(&manual(), Phase::PropagatingTrustRoots, &w.observed());
    assert_eq!(out_of_order(&d), Some(ConditionStatus::True));
    assert_eq!(d.status.phase, Phase::PropagatingTrustRoots);
}

/// A look wrote a bundle and its status write never landed (a conflict, a crash, a lost Lease
/// between the two): the status still says a phase after RefreshingControlPlane while the
/// control plane runs on the bundle before. Nothing moves on that phase's word; the control
/// plane is restarted first.
#[test]
fn a_bundle_whose_status_write_was_lost_restarts_the_control_plane_before_anything_else() {
    // A second renewal (anchor 2) mid-rotation: the bundle grew to {0, 1, 2}, the control plane
    // and every pod still on {0, 1}, the issuer on anchor 1.
    let grown = World {
        anchor: 2,
        previous: Some(0),
        bundle: Some(vec![0, 1, 2]),
        signer: 1,
        holds: vec![0, 1],
        cp_for: Some(bundle_fp(&[0, 1])),
    };
    // The reduction to anchor 1 written, the control plane still on {0, 1}.
    let reduced = World {
        cp_for: Some(bundle_fp(&[0, 1])),
        holds: vec![0, 1],
        ..World::reduced()
    };
    let cases = [
        (&grown, Phase::PropagatingTrustRoots),
        (&grown, Phase::WaitingForIdentityRotation),
        (&grown, Phase::RenewingWorkloadCerts),
        (&reduced, Phase::RemovingOldTrustRoots),
    ];
    for (world, phase) in cases {
        for policies in [manual(), automatic()] {
            let d = run(&policies, phase, &world.observed());
            assert_eq!(d.status.phase, Phase::RefreshingControlPlane, "{phase}");
            assert_eq!(
                writes(&d),
                Vec::<&Effect>::new(),
                "{phase}: nothing else moves"
            );
            assert!(
                !blocking(&d).contains("cmctl renew"),
                "{phase}: {}",
                blocking(&d)
            );
            // And the next look restarts the control plane onto the bundle in place.
            let next = decide(&policies, &Names::default(), &d.status, &world.observed());
            let bundle = bundle_fp(world.bundle.as_deref().unwrap());
            assert!(
                matches!(
                    writes(&next)[..],
                    [Effect::RestartControlPlane { marker, .. }] if *marker == bundle
                ),
                "{phase}: {:?}",
                next.effects
            );
        }
    }
    // Synced: a bundle written over was restored (the operator's write takes the key back),
    // the restore's status lost. Nothing overwritten is left to see, only the control plane on
    // the marker before: it is restarted, and the removal then takes the pods that started on
    // the foreign bundle.
    let restored = restored_over(10, 0);
    for policies in [manual(), automatic()] {
        let d = run(&policies, Phase::Synced, &restored);
        assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
        let next = decide(&policies, &Names::default(), &d.status, &restored);
        let marker = format!("{}.10", bundle_fp(&[1]));
        assert!(
            matches!(&writes(&next)[..], [Effect::RestartControlPlane { marker: m, .. }] if *m == marker),
            "{:?}",
            next.effects
        );
    }
    // A bundle that is not the operator's write (one Linkerd was installed with) is left
    // alone, and so is the control plane, whatever restart it last had from the operator.
    let mut installed = restored;
    installed.bundle_meta = BundleMeta::default();
    let earlier = format!("{}.10", bundle_fp(&[1]));
    for c in &mut installed.control_plane {
        c.restarted_for = Some(earlier.clone());
    }
    let d = run(&automatic(), Phase::Synced, &installed);
    assert_eq!(d.status.phase, Phase::Synced);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);

    // A control-plane Deployment with no marker at all was created since (a `helm upgrade
    // --force`, say): its pods read the bundle in place, and nothing goes back.
    let recreated = World {
        cp_for: None,
        ..propagating()
    };
    let d = run(
        &manual(),
        Phase::PropagatingTrustRoots,
        &recreated.observed(),
    );
    assert_eq!(d.status.phase, Phase::PropagatingTrustRoots);
}

/// The resource deleted and created again mid-rotation: its status is empty, so it reads as
/// Synced. The pods say where the rotation is; nothing raises a false alarm or stays Synced
/// over a removal that never finished.
#[test]
fn a_status_lost_mid_rotation_is_read_from_the_pods() {
    // Lost in RenewingWorkloadCerts: every pod holds {0, 1}, the issuer on anchor 1. Nor does
    // the look after, in RefreshingControlPlane, raise the alarm.
    for policies in [manual(), automatic()] {
        let w = issuer_renewed();
        let d = run(&policies, Phase::Synced, &w.observed());
        assert_eq!(out_of_order(&d), Some(ConditionStatus::False));
        assert!(!d.effects.iter().any(
            |e| matches!(e, Effect::Event { reason, .. } if reason == "OutOfOrderIssuerRotation")
        ));
        assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
        let next = decide(&policies, &Names::default(), &d.status, &w.observed());
        assert_eq!(out_of_order(&next), Some(ConditionStatus::False));
        assert_eq!(next.status.phase, Phase::PropagatingTrustRoots);
    }
    // Pods that do lack the new anchor keep the alarm, in Synced and in RefreshingControlPlane.
    let w = World {
        signer: 1,
        ..propagating()
    };
    let d = run(&manual(), Phase::Synced, &w.observed());
    assert_eq!(out_of_order(&d), Some(ConditionStatus::True));
    let d = run(&manual(), Phase::RefreshingControlPlane, &w.observed());
    assert_eq!(out_of_order(&d), Some(ConditionStatus::True));

    // Lost in RemovingOldTrustRoots: the bundle reduced to {1}, the pods still on {0, 1}.
    let w = World {
        holds: vec![0, 1],
        ..World::reduced()
    };
    let d = run(&automatic(), Phase::Synced, &w.observed());
    assert_eq!(d.status.phase, Phase::RemovingOldTrustRoots);
    assert!(
        d.effects.iter().any(|e| matches!(e, Effect::Event { message, .. }
            if message.contains("4 meshed pod(s) still trust an anchor that left the trust bundle"))),
        "{:?}",
        d.effects
    );
    let next = decide(&automatic(), &Names::default(), &d.status, &w.observed());
    assert!(
        writes(&next)
            .iter()
            .any(|e| matches!(e, Effect::RestartWorkloads { .. })),
        "{:?}",
        next.effects
    );
    // Synced stays Synced over pods holding exactly the bundle; over pods whose anchors cannot
    // be read; over pods holding less than the bundle (an anchor added to it since, for
    // multicluster say); and over a pod still trusting the old anchor that no restart can fix
    // (it is counted, not chased).
    let d = run(&automatic(), Phase::Synced, &World::reduced().observed());
    assert_eq!((d.status.phase, d.requeue), (Phase::Synced, Requeue::Idle));
    let mut unknown = World::reduced().observed();
    unknown.pods[0].anchors = None;
    let d = run(&automatic(), Phase::Synced, &unknown);
    assert_eq!((d.status.phase, d.requeue), (Phase::Synced, Requeue::Idle));
    let added = World {
        bundle: Some(vec![1, 2]),
        ..World::reduced()
    };
    let d = run(&automatic(), Phase::Synced, &added.observed());
    assert_eq!((d.status.phase, d.requeue), (Phase::Synced, Requeue::Idle));
    let mut bare = World::reduced().observed();
    bare.pods[0].anchors = Some(set(&[0, 1]));
    bare.pods[0].owner = Err(Unfixable::BarePod);
    let d = run(&automatic(), Phase::Synced, &bare);
    assert_eq!((d.status.phase, d.requeue), (Phase::Synced, Requeue::Idle));
    assert_eq!(
        d.status.trust_bundle.as_ref().unwrap().progress.as_deref(),
        Some("4/4"),
        "Synced counts pods holding the bundle, as before"
    );
}

/// A pod that does not trust the anchor in use (started from a manifest injected before the
/// last rotation) rejects every leaf of the mesh: Synced names it, with one warning, and
/// writes nothing (nothing is rotating; the restart is a person's call).
#[test]
fn synced_names_pods_that_do_not_trust_the_anchor_in_use() {
    let mut o = World::reduced().observed();
    o.pods[1].anchors = Some(set(&[0]));
    let d = run(&automatic(), Phase::Synced, &o);
    assert_eq!((d.status.phase, d.requeue), (Phase::Synced, Requeue::Idle));
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    assert_eq!(
        blocking(&d),
        format!(
            "1 meshed pod(s) do not trust the anchor in use ({}): their proxies reject every leaf of the mesh until their workloads are restarted (e.g. app-1/web-1)",
            &fp(1)[..12]
        )
    );
    assert_eq!(warnings(&d, "PodsLackTrustBundle").len(), 1);
    let again = decide(&automatic(), &Names::default(), &d.status, &o);
    assert!(warnings(&again, "PodsLackTrustBundle").is_empty());
    // Restarted: the message goes.
    o.pods[1].anchors = Some(set(&[1]));
    let d = decide(&automatic(), &Names::default(), &again.status, &o);
    assert_eq!(d.status.blocking_message, None);
}

fn contested(d: &Decision) -> Option<&Condition> {
    d.status
        .conditions
        .iter()
        .find(|c| c.type_ == CONTESTED_CONDITION)
}

/// The reduced world whose bundle `by` rewrote with the retired anchor after the operator's
/// last write; `at` seconds after NOW.
fn overwritten_by(by: &str, version: u32, at: i64) -> Observed {
    let mut o = World {
        bundle: Some(vec![0]),
        ..World::reduced()
    }
    .observed();
    o.now = NOW + at;
    o.bundle_meta = BundleMeta {
        version: Some(version.to_string()),
        written_over: Some((version - 1).to_string()),
        overwritten_by: vec![by.to_owned()],
        // A patch: the operator's annotations stay.
        annotated: true,
        key_holders: vec![by.to_owned()],
    };
    o
}

/// The reduced world with the bundle restored by the operator's write over `version`, the
/// control plane still on the bundle before it; `at` seconds after NOW.
fn restored_over(version: u32, at: i64) -> Observed {
    let mut o = World::reduced().observed();
    o.now = NOW + at;
    o.bundle_meta = BundleMeta {
        version: Some((version + 1).to_string()),
        written_over: Some(version.to_string()),
        annotated: true,
        ..BundleMeta::default()
    };
    o
}

fn restarts_control_plane(d: &Decision) -> bool {
    writes(d)
        .iter()
        .any(|e| matches!(e, Effect::RestartControlPlane { .. }))
}

/// The control-plane Deployments `d` restarts, when that is all it writes (none when it writes
/// nothing).
fn control_plane_restarted(d: &Decision) -> Vec<&str> {
    match &writes(d)[..] {
        [Effect::RestartControlPlane { deployments, .. }] => {
            deployments.iter().map(|r| r.name.as_str()).collect()
        }
        [] => Vec::new(),
        other => panic!("{other:?}"),
    }
}

/// A GitOps controller that re-applies Linkerd's install-time ConfigMap fights the operator
/// over the bundle. Each overwrite is restored, and the control plane restarted onto it, at
/// once: the operator cannot tell whether the control plane started on the foreign bundle
/// meanwhile. From the second overwrite within the contest window the status says who keeps
/// writing it, until the window passes without another.
#[test]
fn a_contested_bundle_is_named_and_still_restored_and_restarted_onto_at_once() {
    let policies = automatic();
    let names = Names::default();
    let restored = bundle_fp(&[1]);

    // The first overwrite: restored, the control plane restarted onto it; no contest.
    let first = decide(
        &policies,
        &names,
        &in_phase(Phase::Synced),
        &overwritten_by("argocd-application-controller", 10, 0),
    );
    assert_eq!(first.status.phase, Phase::RefreshingControlPlane);
    assert!(
        matches!(&writes(&first)[..], [Effect::WriteBundle { written_over: Some(v), .. }] if v == "10")
    );
    assert_eq!(first.status.bundle_overwrites.len(), 1);
    assert_eq!(
        first.status.bundle_overwrites[0].field_managers,
        ["argocd-application-controller"]
    );
    assert!(contested(&first).is_none(), "{:?}", first.status.conditions);
    let next = decide(&policies, &names, &first.status, &restored_over(10, 2));
    assert!(
        matches!(&writes(&next)[..], [Effect::RestartControlPlane { marker, .. }] if *marker == format!("{restored}.10")),
        "{:?}",
        next.effects
    );

    // The second, a minute later: restored, contested, and restarted onto at once.
    let mut status = next.status.clone();
    status.phase = Phase::Synced;
    let second = decide(
        &policies,
        &names,
        &status,
        &overwritten_by("argocd-application-controller", 20, 60),
    );
    assert!(matches!(&writes(&second)[..], [Effect::WriteBundle { .. }]));
    let raised = contested(&second).expect("the contest is raised");
    assert_eq!(
        (raised.status, raised.reason.as_str()),
        (ConditionStatus::True, "OverwrittenRepeatedly")
    );
    assert!(
        raised.message.contains("overwritten 2 times")
            && raised.message.contains("argocd-application-controller")
            && raised
                .message
                .contains("linkerd/linkerd-identity-trust-roots"),
        "{}",
        raised.message
    );
    assert!(second.effects.iter().any(
        |e| matches!(e, Effect::Event { warning: true, reason, .. } if reason == "TrustBundleContested")
    ));
    let held = decide(&policies, &names, &second.status, &restored_over(20, 62));
    assert!(
        matches!(&writes(&held)[..], [Effect::RestartControlPlane { marker, .. }] if *marker == format!("{restored}.20")),
        "{:?}",
        held.effects
    );
    assert_eq!(contested(&held).unwrap().status, ConditionStatus::True);
    // Raised once: no second warning, and its time kept.
    assert!(
        !held
            .effects
            .iter()
            .any(|e| matches!(e, Effect::Event { reason, .. } if reason == "TrustBundleContested"))
    );
    assert_eq!(
        contested(&held).unwrap().last_transition_time,
        raised.last_transition_time
    );

    // A window later without another overwrite: lowered.
    let window = CONTEST_WINDOW.as_secs() as i64;
    let mut synced = held.status.clone();
    synced.phase = Phase::Synced;
    // (Synced again: the control plane on the restore's bundle.)
    let settled = |at| {
        let mut o = restored_over(20, at);
        let marker = format!("{restored}.20");
        for c in &mut o.control_plane {
            c.restarted_for = Some(marker.clone());
        }
        for p in o.pods.iter_mut().filter(|p| p.control_plane) {
            p.restarted_for = Some(marker.clone());
        }
        o
    };
    // Meanwhile it looks again when the window ends, not only after the idle interval: no
    // watch event would mark that.
    for (at, left) in [(100, window - 40), (60 + window - 1, 1)] {
        let quiet = decide(&policies, &names, &synced, &settled(at));
        assert_eq!(contested(&quiet).unwrap().status, ConditionStatus::True);
        assert_eq!(
            quiet.requeue,
            Requeue::Within(std::time::Duration::from_secs(left as u64))
        );
    }
    let quiet = decide(&policies, &names, &synced, &settled(60 + window));
    let lowered = contested(&quiet).unwrap();
    assert_eq!(
        (lowered.status, lowered.reason.as_str()),
        (ConditionStatus::False, "BundleStayedPut")
    );
    assert_eq!(quiet.requeue, Requeue::Idle);
}

/// Overwrites further apart than the contest window are each restored and restarted onto, as
/// a `helm upgrade` of Linkerd now and then is, and are no contest; the status keeps the
/// latest few.
#[test]
fn overwrites_far_apart_are_not_a_contest() {
    let policies = automatic();
    let window = CONTEST_WINDOW.as_secs() as i64;
    let mut status = in_phase(Phase::Synced);
    for i in 0..7u32 {
        let at = i as i64 * (window + 1);
        let d = decide(
            &policies,
            &Names::default(),
            &status,
            &overwritten_by("helm", 10 * (i + 1), at),
        );
        assert!(contested(&d).is_none(), "overwrite {i}");
        let next = decide(
            &policies,
            &Names::default(),
            &d.status,
            &restored_over(10 * (i + 1), at + 2),
        );
        assert!(restarts_control_plane(&next), "overwrite {i}");
        status = next.status;
        status.phase = Phase::Synced;
    }
    assert_eq!(status.bundle_overwrites.len(), BUNDLE_OVERWRITES_KEPT);
    let first_kept = status.bundle_overwrites[0].restored_at.0.as_second();
    assert_eq!(first_kept, NOW + 2 * (window + 1), "the oldest are dropped");
}

/// A look whose ConfigMap cache has not yet shown the operator's restore sees the overwritten
/// version again and restores it again: still one overwrite, no contest.
#[test]
fn an_overwrite_seen_twice_is_recorded_once() {
    let policies = automatic();
    let first = decide(
        &policies,
        &Names::default(),
        &in_phase(Phase::Synced),
        &overwritten_by("helm", 10, 0),
    );
    let again = decide(
        &policies,
        &Names::default(),
        &first.status,
        &overwritten_by("helm", 10, 1),
    );
    assert!(matches!(&writes(&again)[..], [Effect::WriteBundle { .. }]));
    assert_eq!(again.status.bundle_overwrites.len(), 1);
    assert!(contested(&again).is_none());
}

/// A bundle nobody wrote over since the operator did (its first write over Linkerd's
/// install-time bundle, or a renewal's expansion) records no overwrite.
#[test]
fn the_operators_own_bundle_writes_are_not_overwrites() {
    let mut o = World {
        bundle: Some(vec![0]),
        ..World::reduced()
    }
    .observed();
    o.bundle_meta.version = Some("7".to_owned());
    let d = run(&automatic(), Phase::Synced, &o);
    assert!(matches!(&writes(&d)[..], [Effect::WriteBundle { .. }]));
    assert!(d.status.bundle_overwrites.is_empty());
    let renewed = World {
        anchor: 1,
        ..World::synced()
    };
    let expanding = run(&automatic(), Phase::Synced, &renewed.observed());
    assert!(matches!(
        &writes(&expanding)[..],
        [Effect::WriteBundle { .. }]
    ));
    assert!(expanding.status.bundle_overwrites.is_empty());
}

/// A `helm upgrade` of Linkerd rewrote the bundle with a retired anchor and rolled the control
/// plane, whose pod templates kept the operator's marker of the bundle before; workloads that
/// restarted meanwhile hold the retired anchor too. The restored bundle has the fingerprint it
/// had: only the restore recorded in the ConfigMap tells the restarts apart, and everything
/// that started on the foreign bundle is restarted again.
#[test]
fn a_restored_bundle_restarts_what_started_on_the_foreign_one() {
    let before = bundle_fp(&[1]);
    let overwritten = World {
        bundle: Some(vec![0]),
        ..World::reduced()
    };
    let mut o = overwritten.observed();
    o.bundle_meta.version = Some("42".to_owned());
    let d = run(&automatic(), Phase::Synced, &o);
    assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
    assert!(
        matches!(&writes(&d)[..], [Effect::WriteBundle { written_over: Some(v), .. }] if v == "42"),
        "{:?}",
        d.effects
    );

    // Restored: the ConfigMap says after which write; the control plane still carries the
    // marker of the bundle before, and is restarted onto the new one.
    let marker = format!("{before}.42");
    let mut o = World::reduced().observed();
    o.bundle_meta = BundleMeta {
        version: Some("43".to_owned()),
        written_over: Some("42".to_owned()),
        ..BundleMeta::default()
    };
    for p in o.pods.iter_mut().take(2) {
        p.anchors = Some(set(&[0]));
    }
    let next = decide(&automatic(), &Names::default(), &d.status, &o);
    assert!(
        matches!(&writes(&next)[..], [Effect::RestartControlPlane { marker: written, .. }] if *written == marker),
        "{:?}",
        next.effects
    );

    // Once it runs on it: the workloads restarted onto the bundle before (rollout done) whose
    // pods hold the retired anchor are restarted again, not named as beyond a restart.
    o.control_plane = cp(Some(marker.clone()), true);
    for p in o.pods.iter_mut().filter(|p| p.control_plane) {
        p.restarted_for = Some(marker.clone());
    }
    for ns in ["app-0", "app-1"] {
        o.restart_markers.insert(
            web(ns),
            RestartMarkers {
                bundle: Some(before.clone()),
                issuer: None,
                rollout_complete: true,
                replacing: false,
                stalled: None,
                not_starting: None,
            },
        );
    }
    let d = run(&automatic(), Phase::RemovingOldTrustRoots, &o);
    let restarted = d.effects.iter().find_map(|e| match e {
        Effect::RestartWorkloads {
            workloads,
            restart_for,
            ..
        } => Some((workloads.clone(), restart_for.clone())),
        _ => None,
    });
    assert_eq!(
        restarted,
        Some((vec![web("app-0"), web("app-1")], RestartFor::Bundle(marker))),
        "{}",
        blocking(&d)
    );
}

/// Rollouts onto a bundle started before it was restored to the same anchors still replace
/// pods: they count against the pacing and are waited for, whatever write their marker names.
#[test]
fn rollouts_onto_the_bundle_before_its_restore_still_count() {
    let fp = bundle_fp(&[0, 1]);
    let all_hold = World {
        holds: vec![0, 1],
        cp_for: Some(format!("{fp}.42")),
        ..propagating()
    };
    let mut o = all_hold.observed();
    o.bundle_meta.written_over = Some("42".to_owned());
    rolling(&mut o, web("app-0"), RestartFor::Bundle(fp.clone()));
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert_eq!(
        d.status.phase,
        Phase::PropagatingTrustRoots,
        "{}",
        blocking(&d)
    );
    assert!(
        blocking(&d).contains("waiting for 1 rollout(s) to finish"),
        "{}",
        blocking(&d)
    );
}

/// The operator renewed the issuer on leaving propagation and was stopped before it wrote the
/// new phase: its successor reads PropagatingTrustRoots and a renewed issuer, but every pod
/// holds the expanded bundle, so the renewal was in order. A pod that lacks the bundle once
/// the issuer is renewed, in WaitingForIdentityRotation too, is out of order.
#[test]
fn a_renewal_after_the_bundle_converged_is_in_order_whatever_the_phase_says() {
    let w = issuer_renewed();
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &w.observed());
    assert_eq!(out_of_order(&d), Some(ConditionStatus::False));
    assert_eq!(d.status.phase, Phase::RenewingWorkloadCerts);
    assert!(writes(&d).is_empty(), "no second renewal: {:?}", d.effects);

    let mut o = w.observed();
    o.pods[1].anchors = Some(set(&[0]));
    let d = run(&automatic(), Phase::WaitingForIdentityRotation, &o);
    assert_eq!(out_of_order(&d), Some(ConditionStatus::True));
    assert!(blocking(&d).starts_with("URGENT"), "{}", blocking(&d));
    assert_eq!(d.status.phase, Phase::RenewingWorkloadCerts);
}

/// An issuer renewed out of order is urgent while proxies lack its anchor, whatever the phase.
/// Once every one holds it, the condition stays raised until Synced, as a record, but the
/// blockingMessage no longer asks for anything urgent.
#[test]
fn an_issuer_renewed_out_of_order_is_urgent_only_while_proxies_lack_its_anchor() {
    let w = issuer_renewed();
    let mut lacking = w.observed();
    lacking.pods[1].anchors = Some(set(&[0]));
    let d = run(&automatic(), Phase::WaitingForIdentityRotation, &lacking);
    assert_eq!(d.status.phase, Phase::RenewingWorkloadCerts);
    assert!(blocking(&d).starts_with("URGENT"), "{}", blocking(&d));
    // Leaves awaited, one pod still without the anchor: still urgent.
    let still = decide(&automatic(), &Names::default(), &d.status, &lacking);
    assert_eq!(still.status.phase, Phase::RenewingWorkloadCerts);
    assert!(
        blocking(&still).starts_with("URGENT"),
        "{}",
        blocking(&still)
    );
    // That pod restarted onto the bundle: recorded, not urgent.
    let held = decide(&automatic(), &Names::default(), &d.status, &w.observed());
    assert_eq!(held.status.phase, Phase::RenewingWorkloadCerts);
    assert_eq!(out_of_order(&held), Some(ConditionStatus::True));
    assert!(!blocking(&held).contains("URGENT"), "{}", blocking(&held));
    let condition = (held.status.conditions.iter())
        .find(|c| c.type_ == OUT_OF_ORDER_CONDITION)
        .unwrap();
    assert!(
        condition
            .message
            .ends_with("every proxy holds it now (kept until Synced, as a record)"),
        "{}",
        condition.message
    );
    assert!(
        !held.effects.iter().any(
            |e| matches!(e, Effect::Event { reason, .. } if reason == "OutOfOrderIssuerRotation")
        ),
        "{:?}",
        held.effects
    );
    // A pod still draining without the anchor (one a restart just replaced), which holds the
    // identity controller back: still urgent.
    let mut draining = w.observed();
    let mut replaced = draining.pods[1].clone();
    replaced.name = "web-replaced".to_owned();
    replaced.anchors = Some(set(&[0]));
    draining.draining.push(replaced);
    let drains = decide(&automatic(), &Names::default(), &d.status, &draining);
    assert!(
        blocking(&drains).starts_with("URGENT"),
        "{}",
        blocking(&drains)
    );
    // A look that parks judges nothing: it keeps what the last look said.
    let mut unreadable = w.observed();
    unreadable.anchor = Err(Problem {
        object: "Secret cert-manager/linkerd-trust-anchor".to_owned(),
        message: "no tls.crt".to_owned(),
    });
    let parked = decide(&automatic(), &Names::default(), &held.status, &unreadable);
    assert!(
        blocking(&parked).starts_with("parked: "),
        "{}",
        blocking(&parked)
    );
    let parked = decide(&automatic(), &Names::default(), &d.status, &unreadable);
    assert!(
        blocking(&parked).starts_with("URGENT"),
        "{}",
        blocking(&parked)
    );
}

#[test]
fn control_plane_is_restarted_once_per_bundle_and_awaited() {
    let w = World::expanded();
    let d = run(&manual(), Phase::RefreshingControlPlane, &w.observed());
    assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
    assert!(
        matches!(&writes(&d)[..], [Effect::RestartControlPlane { deployments, marker }]
        if deployments.len() == 3 && *marker == bundle_fp(&[0, 1]))
    );
    // The pods' count is against the expanded bundle, which none holds yet.
    assert_eq!(
        d.status.trust_bundle.as_ref().unwrap().progress.as_deref(),
        Some("0/4")
    );

    // Restarted for this bundle, rollout still going: no second restart.
    let mut o = World {
        cp_for: Some(bundle_fp(&[0, 1])),
        ..w
    }
    .observed();
    o.control_plane[0].rollout_complete = false;
    let d = run(&manual(), Phase::RefreshingControlPlane, &o);
    assert!(writes(&d).is_empty());
    assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
    assert!(
        blocking(&d).contains("linkerd-identity"),
        "{}",
        blocking(&d)
    );
}

/// The `RestartControlPlane` effect's deployments, or nothing.
fn cp_restarts(d: &Decision) -> Vec<ControlPlaneRestart> {
    writes(d)
        .into_iter()
        .find_map(|e| match e {
            Effect::RestartControlPlane { deployments, .. } => Some(deployments.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[test]
fn control_plane_proxies_take_the_fast_refresh_onto_the_expanded_bundle() {
    let w = World::expanded();
    let mut o = w.observed();
    // A native sidecar; a proxy with the user's own interval; no proxy container at all.
    o.control_plane[1].proxy = Some(ControlPlaneProxy {
        list: ProxyList::InitContainers,
        max_refresh: None,
    });
    o.control_plane[2].proxy = None;
    let mut users = o.control_plane[0].clone();
    users.name = "linkerd-users-own".to_owned();
    users.proxy = Some(ControlPlaneProxy {
        list: ProxyList::Containers,
        max_refresh: Some("1h".to_owned()),
    });
    o.control_plane.push(users);
    let d = run(&manual(), Phase::RefreshingControlPlane, &o);
    let set = |list| ProxyRefresh::Set {
        list,
        value: "300s".to_owned(),
    };
    assert_eq!(
        cp_restarts(&d)
            .into_iter()
            .map(|r| (r.name, r.proxy_refresh))
            .collect::<Vec<_>>(),
        [
            ("linkerd-identity".to_owned(), set(ProxyList::Containers)),
            (
                "linkerd-destination".to_owned(),
                set(ProxyList::InitContainers)
            ),
            ("linkerd-proxy-injector".to_owned(), ProxyRefresh::Keep),
            ("linkerd-users-own".to_owned(), ProxyRefresh::Keep),
        ]
    );
    let event = d
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::Event {
                reason, message, ..
            } if reason == "RestartingControlPlane" => Some(message.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        event.contains("refreshing certificates every 300s"),
        "{event}"
    );

    // A restart the operator already set an interval on (an earlier attempt) sets it again.
    o.control_plane[3].refresh_set_by_operator = Some("300s".to_owned());
    o.control_plane[3].proxy.as_mut().unwrap().max_refresh = Some("300s".to_owned());
    let d = run(&manual(), Phase::RefreshingControlPlane, &o);
    assert_eq!(cp_restarts(&d)[3].proxy_refresh, set(ProxyList::Containers));
}

#[test]
fn control_plane_proxies_give_back_only_the_operators_refresh_onto_the_reduced_bundle() {
    let w = World {
        cp_for: Some(bundle_fp(&[0, 1])),
        ..World::reduced()
    };
    let mut o = w.observed();
    for c in &mut o.control_plane[..2] {
        c.refresh_set_by_operator = Some("300s".to_owned());
        c.proxy.as_mut().unwrap().max_refresh = Some("300s".to_owned());
    }
    // The user's own interval, never set by the operator.
    o.control_plane[2].proxy.as_mut().unwrap().max_refresh = Some("1h".to_owned());
    let d = run(&manual(), Phase::RefreshingControlPlane, &o);
    assert_eq!(
        cp_restarts(&d)
            .into_iter()
            .map(|r| r.proxy_refresh)
            .collect::<Vec<_>>(),
        [
            ProxyRefresh::Remove {
                list: ProxyList::Containers
            },
            ProxyRefresh::Remove {
                list: ProxyList::Containers
            },
            ProxyRefresh::Keep,
        ]
    );
}

#[test]
fn control_plane_on_the_expanded_bundle_starts_propagation_with_the_fast_refresh() {
    let w = World {
        anchor: 1,
        bundle: Some(vec![0, 1]),
        cp_for: Some(bundle_fp(&[0, 1])),
        ..World::synced()
    };
    let d = run(&manual(), Phase::RefreshingControlPlane, &w.observed());
    assert_eq!(d.status.phase, Phase::PropagatingTrustRoots);
    assert_eq!(
        d.status.workload_certificate_refresh_interval.as_deref(),
        Some("5m")
    );
    assert!(writes(&d).is_empty());
}

#[test]
fn control_plane_on_the_reduced_bundle_starts_removal() {
    let w = World {
        holds: vec![0, 1],
        ..World::reduced()
    };
    let d = run(&manual(), Phase::RefreshingControlPlane, &w.observed());
    assert_eq!(d.status.phase, Phase::RemovingOldTrustRoots);
    assert_eq!(d.status.workload_certificate_refresh_interval, None);
}

#[test]
fn no_control_plane_found_blocks_rather_than_skipping_the_identity_restart() {
    let w = World::expanded();
    let mut o = w.observed();
    o.control_plane.clear();
    let d = run(&manual(), Phase::RefreshingControlPlane, &o);
    assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
    assert!(blocking(&d).contains("no control-plane Deployment"));
}

fn propagating() -> World {
    World {
        anchor: 1,
        bundle: Some(vec![0, 1]),
        holds: vec![0],
        cp_for: Some(bundle_fp(&[0, 1])),
        ..World::synced()
    }
}

/// A workload injected by `linkerd inject` carries its anchors in its template: no restart
/// renews them, and scaled to zero it has no pod to count. While the new anchor propagates and
/// the issuer is awaited, a template without it is named (the pods it starts would reject the
/// renewed issuer's leaves); one injected again from the expanded bundle is not. In Synced, a
/// template without the anchor in use is named, with one warning.
#[test]
fn templates_injected_without_the_anchor_are_named() {
    let batch = Workload {
        kind: "Deployment".to_owned(),
        namespace: "jobs".to_owned(),
        name: "batch".to_owned(),
    };
    let named = "1 workload template(s) carry proxy trust anchors injected by `linkerd inject`";
    for (phase, mut o) in [
        (Phase::PropagatingTrustRoots, propagating().observed()),
        (Phase::WaitingForIdentityRotation, {
            let mut w = propagating();
            w.holds = vec![0, 1];
            w.observed()
        }),
    ] {
        o.baked_templates.insert(batch.clone(), Some(set(&[0])));
        let d = run(&manual(), phase, &o);
        assert_eq!(d.status.phase, phase);
        assert!(
            blocking(&d).contains(named)
                && blocking(&d).contains("Deployment jobs/batch")
                && blocking(&d).contains("inject them again without --manual"),
            "{phase}: {}",
            blocking(&d)
        );
        o.baked_templates.insert(batch.clone(), Some(set(&[0, 1])));
        let d = run(&manual(), phase, &o);
        assert!(!blocking(&d).contains(named), "{phase}: {}", blocking(&d));
    }

    let mut o = World::reduced().observed();
    o.baked_templates.insert(batch.clone(), Some(set(&[0])));
    let d = run(&manual(), Phase::Synced, &o);
    assert_eq!(d.status.phase, Phase::Synced);
    assert!(
        blocking(&d).contains(named) && blocking(&d).contains("without the anchor in use"),
        "{}",
        blocking(&d)
    );
    assert!(d.effects.iter().any(
        |e| matches!(e, Effect::Event { warning: true, reason, .. } if reason == "PodsLackTrustBundle")
    ));
    // Said once.
    let again = decide(&manual(), &Names::default(), &d.status, &o);
    assert!(
        !again
            .effects
            .iter()
            .any(|e| matches!(e, Effect::Event { .. }))
    );
    // Unparseable anchors are named too; anchors in use are not.
    o.baked_templates.insert(batch.clone(), None);
    assert!(blocking(&run(&manual(), Phase::Synced, &o)).contains(named));
    o.baked_templates.insert(batch, Some(set(&[1])));
    assert_eq!(
        run(&manual(), Phase::Synced, &o).status.blocking_message,
        None
    );
}

/// The bundle converged and the issuer renewed onto the new anchor.
fn issuer_renewed() -> World {
    World {
        holds: vec![0, 1],
        signer: 1,
        ..propagating()
    }
}

/// Every pod's probed leaf is `leaf`.
fn every_leaf(o: &mut Observed, leaf: Leaf) {
    for p in o.pods.iter_mut() {
        p.leaf = Some(leaf.clone());
    }
}

#[test]
fn manual_propagation_names_the_restarts_and_does_none() {
    let d = run(
        &manual(),
        Phase::PropagatingTrustRoots,
        &propagating().observed(),
    );
    assert_eq!(d.status.phase, Phase::PropagatingTrustRoots);
    assert!(writes(&d).is_empty());
    assert_eq!(
        d.status.trust_bundle.as_ref().unwrap().progress.as_deref(),
        Some("0/4")
    );
    let m = blocking(&d);
    assert!(
        m.starts_with("4 of 4 meshed pods do not hold the expanded trust bundle"),
        "{m}"
    );
    assert!(
        m.contains("kubectl rollout restart deployment/web -n app-0"),
        "{m}"
    );
    assert!(m.contains("e.g. app-0/web-0"), "{m}");
}

/// Under `Manual`, a person gets the restart commands for the workloads of a typical mesh in
/// one go (up to ten), not three per look; past ten, the rest are counted.
#[test]
fn manual_propagation_lists_up_to_ten_restarts_and_counts_the_rest() {
    let mut o = propagating().observed();
    let first = o.pods.iter().position(|p| !p.control_plane).unwrap();
    for i in 0..12 {
        let mut pod = o.pods[first].clone();
        pod.name = format!("extra-{i}");
        o.pods.push(pod);
    }
    one_workload_each(&mut o);
    let workload_pods = o.pods.iter().filter(|p| !p.control_plane).count();
    assert!(workload_pods > 12, "{workload_pods}");
    let d = run(&manual(), Phase::PropagatingTrustRoots, &o);
    let m = blocking(&d);
    assert!(
        m.contains(&format!("restart their {workload_pods} workload(s): ")),
        "{m}"
    );
    let commands: std::collections::BTreeSet<&str> = m
        .split([';', ':'])
        .map(str::trim)
        .filter(|c| c.starts_with("kubectl rollout restart deployment/w"))
        .collect();
    assert_eq!(commands.len(), 10, "ten different workloads: {m}");
    assert!(
        m.contains(&format!("; ... ({} more)", workload_pods - 10)),
        "{m}"
    );
}

#[test]
fn automatic_propagation_restarts_paced_and_skips_unready_and_busy_workloads() {
    let mut o = propagating().observed();
    one_workload_each(&mut o);
    o.pods[1].ready = false;
    rolling(&mut o, w(3), RestartFor::Bundle(bundle_fp(&[0, 1])));
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    let restarted = d.effects.iter().find_map(|e| match e {
        Effect::RestartWorkloads {
            workloads,
            restart_for,
            ..
        } => {
            assert_eq!(*restart_for, RestartFor::Bundle(bundle_fp(&[0, 1])));
            Some(workloads.iter().map(|w| w.name.clone()).collect::<Vec<_>>())
        }
        _ => None,
    });
    // Two at a time, one already busy: one more, never w1 (not Ready) or w3 (restarting).
    assert_eq!(restarted, Some(vec!["w0".to_owned()]));
    // The one held back is named: a workload whose pod never gets ready stalls the phase, and
    // the status says which.
    assert!(
        blocking(&d).ends_with("; held back until their pods are ready: deployment/app/w1"),
        "{}",
        blocking(&d)
    );
}

/// Rollouts the operator started for an earlier step (here onto {0, 1}, before a second renewal
/// grew the bundle to {0, 1, 2}) still replace pods: they take their slots as this step's own
/// do, and are named. A workload among them that is picked again takes no second slot: its new
/// restart replaces the rollout it has.
#[test]
fn rollouts_of_an_earlier_step_take_their_slots() {
    let mut o = World {
        anchor: 2,
        bundle: Some(vec![0, 1, 2]),
        holds: vec![0, 1],
        cp_for: Some(bundle_fp(&[0, 1, 2])),
        ..World::synced()
    }
    .observed();
    one_workload_each(&mut o);
    let restarted = |o: &Observed| {
        let d = run(&automatic(), Phase::PropagatingTrustRoots, o);
        let names = d.effects.iter().find_map(|e| match e {
            Effect::RestartWorkloads { workloads, .. } => {
                Some(workloads.iter().map(|w| w.name.clone()).collect::<Vec<_>>())
            }
            _ => None,
        });
        (names, blocking(&d).to_owned())
    };
    // w0 and w1 still rolling onto {0, 1}, their new pods not ready: both slots are taken.
    rolling(&mut o, w(0), RestartFor::Bundle(bundle_fp(&[0, 1])));
    rolling(&mut o, w(1), RestartFor::Bundle(bundle_fp(&[0, 1])));
    o.pods[0].ready = false;
    o.pods[1].ready = false;
    let (names, message) = restarted(&o);
    assert_eq!(names, None, "{message}");
    assert!(
        message.contains(
            "(2 in progress, 2 waiting); rolling out: deployment/app/w0, deployment/app/w1"
        ),
        "{message}"
    );
    // Rolled out long ago and only short of a replica now (a crash loop, say): no slot taken.
    let mut settled = o.clone();
    for w in [w(0), w(1)] {
        settled.restart_markers.get_mut(&w).unwrap().replacing = false;
    }
    let (names, message) = restarted(&settled);
    assert_eq!(
        names,
        Some(vec!["w2".to_owned(), "w3".to_owned()]),
        "{message}"
    );
    // Their pods ready, mid-rollout: restarted onto {0, 1, 2} in the slots they hold, and no
    // other workload is.
    o.pods[0].ready = true;
    o.pods[1].ready = true;
    let (names, message) = restarted(&o);
    assert_eq!(
        names,
        Some(vec!["w0".to_owned(), "w1".to_owned()]),
        "{message}"
    );
    // One of them done, its pod on the bundle: its slot goes to the next workload.
    let done = o.restart_markers.get_mut(&w(1)).unwrap();
    (done.rollout_complete, done.replacing) = (true, false);
    o.pods[1].anchors = Some(set(&[0, 1, 2]));
    let (names, message) = restarted(&o);
    assert_eq!(
        names,
        Some(vec!["w0".to_owned(), "w2".to_owned()]),
        "{message}"
    );
    assert!(message.contains("(1 in progress, 1 waiting)"), "{message}");
}

/// A pod that does not trust the anchor the issuer chains to (started on a foreign bundle that
/// was written over the operator's and restored) can never verify the identity service, so it
/// never gets a leaf and never becomes ready: its workload is restarted all the same, as the
/// restart is what cures it. A pod not ready for another reason still holds its workload back.
#[test]
fn a_pod_unready_for_lack_of_the_issuers_anchor_does_not_hold_back_its_restart() {
    let mut o = World {
        holds: vec![0, 1],
        ..World::reduced()
    }
    .observed();
    one_workload_each(&mut o);
    // w0 started on the foreign bundle {0}; w1 trusts the issuer's anchor but is not ready.
    o.pods[0].anchors = Some(set(&[0]));
    o.pods[0].ready = false;
    o.pods[1].ready = false;
    let d = run(&automatic(), Phase::RemovingOldTrustRoots, &o);
    let restarted = d.effects.iter().find_map(|e| match e {
        Effect::RestartWorkloads { workloads, .. } => {
            Some(workloads.iter().map(|w| w.name.clone()).collect::<Vec<_>>())
        }
        _ => None,
    });
    assert_eq!(restarted, Some(vec!["w0".to_owned(), "w2".to_owned()]));
    assert!(
        blocking(&d).ends_with("; held back until their pods are ready: deployment/app/w1"),
        "{}",
        blocking(&d)
    );
}

/// Rollouts in progress take the restart slots: they are named, and one its Deployment says
/// will not finish by itself (`ProgressDeadlineExceeded`: new pods that never become
/// available) is named with why, so a stalled propagation has a cause to read.
#[test]
fn rollouts_in_progress_are_named_and_a_stalled_one_says_why() {
    let mut o = propagating().observed();
    for ns in ["app-0", "app-1"] {
        rolling(&mut o, web(ns), RestartFor::Bundle(bundle_fp(&[0, 1])));
    }
    o.restart_markers.get_mut(&web("app-1")).unwrap().stalled = Some(
        r#"ProgressDeadlineExceeded: ReplicaSet "web-5d8f7c" has timed out progressing."#
            .to_owned(),
    );
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    assert!(
        blocking(&d).ends_with(
            r#"(2 in progress, 0 waiting); rolling out: deployment/app-0/web; rollouts that will not finish by themselves, look at their new pods: deployment/app-1/web (ProgressDeadlineExceeded: ReplicaSet "web-5d8f7c" has timed out progressing.)"#
        ),
        "{}",
        blocking(&d)
    );
}

/// A rollout whose new pod is not starting is named with that pod and why, whatever its kind
/// (Kubernetes reports no stall for a StatefulSet or a DaemonSet); the workload's own word,
/// where it gives one, comes first.
#[test]
fn a_rollout_with_a_new_pod_not_starting_names_it() {
    let mut o = propagating().observed();
    for ns in ["app-0", "app-1"] {
        rolling(&mut o, web(ns), RestartFor::Bundle(bundle_fp(&[0, 1])));
    }
    let pod = "pod app-0/web-5d8f7c-x is not starting: container web: ImagePullBackOff: Back-off pulling image \"web:2\"";
    o.restart_markers
        .get_mut(&web("app-0"))
        .unwrap()
        .not_starting = Some(pod.to_owned());
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert!(
        blocking(&d).ends_with(&format!(
            "(2 in progress, 0 waiting); rolling out: deployment/app-0/web (new {pod}), deployment/app-1/web"
        )),
        "{}",
        blocking(&d)
    );
    // Stalled by the Deployment's own account: that is what is said.
    let m = o.restart_markers.get_mut(&web("app-0")).unwrap();
    m.stalled = Some("ProgressDeadlineExceeded: timed out".to_owned());
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert!(
        blocking(&d).ends_with(
            "rolling out: deployment/app-1/web; rollouts that will not finish by themselves, look at their new pods: deployment/app-0/web (ProgressDeadlineExceeded: timed out)"
        ),
        "{}",
        blocking(&d)
    );
}

/// Restarts the API server refused (RBAC bound in some namespaces only, a policy webhook)
/// started no rollout: they are decided again on every look (their refusals reported), but the
/// workloads after them in the list get the slots first (they once took every slot, for good,
/// when there were as many of them as `maxConcurrentWorkloads`), and they are sent again only in
/// the slots left (one that goes through starts a rollout: they once went through
/// `maxConcurrentWorkloads` at a time on every look once allowed, whatever was rolling).
#[test]
fn refused_restarts_take_no_slot_from_the_others_and_only_free_ones_themselves() {
    let mut o = propagating().observed();
    one_workload_each(&mut o);
    let restarted = |d: &Decision| {
        d.effects.iter().find_map(|e| match e {
            Effect::RestartWorkloads {
                workloads,
                retry,
                retry_room,
                ..
            } => Some((workloads.clone(), retry.clone(), *retry_room)),
            _ => None,
        })
    };
    // Two at a time: the first two in the list.
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert_eq!(restarted(&d), Some((vec![w(0), w(1)], vec![], 0)));
    // Those two refused: the next two get the slots; the refused ones are in the step, with no
    // room to be sent in.
    // (Refused for another restart, the last rotation's bundle, they would count for nothing.)
    let before = RestartFor::Bundle(bundle_fp(&[0]));
    o.refused_restarts = BTreeMap::from([(w(0), before.clone()), (w(1), before)]);
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert_eq!(restarted(&d), Some((vec![w(0), w(1)], vec![], 0)));
    let this = RestartFor::Bundle(bundle_fp(&[0, 1]));
    o.refused_restarts = BTreeMap::from([(w(0), this.clone()), (w(1), this)]);
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert_eq!(restarted(&d), Some((vec![w(2), w(3)], vec![w(0), w(1)], 0)));
    assert!(
        blocking(&d).contains("(0 in progress, 0 waiting)"),
        "{}",
        blocking(&d)
    );
    // The slots taken by rollouts in progress: still no room.
    rolling(&mut o, w(2), RestartFor::Bundle(bundle_fp(&[0, 1])));
    rolling(&mut o, w(3), RestartFor::Bundle(bundle_fp(&[0, 1])));
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert_eq!(restarted(&d), Some((vec![], vec![w(0), w(1)], 0)));
    // One rollout done: one slot for them.
    o.restart_markers.remove(&w(3));
    o.restart_markers.insert(
        w(3),
        RestartMarkers {
            bundle: Some(bundle_fp(&[0, 1])),
            issuer: None,
            rollout_complete: true,
            replacing: false,
            stalled: None,
            not_starting: None,
        },
    );
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert_eq!(restarted(&d), Some((vec![], vec![w(0), w(1)], 1)));
}

#[test]
fn converged_bundle_waits_for_the_issuer_or_renews_it() {
    let w = World {
        holds: vec![0, 1],
        ..propagating()
    };
    let d = run(&manual(), Phase::PropagatingTrustRoots, &w.observed());
    assert_eq!(d.status.phase, Phase::WaitingForIdentityRotation);
    assert!(writes(&d).is_empty());
    assert!(
        blocking(&d).contains("cmctl renew -n linkerd linkerd-identity-issuer"),
        "{}",
        blocking(&d)
    );

    let d = run(&automatic(), Phase::PropagatingTrustRoots, &w.observed());
    assert_eq!(d.status.phase, Phase::WaitingForIdentityRotation);
    assert_eq!(writes(&d), [&Effect::RenewIssuer]);

    // Already issuing: asked once, not again.
    let mut o = w.observed();
    o.issuer.as_mut().unwrap().issuing = true;
    let d = run(&automatic(), Phase::WaitingForIdentityRotation, &o);
    assert!(writes(&d).is_empty());
}

/// cert-manager's record of a failed issuance `at`, its `attempts`-th, denied by policy.
fn failure(at: i64, attempts: u32) -> IssuanceFailure {
    IssuanceFailure {
        at,
        attempts: Some(attempts),
        reason: Some("Denied".to_owned()),
        message: Some(
            "The certificate request has failed to complete and will be retried: no policy approved this request"
                .to_owned(),
        ),
    }
}

fn warnings<'d>(d: &'d Decision, reason_is: &str) -> Vec<&'d str> {
    d.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event {
                warning: true,
                reason,
                message,
            } if reason == reason_is => Some(message.as_str()),
            _ => None,
        })
        .collect()
}

/// The automatic renewal failed (cert-manager recorded `lastFailureTime` and `Issuing=False`):
/// asking again on every look would bypass cert-manager's backoff and repeat a request that
/// fails the same way. The operator says what cert-manager said, warns once, and asks again
/// only after its own backoff (5 minutes after the first failure, doubling, at most an hour).
#[test]
fn a_failed_automatic_issuer_renewal_is_asked_again_only_after_a_backoff() {
    let converged = World {
        holds: vec![0, 1],
        ..propagating()
    };
    let mut o = converged.observed();
    o.issuer.as_mut().unwrap().failure = Some(failure(NOW - 60, 1));
    let d = run(&automatic(), Phase::WaitingForIdentityRotation, &o);
    assert_eq!(d.status.phase, Phase::WaitingForIdentityRotation);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    let message = blocking(&d);
    for part in [
        "cert-manager failed to re-issue Certificate linkerd/linkerd-identity-issuer at 2027-01-15T07:59:00Z (attempt 1)",
        "Denied: The certificate request has failed to complete and will be retried: no policy approved this request",
        "the operator asks again at 2027-01-15T08:04:00Z",
        "run: cmctl renew -n linkerd linkerd-identity-issuer",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    // Warned once: the next look, with this status, does not warn again.
    assert_eq!(warnings(&d, "IssuerRenewalFailed").len(), 1);
    let again = decide(&automatic(), &Names::default(), &d.status, &o);
    assert!(warnings(&again, "IssuerRenewalFailed").is_empty());
    assert_eq!(again.status, d.status);

    // Its backoff out, the renewal is asked for again.
    o.now = NOW - 60 + 300;
    let d = run(&automatic(), Phase::WaitingForIdentityRotation, &o);
    assert_eq!(writes(&d), [&Effect::RenewIssuer]);
    // The third failure waits 20 minutes; the eighth, an hour.
    for (attempts, wait) in [(3, 1200), (8, 3600)] {
        o.issuer.as_mut().unwrap().failure = Some(failure(NOW, attempts));
        o.now = NOW + wait - 1;
        let d = run(&automatic(), Phase::WaitingForIdentityRotation, &o);
        assert!(writes(&d).is_empty(), "attempt {attempts}");
        o.now = NOW + wait;
        let d = run(&automatic(), Phase::WaitingForIdentityRotation, &o);
        assert_eq!(writes(&d), [&Effect::RenewIssuer], "attempt {attempts}");
    }

    // Asked again (by the operator, a person, or cert-manager's own retry): waiting for it,
    // with the previous failure kept in view.
    o.now = NOW;
    o.issuer.as_mut().unwrap().issuing = true;
    let d = run(&automatic(), Phase::WaitingForIdentityRotation, &o);
    assert!(writes(&d).is_empty());
    assert!(
        blocking(&d).starts_with("renewing the identity issuer: waiting for cert-manager")
            && blocking(&d).contains("its previous attempt: cert-manager failed"),
        "{}",
        blocking(&d)
    );
}

/// One failure, one warning, through the looks that follow it, each from the status the one
/// before wrote: the renewal asked again after the backoff, then under way (`Issuing=True`,
/// where cert-manager's reason is no longer on the Certificate: the failure is still named by
/// its time and attempt, not as "no reason recorded"). A new failure is warned of once more.
/// Under the Manual policy the same holds once the person has run `cmctl renew`.
#[test]
fn a_failed_issuer_renewal_is_warned_of_once_through_the_retry() {
    let converged = World {
        holds: vec![0, 1],
        ..propagating()
    };
    for policies in [automatic(), manual()] {
        let mut o = converged.observed();
        o.issuer.as_mut().unwrap().failure = Some(failure(NOW - 60, 1));
        let mut status = in_phase(Phase::WaitingForIdentityRotation);
        let look = |o: &Observed, status: &mut TrustAnchorRotationStatus| {
            let d = decide(&policies, &Names::default(), status, o);
            *status = d.status.clone();
            d
        };
        let d = look(&o, &mut status);
        assert_eq!(
            warnings(&d, "IssuerRenewalFailed").len(),
            1,
            "{:?}",
            d.effects
        );

        // Past the backoff: the automatic policy asks again, keeping the failure in view.
        o.now = NOW - 60 + 300;
        let d = look(&o, &mut status);
        assert!(
            warnings(&d, "IssuerRenewalFailed").is_empty(),
            "{:?}",
            d.effects
        );
        if policies.issuer_renewal == RenewalPolicy::Automatic {
            assert_eq!(writes(&d), [&Effect::RenewIssuer]);
            assert!(
                blocking(&d).contains("its previous attempt: cert-manager failed"),
                "{}",
                blocking(&d)
            );
        }

        // Under way: `Issuing=True` again, the failed condition's reason gone.
        let issuer = o.issuer.as_mut().unwrap();
        issuer.issuing = true;
        let f = issuer.failure.as_mut().unwrap();
        (f.reason, f.message) = (None, None);
        let d = look(&o, &mut status);
        assert!(
            warnings(&d, "IssuerRenewalFailed").is_empty(),
            "{:?}",
            d.effects
        );
        let message = blocking(&d);
        assert!(
            message.contains("its previous attempt: cert-manager failed to re-issue Certificate linkerd/linkerd-identity-issuer at 2027-01-15T07:59:00Z (attempt 1)")
                && !message.contains("no reason recorded"),
            "{message}"
        );

        // That attempt fails too: a new failure, a new warning.
        let issuer = o.issuer.as_mut().unwrap();
        issuer.issuing = false;
        issuer.failure = Some(failure(NOW + 300, 2));
        o.now = NOW + 301;
        let d = look(&o, &mut status);
        let warned = warnings(&d, "IssuerRenewalFailed");
        assert_eq!(warned.len(), 1, "{:?}", d.effects);
        assert!(warned[0].contains("(attempt 2): Denied: "), "{warned:?}");
    }
}

/// Under the Manual policy the person who ran `cmctl renew` is told that it failed and why,
/// beside the command to run again.
#[test]
fn a_failed_manual_issuer_renewal_is_named_beside_the_command() {
    let converged = World {
        holds: vec![0, 1],
        ..propagating()
    };
    let mut o = converged.observed();
    o.issuer.as_mut().unwrap().failure = Some(failure(NOW - 60, 2));
    let d = run(&manual(), Phase::WaitingForIdentityRotation, &o);
    assert!(writes(&d).is_empty());
    assert!(
        blocking(&d).contains("renew the identity issuer now: cmctl renew -n linkerd linkerd-identity-issuer; cert-manager failed to re-issue")
            && blocking(&d).contains("(attempt 2): Denied: "),
        "{}",
        blocking(&d)
    );
    assert_eq!(warnings(&d, "IssuerRenewalFailed").len(), 1);
}

/// A renewal under way (under either policy) is not "renew now", and pods that started without
/// the expanded bundle meanwhile are not "converged": they are named as what they are.
#[test]
fn a_renewal_under_way_is_not_asked_for_again_and_names_pods_without_the_bundle() {
    let converged = World {
        holds: vec![0, 1],
        ..propagating()
    };
    let mut o = converged.observed();
    o.issuer.as_mut().unwrap().issuing = true;
    o.pods[2].anchors = Some(set(&[0]));
    for policies in [manual(), automatic()] {
        let d = run(&policies, Phase::WaitingForIdentityRotation, &o);
        assert_eq!(d.status.phase, Phase::WaitingForIdentityRotation);
        assert!(writes(&d).is_empty(), "{:?}", d.effects);
        let message = blocking(&d);
        assert!(!message.contains("converged"), "{message}");
        assert!(!message.contains("cmctl renew"), "{message}");
        assert!(
            message.contains("(Issuing=True)")
                && message.contains("1 meshed pod(s) started without the expanded trust bundle")
                && message.contains("app-0/web-2"),
            "{message}"
        );
    }
}

/// A pod injected before the control plane restarted and Pending since (unscheduled, pulling
/// its image) has the old anchor alone in its spec. Once the issuer is renewed it could never
/// start well, so it holds the bundle's convergence like a running pod: counted, named, and its
/// workload restarted onto the expanded bundle; the automatic renewal waits for it.
#[test]
fn a_pod_not_started_yet_counts_for_the_bundle_and_holds_an_automatic_issuer_renewal() {
    let converged = World {
        holds: vec![0, 1],
        ..propagating()
    };
    let mut o = converged.observed();
    o.starting.push(pod("late", "batch-0", &[0]));
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert_eq!(d.status.phase, Phase::PropagatingTrustRoots);
    assert!(!d.effects.contains(&Effect::RenewIssuer), "{:?}", d.effects);
    assert_eq!(
        d.status.trust_bundle.as_ref().unwrap().progress.as_deref(),
        Some("4/5")
    );
    let m = blocking(&d);
    assert!(
        m.starts_with(
            "1 of 5 meshed pods do not hold the expanded trust bundle yet (e.g. late/batch-0)"
        ),
        "{m}"
    );
    assert!(
        m.contains("1 of them Pending: their proxy would start without it"),
        "{m}"
    );
    let restarted = d.effects.iter().find_map(|e| match e {
        Effect::RestartWorkloads { workloads, .. } => Some(workloads.clone()),
        _ => None,
    });
    assert_eq!(
        restarted,
        Some(vec![Workload {
            kind: "Deployment".to_owned(),
            namespace: "late".to_owned(),
            name: "batch".to_owned(),
        }])
    );
    // Manual: named with the command to run, nothing done.
    let d = run(&manual(), Phase::PropagatingTrustRoots, &o);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    assert!(
        blocking(&d).contains("kubectl rollout restart deployment/batch -n late"),
        "{}",
        blocking(&d)
    );
    // Waiting for the renewal when it is seen: back to propagation, the renewal not asked for.
    let d = run(&automatic(), Phase::WaitingForIdentityRotation, &o);
    assert_eq!(d.status.phase, Phase::PropagatingTrustRoots);
    assert!(!d.effects.contains(&Effect::RenewIssuer));

    // Pending with the expanded bundle in its spec: nothing to wait for.
    let mut o = converged.observed();
    o.starting.push(pod("late", "batch-0", &[0, 1]));
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert_eq!(d.status.phase, Phase::WaitingForIdentityRotation);
    assert_eq!(writes(&d), [&Effect::RenewIssuer]);
    assert_eq!(
        d.status.trust_bundle.as_ref().unwrap().progress.as_deref(),
        Some("5/5")
    );
}

/// After the renewal, a pod not started yet without the expanded bundle is restarted like a
/// running one that lacks it; a pod not started yet is never waited for as a leaf (it has none
/// to present, and will start with the new issuer's).
#[test]
fn after_the_renewal_a_pod_not_started_yet_is_restarted_if_it_lacks_the_bundle_never_probed() {
    let mut o = issuer_renewed().observed();
    every_leaf(&mut o, Leaf::FromIssuer);
    o.starting.push(pod("late", "batch-0", &[0, 1]));
    let d = run(&automatic(), Phase::RenewingWorkloadCerts, &o);
    assert_eq!(
        d.status.phase,
        Phase::RefreshingControlPlane,
        "{}",
        blocking(&d)
    );

    let mut o = issuer_renewed().observed();
    every_leaf(&mut o, Leaf::FromIssuer);
    o.starting.push(pod("late", "batch-0", &[0]));
    let d = run(&automatic(), Phase::RenewingWorkloadCerts, &o);
    assert_eq!(d.status.phase, Phase::RenewingWorkloadCerts);
    assert!(
        d.effects.iter().any(|e| matches!(e,
            Effect::RestartWorkloads { workloads, .. } if workloads.iter().any(|w| w.name == "batch"))),
        "{:?}",
        d.effects
    );
}

/// Every leaf from the new issuer, but the identity controller has run two replicas since the
/// issuer changed and one may not have loaded it yet (its kubelet updates its Secret volume
/// late): the old anchor stays while the I/O layer says so, with a status that says until when.
/// Once that is over, or with one replica only, seen throughout, the bundle is reduced.
#[test]
fn with_several_identity_replicas_the_old_anchor_stays_until_each_has_surely_loaded_the_issuer() {
    let mut o = issuer_renewed().observed();
    every_leaf(&mut o, Leaf::FromIssuer);
    let decide_with = |reload: Option<IssuerReload>| {
        let mut o = o.clone();
        o.issuer_reload = reload;
        run(&automatic(), Phase::RenewingWorkloadCerts, &o)
    };
    // Held: no bundle written.
    let held = |reload: IssuerReload| {
        let d = decide_with(Some(reload));
        assert_eq!(written_bundle(&d), None, "{:?}", d.effects);
        d
    };
    let reload = IssuerReload {
        replicas: 2,
        unwitnessed: false,
        unready: None,
        on_other_issuer: None,
        until: NOW + 60,
    };
    let d = held(reload.clone());
    assert_eq!(d.status.phase, Phase::RenewingWorkloadCerts);
    let until = k8s_openapi::jiff::Timestamp::from_second(NOW + 60).unwrap();
    assert!(
        blocking(&d).contains("the identity controller has run 2 replicas")
            && blocking(&d).contains(&format!("waiting until {until}")),
        "{}",
        blocking(&d)
    );
    // The time is over: reduced.
    let d = decide_with(None);
    assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
    assert_eq!(written_bundle(&d), Some(set(&[1])));
    // One replica signs with whichever issuer it loaded last: its leaves never go back.
    let d = decide_with(Some(IssuerReload {
        replicas: 1,
        ..reload.clone()
    }));
    assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
    assert_eq!(written_bundle(&d), Some(set(&[1])));
    // Unless the operator did not see it throughout: it started after the issuer changed.
    let d = held(IssuerReload {
        replicas: 1,
        unwitnessed: true,
        ..reload.clone()
    });
    assert_eq!(d.status.phase, Phase::RenewingWorkloadCerts);
    assert!(
        blocking(&d).contains("the operator started after the issuer changed")
            && blocking(&d).contains(&format!("waiting until {until}")),
        "{}",
        blocking(&d)
    );
    // A replica not ready is waited for, by name.
    let d = held(IssuerReload {
        unready: Some("linkerd/linkerd-identity-1".to_owned()),
        ..reload.clone()
    });
    assert!(
        blocking(&d)
            .contains("waiting for identity controller pod linkerd/linkerd-identity-1, not ready"),
        "{}",
        blocking(&d)
    );
    // So is one whose metrics show it on another issuer, were it the only replica seen.
    let d = held(IssuerReload {
        replicas: 1,
        on_other_issuer: Some("linkerd/linkerd-identity-1".to_owned()),
        ..reload
    });
    let said = "identity controller pod linkerd/linkerd-identity-1 still signs with another issuer";
    assert!(blocking(&d).contains(said), "{}", blocking(&d));
}

/// The identity controller's replicas, for the hold above: its pods running or draining, or
/// what its Deployment asks for or has, whichever is more (a replica evicted whose replacement
/// is not running yet still counts).
#[test]
fn identity_replicas_count_pods_and_what_the_deployment_asks_for() {
    let mut o = issuer_renewed().observed();
    o.pods.retain(|p| !p.identity_controller);
    o.pods.push(cp_pod("linkerd-identity-a", None));
    assert_eq!(o.identity_replicas(), 1);
    o.draining.push(cp_pod("linkerd-identity-b", None));
    assert_eq!(o.identity_replicas(), 2);
    o.draining.clear();
    let identity = (o.control_plane.iter_mut())
        .find(|d| d.identity_controller)
        .unwrap();
    identity.replicas = 3;
    assert_eq!(o.identity_replicas(), 3);
}

/// A control-plane proxy that will not refresh within the interval (the user set it a longer
/// one, or its Deployment was created after the restart) is not restarted for the issuer, but
/// the wait says so and gives the command, instead of reading as the interval's.
#[test]
fn a_slow_control_plane_proxy_is_named_with_the_command_to_hurry_it() {
    let mut o = issuer_renewed().observed();
    every_leaf(&mut o, Leaf::FromOtherIssuer);
    for p in o.pods.iter_mut().filter(|p| !p.control_plane) {
        p.leaf = Some(Leaf::FromIssuer);
    }
    let d = run(&automatic(), Phase::RenewingWorkloadCerts, &o);
    assert!(
        !blocking(&d).contains("will not refresh"),
        "{}",
        blocking(&d)
    );

    for slow in [None, Some(Duration::from_secs(86400))] {
        for p in o.pods.iter_mut().filter(|p| p.control_plane) {
            p.max_refresh = slow;
        }
        let d = run(&automatic(), Phase::RenewingWorkloadCerts, &o);
        assert_eq!(d.status.phase, Phase::RenewingWorkloadCerts);
        assert!(writes(&d).is_empty(), "{:?}", d.effects);
        let message = blocking(&d);
        assert!(
            message.contains("waiting for 1 of 5 proxies")
                && message.contains("the control plane's proxies of deployment/linkerd-identity will not refresh within 5m")
                && message.contains("kubectl rollout restart -n linkerd deployment/linkerd-identity"),
            "{message}"
        );
    }
    // A control-plane pod no workload owns is deleted instead: `rollout restart` refuses pods.
    let identity = o.pods.iter_mut().find(|p| p.control_plane).unwrap();
    identity.control_plane_deployment = None;
    identity.owner = Err(Unfixable::BarePod);
    let d = run(&automatic(), Phase::RenewingWorkloadCerts, &o);
    let message = blocking(&d);
    assert!(
        message.contains("which can take hours: kubectl delete -n linkerd pod/linkerd-identity-1")
            && !message.contains("rollout restart"),
        "{message}"
    );
}

#[test]
fn a_restart_still_rolling_holds_the_phase_even_when_every_running_pod_converged() {
    // The replaced pod of a StatefulSet is in no count while it is recreated.
    let w = World {
        holds: vec![0, 1],
        ..propagating()
    };
    let mut o = w.observed();
    rolling(
        &mut o,
        Workload {
            kind: "StatefulSet".to_owned(),
            namespace: "app-0".to_owned(),
            name: "db".to_owned(),
        },
        RestartFor::Bundle(bundle_fp(&[0, 1])),
    );
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert_eq!(d.status.phase, Phase::PropagatingTrustRoots);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    assert!(
        blocking(&d).contains("waiting for 1 rollout(s) to finish (e.g. statefulset/app-0/db)"),
        "{}",
        blocking(&d)
    );
    // One that will not finish by itself says why.
    let mut stalled = o.clone();
    for m in stalled.restart_markers.values_mut() {
        m.stalled = Some("ProgressDeadlineExceeded: timed out".to_owned());
    }
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &stalled);
    assert!(
        blocking(&d).contains("(e.g. statefulset/app-0/db (will not finish by itself, look at its new pods: ProgressDeadlineExceeded: timed out))"),
        "{}",
        blocking(&d)
    );
    let d = run(&automatic(), Phase::RemovingOldTrustRoots, &{
        let mut o = World::reduced().observed();
        rolling(&mut o, web("app-1"), RestartFor::Bundle(bundle_fp(&[1])));
        o
    });
    assert_eq!(d.status.phase, Phase::RemovingOldTrustRoots);
}

#[test]
fn renewed_issuer_moves_to_renewing_workload_certs() {
    let w = issuer_renewed();
    let d = run(&manual(), Phase::WaitingForIdentityRotation, &w.observed());
    assert_eq!(d.status.phase, Phase::RenewingWorkloadCerts);
    assert_eq!(
        out_of_order(&d),
        Some(ConditionStatus::False),
        "renewed in order"
    );
    assert_eq!(
        d.status.active_issuer_fingerprint,
        Some(issuer(1).cert.fingerprint)
    );
}

#[test]
fn leaves_are_awaited_then_the_bundle_is_reduced() {
    let w = issuer_renewed();
    let mut o = w.observed();
    for (i, p) in o.pods.iter_mut().enumerate() {
        p.leaf = Some(if i == 0 {
            Leaf::FromOtherIssuer
        } else {
            Leaf::FromIssuer
        });
    }
    let d = run(&manual(), Phase::RenewingWorkloadCerts, &o);
    assert_eq!(d.status.phase, Phase::RenewingWorkloadCerts);
    assert!(
        writes(&d).is_empty(),
        "nothing leaves the bundle while a leaf chains to it"
    );
    assert_eq!(
        d.status
            .workload_certificates
            .as_ref()
            .unwrap()
            .progress
            .as_deref(),
        Some("4/5")
    );
    assert!(blocking(&d).contains("1 of 5 proxies"), "{}", blocking(&d));

    o.pods[0].leaf = Some(Leaf::FromIssuer);
    let d = run(&manual(), Phase::RenewingWorkloadCerts, &o);
    assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
    assert!(
        matches!(writes(&d)[0], Effect::WritePreviousAnchor { fingerprint, .. } if *fingerprint == fp(1))
    );
    assert_eq!(written_bundle(&d), Some(set(&[1])));
    // The status records the reduced bundle: a renewal right after keeps no old anchor.
    let named: BTreeSet<String> = (d.status.source_fingerprints.iter())
        .map(|s| s.fingerprint.clone())
        .collect();
    assert_eq!(named, set(&[1]));
}

/// A bundle written over mid-rotation with an anchor of no use (a retired one, from Linkerd's
/// install-time values) is grown back with it, so every pod is restarted onto it. But the
/// issuer was renewed in order, onto an anchor every pod trusts: the pods that lack only the
/// foreign one are in no danger from it, and no out-of-order alarm is raised for them.
#[test]
fn pods_lacking_only_a_foreign_anchor_raise_no_out_of_order_alarm() {
    let w = World {
        bundle: Some(vec![0, 1, 2]),
        holds: vec![0, 1],
        cp_for: Some(bundle_fp(&[0, 1, 2])),
        ..issuer_renewed()
    };
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &w.observed());
    assert_eq!(d.status.phase, Phase::PropagatingTrustRoots);
    assert!(
        !writes(&d).is_empty(),
        "the pods are restarted onto the grown bundle"
    );
    assert_eq!(out_of_order(&d), Some(ConditionStatus::False));
    assert!(!blocking(&d).contains("URGENT"), "{}", blocking(&d));
    // A pod without the renewed issuer's anchor is: the alarm is raised.
    let mut o = w.observed();
    o.pods[0].anchors = Some(set(&[0, 2]));
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert_eq!(out_of_order(&d), Some(ConditionStatus::True));
}

/// A GitOps commit of the new anchor alone lands mid-rotation, over the operator's expanded
/// bundle, once the issuer has switched: the issuer's anchor is in it, but the proxies not yet
/// holding a new leaf, and every pod not yet restarted, still need the old one. The bundle is
/// grown back and the overwrite recorded; the control plane is restarted onto the grown bundle,
/// never onto the one written over it. The same in every phase of the expansion.
#[test]
fn a_bundle_written_without_the_old_anchor_mid_rotation_is_grown_back() {
    for (phase, world) in [
        (Phase::RefreshingControlPlane, propagating()),
        (Phase::PropagatingTrustRoots, propagating()),
        (Phase::WaitingForIdentityRotation, issuer_renewed()),
        (Phase::RenewingWorkloadCerts, issuer_renewed()),
    ] {
        let mut o = World {
            bundle: Some(vec![1]),
            ..world
        }
        .observed();
        every_leaf(&mut o, Leaf::FromOtherIssuer);
        o.bundle_meta = BundleMeta {
            version: Some("12".to_owned()),
            written_over: Some("11".to_owned()),
            overwritten_by: vec!["argocd-application-controller".to_owned()],
            annotated: true,
            key_holders: vec!["argocd-application-controller".to_owned()],
        };
        let d = run(&automatic(), phase, &o);
        assert_eq!(written_bundle(&d), Some(set(&[0, 1])), "{phase}");
        assert_eq!(d.status.phase, Phase::RefreshingControlPlane, "{phase}");
        assert!(
            blocking(&d).contains(short(&bundle_fp(&[0, 1]))),
            "{phase}: {}",
            blocking(&d)
        );
        assert_eq!(d.status.bundle_overwrites.len(), 1, "{phase}");
        let said: Vec<&str> = d
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Event { message, .. } => Some(message.as_str()),
                _ => None,
            })
            .collect();
        assert!(
            said.iter().any(|m| m.contains(&format!(
                "lacked anchor(s) still in use during the rotation ({})",
                short(&fp(0))
            )) && m.contains("argocd-application-controller")),
            "{phase}: {said:?}"
        );
    }
}

#[test]
fn unreachable_or_unprobed_pods_are_not_converged() {
    let w = issuer_renewed();
    let mut o = w.observed();
    every_leaf(&mut o, Leaf::FromIssuer);
    o.pods[2].leaf = Some(Leaf::Unreachable(
        "10.0.0.3:4191: no answer within 2s".to_owned(),
    ));
    o.pods[3].leaf = None;
    let d = run(&manual(), Phase::RenewingWorkloadCerts, &o);
    assert_eq!(d.status.phase, Phase::RenewingWorkloadCerts);
    assert!(writes(&d).is_empty());
    // The unreachable one is told apart from those still waiting for their refresh, with the
    // probe's own words: a NetworkPolicy in the way has a cause to read.
    assert!(
        blocking(&d).contains("; 1 of them did not answer the leaf probe on the proxy admin port (`linkerd-admin`, 4191 by default), so their leaf cannot be checked (the operator must be able to reach it): app-0/web-2: 10.0.0.3:4191: no answer within 2s"),
        "{}",
        blocking(&d)
    );
}

/// Pods that started before the rotation published its interval (during the expanding
/// control-plane refresh, say, already holding the expanded bundle, so propagation never
/// restarted them) refresh their leaf only at 70 % of its lifetime: their workloads are
/// restarted for a leaf from the new issuer, once each, instead of holding the phase for hours.
#[test]
fn proxies_that_would_refresh_too_late_are_restarted_for_a_leaf() {
    let w = issuer_renewed();
    let mut o = w.observed();
    every_leaf(&mut o, Leaf::FromOtherIssuer);
    // web-0 (app-0): no refresh cap. web-1 (app-1): a cap longer than the interval. web-2
    // (app-0): the interval's own cap, it refreshes in time. web-3 (app-1): no cap, but its
    // leaf is already from the new issuer.
    o.pods[0].max_refresh = None;
    o.pods[1].max_refresh = Some(Duration::from_secs(3600));
    o.pods[3].max_refresh = None;
    o.pods[3].leaf = Some(Leaf::FromIssuer);
    let issuer_fp = issuer(1).cert.fingerprint;

    let d = run(&automatic(), Phase::RenewingWorkloadCerts, &o);
    assert_eq!(d.status.phase, Phase::RenewingWorkloadCerts);
    let restarted: Vec<(&RestartFor, Vec<String>)> = writes(&d)
        .iter()
        .filter_map(|e| match e {
            Effect::RestartWorkloads {
                workloads,
                restart_for,
                ..
            } => Some((
                restart_for,
                workloads.iter().map(|w| w.to_string()).collect(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        restarted,
        [(
            &RestartFor::Issuer(issuer_fp.clone()),
            vec![
                "deployment/app-0/web".to_owned(),
                "deployment/app-1/web".to_owned()
            ]
        )],
        "{:?}",
        d.effects
    );
    let message = blocking(&d);
    assert!(
        message.starts_with("waiting for 4 of 5 proxies to present a leaf certificate"),
        "{message}"
    );
    assert!(
        message.contains("2 of 4 meshed pods will not refresh their leaf within 5m"),
        "{message}"
    );

    // A restart for this issuer still rolling is not asked for again.
    rolling(&mut o, web("app-0"), RestartFor::Issuer(issuer_fp.clone()));
    let d = run(&automatic(), Phase::RenewingWorkloadCerts, &o);
    assert!(
        matches!(&writes(&d)[..], [Effect::RestartWorkloads { workloads, .. }] if workloads.len() == 1 && workloads[0].namespace == "app-1"),
        "{:?}",
        d.effects
    );

    // Manual: named with the command, nothing written.
    let d = run(&manual(), Phase::RenewingWorkloadCerts, &o);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    assert!(
        blocking(&d).contains("kubectl rollout restart deployment/web -n app-1"),
        "{}",
        blocking(&d)
    );

    // Once every slow proxy is gone, the rest is waited for without a restart.
    o.pods.retain(|p| {
        p.max_refresh == Some(Duration::from_secs(300)) || p.leaf == Some(Leaf::FromIssuer)
    });
    assert_eq!(o.pods.len(), 3);
    let d = run(&automatic(), Phase::RenewingWorkloadCerts, &o);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    assert!(
        !blocking(&d).contains("will not refresh"),
        "{}",
        blocking(&d)
    );
}

/// In RenewingWorkloadCerts a pod without the expanded bundle (it rejects the new leaves) is
/// restarted with the slow ones, even once its own leaf is new; an interval with a fraction
/// is compared as the proxies are given it (rounded up to whole seconds); a workload already
/// restarted for this issuer is not asked for again but named; a restart for this issuer
/// left from an earlier rotation is no rollout of this one.
#[test]
fn leaf_restarts_cover_pods_without_the_bundle_and_are_asked_for_once() {
    let w = issuer_renewed();
    let mut o = w.observed();
    every_leaf(&mut o, Leaf::FromIssuer);
    o.pods[1].anchors = Some(set(&[0]));
    let issuer_fp = issuer(1).cert.fingerprint;
    let d = run(&automatic(), Phase::RenewingWorkloadCerts, &o);
    assert_eq!(d.status.phase, Phase::RenewingWorkloadCerts, "no reduction");
    assert!(
        matches!(&writes(&d)[..], [Effect::RestartWorkloads { workloads, restart_for: RestartFor::Issuer(fp), .. }]
            if *fp == issuer_fp && workloads.len() == 1 && workloads[0].namespace == "app-1"),
        "{:?}",
        d.effects
    );
    assert!(
        blocking(&d).starts_with("1 of 4 meshed pods do not hold the expanded trust bundle"),
        "{}",
        blocking(&d)
    );

    // Restarted for this issuer already (rollout complete): named, not asked for again.
    o.restart_markers.insert(
        web("app-1"),
        RestartMarkers {
            bundle: None,
            issuer: Some(issuer_fp.clone()),
            rollout_complete: true,
            replacing: false,
            stalled: None,
            not_starting: None,
        },
    );
    let d = run(&automatic(), Phase::RenewingWorkloadCerts, &o);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    assert!(
        blocking(&d).contains(
            "restarted already and still not converged, look at their pods: deployment/app-1/web"
        ),
        "{}",
        blocking(&d)
    );

    // 2.5s reaches proxies as 3s: a proxy with 3s is not slow.
    let mut o = w.observed();
    for p in o.pods.iter_mut() {
        p.leaf = Some(Leaf::FromOtherIssuer);
        p.max_refresh = Some(Duration::from_secs(3));
    }
    let fractional = Policies {
        refresh_interval: "2.5s".to_owned(),
        ..automatic()
    };
    let d = run(&fractional, Phase::RenewingWorkloadCerts, &o);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);

    // A rollout for this issuer still running from the last rotation (its issuer is still in
    // place while this one propagates) neither holds propagation nor keeps its workload from
    // being restarted onto the bundle.
    let mut o = propagating().observed();
    rolling(
        &mut o,
        web("app-0"),
        RestartFor::Issuer(issuer(0).cert.fingerprint),
    );
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert!(
        matches!(&writes(&d)[..], [Effect::RestartWorkloads { workloads, restart_for: RestartFor::Bundle(_), .. }] if workloads.len() == 2),
        "{:?}",
        d.effects
    );
}

/// Pods being deleted but still inside their grace period keep serving and calling with what
/// they had: the old anchor leaves the bundle only once they have stopped, and the issuer is
/// renewed only once those without the expanded bundle have.
#[test]
fn terminating_pods_hold_the_reduction_and_the_renewal_while_they_drain() {
    let w = issuer_renewed();
    let mut o = w.observed();
    every_leaf(&mut o, Leaf::FromIssuer);
    let mut old = pod("app-0", "web-9", &[0, 1]);
    old.leaf = None;
    o.draining.push(old);
    let d = run(&automatic(), Phase::RenewingWorkloadCerts, &o);
    assert_eq!(d.status.phase, Phase::RenewingWorkloadCerts);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    assert!(
        blocking(&d).contains("1 terminating pod(s)"),
        "{}",
        blocking(&d)
    );
    o.draining.clear();
    let d = run(&automatic(), Phase::RenewingWorkloadCerts, &o);
    assert_eq!(written_bundle(&d), Some(set(&[1])));

    // Before the renewal: a draining pod holding the expanded bundle is no reason to wait; one
    // with the old anchor alone is.
    let w = World {
        holds: vec![0, 1],
        ..propagating()
    };
    let mut o = w.observed();
    o.draining.push(pod("app-0", "web-8", &[0, 1]));
    let d = run(&automatic(), Phase::WaitingForIdentityRotation, &o);
    assert_eq!(writes(&d), [&Effect::RenewIssuer]);
    // The control plane's too (the restart onto the expanded bundle replaced them), known by
    // the restart their pod came from, since their anchors are not in their spec: one started
    // onto the expanded bundle is no reason to wait; one from before is.
    o.draining
        .push(cp_pod("linkerd-destination-new", Some(bundle_fp(&[0, 1]))));
    let d = run(&automatic(), Phase::WaitingForIdentityRotation, &o);
    assert_eq!(writes(&d), [&Effect::RenewIssuer]);
    o.draining
        .push(cp_pod("linkerd-destination-old", Some(bundle_fp(&[0]))));
    let d = run(&automatic(), Phase::WaitingForIdentityRotation, &o);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    assert!(
        blocking(&d).contains("linkerd/linkerd-destination-old"),
        "{}",
        blocking(&d)
    );
    o.draining.retain(|p| !p.control_plane);
    o.draining.push(pod("app-0", "web-9", &[0]));
    let d = run(&automatic(), Phase::WaitingForIdentityRotation, &o);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    assert!(blocking(&d).contains("app-0/web-9"), "{}", blocking(&d));
    // Also on the look that finds propagation done (the pods a restart replaced are draining
    // then), under either issuer policy: it moves on, and holds the renewal.
    for policies in [automatic(), manual()] {
        let d = run(&policies, Phase::PropagatingTrustRoots, &o);
        assert_eq!(d.status.phase, Phase::WaitingForIdentityRotation);
        assert!(writes(&d).is_empty(), "{:?}", d.effects);
        assert!(blocking(&d).contains("app-0/web-9"), "{}", blocking(&d));
        assert!(!blocking(&d).contains("cmctl renew"), "{}", blocking(&d));
    }
}

/// A pod that starts without the expanded bundle after it converged (one that was Pending with
/// an older injection) would reject every leaf of a renewed issuer: the rotation goes back to
/// propagation instead of renewing the issuer, unless the renewal is already under way.
#[test]
fn a_pod_started_without_the_expanded_bundle_holds_back_the_issuer_renewal() {
    let w = World {
        holds: vec![0, 1],
        ..propagating()
    };
    let mut o = w.observed();
    o.pods[2].anchors = Some(set(&[0]));
    for policies in [manual(), automatic()] {
        let d = run(&policies, Phase::WaitingForIdentityRotation, &o);
        assert_eq!(d.status.phase, Phase::PropagatingTrustRoots);
        assert!(writes(&d).is_empty(), "{:?}", d.effects);
        // From propagation the pod is restarted (or named) as any other.
        let d = run(&policies, Phase::PropagatingTrustRoots, &o);
        assert_eq!(d.status.phase, Phase::PropagatingTrustRoots);
        assert!(blocking(&d).contains("app-0/web-2"), "{}", blocking(&d));
    }

    // cert-manager is already re-issuing: nothing to hold back, no second renewal asked for.
    o.issuer.as_mut().unwrap().issuing = true;
    let d = run(&automatic(), Phase::WaitingForIdentityRotation, &o);
    assert_eq!(d.status.phase, Phase::WaitingForIdentityRotation);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);

    // Renewed already: on to the leaves, where the restart of that pod's workload comes next.
    o.issuer = Ok(issuer(1));
    let d = run(&automatic(), Phase::WaitingForIdentityRotation, &o);
    assert_eq!(d.status.phase, Phase::RenewingWorkloadCerts);
}

#[test]
fn removal_restarts_pods_still_trusting_the_old_anchor_then_syncs() {
    let w = World {
        holds: vec![0, 1],
        ..World::reduced()
    };
    let d = run(&automatic(), Phase::RemovingOldTrustRoots, &w.observed());
    assert_eq!(d.status.phase, Phase::RemovingOldTrustRoots);
    assert!(
        matches!(writes(&d)[..], [Effect::RestartWorkloads { restart_for: RestartFor::Bundle(bundle), .. }] if *bundle == bundle_fp(&[1]))
    );
    assert!(blocking(&d).contains("still trust the old anchor"));

    let w = World {
        holds: vec![1],
        ..w
    };
    let d = run(&automatic(), Phase::RemovingOldTrustRoots, &w.observed());
    assert_eq!(d.status.phase, Phase::Synced);
    assert_eq!(d.status.blocking_message, None);
    assert_eq!(d.status.workload_certificate_refresh_interval, None);
    assert_eq!(d.requeue, Requeue::Idle);
}

#[test]
fn second_renewal_mid_rotation_expands_again_keeping_every_anchor_in_use() {
    // Mid RenewingWorkloadCerts: B = {a0, a1}, the issuer on a1, some leaves still from a0's
    // issuer; the anchor is renewed again to a2.
    let w = World {
        anchor: 2,
        previous: Some(0),
        bundle: Some(vec![0, 1]),
        signer: 1,
        holds: vec![0, 1],
        cp_for: Some(bundle_fp(&[0, 1])),
    };
    let d = run(&manual(), Phase::RenewingWorkloadCerts, &w.observed());
    assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
    assert_eq!(written_bundle(&d), Some(set(&[0, 1, 2])));
}

#[test]
fn unusable_material_parks_writing_nothing_and_says_what() {
    let mut o = propagating().observed();
    o.anchor = Err(Problem {
        object: "Secret cert-manager/linkerd-trust-anchor".to_owned(),
        message: "tls.crt is not PEM".to_owned(),
    });
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert_eq!(d.status.phase, Phase::PropagatingTrustRoots);
    assert!(writes(&d).is_empty());
    assert!(
        blocking(&d).contains("Secret cert-manager/linkerd-trust-anchor: tls.crt is not PEM"),
        "{}",
        blocking(&d)
    );
    assert_eq!(d.requeue, Requeue::Idle);
    // Parked again with the same problem: no second event.
    let again = decide(&automatic(), &Names::default(), &d.status, &o);
    assert!(again.effects.is_empty(), "{:?}", again.effects);

    let mut o = World::synced().observed();
    o.anchor.as_mut().unwrap().not_after = NOW - 1;
    let d = run(&automatic(), Phase::Synced, &o);
    assert!(writes(&d).is_empty());
    assert!(blocking(&d).contains("has expired"), "{}", blocking(&d));
}

/// The anchor being rotated away from has already expired (the renewal came late): that is
/// no reason to park, the rotation is what takes it out. The issuer still chains to it, so it
/// stays in the expanded bundle until the reduction.
#[test]
fn an_expired_previous_anchor_does_not_park_the_rotation() {
    let mut o = World::expanded().observed();
    o.previous.as_mut().unwrap().as_mut().unwrap().not_after = NOW - 1;
    let mut bundle = o.bundle.clone().unwrap().unwrap();
    bundle.iter_mut().for_each(|c| {
        if c.fingerprint == fp(0) {
            c.not_after = NOW - 1;
        }
    });
    o.bundle = Ok(Some(bundle));
    let d = run(&automatic(), Phase::Synced, &o);
    assert!(!blocking(&d).contains("parked"), "{}", blocking(&d));
    assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
}

#[test]
fn issuer_chaining_to_no_known_anchor_parks() {
    // Renewed onto a1, then the anchor renewed again to a2 before any reconcile: a1 is gone.
    let w = World {
        anchor: 2,
        signer: 1,
        ..World::synced()
    };
    let d = run(&automatic(), Phase::Synced, &w.observed());
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    assert!(
        blocking(&d).contains("signed by none of the known anchors"),
        "{}",
        blocking(&d)
    );
    assert!(blocking(&d).contains("cmctl renew -n linkerd linkerd-identity-issuer"));
}

#[test]
fn paused_observes_and_writes_nothing() {
    let w = World {
        anchor: 1,
        ..World::synced()
    };
    let policies = Policies {
        paused: true,
        ..automatic()
    };
    let d = run(&policies, Phase::Synced, &w.observed());
    assert_eq!(d.status.phase, Phase::Synced);
    assert!(d.effects.is_empty());
    assert!(blocking(&d).contains("paused"));
}

/// The issuer goes back to one the old anchor signed while leaves are awaited (its Secret
/// restored from a backup, say), and a pod without the expanded bundle has started meanwhile:
/// the renewal is not asked for again until that pod holds the bundle, as WaitingForIdentity-
/// Rotation would hold it; the rotation goes back to propagating. With every pod holding the
/// bundle, the renewal is asked for at once.
#[test]
fn an_issuer_gone_back_while_leaves_are_awaited_is_renewed_again_only_onto_a_converged_bundle() {
    let reverted = World {
        holds: vec![0, 1],
        ..propagating()
    };
    let mut o = reverted.observed();
    o.pods[2].anchors = Some(set(&[0]));
    let d = run(&automatic(), Phase::RenewingWorkloadCerts, &o);
    assert_eq!(
        d.status.phase,
        Phase::PropagatingTrustRoots,
        "{:?}",
        d.status
    );
    assert!(
        !writes(&d).contains(&&Effect::RenewIssuer),
        "{:?}",
        d.effects
    );
    assert!(
        d.effects.iter().any(|e| matches!(e, Effect::Event { message, .. }
            if message.contains("no longer chains to the current anchor") && message.contains("app-0/web-2"))),
        "{:?}",
        d.effects
    );

    let d = run(
        &automatic(),
        Phase::RenewingWorkloadCerts,
        &reverted.observed(),
    );
    assert_eq!(d.status.phase, Phase::WaitingForIdentityRotation);
    assert_eq!(writes(&d), [&Effect::RenewIssuer]);
}

/// Paused, the status still counts the pods as its phase does: while the bundle is reduced,
/// a pod that still trusts the old anchor beside the new one is not converged (it was counted
/// as holding a superset of the bundle, so a paused removal read as done).
#[test]
fn paused_counts_the_bundle_as_its_phase_does() {
    let reducing = World {
        holds: vec![0, 1],
        ..World::reduced()
    };
    let expanding = World {
        holds: vec![0, 1],
        ..propagating()
    };
    let paused = Policies {
        paused: true,
        ..manual()
    };
    for (w, phase, converged) in [
        (&reducing, Phase::RemovingOldTrustRoots, "0/4"),
        (&reducing, Phase::RefreshingControlPlane, "0/4"),
        (&expanding, Phase::RefreshingControlPlane, "4/4"),
        (&expanding, Phase::PropagatingTrustRoots, "4/4"),
    ] {
        let observing = run(&paused, phase, &w.observed());
        let acting = run(&manual(), phase, &w.observed());
        let progress = |d: &Decision| {
            d.status
                .trust_bundle
                .as_ref()
                .and_then(|b| b.progress.clone())
        };
        assert_eq!(progress(&observing).as_deref(), Some(converged), "{phase}");
        assert_eq!(progress(&observing), progress(&acting), "{phase}");
    }
}

/// Synced on anchor 1, someone writes the retired anchor 0 back into the bundle beside it (the
/// current anchor is still there): every proxy started since would trust the retired anchor
/// while the status said Synced. The bundle is restored to the anchor in use, the overwrite
/// recorded, and the control plane restarted onto it; the removal then takes the pods that
/// started on the foreign bundle. A bundle Linkerd was installed with (never the operator's)
/// is not an overwrite: extra anchors in it are left alone, and listed in sourceFingerprints.
#[test]
fn a_bundle_written_over_with_an_extra_anchor_is_restored_to_the_anchor_in_use() {
    let mut o = overwritten_by("helm", 10, 0);
    o.bundle = Ok(Some(vec![a(0), a(1)]));
    let d = run(&automatic(), Phase::Synced, &o);
    assert_eq!(written_bundle(&d), Some(set(&[1])));
    assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
    assert_eq!(d.status.bundle_overwrites.len(), 1);
    assert!(
        d.effects.iter().any(|e| matches!(e, Effect::Event { message, .. }
            if message.contains("the trust bundle was written over: restoring it to the anchor(s) in use")
                && message.contains(&format!("dropping {}", short(&fp(0))))
                && message.contains("by helm"))),
        "{:?}",
        d.effects
    );
    // The same bundle, as installed: nothing is written.
    o.bundle_meta = BundleMeta::default();
    let d = run(&automatic(), Phase::Synced, &o);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    assert_eq!(d.status.phase, Phase::Synced);
    assert!(
        d.status
            .source_fingerprints
            .iter()
            .any(|s| s.fingerprint == fp(0))
    );
}

/// A ConfigMap replaced (a PUT: `kubectl replace`, `helm upgrade --force`) loses the operator's
/// annotations and managedFields entry with the write. The status remembers the bundle the
/// operator wrote: another one there now is an overwrite by whoever holds the key, restored and
/// recorded, even when it only adds a retired anchor beside the one in use. Without that
/// memory (a bundle Linkerd was installed with), or with the operator's bundle put back
/// unchanged, nothing is written.
#[test]
fn a_bundle_replaced_without_the_operators_annotations_is_restored_and_recorded() {
    let mut o = World {
        bundle: Some(vec![0, 1]),
        ..World::reduced()
    }
    .observed();
    o.bundle_meta = BundleMeta {
        version: Some("10".to_owned()),
        key_holders: vec!["kubectl-replace".to_owned()],
        ..BundleMeta::default()
    };
    let mut status = in_phase(Phase::Synced);
    status.written_bundle_fingerprint = Some(bundle_fp(&[1]));
    let d = decide(&automatic(), &Names::default(), &status, &o);
    assert_eq!(written_bundle(&d), Some(set(&[1])), "{:?}", d.effects);
    assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
    let managers: Vec<_> = d
        .status
        .bundle_overwrites
        .iter()
        .map(|o| o.field_managers.clone())
        .collect();
    assert_eq!(managers, [["kubectl-replace"]]);
    assert_eq!(d.status.written_bundle_fingerprint, Some(bundle_fp(&[1])));

    // Never written by the operator: the bundle as installed is left as it is.
    let d = run(&automatic(), Phase::Synced, &o);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    assert_eq!(d.status.phase, Phase::Synced);
    // The operator's own bundle put back unchanged by a replace: nothing to restore.
    status.written_bundle_fingerprint = Some(bundle_fp(&[0, 1]));
    let d = decide(&automatic(), &Names::default(), &status, &o);
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
}

/// Every write of the bundle is remembered in status, the bootstrap of a missing one too.
#[test]
fn the_bundle_the_operator_writes_is_remembered_in_status() {
    let mut o = World::synced().observed();
    o.bundle = Ok(None);
    let d = run(&automatic(), Phase::Synced, &o);
    assert_eq!(written_bundle(&d), Some(set(&[0])));
    assert_eq!(d.status.written_bundle_fingerprint, Some(bundle_fp(&[0])));
    // The expansion when the anchor is renewed.
    let renewed = World {
        anchor: 1,
        ..World::synced()
    };
    let d = run(&automatic(), Phase::Synced, &renewed.observed());
    assert_eq!(written_bundle(&d), Some(set(&[0, 1])));
    assert_eq!(
        d.status.written_bundle_fingerprint,
        Some(bundle_fp(&[0, 1]))
    );
}

/// Paused to look into a rotation, someone runs `cmctl renew` on the issuer before every proxy
/// holds the new anchor: the pause does not hide it. The condition, its urgent message and its
/// Warning event come as they would unpaused; nothing else is written.
#[test]
fn paused_still_reports_an_issuer_renewed_out_of_order() {
    let w = World {
        signer: 1,
        ..propagating()
    };
    let policies = Policies {
        paused: true,
        ..automatic()
    };
    let d = run(&policies, Phase::PropagatingTrustRoots, &w.observed());
    assert_eq!(d.status.phase, Phase::PropagatingTrustRoots);
    assert_eq!(out_of_order(&d), Some(ConditionStatus::True));
    assert!(blocking(&d).starts_with("URGENT"), "{}", blocking(&d));
    assert!(blocking(&d).contains("paused"), "{}", blocking(&d));
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    assert!(d.effects.iter().any(|e| matches!(e, Effect::Event { reason, warning: true, .. } if reason == "OutOfOrderIssuerRotation")));
    // In order, paused: no condition raised.
    let d = run(
        &policies,
        Phase::PropagatingTrustRoots,
        &propagating().observed(),
    );
    assert_eq!(out_of_order(&d), Some(ConditionStatus::False));
}

/// The same in Synced: paused before the operator saw cert-manager's anchor renewal, someone
/// then renews the issuer onto the new anchor, which no proxy trusts yet. The condition stays
/// raised from one look to the next (holding the phase at Synced must not read as a rotation
/// that ended), and its Warning event comes once, not on every look.
#[test]
fn paused_in_synced_still_reports_an_issuer_renewed_out_of_order_and_keeps_it_raised() {
    let early = World {
        anchor: 1,
        signer: 1,
        ..World::synced()
    };
    let policies = Policies {
        paused: true,
        ..automatic()
    };
    let d = run(&policies, Phase::Synced, &early.observed());
    assert_eq!(d.status.phase, Phase::Synced);
    assert_eq!(out_of_order(&d), Some(ConditionStatus::True));
    assert!(blocking(&d).starts_with("URGENT"), "{}", blocking(&d));
    assert!(blocking(&d).contains("paused"), "{}", blocking(&d));
    assert!(writes(&d).is_empty(), "{:?}", d.effects);
    let warned = |d: &Decision| {
        d.effects.iter().any(|e| matches!(e, Effect::Event { reason, warning: true, .. } if reason == "OutOfOrderIssuerRotation"))
    };
    assert!(warned(&d), "{:?}", d.effects);

    // The next look, from the status written: nothing changes, so nothing is written or said.
    let again = decide(&policies, &Names::default(), &d.status, &early.observed());
    assert_eq!(again.status, d.status);
    assert!(!warned(&again), "{:?}", again.effects);

    // Parked meanwhile (the anchor Secret unreadable), it still stays raised; fixed, it is not
    // announced again.
    let mut unreadable = early.observed();
    unreadable.anchor = Err(Problem {
        object: "Secret cert-manager/linkerd-trust-anchor".to_owned(),
        message: "tls.crt is not PEM".to_owned(),
    });
    let parked = decide(&policies, &Names::default(), &d.status, &unreadable);
    assert!(
        blocking(&parked).contains("parked"),
        "{}",
        blocking(&parked)
    );
    assert_eq!(out_of_order(&parked), Some(ConditionStatus::True));
    let fixed = decide(
        &policies,
        &Names::default(),
        &parked.status,
        &early.observed(),
    );
    assert_eq!(out_of_order(&fixed), Some(ConditionStatus::True));
    assert!(!warned(&fixed), "{:?}", fixed.effects);
}

/// Synced on anchor 1, then someone rewrites the bundle to the retired anchor 0 (a `helm
/// upgrade` of Linkerd renders it from its values). The operator restores the anchor in use and
/// drops the stranger; pods that never held it need no restart.
#[test]
fn a_bundle_overwritten_with_a_retired_anchor_is_restored_to_the_anchor_in_use() {
    let mut w = World {
        bundle: Some(vec![0]),
        ..World::reduced()
    };
    let d = run(&automatic(), Phase::Synced, &w.observed());
    assert_eq!(written_bundle(&d), Some(set(&[1])), "{:?}", d.effects);
    assert_eq!(d.status.phase, Phase::RefreshingControlPlane);
    assert!(
        d.effects.iter().any(|e| matches!(e, Effect::Event { message, .. }
            if message.contains("restoring it to the anchor(s) in use") && message.contains("dropping"))),
        "{:?}",
        d.effects
    );

    // The bundle as written; the control plane already ran on exactly it, so it is not
    // restarted again, and every pod already holds it: no workload restart either.
    w.bundle = Some(vec![1]);
    let mut status = d.status;
    let mut restarts = 0;
    for _ in 0..3 {
        let d = decide(&automatic(), &Names::default(), &status, &w.observed());
        restarts += d
            .effects
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::RestartWorkloads { .. } | Effect::RestartControlPlane { .. }
                )
            })
            .count();
        assert_eq!(written_bundle(&d), None, "{:?}", d.effects);
        status = d.status;
    }
    assert_eq!(status.phase, Phase::Synced, "{status:?}");
    assert_eq!(restarts, 0);

    // Pods created while the bundle was overwritten hold the retired anchor alone: those, and
    // only those, are restarted.
    w.holds = vec![0];
    let d = run(&automatic(), Phase::RemovingOldTrustRoots, &w.observed());
    assert!(
        d.effects.iter().any(
            |e| matches!(e, Effect::RestartWorkloads { restart_for: RestartFor::Bundle(bundle), .. }
            if *bundle == bundle_fp(&[1]))
        ),
        "{:?}",
        d.effects
    );
}

#[test]
fn a_zero_or_malformed_refresh_interval_parks_the_rotation_and_says_why() {
    let w = propagating();
    let mut status = in_phase(Phase::PropagatingTrustRoots);
    status.workload_certificate_refresh_interval = Some("5m".to_owned());
    for (interval, says) in [
        ("0s", "\"0s\", a zero interval"),
        ("0m0.0s", "\"0m0.0s\", a zero interval"),
        ("5 minutes", "\"5 minutes\" is not a duration"),
    ] {
        let policies = Policies {
            refresh_interval: interval.to_owned(),
            ..automatic()
        };
        let d = decide(&policies, &Names::default(), &status, &w.observed());
        let message = blocking(&d);
        assert!(
            message.starts_with("parked: spec.workloadCertificateRefreshInterval"),
            "{message}"
        );
        assert!(message.contains(says), "{message}");
        assert!(writes(&d).is_empty(), "{interval}: {:?}", d.effects);
        assert!(
            d.effects.iter().any(|e| matches!(e, Effect::Event { reason, warning: true, .. } if reason == "RotationParked")),
            "{interval}: {:?}",
            d.effects
        );
        // Where it was, still publishing the interval it last published.
        assert_eq!(d.status.phase, Phase::PropagatingTrustRoots);
        assert_eq!(
            d.status.workload_certificate_refresh_interval.as_deref(),
            Some("5m")
        );
    }
    // The control: the same world with a positive interval moves on.
    let d = decide(&automatic(), &Names::default(), &status, &w.observed());
    assert!(!blocking(&d).contains("parked"), "{}", blocking(&d));
    assert!(!writes(&d).is_empty());
}

#[test]
fn pods_a_restart_cannot_fix_are_named() {
    let mut o = propagating().observed();
    o.pods[0].owner = Err(Unfixable::BarePod);
    o.pods[1].owner = Err(Unfixable::ManuallyInjected);
    o.pods[2].owner = Err(Unfixable::OnDelete("StatefulSet app-1/db".to_owned()));
    o.pods[3].owner = Err(Unfixable::Paused(web("app-1")));
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    let m = blocking(&d);
    assert!(
        m.contains("a restart cannot fix 4: app-0/web-0 (no owning workload: delete it)"),
        "{m}"
    );
    assert!(m.ends_with("delete its pods to restart them), ..."), "{m}");
    assert!(
        m.contains(
            "injected by linkerd inject --manual: inject its workload again without --manual"
        ),
        "{m}"
    );
    assert!(
        m.contains("StatefulSet app-1/db has updateStrategy OnDelete: delete its pods"),
        "{m}"
    );
    assert!(
        d.effects
            .iter()
            .any(|e| matches!(e, Effect::Event { reason, .. } if reason == "UnfixableWorkloads"))
    );
    let mut o = propagating().observed();
    o.pods[1].owner = Err(Unfixable::Partitioned {
        workload: Workload {
            kind: "StatefulSet".to_owned(),
            namespace: "app-1".to_owned(),
            name: "db".to_owned(),
        },
        partition: 2,
    });
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert!(
        blocking(&d).contains("app-1/web-1 (below StatefulSet app-1/db's rollingUpdate.partition 2: lower the partition or delete the pod)"),
        "{}",
        blocking(&d)
    );
    let mut o = propagating().observed();
    o.pods[0].owner = Err(Unfixable::Paused(web("app-0")));
    let d = run(&automatic(), Phase::PropagatingTrustRoots, &o);
    assert!(
        blocking(&d).contains("app-0/web-0 (Deployment app-0/web is paused: kubectl rollout resume deployment/web -n app-0)"),
        "{}",
        blocking(&d)
    );
}

mod properties {
    //! Random sequences of what happens in a cluster, with the decision applied after each: the
    //! invariants of DESIGN.md hold on every step.

    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Action {
        /// cert-manager renews the anchor (at most to the third one).
        RenewAnchor,
        /// Someone runs `cmctl renew` on the issuer, in order or not.
        RenewIssuer,
        /// The operator looks, and a user who follows the status runs `cmctl renew` if it asks
        /// for that.
        RenewIssuerWhenAsked,
        /// Every proxy refreshes its leaf from the current issuer.
        RefreshLeaves,
        /// A user restarts workload `n` onto the current bundle.
        UserRestart(usize),
        /// Someone else rewrites the bundle to the first anchor (a `helm upgrade` of Linkerd
        /// renders it from its install-time values).
        OverwriteBundle,
        /// The same, and the upgrade rolls the control plane, which starts on that bundle (its
        /// pod templates keep the operator's restart marker).
        HelmUpgrade,
        /// Someone else rewrites the bundle to the current anchor alone (a GitOps commit of the
        /// renewed anchor, mid-rotation or not).
        CommitAnchorAlone,
        /// Pod `n` is replaced by one injected long ago with the first anchor alone (it was
        /// Pending until now).
        StalePodStarts(usize),
        /// The operator looks.
        Reconcile,
        /// The operator looks and its writes land, but its status write does not (a conflict,
        /// a crash, a lost Lease between them): the next look starts from the old status.
        ReconcileStatusLost,
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            1 => Just(Action::RenewAnchor),
            1 => Just(Action::RenewIssuer),
            2 => Just(Action::RenewIssuerWhenAsked),
            2 => Just(Action::RefreshLeaves),
            1 => (0usize..4).prop_map(Action::UserRestart),
            1 => Just(Action::OverwriteBundle),
            1 => Just(Action::HelmUpgrade),
            1 => Just(Action::CommitAnchorAlone),
            1 => (0usize..4).prop_map(Action::StalePodStarts),
            6 => Just(Action::Reconcile),
            1 => Just(Action::ReconcileStatusLost),
        ]
    }

    /// The cluster, reduced to what the rules are about.
    struct Cluster {
        anchor: usize,
        previous: Option<usize>,
        bundle: BTreeSet<String>,
        /// (generation, index of the anchor that signed it).
        issuer: (u32, usize),
        /// Per workload pod: anchors held, the issuer (generation, anchor) of its leaf, and
        /// whether it started with the rotation's accelerated refresh.
        pods: Vec<(BTreeSet<String>, (u32, usize), bool)>,
        cp_for: Option<String>,
        /// The anchors the control plane runs with (read when its pods started).
        cp_anchors: BTreeSet<String>,
        /// The bundle ConfigMap's version (every write bumps it) and the operator's
        /// restored-after annotation on it.
        bundle_version: u64,
        written_over: Option<u64>,
        /// Someone else wrote the bundle after the operator last did.
        overwritten: bool,
        /// Whether the operator has written the bundle (its managedFields entry exists).
        operator_wrote: bool,
        /// Every anchor the bundle has held since the rotation was last Synced, or last reduced.
        rotation_anchors: BTreeSet<String>,
        /// The bundle at the operator's last look whose status landed (or what that look wrote),
        /// and the previous anchor then: an anchor a write of someone else's took out of the
        /// bundle can be known again only from there.
        recorded: (BTreeSet<String>, Option<usize>),
        /// Seconds since the start; every action takes a few.
        clock: i64,
        status: TrustAnchorRotationStatus,
        /// How far the history got.
        tally: Tally,
    }

    /// What a history reached: a property that held only because no history got as far as a
    /// step would prove nothing about that step.
    #[derive(Debug, Default)]
    struct Tally {
        /// Bundle writes by the operator that add an anchor, and those that take one away.
        expansions: u32,
        reductions: u32,
        /// Issuer renewals by the operator (Automatic), and by a user the status asked.
        renewed_by_operator: u32,
        renewed_when_asked: u32,
        /// Phases entered, by name.
        entered: BTreeMap<&'static str, u32>,
    }

    impl Tally {
        fn add(&mut self, other: Tally) {
            self.expansions += other.expansions;
            self.reductions += other.reductions;
            self.renewed_by_operator += other.renewed_by_operator;
            self.renewed_when_asked += other.renewed_when_asked;
            for (phase, n) in other.entered {
                *self.entered.entry(phase).or_default() += n;
            }
        }
    }

    fn index_of(fingerprint: &str) -> usize {
        (0..3)
            .find(|&i| fp(i) == fingerprint)
            .expect("one of the test anchors")
    }

    impl Cluster {
        fn observed(&self) -> Observed {
            let mut pods: Vec<MeshedPod> = self
                .pods
                .iter()
                .enumerate()
                .map(|(i, (anchors, leaf, accelerated))| {
                    let mut p = pod("app", &format!("w{i}-x"), &[]);
                    p.anchors = Some(anchors.clone());
                    p.max_refresh = accelerated.then_some(Duration::from_secs(300));
                    p.leaf = Some(if *leaf == self.issuer {
                        Leaf::FromIssuer
                    } else {
                        Leaf::FromOtherIssuer
                    });
                    p
                })
                .collect();
            let mut identity = cp_pod("linkerd-identity-1", self.cp_for.clone());
            identity.leaf = Some(Leaf::FromIssuer);
            pods.push(identity);
            let issuer = Issuer {
                cert: self.issuer_cert(),
                ..issuer(self.issuer.1)
            };
            let held_anchors = held_anchors(&pods);
            Observed {
                now: NOW + self.clock,
                anchor: Ok(a(self.anchor)),
                previous: Ok(self.previous.map(a)),
                bundle: Ok(Some(self.bundle.iter().map(|f| a(index_of(f))).collect())),
                issuer: Ok(issuer),
                control_plane: cp(self.cp_for.clone(), true),
                pods,
                starting: Vec::new(),
                draining: Vec::new(),
                restart_markers: BTreeMap::new(),
                refused_restarts: BTreeMap::new(),
                bundle_meta: BundleMeta {
                    version: Some(self.bundle_version.to_string()),
                    written_over: self.written_over.map(|v| v.to_string()),
                    overwritten_by: if self.overwritten {
                        vec!["helm".to_owned()]
                    } else {
                        Vec::new()
                    },
                    // Written by patches (helm's too), which keep the operator's annotations.
                    annotated: true,
                    key_holders: Vec::new(),
                },
                baked_templates: BTreeMap::new(),
                held_anchors,
                issuer_reload: None,
            }
        }

        /// The restart marker of the bundle in place.
        fn marker(&self) -> String {
            match self.written_over {
                Some(v) => format!("{}.{v}", self.bundle_fp()),
                None => self.bundle_fp(),
            }
        }

        fn issuer_cert(&self) -> Cert {
            Cert {
                fingerprint: format!("{:0>64}", format!("{}{}", self.issuer.0, self.issuer.1)),
                ..issuer(self.issuer.1).cert
            }
        }

        fn bundle_fp(&self) -> String {
            bundle_of(self.bundle.iter().map(|f| &anchors()[index_of(f)])).fingerprint()
        }

        /// The issuer renewed onto the current anchor, which `what` (the operator's renewal, or
        /// its asking a user for one) may do only once every proxy trusts that anchor.
        fn renew_issuer(&mut self, what: &str) -> Result<(), TestCaseError> {
            prop_assert!(
                self.pods
                    .iter()
                    .all(|(held, _, _)| held.contains(&fp(self.anchor))),
                "{} only once every proxy trusts the new anchor",
                what
            );
            self.issuer = (self.issuer.0 + 1, self.anchor);
            Ok(())
        }

        /// Applies the decision's effects as the I/O layer would, checking the invariants.
        fn reconcile(&mut self, policies: &Policies) -> Result<(), TestCaseError> {
            self.look(policies, true)
        }

        /// A look whose status write lands, or not.
        fn look(&mut self, policies: &Policies, lands: bool) -> Result<(), TestCaseError> {
            let before_phase = self.status.phase;
            let seen = self.bundle.clone();
            let (mut wrote, mut reduced) = (false, false);
            // The anchors the operator can know to have been in the bundle during this
            // rotation: those its last landed look recorded, while the previous anchor is the
            // same.
            let known: BTreeSet<String> = if self.recorded.1 == self.previous {
                self.recorded.0.clone()
            } else {
                BTreeSet::new()
            };
            let recorded = |u: &String| known.contains(u);
            let d = decide(policies, &Names::default(), &self.status, &self.observed());
            let in_use: BTreeSet<String> = std::iter::once(fp(self.issuer.1))
                .chain(self.pods.iter().map(|(_, leaf, _)| fp(leaf.1)))
                .collect();
            for effect in &d.effects {
                match effect {
                    Effect::WriteBundle {
                        pem, written_over, ..
                    } => {
                        let written: BTreeSet<String> = crate::bundle::Bundle::from_pem("b", pem)
                            .unwrap()
                            .fingerprints()
                            .map(str::to_owned)
                            .collect();
                        prop_assert!(written.contains(&fp(self.anchor)), "B always contains A");
                        // Nothing comes back that the rotation let go of: an anchor written is the
                        // current or previous one, or one the bundle held during this rotation.
                        for w in &written {
                            prop_assert!(
                                *w == fp(self.anchor)
                                    || self.previous.is_some_and(|p| *w == fp(p))
                                    || self.bundle.contains(w)
                                    || self.rotation_anchors.contains(w),
                                "an anchor the rotation let go of comes back"
                            );
                        }
                        // An anchor in use that a write of someone else's took out of the
                        // bundle is found again in the proxies' env, where one holds it, if the
                        // operator saw it in the bundle during this rotation.
                        let held = |u: &String| self.pods.iter().any(|(h, _, _)| h.contains(u));
                        for used in in_use
                            .iter()
                            .filter(|u| self.bundle.contains(*u) || (held(u) && recorded(u)))
                        {
                            prop_assert!(
                                written.contains(used),
                                "no anchor leaves B while the issuer or a live leaf chains to it"
                            );
                        }
                        if written.is_superset(&self.bundle) && written != self.bundle {
                            self.tally.expansions += 1;
                        }
                        if written.is_subset(&self.bundle) && written != self.bundle {
                            self.tally.reductions += 1;
                            // What a reduction lets go of is gone from this rotation.
                            self.rotation_anchors = written.clone();
                            reduced = true;
                        }
                        wrote = true;
                        self.bundle = written;
                        self.bundle_version += 1;
                        self.overwritten = false;
                        self.operator_wrote = true;
                        self.written_over = written_over.as_deref().map(|v| v.parse().unwrap());
                    }
                    Effect::WritePreviousAnchor { fingerprint, .. } => {
                        self.previous = Some(index_of(fingerprint));
                    }
                    Effect::RestartControlPlane { marker, .. } => {
                        // The anchors in use: the current one, the issuer's, the previous one
                        // until the bundle is reduced, and every live leaf's that a proxy
                        // holds (one that a foreign write dropped, after the Secrets moved on
                        // from it and no proxy holds it any more, is in nothing the operator
                        // could restore it from).
                        let renewing = self.previous.filter(|&p| p != self.anchor);
                        let held = |u: &String| self.pods.iter().any(|(h, _, _)| h.contains(u));
                        let known: BTreeSet<String> = [Some(self.anchor), Some(self.issuer.1)]
                            .into_iter()
                            .chain([renewing])
                            .flatten()
                            .map(fp)
                            .chain(in_use.iter().filter(|u| held(u) && recorded(u)).cloned())
                            .collect();
                        prop_assert!(
                            self.bundle.is_superset(&known),
                            "the control plane is restarted only onto a bundle holding the anchors in use"
                        );
                        self.cp_for = Some(marker.clone());
                        self.cp_anchors = self.bundle.clone();
                    }
                    Effect::RestartWorkloads { restart_for, .. } => {
                        match restart_for {
                            RestartFor::Bundle(bundle) => {
                                prop_assert_eq!(bundle, &self.marker());
                            }
                            RestartFor::Issuer(issuer) => {
                                prop_assert_eq!(before_phase, Phase::RenewingWorkloadCerts);
                                prop_assert_eq!(issuer, &self.issuer_cert().fingerprint);
                            }
                        }
                        // New pods: the bundle in place, a leaf from the issuer in place, the
                        // accelerated refresh if the webhook stamps one now.
                        let accelerated = accelerating(before_phase);
                        for p in self.pods.iter_mut() {
                            *p = (self.bundle.clone(), self.issuer, accelerated);
                        }
                    }
                    Effect::RenewIssuer => {
                        self.renew_issuer("the issuer is renewed")?;
                        self.tally.renewed_by_operator += 1;
                    }
                    Effect::Event { .. } => {}
                }
            }
            // A control plane that started without the anchor the issuer chains to (a `helm
            // upgrade` rolled it onto a foreign bundle) is restarted at the first chance, a
            // contested bundle or not.
            let in_use_missing = !self.cp_anchors.contains(&fp(self.issuer.1));
            let restarted = d
                .effects
                .iter()
                .any(|e| matches!(e, Effect::RestartControlPlane { .. }));
            let wrote_bundle = d
                .effects
                .iter()
                .any(|e| matches!(e, Effect::WriteBundle { .. }));
            let parked = d
                .status
                .blocking_message
                .as_deref()
                .is_some_and(|m| m.contains("parked: "));
            if before_phase == Phase::RefreshingControlPlane
                && in_use_missing
                && !wrote_bundle
                && !parked
            {
                prop_assert!(
                    restarted,
                    "a control plane without the anchor in use is restarted at once: {:?}",
                    d.status.blocking_message
                );
            }
            // In any other phase (a restore's status lost, say), it is at least on its way
            // there.
            if in_use_missing && !wrote_bundle && !parked {
                prop_assert_eq!(
                    d.status.phase,
                    Phase::RefreshingControlPlane,
                    "a control plane without the anchor in use is left so from {}: {:?}",
                    before_phase,
                    d.status.blocking_message
                );
            }
            let after = d.status.phase;
            if after != before_phase {
                *self.tally.entered.entry(after.as_str()).or_default() += 1;
                match after {
                    Phase::WaitingForIdentityRotation => prop_assert!(
                        self.pods
                            .iter()
                            .all(|(held, _, _)| held.is_superset(&self.bundle)),
                        "bundle converged before waiting for the issuer"
                    ),
                    Phase::PropagatingTrustRoots | Phase::RemovingOldTrustRoots => {
                        prop_assert_eq!(
                            self.cp_for.clone(),
                            Some(self.marker()),
                            "control plane restarted onto the bundle before the data plane"
                        );
                        prop_assert_eq!(
                            &self.cp_anchors,
                            &self.bundle,
                            "control plane running with the bundle before the data plane"
                        );
                    }
                    _ => {}
                }
            }
            if !reduced {
                self.rotation_anchors.extend(self.bundle.iter().cloned());
            }
            if lands {
                self.status = d.status;
                if self.status.phase == Phase::Synced {
                    self.rotation_anchors = self.bundle.clone();
                }
                let bundle = if wrote { self.bundle.clone() } else { seen };
                self.recorded = (bundle, self.previous);
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        #[test]
        fn random_histories_never_break_the_invariants(
            actions in histories(),
            automatic_restarts in any::<bool>(),
            automatic_issuer in any::<bool>(),
        ) {
            run_history(actions, automatic_restarts, automatic_issuer)?;
        }
    }

    fn histories() -> impl Strategy<Value = Vec<Action>> {
        proptest::collection::vec(action(), 1..120)
    }

    /// The histories of the property above (as many, from a fixed seed) reach every step its
    /// invariants are about.
    #[test]
    fn random_histories_reach_every_step() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = (histories(), any::<bool>(), any::<bool>());
        let mut total = Tally::default();
        for _ in 0..256 {
            let tree = strategy.new_tree(&mut runner).unwrap();
            let (actions, restarts, issuer) = proptest::strategy::ValueTree::current(&tree);
            total.add(run_history(actions, restarts, issuer).unwrap());
        }
        eprintln!("256 histories reached: {total:?}");
        assert!(total.expansions > 0, "{total:?}");
        assert!(total.reductions > 0, "{total:?}");
        assert!(total.renewed_by_operator > 0, "{total:?}");
        assert!(total.renewed_when_asked > 0, "{total:?}");
        // Remote clusters are not part of this model.
        let rotating = Phase::ALL
            .into_iter()
            .filter(|&p| !matches!(p, Phase::Synced | Phase::WaitingForRemoteClusters));
        for phase in rotating {
            assert!(
                total.entered.contains_key(phase.as_str()),
                "{phase}: {total:?}"
            );
        }
        // Synced is entered again only at the end of a rotation.
        assert!(total.entered.contains_key("Synced"), "{total:?}");
    }

    /// One history: each action applied, the operator's decisions checked at every look.
    fn run_history(
        actions: Vec<Action>,
        automatic_restarts: bool,
        automatic_issuer: bool,
    ) -> Result<Tally, TestCaseError> {
        let policies = Policies {
            restart: if automatic_restarts {
                RestartPolicy::Automatic
            } else {
                RestartPolicy::Manual
            },
            issuer_renewal: if automatic_issuer {
                RenewalPolicy::Automatic
            } else {
                RenewalPolicy::Manual
            },
            max_concurrent_workloads: 4,
            ..manual()
        };
        let mut c = Cluster {
            anchor: 0,
            previous: Some(0),
            bundle: set(&[0]),
            issuer: (0, 0),
            pods: vec![(set(&[0]), (0, 0), false); 4],
            cp_for: None,
            cp_anchors: set(&[0]),
            bundle_version: 1,
            written_over: None,
            overwritten: false,
            operator_wrote: false,
            rotation_anchors: set(&[0]),
            recorded: (BTreeSet::new(), None),
            clock: 0,
            status: TrustAnchorRotationStatus::default(),
            tally: Tally::default(),
        };
        for action in actions {
            // Some 20 s a step: overwrites may come within the contest window or not.
            c.clock += 20;
            match action {
                Action::RenewAnchor => c.anchor = (c.anchor + 1).min(2),
                Action::RenewIssuer => c.issuer = (c.issuer.0 + 1, c.anchor),
                Action::RenewIssuerWhenAsked => {
                    // The status read is the operator's latest look at the cluster.
                    c.reconcile(&policies)?;
                    let asked =
                        c.status.blocking_message.as_deref().is_some_and(|m| {
                            m.contains("renew the identity issuer now: cmctl renew")
                        });
                    if asked {
                        c.renew_issuer("the status asks for the issuer's renewal")?;
                        c.tally.renewed_when_asked += 1;
                    }
                }
                Action::RefreshLeaves => {
                    for p in c.pods.iter_mut() {
                        p.1 = c.issuer;
                    }
                }
                Action::UserRestart(n) => {
                    c.pods[n] = (c.bundle.clone(), c.issuer, accelerating(c.status.phase));
                }
                Action::OverwriteBundle => {
                    c.bundle = set(&[0]);
                    c.bundle_version += 1;
                    c.overwritten = c.operator_wrote;
                }
                Action::HelmUpgrade => {
                    c.bundle = set(&[0]);
                    c.bundle_version += 1;
                    c.overwritten = c.operator_wrote;
                    c.cp_anchors = set(&[0]);
                }
                Action::CommitAnchorAlone => {
                    c.bundle = set(&[c.anchor]);
                    c.bundle_version += 1;
                    c.overwritten = c.operator_wrote;
                }
                Action::StalePodStarts(n) => c.pods[n] = (set(&[0]), c.issuer, false),
                Action::Reconcile => c.reconcile(&policies)?,
                Action::ReconcileStatusLost => c.look(&policies, false)?,
            }
        }
        Ok(c.tally)
    }
}

/// The reconciler fetches the issuer Certificate's `Issuing` condition only in the
/// [`accelerating`] phases: in every other phase, whatever the world and the policies, the
/// decision must not depend on it.
#[test]
fn issuing_is_read_only_where_the_reconciler_fetches_it() {
    let worlds = [
        World::synced(),
        World::expanded(),
        World::reduced(),
        propagating(),
        World {
            holds: vec![0, 1],
            ..propagating()
        },
        issuer_renewed(),
    ];
    for phase in Phase::ALL.into_iter().filter(|&p| !accelerating(p)) {
        for world in &worlds {
            for policies in [manual(), automatic()] {
                let mut observed = world.observed();
                let idle = run(&policies, phase, &observed);
                if let Ok(issuer) = &mut observed.issuer {
                    issuer.issuing = true;
                    issuer.failure = Some(failure(NOW - 60, 1));
                }
                assert_eq!(
                    run(&policies, phase, &observed),
                    idle,
                    "{phase}: the decision depends on Issuing"
                );
            }
        }
    }
    // Where it is read, it matters: `converged_bundle_waits_for_the_issuer_or_renews_it`.
}
