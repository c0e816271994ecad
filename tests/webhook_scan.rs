//! The webhook's fast path ([`scan::review_in`]) against serde_json, its reference: wherever the
//! fast path gives an answer, serde_json reads the same body to the same value; and on the
//! bodies the API server sends, it does give one.

use proptest::prelude::*;
use trust_rotation_operator::webhook::admission::{PodIn, ReviewIn, from_json};
use trust_rotation_operator::webhook::scan;

fn fixtures() -> Vec<(String, String)> {
    let dir = format!("{}/tests/fixtures/admission", env!("CARGO_MANIFEST_DIR"));
    let mut all: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect();
    all.sort();
    assert!(all.len() >= 10, "fixtures found in {dir}");
    all
}

/// The fast path's answer; when there is one, it must be serde_json's.
fn checked(text: &str) -> Result<bool, TestCaseError> {
    let Some(fast) = scan::review_in(text) else {
        return Ok(false);
    };
    match from_json::<ReviewIn<PodIn>>(text.as_bytes()) {
        Ok(slow) => prop_assert_eq!(fast, slow, "{}", text),
        Err(e) => prop_assert!(
            false,
            "fast path read what serde_json refuses ({}): {}",
            e,
            text
        ),
    }
    Ok(true)
}

#[test]
fn every_fixture_is_read_by_the_fast_path_as_serde_json_reads_it() {
    for (name, text) in fixtures() {
        // As recorded (indented) and as the API server sends it (compact).
        let compact =
            serde_json::to_string(&serde_json::from_str::<serde_json::Value>(&text).unwrap())
                .unwrap();
        for body in [&text, &compact] {
            assert!(
                checked(body).unwrap(),
                "{name}: the fast path stepped aside"
            );
        }
    }
}

/// Bytes that change what a body means: structure, string syntax, escapes, literals, numbers.
fn edit_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        proptest::sample::select(b"{}[]:,\"\\ \n0123456789-+.eEtrufalsn/u".to_vec()),
        any::<u8>(),
    ]
}

#[derive(Clone, Debug)]
enum Edit {
    Insert(usize, u8),
    Delete(usize),
    Replace(usize, u8),
    /// A run copied from elsewhere in the body, which can duplicate a field.
    Splice(usize, usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), edit_byte()).prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), edit_byte()).prop_map(|(at, b)| Edit::Replace(at, b)),
        (any::<usize>(), any::<usize>(), 1usize..80)
            .prop_map(|(at, from, len)| Edit::Splice(at, from, len)),
    ]
}

fn apply(body: &mut Vec<u8>, edit: &Edit) {
    let len = body.len().max(1);
    match *edit {
        Edit::Insert(at, b) => body.insert(at % (body.len() + 1), b),
        Edit::Delete(at) if !body.is_empty() => {
            body.remove(at % len);
        }
        Edit::Replace(at, b) if !body.is_empty() => body[at % len] = b,
        Edit::Splice(at, from, n) => {
            let from = from % len;
            let run: Vec<u8> = body[from..(from + n).min(body.len())].to_vec();
            let at = at % (body.len() + 1);
            body.splice(at..at, run);
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// A few edits to a real body: whatever the fast path still reads, serde_json reads the same.
    #[test]
    fn edited_bodies_are_read_as_serde_json_reads_them_or_left_to_it(
        which in any::<usize>(),
        compact in any::<bool>(),
        edits in proptest::collection::vec(edit(), 1..4),
    ) {
        let body = edited_body(&fixtures(), which, compact, &edits);
        // Only text reaches the fast path (the server checks UTF-8 first).
        if let Ok(text) = std::str::from_utf8(&body) {
            checked(text)?;
        }
    }
}

/// The fixture `which` picks, compact or as written, with `edits` applied.
fn edited_body(all: &[(String, String)], which: usize, compact: bool, edits: &[Edit]) -> Vec<u8> {
    let (_, text) = &all[which % all.len()];
    let mut body = if compact {
        serde_json::to_vec(&serde_json::from_str::<serde_json::Value>(text).unwrap()).unwrap()
    } else {
        text.clone().into_bytes()
    };
    for e in edits {
        apply(&mut body, e);
    }
    body
}

#[test]
fn the_edit_property_sees_both_outcomes() {
    // The property above would pass vacuously if every edit made the fast path step aside, if
    // no edit ever did, or if most edits left no text: over the same strategy, run the same way,
    // each outcome is common.
    use proptest::strategy::{Strategy, ValueTree};
    let all = fixtures();
    let strategy = (
        any::<usize>(),
        any::<bool>(),
        proptest::collection::vec(edit(), 1..4),
    );
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut read, mut aside, mut not_text) = (0, 0, 0);
    let cases = 4000;
    for _ in 0..cases {
        let (which, compact, edits) = strategy.new_tree(&mut runner).unwrap().current();
        let body = edited_body(&all, which, compact, &edits);
        match std::str::from_utf8(&body) {
            Ok(text) if checked(text).unwrap() => read += 1,
            Ok(_) => aside += 1,
            Err(_) => not_text += 1,
        }
    }
    eprintln!("read {read}, stepped aside {aside}, not UTF-8 {not_text} of {cases}");
    assert!(
        read >= cases / 10 && aside >= cases / 10,
        "read {read}, stepped aside {aside}, not UTF-8 {not_text} of {cases}"
    );
}
