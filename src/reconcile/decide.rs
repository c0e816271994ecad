//! The rotation's state machine as one pure function: (policies, names, status, observed) ->
//! (next status, effects, when to look again). DESIGN.md section 2, "Phases" and "Invariants".
//!
//! The ConfigMap is the state of the bundle: the decision never remembers a desired bundle of
//! its own, it reads B and only ever grows it (an anchor is added), restores it to the anchors
//! in use when someone else wrote over it outside a rotation, or reduces it to the current
//! anchor once every leaf chains to it. Everything else it needs is in `status.phase` and what
//! it observes, so a restarted operator picks up exactly where the last one stopped.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::model::*;
use crate::bundle::{Bundle, sha256_hex};
use crate::crd::{
    BundleOverwrite, Condition, ConditionStatus, ConvergenceStatus, Phase, RenewalPolicy,
    RestartPolicy, SourceFingerprint, SourceKind, TrustAnchorRotationStatus,
};

pub const OUT_OF_ORDER_CONDITION: &str = "OutOfOrderIssuerRotation";
/// True while another writer keeps overwriting the trust bundle (see [`CONTEST_WINDOW`]).
pub const CONTESTED_CONDITION: &str = "TrustBundleContested";
const IN_ORDER_REASON: &str = "IssuerRotationInOrder";
const IN_ORDER_MESSAGE: &str = "the identity issuer is renewed only after the bundle converged";
/// Leads the blockingMessage while `OutOfOrderIssuerRotation` is True.
pub const OUT_OF_ORDER_URGENT: &str = "URGENT: the identity issuer was renewed before every proxy trusted the new anchor, so proxies on the old bundle reject new leaves: let the bundle finish propagating (restart the workloads listed) now";

/// Whether `effect` is an event that says what a write of the step did (bootstrapped a Secret or
/// the bundle, restarted the control plane or workloads, renewed the issuer), not what the
/// status says. A look that finds such a write done does not decide it, nor say it, again: so
/// the I/O layer publishes these even when the step's status write is refused as stale after
/// its writes went through.
pub fn announces_a_write(effect: &Effect) -> bool {
    matches!(effect, Effect::Event { reason, .. } if WRITE_EVENT_REASONS.contains(&reason.as_str()))
}

/// The reasons of [`announces_a_write`]'s events.
const WRITE_EVENT_REASONS: [&str; 5] = [
    "BootstrappedPreviousAnchor",
    "BootstrappedTrustBundle",
    "RestartingControlPlane",
    "RestartingWorkloads",
    "RenewingIssuer",
];

/// The proxy's refresh cap, named in messages.
const MAX_REFRESH_ENV: &str = crate::webhook::patch::MAX_REFRESH_ENV;

/// The proxy's admin port by default, where the leaf probe asks for its chain (named in
/// messages); a proxy container's port named `linkerd-admin` takes its place.
pub const PROXY_ADMIN_PORT: u16 = 4191;

/// How many example pod names a blocking message carries.
const EXAMPLES: usize = 3;

/// How many restart commands a blocking message gives a person under the `Manual` policy: the
/// workloads of a typical mesh in one go, rather than three per look; a longer list is cut
/// with a count of the rest.
const MANUAL_COMMANDS: usize = 10;

/// Names used in status and messages.
#[derive(Clone, Debug, PartialEq)]
pub struct Names {
    pub anchor_secret: (String, String),
    pub previous_anchor_secret: (String, String),
    pub bundle_configmap: (String, String),
    pub issuer_certificate: (String, String),
}

impl Default for Names {
    fn default() -> Self {
        let pair = |ns: &str, name: &str| (ns.to_owned(), name.to_owned());
        Self {
            anchor_secret: pair("cert-manager", "linkerd-trust-anchor"),
            previous_anchor_secret: pair("linkerd", "linkerd-previous-anchor"),
            bundle_configmap: pair("linkerd", "linkerd-identity-trust-roots"),
            issuer_certificate: pair("linkerd", "linkerd-identity-issuer"),
        }
    }
}

/// The outcome of one look at the world.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: TrustAnchorRotationStatus,
    pub effects: Vec<Effect>,
    pub requeue: Requeue,
}

/// The canonical bundle of these certificates.
pub fn bundle_of<'a>(certs: impl IntoIterator<Item = &'a Cert>) -> Bundle {
    let mut bundle = Bundle::default();
    // Each `Cert` was parsed and checked by the I/O layer, its `pem` written from the block it
    // read: no second check here that could drop one (and write a bundle without it).
    for cert in certs {
        if let Ok(block) = pem::parse(&cert.pem) {
            bundle.insert_der(block.into_contents());
        }
    }
    bundle
}

/// `spec.workloadCertificateRefreshInterval`, or why it cannot be published to proxies.
/// The CRD's pattern keeps malformed text out, but `0s` (or `0m0s`) matches it, and a proxy
/// asked to refresh every zero seconds is not a setting anyone means; a CRD installed without
/// its schema could let anything through.
fn refresh_interval(interval: &str) -> Result<std::time::Duration, String> {
    const FIELD: &str = "spec.workloadCertificateRefreshInterval";
    match crate::duration::parse(interval) {
        Err(e) => Err(format!("{FIELD}: {e}")),
        Ok(d) if d.is_zero() => Err(format!(
            "{FIELD} is {interval:?}, a zero interval, which no proxy can refresh on; set a positive duration such as 5m"
        )),
        Ok(d) => Ok(d),
    }
}

pub(crate) fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(12)]
}

