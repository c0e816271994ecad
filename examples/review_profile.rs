//! A fixed loop over one stage of the webhook's work, for instruction counts that do not depend
//! on machine noise:
//!
//! ```text
//! cargo build --release --example review_profile
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/review_profile pod-inject-enabled 1001 scan
//! ```
//!
//! Arguments: a fixture of `tests/fixtures/admission` (default `pod-inject-enabled`), the number
//! of iterations (default 1000), and the stage: `serde` (serde_json's decode), `scan` (the fast
//! path's), `utf8`, `mutate` (the patch builder), `span` (the request's tracing span under the
//! operator's log setup) or `full` (decode, patch and encode, the default). Run it with 1 and with 1001 iterations: the difference over 1000 is one call's
//! count.

use trust_rotation_operator::crd::Phase;
use trust_rotation_operator::webhook::admission::{PodIn, ReviewIn, from_json};
use trust_rotation_operator::webhook::patch::{RotationView, mutate_pod};
use trust_rotation_operator::webhook::review::review;
fn main() {
    let name = std::env::args()
        .nth(1)
        .unwrap_or("pod-inject-enabled".into());
    let n: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1000);
    let mode = std::env::args().nth(3).unwrap_or("full".into());
    let path = format!(
        "{}/tests/fixtures/admission/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let body = serde_json::to_vec(&v).unwrap();
    let text = std::str::from_utf8(&body).unwrap();
    let view = RotationView::new(
        Phase::PropagatingTrustRoots,
        Some("d0".repeat(32)),
        Some("5m".into()),
    );
    if mode == "span" {
        // The operator's log setup (`RUST_LOG`, default `info`), writing to stderr.
        trust_rotation_operator::cli::init_logging(trust_rotation_operator::cli::LogFormat::Plain);
    }
    let parsed = trust_rotation_operator::webhook::scan::review_in(text).unwrap();
    let pod = parsed.request.unwrap().object.unwrap();
    for _ in 0..n {
        match mode.as_str() {
            "serde" => {
                std::hint::black_box(
                    from_json::<ReviewIn<PodIn>>(std::hint::black_box(&body)).unwrap(),
                );
            }
            "scan" => {
                std::hint::black_box(
                    trust_rotation_operator::webhook::scan::review_in(std::hint::black_box(text))
                        .unwrap(),
                );
            }
            "utf8" => {
                std::hint::black_box(std::str::from_utf8(std::hint::black_box(&body)).unwrap());
            }
            "mutate" => {
                std::hint::black_box(mutate_pod(std::hint::black_box(&pod), None, &view));
            }
            "span" => {
                // The server's request span, as `server::mutate` creates it.
                let span = tracing::info_span!(
                    "admission",
                    uid = std::hint::black_box("705ab4f5-6393-11e8-b7cc-42010a800002"),
                    namespace = std::hint::black_box("emojivoto"),
                    name = std::hint::black_box("")
                );
                span.in_scope(|| tracing::debug!("admitted"));
            }
            _ => {
                let r = review(std::hint::black_box(&body), Some(&view), &|_| None);
                std::hint::black_box(r.review.to_json());
            }
        }
    }
}
