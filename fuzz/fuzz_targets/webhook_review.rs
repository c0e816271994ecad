//! Decode + patch + apply: any bytes as an AdmissionReview body, under any rotation view.
//!
//! The first byte picks the view and the namespace's `linkerd.io/inject`; the rest is the body.
//! For every input: the fast path (`scan`) reads the body as serde_json does or steps aside;
//! `review` returns (never panics) and its answer serialises; the uid is
//! echoed; and when there is a patch, it applies to the request's object, the result is a Pod,
//! and reviewing the result again yields no patch.

#![no_main]

use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use trust_rotation_operator::crd::Phase;
use trust_rotation_operator::webhook::admission::{PodIn, ReviewIn, from_json};
use trust_rotation_operator::webhook::patch::RotationView;
use trust_rotation_operator::webhook::review::{Outcome, review};
use trust_rotation_operator::webhook::scan;

const INTERVALS: [Option<&str>; 4] = [Some("5m"), Some("0s"), Some("abc"), None];
const INJECT: [Option<&str>; 3] = [None, Some("enabled"), Some("disabled")];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let selector = usize::from(selector);
    let view = RotationView::new(
        Phase::ALL[selector % Phase::ALL.len()],
        (selector & 0x80 == 0).then(|| "d0".repeat(32)),
        INTERVALS[(selector / 7) % 4].map(str::to_owned),
    );
    let inject = INJECT[(selector / 28) % 3];
    let namespace = |_: &str| inject.map(str::to_owned);

    // The fast path answers only as serde_json would.
    if let Some(fast) = std::str::from_utf8(body).ok().and_then(scan::review_in) {
        let slow =
            from_json::<ReviewIn<PodIn>>(body).expect("serde_json reads what the fast path read");
        assert_eq!(fast, slow);
    }

    let first = review(body, Some(&view), &namespace);
    let answer = serde_json::to_value(&first.review).expect("the answer serialises");
    // The server's own encoder writes exactly what serde_json would (uids and messages carry
    // arbitrary strings from the body).
    assert_eq!(
        first.review.to_json(),
        serde_json::to_vec(&first.review).unwrap(),
        "to_json agrees with serde_json"
    );
    assert_eq!(answer["response"]["uid"], first.uid.as_str());
    assert_eq!(answer["response"]["allowed"], true, "never denies");
    let Some(patch) = first.review.decoded_patch() else {
        assert!(answer["response"]["patch"].is_null());
        return;
    };
    assert_eq!(first.outcome, Outcome::Patched);
    // The patch's own encoder writes what serde_json writes for the same operations.
    assert_eq!(
        first.review.patch_text().unwrap(),
        serde_json::to_vec(&patch).unwrap()
    );

    // The patch applies to the object the request carried, and the result is a Pod.
    // Skipped fields are scanned, not decoded, so a lone surrogate escape (`"\ud800"`) in one
    // passes the webhook but not serde_json's Value; such a body cannot be replayed here.
    let Ok(mut request) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let mut object = request["request"]["object"].take();
    json_patch::patch(&mut object, &patch).expect("the patch applies");
    if let Err(e) = serde_json::from_value::<Pod>(object.clone()) {
        // Only a body that was no valid Pod to begin with may fail here.
        let before = serde_json::from_value::<Pod>(
            serde_json::from_slice::<Value>(body).unwrap()["request"]["object"].clone(),
        );
        assert!(before.is_err(), "a valid Pod became invalid: {e}");
    }

    // Idempotent: our own output, reviewed again, needs nothing more.
    request["request"]["object"] = object;
    let again = review(
        &serde_json::to_vec(&request).unwrap(),
        Some(&view),
        &namespace,
    );
    assert!(
        again.review.response.patch.is_none(),
        "second patch {:?} after {:?}",
        again.review.decoded_patch(),
        patch
    );
});