/// Decides the next step. Never panics; never writes anything on unusable input.
pub fn decide(
    policies: &Policies,
    names: &Names,
    status: &TrustAnchorRotationStatus,
    observed: &Observed,
) -> Decision {
    let mut d = Step::new(status, observed.now, names);

    // Unusable material parks the rotation where it is, writing nothing.
    let material = (|| {
        let anchor = observed.anchor.clone()?;
        let previous = observed.previous.clone()?;
        let bundle = observed.bundle.clone()?;
        let issuer = observed.issuer.clone()?;
        Ok::<_, Problem>((anchor, previous, bundle, issuer))
    })();
    let (anchor, previous, bundle, issuer) = match material {
        Ok(m) => m,
        Err(problem) => return d.park(&format!("{problem}")),
    };
    if anchor.not_after <= observed.now {
        let (ns, name) = &names.anchor_secret;
        return d.park(&format!(
            "Secret {ns}/{name}: the trust anchor {} has expired; renew it (cmctl renew -n {ns} {name})",
            short(&anchor.fingerprint)
        ));
    }
    if issuer.cert.not_after <= observed.now {
        let (ns, name) = &names.issuer_certificate;
        return d.park(&format!(
            "Certificate {ns}/{name}: the identity issuer {} has expired; the mesh cannot issue leaves",
            short(&issuer.cert.fingerprint)
        ));
    }

    d.next.active_issuer_fingerprint = Some(issuer.cert.fingerprint.clone());
    // While the Secret is missing, the status keeps what it held: looks that go no further
    // (paused, parked) must not forget the rotation is under way before the Secret is rebuilt
    // from that record.
    d.next.previous_anchor_fingerprint = (previous.as_ref())
        .map(|p| p.fingerprint.clone())
        .or_else(|| status.previous_anchor_fingerprint.clone());

    // The renewed anchor alone: who lacks it matters in every phase.
    let new_anchor = BTreeSet::from([anchor.fingerprint.clone()]);
    if policies.paused {
        if let Some(b) = &bundle {
            let set = fingerprints(b);
            // Counted as the phase counts it: pods must hold exactly the reduced bundle.
            let reducing = match status.phase {
                Phase::RemovingOldTrustRoots => true,
                Phase::RefreshingControlPlane => previous
                    .as_ref()
                    .is_some_and(|p| p.fingerprint == anchor.fingerprint),
                _ => false,
            };
            d.count_bundle(observed, &set, reducing);
            // Reported even now: pausing to look into a rotation is when someone may run
            // `cmctl renew` too early.
            if let Some(previous) = &previous {
                let signer = BTreeSet::from_iter(issuer.signed_by.clone());
                let lacking_signer = workloads_lacking(observed.bundle_holders(), &signer);
                d.out_of_order(
                    renewed_out_of_order(
                        status.phase,
                        &anchor,
                        previous,
                        issuer.signed_by.as_deref(),
                        &lacking_signer,
                    ),
                    &lacking_signer,
                );
            }
        }
        d.next.blocking_message =
            Some("paused (spec.paused): observing only, nothing is written".to_owned());
        d.next.phase = status.phase;
        return d.finish(Requeue::Idle);
    }
    let interval = match refresh_interval(&policies.refresh_interval) {
        Ok(interval) => interval,
        Err(problem) => return d.park(&problem),
    };

    // While a renewal is under way (the previous anchor, or the status's record of it when its
    // Secret is gone, is not the current one), an anchor the bundle held at the last look (the
    // status's `sourceFingerprints`) is found again in the proxies' env if the bundle lost it.
    // After a second renewal mid-rotation the first one's anchor is in no Secret, and may
    // still sign the issuer, or have signed leaves that live until they refresh. Never outside
    // a renewal, nor for any other anchor a proxy holds: a retired one (in a template `linkerd
    // inject` baked) must not come back because an old issuer signed by it was restored.
    let renewing = match &previous {
        Some(p) => p.fingerprint != anchor.fingerprint,
        None => {
            (status.previous_anchor_fingerprint.as_ref()).is_some_and(|f| *f != anchor.fingerprint)
        }
    };
    // (A record of the rotation under way only: one whose previous anchor is the Secret's. A
    // status whose write was lost with the reduction's still names the anchors let go of.)
    let this_rotation = previous.as_ref().is_none_or(|p| {
        status.previous_anchor_fingerprint.as_deref() == Some(p.fingerprint.as_str())
    });
    let last_look: BTreeSet<&str> = (status.source_fingerprints.iter())
        .filter(|_| this_rotation)
        .map(|s| s.fingerprint.as_str())
        .collect();
    let held: Vec<&Cert> = (observed.held_anchors.iter())
        .filter(|c| renewing && last_look.contains(c.fingerprint.as_str()))
        .collect();

    // The anchor the issuer chains to must stay trusted, whatever else happens.
    let signer = issuer.signed_by.clone();
    let signer_cert = [Some(&anchor), previous.as_ref()]
        .into_iter()
        .flatten()
        .chain(bundle.iter().flatten())
        .chain(held.iter().copied())
        .find(|c| Some(&c.fingerprint) == signer.as_ref())
        .cloned();

    // An issuer that chains to no anchor we can read (renewed onto an anchor that has since
    // been renewed again, or signed elsewhere) cannot be kept trusted: restarting the control
    // plane onto any bundle without its anchor would stop Linkerd's identity controller.
    let Some(signer_cert) = signer_cert else {
        let (ns, name) = &names.issuer_certificate;
        return d.park(&format!(
            "Certificate {ns}/{name}: the identity issuer {} is signed by none of the known anchors (current, previous, bundle, and during a rotation those the bundle held that proxies still hold); renew it onto the current anchor: cmctl renew -n {ns} {name}",
            short(&issuer.cert.fingerprint)
        ));
    };
    d.issuer_anchor = Some(signer_cert.fingerprint.clone());

    // Bootstrap: the previous anchor is the one the issuer chains to (the anchor in use), or
    // the current one; the bundle is every anchor that must be trusted.
    //
    // Unless the bundle lacks the issuer's anchor: then the issuer was renewed onto a renewed
    // anchor before the operator was there (cert-manager renews the issuer on its own
    // schedule, or a CronJob or person renewed both). Linkerd's identity controller, which
    // loaded the bundle's anchors at start, skipped that issuer and still signs with its
    // earlier one, which chains to an anchor of the bundle: that is the anchor in use, and
    // the rotation onto the issuer's anchor is still to be done. (Which of the bundle's
    // anchors it is matters not: the expansion keeps them all, and they leave only once every
    // proxy presents a leaf of the new issuer.)
    //
    // A Secret deleted mid-rotation is rebuilt as the status records it, from the anchor's
    // copy in the bundle: after the issuer's renewal the anchor in use is the new one, and a
    // previous anchor rebuilt from it would make the rotation forget it is under way (a
    // bundle then written over would be restored without the old anchor, which leaves not yet
    // refreshed still chain to).
    let Some(previous) = previous else {
        let recorded = status.previous_anchor_fingerprint.as_deref().and_then(|f| {
            [&anchor, &signer_cert]
                .into_iter()
                .chain(bundle.iter().flatten())
                .chain(held.iter().copied())
                .find(|c| c.fingerprint == f)
        });
        let in_use = match bundle.as_deref() {
            Some(b @ [first, ..])
                if !b.iter().any(|c| c.fingerprint == signer_cert.fingerprint) =>
            {
                Some(first)
            }
            _ => None,
        };
        let (p, how) = match (recorded, in_use) {
            (Some(p), _) if p.fingerprint != signer_cert.fingerprint => (
                p.clone(),
                ", the previous anchor its status records".to_owned(),
            ),
            (_, Some(p)) => (
                p.clone(),
                format!(
                    ", an anchor of the trust bundle: the identity issuer is signed by {}, which the bundle lacks, so Linkerd's identity controller still signs with an earlier issuer",
                    short(&signer_cert.fingerprint)
                ),
            ),
            _ => (signer_cert.clone(), String::new()),
        };
        d.effects.push(Effect::WritePreviousAnchor {
            pem: p.pem.clone(),
            fingerprint: p.fingerprint.clone(),
        });
        d.event(
            false,
            "BootstrappedPreviousAnchor",
            &format!(
                "wrote the previous-anchor Secret {}/{} with anchor {}{how}",
                names.previous_anchor_secret.0,
                names.previous_anchor_secret.1,
                short(&p.fingerprint)
            ),
        );
        return d.finish(Requeue::Soon);
    };
    let renewed = anchor.fingerprint != previous.fingerprint;
    // While a renewal is under way, every anchor the bundle held at the last look stays
    // trusted, where the bundle or the proxies still have it (see `held`). Not only the
    // current, previous and signing anchors: after a second renewal mid-rotation the anchor of
    // the first one may sign no issuer any more and be in no Secret, while leaves from the
    // issuer it signed still live until they refresh. A deleted ConfigMap rebuilt without it,
    // or an overwrite grown back without it, would give every pod started meanwhile a bundle
    // that rejects those leaves.
    let kept: Vec<Cert> = if renewed {
        let mut seen = BTreeSet::new();
        (bundle.iter().flatten())
            .chain(held.iter().copied())
            .filter(|c| last_look.contains(c.fingerprint.as_str()))
            .filter(|c| c.not_after > observed.now)
            .filter(|c| seen.insert(c.fingerprint.as_str()))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let Some(bundle) = bundle else {
        let b = bundle_of([&anchor, &previous, &signer_cert].into_iter().chain(&kept));
        // (None when the ConfigMap does not exist; it may exist without the key.)
        d.write_bundle(&b, observed.bundle_meta.version.clone());
        d.event(
            false,
            "BootstrappedTrustBundle",
            &format!(
                "wrote the trust bundle ConfigMap {}/{} with {} anchor(s)",
                names.bundle_configmap.0,
                names.bundle_configmap.1,
                b.len()
            ),
        );
        return d.finish(Requeue::Soon);
    };

    let bundle_set = fingerprints(&bundle);
    let bundle_fp = bundle_of(&bundle).fingerprint();
    // What a restart onto this bundle is marked with: its fingerprint and the version of the
    // ConfigMap the operator's write of it replaced (see `BundleMeta`).
    let marker = match &observed.bundle_meta.written_over {
        Some(replaced) => format!("{bundle_fp}.{replaced}"),
        None => bundle_fp.clone(),
    };
    d.next.source_fingerprints = sources(names, &bundle, &anchor, &previous);
    if renewed && status.phase == Phase::Synced {
        // A rotation starts: the last one's certificate count would read as this one's, done
        // before its issuer exists. Counted afresh once leaves are awaited.
        d.next.workload_certificates = None;
    }

    // A pod of the control-plane Deployments the operator restarts, whose restart marker says
    // what bundle it runs with. (A pod labelled as control plane by anything else has no
    // marker to be known by: it is left to its anchors, when its spec has them, and the
    // observation counts it as a workload pod then.)
    let restarted_here = |p: &MeshedPod| p.restarted_with(&observed.control_plane);
    let lacking_bundle = workloads_lacking(observed.bundle_holders(), &bundle_set);
    let signer_anchor = BTreeSet::from([signer_cert.fingerprint.clone()]);
    let lacking_signer = workloads_lacking(observed.bundle_holders(), &signer_anchor);
    // The issuer already renewed onto an anchor this rotation brought in while some proxies do
    // not trust it yet (onto the new anchor, renewed early by a person, a CronJob or
    // cert-manager's own schedule, or before the operator was installed; or onto one renewed
    // over again since): Linkerd's identity controller, if it started before the bundle held
    // that anchor, skipped that issuer (`IssuerUpdateSkipped`) and still signs with its earlier
    // one. Restarted onto the expanded bundle it would take the new issuer up at once, and
    // every proxy without the issuer's anchor would reject its leaves. So its restart is held
    // until every proxy trusts that anchor; the rest of the control plane restarts as usual.
    // (Nothing keeps it from restarting by itself meanwhile: the out-of-order condition stays
    // urgent.)
    //
    // Every proxy means every pod but its own: running and starting workload pods, the rest of
    // the control plane until it runs on this bundle, and pods still draining (those a restart
    // just replaced, in any phase, whoever restarted them). Only the identity controller's own
    // old pod drains on the old bundle whatever the order.
    let issuer_ahead = renewed && signer.as_deref() != Some(previous.fingerprint.as_str());
    let untrusting: Vec<String> = if issuer_ahead {
        let others = (observed.pods.iter())
            .filter(|p| p.control_plane && (p.anchors.is_some() || restarted_here(p)))
            .chain(&observed.draining)
            .filter(|p| !p.identity_controller);
        (lacking_signer.iter().cloned())
            .chain(pods_lacking(others, &signer_anchor, &marker))
            .collect()
    } else {
        Vec::new()
    };
    // Urgent while any proxy may lack the issuer's anchor: those that hold the identity
    // controller back, or, with the issuer in order, the workload pods.
    d.out_of_order(
        renewed_out_of_order(
            status.phase,
            &anchor,
            &previous,
            signer.as_deref(),
            &lacking_signer,
        ),
        if issuer_ahead {
            &untrusting
        } else {
            &lacking_signer
        },
    );
    let hold_identity = !untrusting.is_empty();
    let held = |c: &ControlPlaneDeployment| hold_identity && c.identity_controller;
    let held_names: Vec<&str> = observed
        .control_plane
        .iter()
        .filter(|c| held(c))
        .map(|c| c.name.as_str())
        .collect();
    let hold_note = (!held_names.is_empty()).then(|| {
        format!(
            "; the identity controller ({}) is held until every proxy trusts anchor {}, which signed the issuer it takes up as it starts ({} pod(s) may not yet: {})",
            held_names.join(", "),
            short(&signer_cert.fingerprint),
            untrusting.len(),
            first_few(&untrusting)
        )
    });

    // Workloads injected by `linkerd inject` carry their anchors in their template: no restart
    // renews them, and a workload scaled to zero has no pod to be counted by. While the new
    // anchor propagates and the issuer is awaited, those without it are named (their pods
    // would reject the renewed issuer's leaves); in Synced, those without the anchor in use.
    if renewed {
        let lacking = templates_lacking(observed, &new_anchor);
        d.baked_note = (!lacking.is_empty()).then(|| {
            format!(
                "{} workload template(s) carry proxy trust anchors injected by `linkerd inject` without anchor {}{}: the pods they start will reject the renewed issuer's leaves, and no restart changes that; {REINJECT}",
                lacking.len(),
                short(&anchor.fingerprint),
                examples(&lacking)
            )
        });
    }

    // Expansion: every anchor that must be trusted is in the bundle, or the bundle grows and the
    // control plane is restarted onto it. This is also how a second renewal mid-rotation
    // restarts the expansion: nothing already in B is dropped.
    //
    // Without a renewal (the anchor is the previous one) a bundle that lacks an anchor in use
    // was rewritten by someone else (a `helm upgrade` of Linkerd renders it from its values).
    // Every live leaf then chains to the anchors in use, so the bundle is restored to exactly
    // those, and whatever else was written is dropped rather than spread to every proxy.
    //
    // While a renewal is under way the previous anchor is in use too: leaves from the issuer
    // before, and every proxy not yet restarted, chain to it until the bundle is reduced. A
    // bundle written without it (a GitOps commit of the new anchor alone) is grown back, never
    // rolled onto the control plane.
    //
    // A bundle someone else wrote over the operator's is taken back even when it lacks nothing:
    // the writer may have rolled the control plane onto what it wrote (a `helm upgrade`), or
    // been followed by another write before the operator looked, and the restore's restart is
    // the only way to know what the control plane runs with. Outside a renewal the bundle is
    // the anchors in use and nothing else, so what was added to it (a retired anchor, say)
    // goes too.
    let mut must_trust: Vec<&Cert> = vec![&anchor, &signer_cert];
    if renewed {
        must_trust.push(&previous);
        must_trust.extend(&kept);
    }
    let missing: BTreeSet<&str> = must_trust
        .iter()
        .filter(|c| !bundle_set.contains(&c.fingerprint))
        .map(|c| short(&c.fingerprint))
        .collect();
    // Replaced (a PUT: `kubectl replace`, `helm upgrade --force`, Argo CD's `Replace=true`):
    // the API server took the operator's annotations and its managedFields entry away with
    // the write, so only the status remembers that the operator wrote a bundle, and which.
    // Another bundle there now is an overwrite by whoever holds the key.
    let mut meta = observed.bundle_meta.clone();
    let replaced = meta.overwritten_by.is_empty()
        && !meta.annotated
        && (status.written_bundle_fingerprint.as_ref()).is_some_and(|fp| *fp != bundle_fp);
    if replaced {
        meta.overwritten_by = if meta.key_holders.is_empty() {
            vec!["an unnamed writer".to_owned()]
        } else {
            meta.key_holders.clone()
        };
    }
    let meta = &meta;
    if !missing.is_empty() || !meta.overwritten_by.is_empty() {
        let written: Vec<Cert> = if renewed {
            bundle
                .iter()
                .chain(must_trust.iter().copied())
                .cloned()
                .collect()
        } else {
            must_trust.iter().copied().cloned().collect()
        };
        // The status names what is written, not what was found: another write over the bundle
        // before the next look still finds what this one lost recorded (`kept`).
        d.next.source_fingerprints = sources(names, &written, &anchor, &previous);
        let (grown, why) = if renewed {
            let grown = bundle_of(&written);
            let why = if !bundle_set.contains(&anchor.fingerprint) {
                format!(
                    "trust anchor renewed ({} -> {}): expanding the trust bundle to {} anchors",
                    short(&previous.fingerprint),
                    short(&anchor.fingerprint),
                    grown.len()
                )
            } else if !missing.is_empty() {
                format!(
                    "the trust bundle lacked anchor(s) still in use during the rotation ({}): growing it back to {} anchors",
                    missing.into_iter().collect::<Vec<_>>().join(", "),
                    grown.len()
                )
            } else {
                format!(
                    "the trust bundle was written over during the rotation: taking it back with its {} anchors",
                    grown.len()
                )
            };
            (grown, why)
        } else {
            let restored = bundle_of(&written);
            let in_use: BTreeSet<&str> = must_trust.iter().map(|c| short(&c.fingerprint)).collect();
            let dropped: Vec<&str> = bundle
                .iter()
                .map(|c| short(&c.fingerprint))
                .filter(|f| !in_use.contains(f))
                .collect();
            let why = format!(
                "{}: restoring it to the anchor(s) in use ({}){}",
                if missing.is_empty() {
                    "the trust bundle was written over"
                } else {
                    "the trust bundle lacked an anchor in use"
                },
                in_use.into_iter().collect::<Vec<_>>().join(", "),
                if dropped.is_empty() {
                    String::new()
                } else {
                    format!(", dropping {}", dropped.join(", "))
                }
            );
            (restored, why)
        };
        // The bundle may come back to a fingerprint used before (someone else overwrote it and
        // it is restored, or grown back): the write records the version it replaced, which
        // sets its restarts apart from those onto the bundle before (see `BundleMeta`).
        d.write_bundle(&grown, meta.version.clone());
        let why = if meta.overwritten_by.is_empty() {
            why
        } else {
            d.overwritten(meta);
            format!(
                "{why} (written over the operator's bundle by {})",
                meta.overwritten_by.join(", ")
            )
        };
        return d.refresh_control_plane(&why, &grown.fingerprint());
    }

    // Every phase after RefreshingControlPlane stands on the control plane having been
    // restarted onto the bundle now in place. A bundle written by a look whose status never
    // landed (a conflict, a crash, a lost Lease between the two writes) leaves the old phase
    // in the status with a control plane still on the bundle before: back to the restart.
    //
    // Synced too, once the bundle in place is the operator's own write: a restore of a bundle
    // written over in Synced whose status was lost takes the key back, so the next look finds
    // nothing overwritten, only the control plane on the marker before. (A bundle that is not
    // the operator's, one Linkerd was installed with, is left alone, as is the control plane.)
    let after_refresh = matches!(
        status.phase,
        Phase::PropagatingTrustRoots
            | Phase::WaitingForRemoteClusters
            | Phase::WaitingForIdentityRotation
            | Phase::RenewingWorkloadCerts
            | Phase::RemovingOldTrustRoots
    ) || (status.phase == Phase::Synced && observed.bundle_meta.annotated);
    // (A Deployment without a marker was created since, by a `helm upgrade --force` say: its
    // pods read the bundle in place when they started. Unless the operator restored the bundle
    // over what that upgrade wrote and the restore's status was lost: a gap left open, since a
    // Deployment the operator never restarted looks the same.)
    let behind: Vec<&str> = observed
        .control_plane
        .iter()
        .filter(|c| {
            !held(c)
                && c.restarted_for
                    .as_deref()
                    .is_some_and(|f| f != marker.as_str())
        })
        .map(|c| c.name.as_str())
        .collect();
    if after_refresh && !behind.is_empty() {
        let why = format!(
            "the control plane ({}) has not been restarted onto trust bundle {}",
            behind.join(", "),
            short(&bundle_fp)
        );
        return d.refresh_control_plane(&why, &bundle_fp);
    }

    let renewal = IssuerRenewal {
        policies,
        anchor: &anchor,
        issuer: &issuer,
        observed,
        bundle: &bundle_set,
        marker: &marker,
        lacking: &lacking_bundle,
    };
    match status.phase {
        Phase::Synced => {
            d.count_bundle(observed, &bundle_set, false);
            d.next.workload_certificate_refresh_interval = None;
            if renewed {
                d.transition(
                    Phase::RefreshingControlPlane,
                    &format!(
                        "trust anchor {} is in the bundle but differs from the previous anchor {}",
                        short(&anchor.fingerprint),
                        short(&previous.fingerprint)
                    ),
                );
                return d.finish(Requeue::Soon);
            }
            // Restartable pods that still trust an anchor the bundle no longer holds: a removal
            // that never finished (its status lost with a deleted resource). Synced would be
            // untrue; the removal takes them. (Pods holding less than the bundle, one an anchor
            // was added to since, are in no danger from the anchors in use.)
            let still_trusting: Vec<String> = observed
                .pods
                .iter()
                .filter(|p| !p.control_plane && p.owner.is_ok())
                .filter(|p| {
                    p.anchors
                        .as_ref()
                        .is_some_and(|a| a.is_superset(&bundle_set) && *a != bundle_set)
                })
                .map(|p| p.key())
                .collect();
            if !still_trusting.is_empty() {
                d.transition(
                    Phase::RemovingOldTrustRoots,
                    &format!(
                        "{} meshed pod(s) still trust an anchor that left the trust bundle {}{}",
                        still_trusting.len(),
                        short(&bundle_fp),
                        examples(&still_trusting)
                    ),
                );
                return d.finish(Requeue::Soon);
            }
            // Pods whose proxy does not trust the anchor in use (started from a manifest
            // injected before the last rotation, say) reject every leaf of this mesh: it is not
            // Synced for them. They are named, with a warning when first seen; restarting them
            // is left to a person, as nothing is rotating. (Pods that lack only an anchor
            // added to the bundle beside it, or whose anchors cannot be read, are counted, not
            // named: the leaves in use chain to what they hold, or nothing is known.)
            let in_use: BTreeSet<String> =
                [anchor.fingerprint.clone(), signer_cert.fingerprint.clone()].into();
            let lacking: Vec<String> = observed
                .bundle_holders()
                .filter(|p| !p.control_plane)
                .filter(|p| p.anchors.as_ref().is_some_and(|a| !a.is_superset(&in_use)))
                .map(|p| p.key())
                .collect();
            let templates = templates_lacking(observed, &in_use);
            let mut said = Vec::new();
            if !lacking.is_empty() {
                const LACKING: &str = "do not trust the anchor in use";
                let message = format!(
                    "{} meshed pod(s) {LACKING} ({}): their proxies reject every leaf of the mesh until their workloads are restarted{}",
                    lacking.len(),
                    short(&anchor.fingerprint),
                    examples(&lacking)
                );
                d.warn_once(LACKING, "PodsLackTrustBundle", &message);
                said.push(message);
            }
            if !templates.is_empty() {
                const BAKED: &str = "carry proxy trust anchors injected by `linkerd inject` without the anchor in use";
                let message = format!(
                    "{} workload template(s) {BAKED} ({}){}: the pods they start reject every leaf of the mesh, and no restart changes that; {REINJECT}",
                    templates.len(),
                    short(&anchor.fingerprint),
                    examples(&templates)
                );
                d.warn_once(BAKED, "PodsLackTrustBundle", &message);
                said.push(message);
            }
            if !said.is_empty() {
                d.next.blocking_message = Some(said.join("; "));
                return d.finish(Requeue::Idle);
            }
            d.next.blocking_message = None;
            d.finish(Requeue::Idle)
        }
        Phase::RefreshingControlPlane => {
            // The count is against the bundle just written (expanded: holding every anchor of
            // it; reduced: holding exactly it), not the last phase's.
            d.count_bundle(observed, &bundle_set, !renewed);
            if observed.control_plane.is_empty() {
                d.next.blocking_message = Some(
                    "no control-plane Deployment found (label linkerd.io/control-plane-ns): cannot restart the identity controller onto the new bundle".to_owned(),
                );
                return d.finish(Requeue::Soon);
            }
            let stale = |c: &ControlPlaneDeployment| {
                !held(c) && c.restarted_for.as_deref() != Some(marker.as_str())
            };
            // Onto the expanded bundle, the control plane's proxies take the accelerated refresh
            // interval with them (the webhook leaves their pods alone); onto the reduced one,
            // they give it back.
            let accelerated = renewed
                .then(|| crate::webhook::patch::max_refresh_value(&policies.refresh_interval))
                .flatten();
            let restarts: Vec<ControlPlaneRestart> = observed
                .control_plane
                .iter()
                .filter(|c| stale(c))
                .map(|c| ControlPlaneRestart {
                    name: c.name.clone(),
                    proxy_refresh: proxy_refresh(c, accelerated.as_deref()),
                })
                .collect();
            if !restarts.is_empty() {
                let names: Vec<&str> = restarts.iter().map(|r| r.name.as_str()).collect();
                let refresh = accelerated
                    .as_ref()
                    .map(|interval| {
                        format!(", its proxies refreshing certificates every {interval}")
                    })
                    .unwrap_or_default();
                let message = format!(
                    "restarting {} onto trust bundle {}{refresh}{}",
                    names.join(", "),
                    short(&bundle_fp),
                    hold_note.as_deref().unwrap_or_default()
                );
                d.effects.push(Effect::RestartControlPlane {
                    deployments: restarts,
                    marker: marker.clone(),
                });
                d.event(false, "RestartingControlPlane", &message);
            }
            let pending_rollouts: Vec<&str> = observed
                .control_plane
                .iter()
                .filter(|c| !c.rollout_complete || stale(c))
                .map(|c| c.name.as_str())
                .collect();
            let cp_pods: Vec<&MeshedPod> = (observed.pods.iter())
                .filter(|p| p.control_plane && restarted_here(p))
                .collect();
            let stale_pods: Vec<String> = cp_pods
                .iter()
                .filter(|p| !(hold_identity && p.identity_controller))
                .filter(|p| p.restarted_for.as_deref() != Some(marker.as_str()) || !p.ready)
                .map(|p| p.key())
                .collect();
            if pending_rollouts.is_empty() && stale_pods.is_empty() && !cp_pods.is_empty() {
                let (next, why) = if renewed {
                    (
                        Phase::PropagatingTrustRoots,
                        "control plane restarted onto the expanded bundle",
                    )
                } else {
                    (
                        Phase::RemovingOldTrustRoots,
                        "control plane restarted onto the reduced bundle",
                    )
                };
                d.transition(next, why);
                if renewed {
                    d.next.workload_certificate_refresh_interval =
                        Some(policies.refresh_interval.clone());
                } else {
                    d.next.workload_certificate_refresh_interval = None;
                }
                return d.finish(Requeue::Soon);
            }
            d.next.blocking_message = Some(format!(
                "waiting for the control plane to run on trust bundle {}: rollouts pending: [{}]; pods not yet on it: {}{}{}",
                short(&bundle_fp),
                pending_rollouts.join(", "),
                stale_pods.len(),
                examples(&stale_pods),
                hold_note.as_deref().unwrap_or_default()
            ));
            d.finish(Requeue::Soon)
        }
        Phase::PropagatingTrustRoots | Phase::WaitingForRemoteClusters => {
            d.next.workload_certificate_refresh_interval = Some(policies.refresh_interval.clone());
            let pending = d.count_bundle(observed, &bundle_set, false);
            if pending.is_empty() {
                // The identity controller held while proxies lacked the new anchor (or a
                // control-plane Deployment created since the restart): onto the bundle now,
                // before the issuer is awaited.
                let unrestarted: Vec<&str> = observed
                    .control_plane
                    .iter()
                    .filter(|c| c.restarted_for.as_deref() != Some(marker.as_str()))
                    .map(|c| c.name.as_str())
                    .collect();
                if !unrestarted.is_empty() {
                    // A held identity controller takes the renewed issuer up as it restarts, so
                    // it waits on while its hold counts pods that may not trust its anchor:
                    // here, those still draining on the old bundle (the pods the propagation
                    // just replaced), as the issuer's renewal would. The rest restarts now.
                    if unrestarted.iter().all(|name| held_names.contains(name)) {
                        d.next.blocking_message = Some(format!(
                            "every running meshed pod holds the expanded trust bundle; waiting for {} pod(s) that may not trust anchor {} (terminating, or not yet restarted onto the bundle) before the identity controller ({}), which will take up the renewed issuer, restarts{}",
                            untrusting.len(),
                            short(&signer_cert.fingerprint),
                            held_names.join(", "),
                            examples(&untrusting)
                        ));
                        return d.finish(Requeue::Soon);
                    }
                    let why = format!(
                        "every meshed pod holds the expanded trust bundle: restarting the rest of the control plane ({}) onto it",
                        unrestarted.join(", ")
                    );
                    return d.refresh_control_plane(&why, &bundle_fp);
                }
                if !d.rollouts_finished(observed, &marker) {
                    return d.finish(Requeue::Soon);
                }
                d.transition(
                    Phase::WaitingForIdentityRotation,
                    "every meshed pod holds the expanded trust bundle",
                );
                return d.waiting_for_issuer(&renewal);
            }
            d.restart_or_ask(
                policies,
                observed,
                &pending,
                &marker,
                RestartFor::Bundle(marker.clone()),
                "do not hold the expanded trust bundle yet",
            );
            if let (Some(note), Some(message)) = (&hold_note, &mut d.next.blocking_message) {
                message.push_str(note);
            }
            d.finish(Requeue::Soon)
        }
        Phase::WaitingForIdentityRotation => {
            d.next.workload_certificate_refresh_interval = Some(policies.refresh_interval.clone());
            // A pod seen without the expanded bundle since it converged is one that
            // propagation could not have counted.
            let issuer_on_new_anchor =
                issuer.signed_by.as_deref() == Some(anchor.fingerprint.as_str());
            let can_hold = !issuer_on_new_anchor && !issuer.issuing;
            if d.back_to_propagation(observed, &bundle_set, can_hold, |lacking| {
                format!(
                    "{} meshed pod(s) started without the expanded trust bundle{}",
                    lacking.len(),
                    examples(lacking)
                )
            }) {
                return d.finish(Requeue::Soon);
            }
            d.waiting_for_issuer(&renewal)
        }
        Phase::RenewingWorkloadCerts => {
            d.next.workload_certificate_refresh_interval = Some(policies.refresh_interval.clone());
            if signer.as_deref() != Some(anchor.fingerprint.as_str()) {
                // Back before the renewal (the issuer Secret restored from a backup, say): the
                // renewal is asked for again only as WaitingForIdentityRotation would ask it.
                if d.back_to_propagation(observed, &bundle_set, !issuer.issuing, |lacking| {
                    format!(
                        "the identity issuer no longer chains to the current anchor, and {} meshed pod(s) lack the expanded trust bundle{}",
                        lacking.len(),
                        examples(lacking)
                    )
                }) {
                    return d.finish(Requeue::Soon);
                }
                d.transition(
                    Phase::WaitingForIdentityRotation,
                    "the identity issuer no longer chains to the current anchor",
                );
                return d.waiting_for_issuer(&renewal);
            }
            let targets = observed.pods.len();
            let pending: Vec<String> = observed
                .pods
                .iter()
                .filter(|p| p.leaf != Some(Leaf::FromIssuer))
                .map(|p| p.key())
                .collect();
            d.next.workload_certificates = Some(ConvergenceStatus::new(
                (targets - pending.len()) as u32,
                targets as u32,
            ));
            // A proxy that does not answer the probe is not converged (its leaf is unknown),
            // and not being reached asks no restart: a refresh it cannot be seen to make would
            // not be seen after a restart either. (One that will not refresh within the
            // interval is restarted as every such proxy is, below: reached or not, it would
            // keep its old leaf for hours.) What the probe met is said, so the cause (a
            // NetworkPolicy that keeps the operator off the admin port, say) can be read.
            let unreachable: Vec<String> = observed
                .pods
                .iter()
                .filter_map(|p| match &p.leaf {
                    Some(Leaf::Unreachable(why)) => Some(format!("{}: {why}", p.key())),
                    _ => None,
                })
                .collect();
            // Control-plane proxies that will not refresh within the interval either (one whose
            // interval the user set longer, which the operator leaves alone, or a Deployment
            // created since the control plane was restarted) are not restarted for the issuer:
            // the command to hurry them is said instead of a wait that reads as the interval's.
            let published = crate::duration::round_up_to_seconds(interval);
            // (Keyed by namespace: the control plane's pods are all in Linkerd's.)
            let slow_control_plane: BTreeMap<&str, BTreeSet<String>> = observed
                .pods
                .iter()
                .filter(|p| p.control_plane && p.leaf != Some(Leaf::FromIssuer))
                .filter(|p| p.max_refresh.is_none_or(|m| m > published))
                .fold(BTreeMap::new(), |mut by_ns, p| {
                    by_ns.entry(p.namespace.as_str()).or_default().insert(
                        match (&p.control_plane_deployment, &p.owner) {
                            // (Its owner reads as injected by the CLI when `linkerd install`
                            // made it.)
                            (Some(d), _) => format!("deployment/{d}"),
                            (None, Ok(w)) => format!("{}/{}", w.kind.to_lowercase(), w.name),
                            (None, Err(_)) => format!("pod/{}", p.name),
                        },
                    );
                    by_ns
                });
            let waiting = (!pending.is_empty() || targets == 0).then(|| {
                let mut waiting = format!(
                    "waiting for {} of {targets} proxies to present a leaf certificate from issuer {} (refresh interval {}){}",
                    pending.len(),
                    short(&issuer.cert.fingerprint),
                    policies.refresh_interval,
                    examples(&pending)
                );
                if !unreachable.is_empty() {
                    waiting.push_str(&format!(
                        "; {} of them did not answer the leaf probe on the proxy admin port (`linkerd-admin`, {PROXY_ADMIN_PORT} by default), so their leaf cannot be checked (the operator must be able to reach it): {}",
                        unreachable.len(),
                        first_few(&unreachable)
                    ));
                }
                for (namespace, slow) in &slow_control_plane {
                    // A pod no workload owns is deleted; `rollout restart` takes workloads only.
                    let (pods, workloads): (Vec<&str>, Vec<&str>) =
                        slow.iter().map(String::as_str).partition(|t| t.starts_with("pod/"));
                    let mut hurry = Vec::new();
                    if !workloads.is_empty() {
                        hurry.push(format!(
                            "kubectl rollout restart -n {namespace} {}",
                            workloads.join(" ")
                        ));
                    }
                    if !pods.is_empty() {
                        hurry.push(format!("kubectl delete -n {namespace} {}", pods.join(" ")));
                    }
                    waiting.push_str(&format!(
                        "; the control plane's proxies of {} will not refresh within {} (no {MAX_REFRESH_ENV} of at most it), which can take hours: {}",
                        slow.iter().map(String::as_str).collect::<Vec<_>>().join(", "),
                        policies.refresh_interval,
                        hurry.join("; ")
                    ));
                }
                waiting
            });
            // A proxy that does not refresh within the interval (it started before the interval
            // was published, or while the webhook was unreachable) would hold the rotation for
            // most of its leaf's lifetime, and one without the expanded bundle (started late
            // with an older injection) rejects the new leaves: their workloads are restarted,
            // and the new pods hold the bundle and a leaf from this issuer from the start.
            let slow: BTreeSet<String> = observed
                .pods
                .iter()
                .filter(|p| !p.control_plane && p.leaf != Some(Leaf::FromIssuer))
                .filter(|p| p.max_refresh.is_none_or(|m| m > published))
                .map(|p| p.key())
                .collect();
            let lacking: BTreeSet<String> = lacking_bundle.iter().cloned().collect();
            let stuck: Vec<String> = slow.union(&lacking).cloned().collect();
            if !stuck.is_empty() {
                let slow_what = format!(
                    "will not refresh their leaf within {0} (their proxy has no {MAX_REFRESH_ENV} of at most {0})",
                    policies.refresh_interval
                );
                let what = match (slow.is_empty(), lacking.is_empty()) {
                    (false, true) => slow_what,
                    (true, false) => "do not hold the expanded trust bundle".to_owned(),
                    _ => format!("{slow_what} or do not hold the expanded trust bundle"),
                };
                d.restart_or_ask(
                    policies,
                    observed,
                    &stuck,
                    &marker,
                    RestartFor::Issuer(issuer.cert.fingerprint.clone()),
                    &what,
                );
                if let Some(waiting) = waiting {
                    let asked = d.next.blocking_message.take().unwrap_or_default();
                    d.next.blocking_message = Some(format!("{waiting}; {asked}"));
                }
                return d.finish(Requeue::Soon);
            }
            if let Some(waiting) = waiting {
                d.next.blocking_message = Some(waiting);
                return d.finish(Requeue::Soon);
            }
            // Pods still draining hold leaves from before: the old anchors stay until they
            // have stopped.
            let draining: Vec<String> = observed.draining.iter().map(|p| p.key()).collect();
            if !draining.is_empty() {
                d.next.blocking_message = Some(format!(
                    "every running proxy presents a leaf from issuer {}; waiting for {} terminating pod(s) to stop before the old anchor leaves the bundle{}",
                    short(&issuer.cert.fingerprint),
                    draining.len(),
                    examples(&draining)
                ));
                return d.finish(Requeue::Soon);
            }
            // An identity controller replica whose node's kubelet has not yet updated its
            // Secret volume still signs with the old issuer, and a proxy seen with a new leaf
            // may take its next one from it (see `IssuerReload::may_go_back` for when): the old
            // anchors stay until every replica has surely loaded the issuer, and every leaf is
            // probed again after that.
            if let Some(reload) = observed.issuer_reload.as_ref().filter(|r| r.may_go_back()) {
                d.next.blocking_message = Some(format!(
                    "every proxy presents a leaf from issuer {}, but {IDENTITY_RELOAD_HOLD} (each loads the issuer when its node's kubelet updates its Secret volume){}: {}, then checking every leaf again, before the old anchor leaves the bundle",
                    short(&issuer.cert.fingerprint),
                    reload_reasons(reload),
                    reload_wait(reload),
                ));
                return d.finish(Requeue::Soon);
            }
            // Every leaf chains to the current anchor: the old anchors can go.
            if previous.fingerprint != anchor.fingerprint {
                d.effects.push(Effect::WritePreviousAnchor {
                    pem: anchor.pem.clone(),
                    fingerprint: anchor.fingerprint.clone(),
                });
            }
            let reduced = bundle_of([&anchor]);
            d.write_bundle(&reduced, observed.bundle_meta.version.clone());
            // The old anchors are no longer recorded: a renewal right after this one (whose
            // next look might write no status: a failed step, a pause) keeps none of them.
            d.next.source_fingerprints =
                sources(names, std::slice::from_ref(&anchor), &anchor, &anchor);
            d.transition(
                Phase::RefreshingControlPlane,
                &format!(
                    "every proxy holds a leaf from issuer {}: reducing the trust bundle to anchor {}",
                    short(&issuer.cert.fingerprint),
                    short(&anchor.fingerprint)
                ),
            );
            d.finish(Requeue::Soon)
        }
        Phase::RemovingOldTrustRoots => {
            d.next.workload_certificate_refresh_interval = None;
            let pending = d.count_bundle(observed, &bundle_set, true);
            if pending.is_empty() {
                if !d.rollouts_finished(observed, &marker) {
                    return d.finish(Requeue::Soon);
                }
                d.transition(
                    Phase::Synced,
                    "every meshed pod holds only the current trust anchor",
                );
                d.next.blocking_message = None;
                return d.finish(Requeue::Idle);
            }
            d.restart_or_ask(
                policies,
                observed,
                &pending,
                &marker,
                RestartFor::Bundle(marker.clone()),
                "still trust the old anchor",
            );
            d.finish(Requeue::Soon)
        }
    }
}

/// What a control-plane restart does to the Deployment's proxy refresh interval: sets
/// `accelerated` (the restart onto the expanded bundle), or removes what the operator set (`None`,
/// onto the reduced bundle). An interval the user set themselves is never touched.
fn proxy_refresh(deployment: &ControlPlaneDeployment, accelerated: Option<&str>) -> ProxyRefresh {
    let Some(proxy) = &deployment.proxy else {
        return ProxyRefresh::Keep;
    };
    let ours = deployment.refresh_set_by_operator.is_some();
    match accelerated {
        Some(value) if proxy.max_refresh.is_none() || ours => ProxyRefresh::Set {
            list: proxy.list,
            value: value.to_owned(),
        },
        None if ours => ProxyRefresh::Remove { list: proxy.list },
        _ => ProxyRefresh::Keep,
    }
}

/// Out of order: the issuer already chains to an anchor this rotation brought in (the new one,
/// or one renewed over since) that not every proxy trusts (`lacking_signer`: the workload
/// pods, running or starting, without the issuer's anchor, as the look counted them). That is
/// what the pods say, in every phase up to the issuer's renewal: a renewal the operator asked
/// for just before it was stopped, its status unwritten, finds every pod trusting the anchor
/// and is in order; so does a status that says Synced over pods that all trust it, one lost
/// with the resource deleted and created again mid-rotation. Pods that lack only another
/// anchor of the bundle (one written in by someone else mid-rotation, say) are in no danger
/// from the renewed issuer. (An issuer renewed in order, after the propagation, onto an anchor
/// since renewed over again is judged the same way: every pod then trusts its anchor, unless
/// one started without it since, which would reject its leaves all the same.)
fn renewed_out_of_order(
    phase: Phase,
    anchor: &Cert,
    previous: &Cert,
    signer: Option<&str>,
    lacking_signer: &[String],
) -> bool {
    if anchor.fingerprint == previous.fingerprint
        || signer.is_none_or(|s| s == previous.fingerprint)
    {
        return false;
    }
    match phase {
        Phase::Synced
        | Phase::RefreshingControlPlane
        | Phase::PropagatingTrustRoots
        | Phase::WaitingForIdentityRotation => !lacking_signer.is_empty(),
        _ => false,
    }
}

/// Workloads whose template's baked-in anchors (`linkerd inject`) lack one of `anchors`, or do
/// not parse: the pods they start will not trust it, and no restart changes that.
fn templates_lacking(observed: &Observed, anchors: &BTreeSet<String>) -> Vec<String> {
    observed
        .baked_templates
        .iter()
        .filter(|(_, baked)| baked.as_ref().is_none_or(|b| !b.is_superset(anchors)))
        .map(|(w, _)| format!("{} {}/{}", w.kind, w.namespace, w.name))
        .collect()
}

/// Workload pods (not the control plane's) among `pods` whose proxy does not hold every anchor
/// of `bundle`.
fn workloads_lacking<'p>(
    pods: impl Iterator<Item = &'p MeshedPod>,
    bundle: &BTreeSet<String>,
) -> Vec<String> {
    pods.filter(|p| !p.control_plane && lacks(p, bundle))
        .map(|p| p.key())
        .collect()
}

