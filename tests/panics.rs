//! Panics are counted and logged through tracing (its own test binary: the panic hook and the
//! global subscriber are the process's).

use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A panic in a task tokio keeps to itself (as a webhook connection's) is counted and logged
/// as a JSON line with the task's span; installing the report twice counts it once.
#[tokio::test]
async fn a_panic_in_a_task_is_counted_and_logged_as_json() {
    let logs = Buffer::default();
    let out = logs.clone();
    tracing_subscriber::fmt()
        .json()
        .with_writer(move || out.clone())
        .init();
    let panics = trust_rotation_operator::logging::report_panics();
    trust_rotation_operator::logging::report_panics();
    let task = tokio::spawn(async {
        let span = tracing::info_span!("admission", uid = "u-1");
        let _entered = span.enter();
        panic!("a bug in a handler");
    });
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(panics.get(), 1);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("a bug in a handler"))
        .unwrap_or_else(|| panic!("no log line: {text}"));
    let json: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(json["level"], "ERROR", "{line}");
    assert_eq!(json["fields"]["message"], "panicked", "{line}");
    assert!(
        json["fields"]["panic"]
            .as_str()
            .unwrap()
            .contains("tests/panics.rs"),
        "the place it panicked: {line}"
    );
    assert_eq!(json["span"]["uid"], "u-1", "{line}");
}