/// The keys of `pods`, control plane included, whose proxy may not hold every anchor of
/// `anchors`, which must be part of the bundle in place. A control-plane proxy's anchors are
/// not in its spec (it reads the ConfigMap as it starts): it holds the bundle in place if its
/// pod was started by the restart onto it (`marker`), and is counted as lacking otherwise.
fn pods_lacking<'p>(
    pods: impl Iterator<Item = &'p MeshedPod>,
    anchors: &BTreeSet<String>,
    marker: &str,
) -> Vec<String> {
    pods.filter(|p| match (&p.anchors, p.control_plane) {
        (None, true) => p.restarted_for.as_deref() != Some(marker),
        _ => lacks(p, anchors),
    })
    .map(|p| p.key())
    .collect()
}

/// Whether `pod`'s proxy lacks part of `anchors`, or its anchors cannot be read.
fn lacks(pod: &MeshedPod, anchors: &BTreeSet<String>) -> bool {
    pod.anchors.as_ref().is_none_or(|a| !a.is_superset(anchors))
}

fn fingerprints(certs: &[Cert]) -> BTreeSet<String> {
    certs.iter().map(|c| c.fingerprint.clone()).collect()
}

fn sources(
    names: &Names,
    bundle: &[Cert],
    anchor: &Cert,
    previous: &Cert,
) -> Vec<SourceFingerprint> {
    let mut seen = BTreeSet::new();
    let mut out: Vec<SourceFingerprint> = bundle
        .iter()
        .filter(|c| seen.insert(c.fingerprint.clone()))
        .map(|c| {
            let ((ns, name), kind) = if c.fingerprint == anchor.fingerprint {
                (&names.anchor_secret, SourceKind::Secret)
            } else if c.fingerprint == previous.fingerprint {
                (&names.previous_anchor_secret, SourceKind::Secret)
            } else {
                (&names.bundle_configmap, SourceKind::ConfigMap)
            };
            SourceFingerprint {
                fingerprint: c.fingerprint.clone(),
                kind,
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
            }
        })
        .collect();
    out.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    out
}

/// A Kubernetes condition's `reason: message`, either alone if the other is missing, or
/// `neither` without both.
pub fn reason_and_message(reason: Option<&str>, message: Option<&str>, neither: &str) -> String {
    match (reason, message) {
        (Some(reason), Some(message)) => format!("{reason}: {message}"),
        (Some(text), None) | (None, Some(text)) => text.to_owned(),
        (None, None) => neither.to_owned(),
    }
}

/// What the status says while the old anchor waits for the identity controller's replicas to
/// load the issuer (the demo shows those statuses).
pub const IDENTITY_RELOAD_HOLD: &str =
    "an identity controller replica may still sign with the old one";

/// Why the identity controller's replicas are waited for (see [`IssuerReload::may_go_back`]),
/// beyond one seen on another issuer, which [`reload_wait`] names.
fn reload_reasons(reload: &IssuerReload) -> String {
    let mut reasons = String::new();
    if reload.replicas > 1 {
        reasons += &format!(
            "; the identity controller has run {} replicas since the operator's first look at the issuer",
            reload.replicas
        );
    }
    if reload.unwitnessed {
        reasons += "; the operator started after the issuer changed, so it cannot tell which replicas ran since";
    }
    reasons
}

/// What the identity controller's replicas are waited for until.
fn reload_wait(reload: &IssuerReload) -> String {
    match (&reload.on_other_issuer, &reload.unready) {
        (Some(pod), _) => format!(
            "identity controller pod {pod} still signs with another issuer, its issuer_cert_ttl_seconds says (its kubelet has not updated its Secret volume yet, or it refused the issuer: see its Deployment's IssuerUpdateSkipped events, or its clock is more than {ISSUER_EXPIRY_SLACK} s off): waiting for it to show the issuer"
        ),
        (None, Some(pod)) => format!(
            "waiting for identity controller pod {pod}, not ready (its node may be cut off), then --issuer-reload-grace"
        ),
        (None, None) => format!(
            "waiting until {} (--issuer-reload-grace after the operator's first look at the issuer, or after it saw every identity controller pod ready again), or until every replica's issuer_cert_ttl_seconds shows the issuer",
            timestamp(reload.until)
        ),
    }
}

/// Unix seconds as RFC 3339 (`2026-11-24T09:30:00Z`), for messages.
fn timestamp(unix: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{unix} (unix seconds)"))
}

fn examples(keys: &[String]) -> String {
    if keys.is_empty() {
        return String::new();
    }
    format!(" (e.g. {})", first_few(keys))
}

/// The first [`EXAMPLES`] of `items`, comma-separated, with `...` when there are more.
fn first_few(items: &[String]) -> String {
    first_n(items, EXAMPLES)
}

/// The first `n` of `items`, comma-separated, with `...` when there are more.
pub(super) fn first_n(items: &[String], n: usize) -> String {
    let mut shown: Vec<&str> = items.iter().take(n).map(String::as_str).collect();
    if items.len() > n {
        shown.push("...");
    }
    shown.join(", ")
}

/// What the decision on the issuer's renewal reads ([`Step::waiting_for_issuer`]), from every
/// way into WaitingForIdentityRotation.
#[derive(Clone, Copy)]
struct IssuerRenewal<'a> {
    policies: &'a Policies,
    anchor: &'a Cert,
    issuer: &'a Issuer,
    observed: &'a Observed,
    /// The bundle in place: pods draining without it hold the renewal back.
    bundle: &'a BTreeSet<String>,
    /// What a restart onto that bundle is marked with (how a control-plane pod is known to
    /// hold it).
    marker: &'a str,
    /// The workload pods (running or starting) without every anchor of it.
    lacking: &'a [String],
}

/// The decision being built.
struct Step<'a> {
    prev: &'a TrustAnchorRotationStatus,
    next: TrustAnchorRotationStatus,
    effects: Vec<Effect>,
    now: i64,
    names: &'a Names,
    /// Said after the blockingMessage of a look that ends while the bundle propagates or the
    /// issuer is awaited: workload templates whose baked-in anchors lack the new anchor.
    baked_note: Option<String>,
    /// The anchor the identity issuer chains to, once known: a proxy that does not trust it
    /// cannot verify the identity service, so it never gets a leaf and never becomes ready.
    issuer_anchor: Option<String>,
    /// Whether the blockingMessage leads with [`OUT_OF_ORDER_URGENT`]: an issuer renewed out of
    /// order while proxies still lack the anchor it chains to. `None` when this look did not
    /// judge it; the condition then decides.
    urgent: Option<bool>,
}

impl<'a> Step<'a> {
    fn new(prev: &'a TrustAnchorRotationStatus, now: i64, names: &'a Names) -> Self {
        Self {
            prev,
            next: prev.clone(),
            effects: Vec::new(),
            now,
            baked_note: None,
            issuer_anchor: None,
            urgent: None,
            names,
        }
    }

    /// Counts the workload pods holding the expanded `bundle`. Before the issuer is renewed
    /// onto the new anchor every one must: a pod without it (created from a manifest injected
    /// earlier, say) would reject every leaf of the renewed issuer. So while the renewal can
    /// still be held back (`can_hold`), such pods send the rotation back to propagating, `why`
    /// saying so from their keys. Whether it went back.
    fn back_to_propagation(
        &mut self,
        observed: &Observed,
        bundle: &BTreeSet<String>,
        can_hold: bool,
        why: impl FnOnce(&[String]) -> String,
    ) -> bool {
        let lacking = self.count_bundle(observed, bundle, false);
        if lacking.is_empty() || !can_hold {
            return false;
        }
        self.transition(Phase::PropagatingTrustRoots, &why(&lacking));
        true
    }

    /// Writes `bundle` into the ConfigMap over its `version`, and remembers in status that
    /// the operator wrote it.
    fn write_bundle(&mut self, bundle: &Bundle, version: Option<String>) {
        self.effects.push(Effect::WriteBundle {
            pem: bundle.to_pem(),
            fingerprint: bundle.fingerprint(),
            written_over: version,
        });
        self.next.written_bundle_fingerprint = Some(bundle.fingerprint());
    }

    /// Records a restore of the bundle someone else wrote over (who, when, the version it
    /// replaced), keeping the latest few. A look whose ConfigMap cache has not yet shown the
    /// operator's restore restores the same version again: one overwrite, recorded once.
    fn overwritten(&mut self, meta: &BundleMeta) {
        let restored_at = self.time();
        let overwrites = &mut self.next.bundle_overwrites;
        if meta.version.is_some()
            && overwrites
                .iter()
                .any(|o| o.replaced_version == meta.version)
        {
            return;
        }
        overwrites.push(BundleOverwrite {
            restored_at,
            replaced_version: meta.version.clone(),
            field_managers: meta.overwritten_by.clone(),
        });
        let excess = overwrites.len().saturating_sub(BUNDLE_OVERWRITES_KEPT);
        overwrites.drain(..excess);
    }

    /// What to say while the bundle is contested, and in how many seconds that ends if it is
    /// not overwritten again: its last two restores were less than [`CONTEST_WINDOW`] apart,
    /// and the last is less than that ago.
    fn contest(&self) -> Option<(String, i64)> {
        let window = CONTEST_WINDOW.as_secs() as i64;
        let [.., earlier, last] = self.next.bundle_overwrites.as_slice() else {
            return None;
        };
        let (earlier_at, last_at) = (
            earlier.restored_at.0.as_second(),
            last.restored_at.0.as_second(),
        );
        if last_at - earlier_at >= window || self.now - last_at >= window {
            return None;
        }
        let recent: Vec<&BundleOverwrite> = self
            .next
            .bundle_overwrites
            .iter()
            .filter(|o| self.now - o.restored_at.0.as_second() < window)
            .collect();
        let managers: BTreeSet<&str> = recent
            .iter()
            .flat_map(|o| o.field_managers.iter().map(String::as_str))
            .collect();
        let (ns, name) = &self.names.bundle_configmap;
        let message = format!(
            "ConfigMap {ns}/{name}: the trust bundle was overwritten {} times in the last {}m (field manager(s): {}); each restore restarts Linkerd's control plane. Stop the other writer from writing the bundle, or give it the operator's",
            recent.len(),
            window / 60,
            managers.into_iter().collect::<Vec<_>>().join(", ")
        );
        Some((message, last_at + window - self.now))
    }

    /// Keeps the `TrustBundleContested` condition: raised (with a warning event) while the
    /// bundle is contested, lowered once it has not been overwritten for the window; absent if
    /// it never was contested. While it is raised: in how many seconds it is due to be lowered.
    fn contested_condition(&mut self) -> Option<i64> {
        let was = self.prev_condition(CONTESTED_CONDITION);
        let was_true = was.is_some_and(|c| c.status == ConditionStatus::True);
        let contest = self.contest();
        let ends_in = contest.as_ref().map(|(_, ends_in)| *ends_in);
        let (status, reason, message) = match contest {
            Some((what, _)) => (ConditionStatus::True, "OverwrittenRepeatedly", what),
            None if was.is_some() => (
                ConditionStatus::False,
                "BundleStayedPut",
                format!(
                    "the trust bundle has not been overwritten twice within {}m",
                    CONTEST_WINDOW.as_secs() / 60
                ),
            ),
            None => return None,
        };
        if status == ConditionStatus::True && !was_true {
            self.event(true, "TrustBundleContested", &message);
        }
        self.set_condition(CONTESTED_CONDITION, status, reason, &message);
        ends_in
    }

    /// Condition `type_` as the look began.
    fn prev_condition(&self, type_: &str) -> Option<&'a Condition> {
        self.prev.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Puts condition `type_` in the status being built, in place of the one before, keeping
    /// its lastTransitionTime unless the status changes.
    fn set_condition(&mut self, type_: &str, status: ConditionStatus, reason: &str, message: &str) {
        let was = self.prev_condition(type_);
        let last_transition_time = match was {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => self.time(),
        };
        self.next.conditions.retain(|c| c.type_ != type_);
        self.next.conditions.push(Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time,
        });
    }

    fn time(&self) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(self.now).unwrap_or_default())
    }

    /// A Warning event, unless the blockingMessage as the look began already said `said`
    /// (an urgent prefix may lead it): one event when a problem appears, not one per look.
    fn warn_once(&mut self, said: &str, reason: &str, message: &str) {
        let already = (self.prev.blocking_message.as_deref()).is_some_and(|m| m.contains(said));
        if !already {
            self.event(true, reason, message);
        }
    }

    fn event(&mut self, warning: bool, reason: &str, message: &str) {
        self.effects.push(Effect::Event {
            warning,
            reason: reason.to_owned(),
            message: message.to_owned(),
        });
    }

    fn transition(&mut self, to: Phase, why: &str) {
        let from = self.prev.phase;
        self.next.phase = to;
        self.next.last_phase_transition_time = Some(self.time());
        self.next.blocking_message = None;
        self.event(false, to.as_str(), &format!("{from} -> {to}: {why}"));
    }

    /// On to RefreshingControlPlane, `why`, to restart the control plane onto the bundle of
    /// fingerprint `bundle_fp`.
    fn refresh_control_plane(mut self, why: &str, bundle_fp: &str) -> Decision {
        self.transition(Phase::RefreshingControlPlane, why);
        self.next.blocking_message = Some(format!(
            "restarting the control plane onto trust bundle {}",
            short(bundle_fp)
        ));
        self.finish(Requeue::Soon)
    }

    fn park(mut self, problem: &str) -> Decision {
        let message = format!("parked: {problem}; nothing is written until this is fixed");
        self.warn_once(&message, "RotationParked", &message);
        self.next.blocking_message = Some(message);
        // Parking writes nothing but status.
        self.effects.retain(|e| matches!(e, Effect::Event { .. }));
        self.finish(Requeue::Idle)
    }

    /// Raises or keeps `OutOfOrderIssuerRotation`: `detected` says the issuer was renewed out
    /// of order, `lacking_signer` names the pods that may lack the anchor it chains to.
    fn out_of_order(&mut self, detected: bool, lacking_signer: &[String]) {
        let was = self.prev_condition(OUT_OF_ORDER_CONDITION);
        let was_true = was.is_some_and(|c| c.status == ConditionStatus::True);
        // Once raised it stays for the rest of the rotation, to record that it ran out of order;
        // `finish` lowers it on the look that enters Synced. It is urgent only while proxies
        // lack the issuer's anchor: once they all hold it, there is nothing left to hurry.
        let now_true = detected || (was_true && self.prev.phase != Phase::Synced);
        let endangered = now_true && !lacking_signer.is_empty();
        self.urgent = Some(endangered);
        let (status, reason, message) = if endangered {
            (
                ConditionStatus::True,
                "IssuerRenewedBeforeBundleConverged",
                "the identity issuer was renewed onto the new anchor before every proxy held it: proxies still on the old bundle reject new leaves; finish propagating the bundle now",
            )
        } else if now_true {
            (
                ConditionStatus::True,
                "IssuerRenewedBeforeBundleConverged",
                "the identity issuer was renewed onto the new anchor before every proxy held it; every proxy holds it now (kept until Synced, as a record)",
            )
        } else {
            (ConditionStatus::False, IN_ORDER_REASON, IN_ORDER_MESSAGE)
        };
        if detected && !was_true {
            self.event(true, "OutOfOrderIssuerRotation", message);
        }
        self.set_condition(OUT_OF_ORDER_CONDITION, status, reason, message);
    }

    /// Counts workload pods holding the bundle (a superset while expanding, exactly it when
    /// reducing) into status; returns the keys of those that do not.
    fn count_bundle(
        &mut self,
        observed: &Observed,
        bundle: &BTreeSet<String>,
        exact: bool,
    ) -> Vec<String> {
        let workloads: Vec<&MeshedPod> = observed
            .bundle_holders()
            .filter(|p| !p.control_plane)
            .collect();
        let pending: Vec<String> = if exact {
            workloads
                .iter()
                .filter(|p| p.anchors.as_ref() != Some(bundle))
                .map(|p| p.key())
                .collect()
        } else {
            workloads_lacking(workloads.iter().copied(), bundle)
        };
        self.next.trust_bundle = Some(ConvergenceStatus::new(
            (workloads.len() - pending.len()) as u32,
            workloads.len() as u32,
        ));
        pending
    }

    /// No restart onto the current bundle (the one of its restart `marker`, whichever write
    /// of it; one from an earlier bundle that never finished is not this rotation's to wait
    /// for) is still rolling: a pod being replaced is in no count, so advancing now would
    /// leave it out of the status. Otherwise says so.
    fn rollouts_finished(&mut self, observed: &Observed, marker: &str) -> bool {
        let names: Vec<String> = observed
            .rolling_onto(marker_fingerprint(marker))
            .map(|w| observed.rollout_named(w))
            .collect();
        if names.is_empty() {
            return true;
        }
        self.next.blocking_message = Some(format!(
            "every running meshed pod holds the bundle; waiting for {} rollout(s) to finish{}",
            names.len(),
            examples(&names)
        ));
        false
    }

    /// Restarts (Automatic) or names (Manual) the workloads of the `pending` pods, which `what`
    /// describes, for `restart_for`; `marker` is the current bundle's restart marker.
    fn restart_or_ask(
        &mut self,
        policies: &Policies,
        observed: &Observed,
        pending: &[String],
        marker: &str,
        restart_for: RestartFor,
        what: &str,
    ) {
        // A set: with thousands of pods, a list's `contains` per pod would cost millions of
        // comparisons a look.
        let pending_keys: BTreeSet<&str> = pending.iter().map(String::as_str).collect();
        let pending_pods: Vec<&MeshedPod> = observed
            .bundle_holders()
            .filter(|p| pending_keys.contains(p.key().as_str()))
            .collect();
        let mut workloads = BTreeSet::new();
        let mut unfixable = Vec::new();
        for p in &pending_pods {
            match &p.owner {
                Ok(w) => {
                    workloads.insert(w.clone());
                }
                Err(why) => unfixable.push(format!(
                    "{} ({})",
                    p.key(),
                    match why {
                        Unfixable::BarePod => "no owning workload: delete it".to_owned(),
                        Unfixable::ManuallyInjected =>
                            "injected by linkerd inject --manual: inject its workload again without --manual".to_owned(),
                        Unfixable::Owner(o) => format!("owned by {o}: restart it by hand"),
                        Unfixable::OnDelete(w) => format!(
                            "{w} has updateStrategy OnDelete: delete its pods to restart them"
                        ),
                        Unfixable::Partitioned { workload: w, partition } => format!(
                            "below StatefulSet {}/{}'s rollingUpdate.partition {partition}: lower the partition or delete the pod",
                            w.namespace, w.name
                        ),
                        Unfixable::Paused(w) => format!(
                            "Deployment {0}/{1} is paused: kubectl rollout resume deployment/{1} -n {0}",
                            w.namespace, w.name
                        ),
                    }
                )),
            }
        }
        let mut message = format!("{} of {} meshed pods {what}", pending.len(), {
            observed
                .bundle_holders()
                .filter(|p| !p.control_plane)
                .count()
        });
        message.push_str(&examples(pending));
        let not_started = observed
            .starting
            .iter()
            .filter(|p| pending_keys.contains(p.key().as_str()))
            .count();
        if not_started > 0 {
            message.push_str(&format!(
                "; {not_started} of them Pending: their proxy would start without it"
            ));
        }
        match policies.restart {
            RestartPolicy::Automatic => {
                // A workload with a pod that is not ready is not restarted (a rollout would take
                // down another), unless that pod lacks the anchor the issuer chains to: it can
                // never get a leaf, so never become ready, and the restart is its only cure.
                let unready_for_trust = |p: &MeshedPod| {
                    (self.issuer_anchor.as_ref())
                        .zip(p.anchors.as_ref())
                        .is_some_and(|(anchor, held)| !held.contains(anchor))
                };
                let not_ready: BTreeSet<&Workload> = observed
                    .pods
                    .iter()
                    .filter(|p| !p.ready && !unready_for_trust(p))
                    .filter_map(|p| p.owner.as_ref().ok())
                    .collect();
                // Rollouts the operator started onto this bundle, or for this step, still
                // running. (A restart for the issuer in place is counted only while leaves are
                // awaited: one left from an earlier rotation, whose issuer stays in place until
                // this one renews it, is not this rotation's.)
                let in_progress: BTreeSet<&Workload> = observed
                    .rolling_onto(marker_fingerprint(marker))
                    .chain(observed.rolling(&restart_for))
                    .collect();
                // Restarted for this already, rollout done, and still not converged: asking
                // again would change nothing, so they are named instead.
                let (done, candidates): (Vec<&Workload>, Vec<&Workload>) = workloads
                    .iter()
                    .filter(|w| !in_progress.contains(w))
                    .partition(|w| {
                        observed
                            .restart_markers
                            .get(*w)
                            .is_some_and(|m| m.has(&restart_for))
                    });
                // Rollouts the operator started for something else (an earlier step of this
                // rotation, before a second renewal grew the bundle, say) that still replace
                // pods take slots too. (Not a workload restarted in an earlier rotation that
                // merely has an unavailable replica now.) One of their workloads picked for
                // this step takes no second slot: its new restart replaces the rollout it has.
                let earlier: BTreeSet<&Workload> = observed
                    .replacing_for_anything()
                    .filter(|w| !in_progress.contains(w))
                    .collect();
                let busy = in_progress.len() + earlier.len();
                let room = policies.max_concurrent_workloads.saturating_sub(busy);
                // A workload with a pod that is not ready is not restarted: a rollout would
                // take down a ready pod first. It is named, so a stall has a cause to read.
                let (held, ready): (Vec<&Workload>, Vec<&Workload>) =
                    candidates.iter().partition(|w| not_ready.contains(*w));
                // A refused restart started no rollout: it takes no slot from the others, and
                // is tried again in the slots they leave (one that goes through then starts a
                // rollout, like any other). All of them are in the step, so that its refusals
                // are reported on every look, sent or not.
                let (refused, fresh): (Vec<&Workload>, Vec<&Workload>) = ready
                    .iter()
                    .partition(|w| observed.refused_restarts.get(**w) == Some(&restart_for));
                // In order: those restarted in the slot of their earlier rollout, and the others
                // while slots are free; refused ones are retried in what is left.
                let (mut next, mut retry_room) = (Vec::new(), room);
                for w in &fresh {
                    if earlier.contains(*w) {
                        next.push((*w).clone());
                    } else if retry_room > 0 {
                        retry_room -= 1;
                        next.push((*w).clone());
                    }
                }
                let retry: Vec<Workload> = refused.iter().map(|w| (*w).clone()).collect();
                // Waiting: not restarted now, and not rolling out already.
                let waiting = (candidates.iter())
                    .filter(|w| !earlier.contains(*w))
                    .filter(|w| !next.contains(**w) && !retry.contains(**w))
                    .count();
                message.push_str(&format!(
                    "; restarting {} workload(s) at a time ({busy} in progress, {waiting} waiting)",
                    policies.max_concurrent_workloads,
                ));
                // Rollouts that take the slots are named, so a slow one has a name to look up;
                // one its workload says will not finish is named with why.
                let (mut rolling, mut stalled) = (Vec::new(), Vec::new());
                for w in in_progress.iter().chain(&earlier) {
                    match observed.stalled(w) {
                        Some(why) => stalled.push(format!("{w} ({why})")),
                        None => rolling.push(observed.rollout_named(w)),
                    }
                }
                if !rolling.is_empty() {
                    message.push_str(&format!("; rolling out: {}", first_few(&rolling)));
                }
                if !stalled.is_empty() {
                    message.push_str(&format!(
                        "; rollouts that will not finish by themselves, look at their new pods: {}",
                        first_few(&stalled)
                    ));
                }
                if !held.is_empty() {
                    let list: Vec<String> = held.iter().map(|w| w.to_string()).collect();
                    message.push_str(&format!(
                        "; held back until their pods are ready: {}",
                        first_few(&list)
                    ));
                }
                if !done.is_empty() {
                    let list: Vec<String> = done.iter().map(|w| w.to_string()).collect();
                    message.push_str(&format!(
                        "; restarted already and still not converged, look at their pods: {}",
                        list.join(", ")
                    ));
                }
                if !next.is_empty() || !retry.is_empty() {
                    let list: Vec<String> =
                        next.iter().chain(&retry).map(|w| w.to_string()).collect();
                    self.event(
                        false,
                        "RestartingWorkloads",
                        &format!("restarting {}", list.join(", ")),
                    );
                    self.effects.push(Effect::RestartWorkloads {
                        workloads: next,
                        restart_for,
                        retry,
                        retry_room,
                    });
                }
            }
            RestartPolicy::Manual => {
                let list: Vec<String> = workloads
                    .iter()
                    .take(MANUAL_COMMANDS)
                    .map(|w| {
                        format!(
                            "kubectl rollout restart {} -n {}",
                            w.kind.to_lowercase() + "/" + &w.name,
                            w.namespace
                        )
                    })
                    .collect();
                if !list.is_empty() {
                    message.push_str(&format!(
                        "; restart their {} workload(s): {}{}",
                        workloads.len(),
                        list.join("; "),
                        match workloads.len().saturating_sub(MANUAL_COMMANDS) {
                            0 => String::new(),
                            more => format!("; ... ({more} more)"),
                        }
                    ));
                }
            }
        }
        if !unfixable.is_empty() {
            message.push_str(&format!(
                "; a restart cannot fix {}: {}",
                unfixable.len(),
                first_few(&unfixable)
            ));
            self.warn_once(
                "a restart cannot fix",
                "UnfixableWorkloads",
                &format!("a restart cannot fix: {}", unfixable.join(", ")),
            );
        }
        self.next.blocking_message = Some(message);
    }

    /// In WaitingForIdentityRotation, whether entered on this look or before: on to
    /// RenewingWorkloadCerts once the issuer chains to the current anchor, else the renewal,
    /// asked for or made, unless pods lacking `bundle` still drain.
    fn waiting_for_issuer(mut self, renewal: &IssuerRenewal) -> Decision {
        let IssuerRenewal {
            policies,
            anchor,
            issuer,
            observed,
            bundle,
            marker,
            lacking,
        } = *renewal;
        if issuer.signed_by.as_deref() == Some(anchor.fingerprint.as_str()) {
            self.transition(
                Phase::RenewingWorkloadCerts,
                &format!(
                    "the identity issuer {} chains to the current anchor: waiting for every proxy to refresh its leaf",
                    short(&issuer.cert.fingerprint)
                ),
            );
            return self.finish(Requeue::Soon);
        }
        // Pods still draining with the old bundle alone (those a restart just replaced, the
        // control plane's included) would reject the renewed issuer's leaves for as long as
        // they drain: the renewal waits for them, unless it is already under way.
        let draining = pods_lacking(observed.draining.iter(), bundle, marker);
        if !draining.is_empty() && !issuer.issuing {
            self.next.blocking_message = Some(format!(
                "the trust bundle has converged on every running meshed pod; waiting for {} terminating pod(s) without it to stop before the identity issuer is renewed{}",
                draining.len(),
                examples(&draining)
            ));
            return self.finish(Requeue::Soon);
        }
        let (ns, name) = &self.names.issuer_certificate;
        // cert-manager's word on its last attempt, while it stands: a warning the first time
        // it is seen, and in the message until an issuance succeeds. The failure is known by
        // its time and attempt: once a new attempt is under way (`Issuing=True` again), the
        // condition that gave its reason is gone, and the same failure is not announced again.
        let (failed_at, failed) = issuer
            .failure
            .as_ref()
            .map(|f| {
                let attempt = f
                    .attempts
                    .map(|n| format!(" (attempt {n})"))
                    .unwrap_or_default();
                let at = format!(
                    "cert-manager failed to re-issue Certificate {ns}/{name} at {}{attempt}",
                    timestamp(f.at)
                );
                let said = if issuer.issuing && f.reason.is_none() && f.message.is_none() {
                    at.clone()
                } else {
                    let why = reason_and_message(
                        f.reason.as_deref(),
                        f.message.as_deref(),
                        "no reason recorded on the Certificate",
                    );
                    format!("{at}: {why}")
                };
                (Some(at), Some(said))
            })
            .unwrap_or_default();
        if let (Some(at), Some(failed)) = (&failed_at, &failed) {
            self.warn_once(at, "IssuerRenewalFailed", failed);
        }
        let cmctl = format!("cmctl renew -n {ns} {name}");
        let mut message = if issuer.issuing {
            // Under either policy: asked for (by the operator, a person or cert-manager's own
            // retry), not done yet.
            let mut waiting = format!(
                "renewing the identity issuer: waiting for cert-manager to re-issue Certificate {ns}/{name} (Issuing=True) from the new anchor"
            );
            if let Some(failed) = &failed {
                waiting.push_str(&format!("; its previous attempt: {failed}"));
            }
            waiting
        } else {
            match (policies.issuer_renewal, &issuer.failure) {
                (RenewalPolicy::Automatic, Some(f)) if self.now < f.retry_at() => format!(
                    "{}; the operator asks again at {}; to ask sooner, fix what cert-manager names and run: {cmctl}",
                    failed.unwrap_or_default(),
                    timestamp(f.retry_at())
                ),
                (RenewalPolicy::Automatic, _) => {
                    self.effects.push(Effect::RenewIssuer);
                    let again = failed
                        .as_ref()
                        .map(|_| " again, its last attempt having failed")
                        .unwrap_or_default();
                    self.event(
                        false,
                        "RenewingIssuer",
                        &format!(
                            "set Issuing=True on Certificate {ns}/{name}{again} (as cmctl renew does)"
                        ),
                    );
                    let mut waiting = format!(
                        "renewing the identity issuer: waiting for cert-manager to re-issue Certificate {ns}/{name} from the new anchor"
                    );
                    if let Some(failed) = &failed {
                        waiting.push_str(&format!("; its previous attempt: {failed}"));
                    }
                    waiting
                }
                (RenewalPolicy::Manual, _) => {
                    let mut ask = format!(
                        "the trust bundle has converged on every meshed pod; renew the identity issuer now: {cmctl}"
                    );
                    if let Some(failed) = &failed {
                        ask.push_str(&format!("; {failed}"));
                    }
                    ask
                }
            }
        };
        // Pods that started without the expanded bundle while the renewal was already under way
        // (it could no longer be held back for them) reject the renewed issuer's leaves: they
        // are restarted once it is in place, and named until then.
        if issuer.issuing && !lacking.is_empty() {
            message.push_str(&format!(
                "; {} meshed pod(s) started without the expanded trust bundle and will reject the renewed issuer's leaves until their workloads are restarted, which follows the renewal{}",
                lacking.len(),
                examples(lacking)
            ));
        }
        self.next.blocking_message = Some(message);
        self.finish(Requeue::Soon)
    }

    fn finish(mut self, mut requeue: Requeue) -> Decision {
        if let (Some(note), Phase::PropagatingTrustRoots | Phase::WaitingForIdentityRotation) =
            (self.baked_note.take(), self.next.phase)
        {
            self.next.blocking_message = Some(match self.next.blocking_message.take() {
                Some(m) => format!("{m}; {note}"),
                None => note,
            });
        }
        if let (Some(ends_in), Requeue::Idle) = (self.contested_condition(), requeue) {
            // No watch event marks the end of a contest: look then, to lower the condition.
            requeue = Requeue::Within(std::time::Duration::from_secs(ends_in.max(1) as u64));
        }
        // Back in Synced the damage is over: every proxy holds the new anchor alone. Only on
        // entering it: a look that stays in Synced (paused there, or parked) has not seen a
        // rotation end, and one that evaluates the condition there lowers it itself.
        if self.next.phase == Phase::Synced && self.prev.phase != Phase::Synced {
            let now = self.time();
            if let Some(c) =
                self.next.conditions.iter_mut().find(|c| {
                    c.type_ == OUT_OF_ORDER_CONDITION && c.status == ConditionStatus::True
                })
            {
                c.status = ConditionStatus::False;
                c.reason = IN_ORDER_REASON.to_owned();
                c.message = IN_ORDER_MESSAGE.to_owned();
                c.last_transition_time = now;
            }
        }
        // While an issuer out of order endangers proxies, that is the first thing a reader must
        // see.
        // (A look that did not judge it, a parked one say, keeps what the last look said.)
        let urgent = self.urgent.unwrap_or_else(|| {
            (self.prev.blocking_message.as_deref())
                .is_some_and(|m| m.starts_with(OUT_OF_ORDER_URGENT))
        });
        if urgent {
            self.next.blocking_message = Some(match self.next.blocking_message.take() {
                Some(m) => format!("{OUT_OF_ORDER_URGENT}; {m}"),
                None => OUT_OF_ORDER_URGENT.to_owned(),
            });
        }
        Decision {
            status: self.next,
            effects: self.effects,
            requeue,
        }
    }
}

/// What to do about workload templates with baked-in anchors (`linkerd inject --manual`).
const REINJECT: &str = "inject them again without --manual, so that the proxy injector gives their pods the bundle (`linkerd inject --manual` bakes the anchors of Linkerd's values in the linkerd-config ConfigMap, which a rotation does not change)";

/// The fingerprint of a PEM certificate's DER, for callers that hold only PEM.
pub fn pem_fingerprint(pem_text: &str) -> Option<String> {
    let block = pem::parse(pem_text).ok()?;
    Some(sha256_hex(block.contents()))
}
