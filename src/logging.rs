//! The plain log format's field formatter: tracing-subscriber's own, with one shortcut.
//!
//! The fmt layer formats a span's fields when the span is created, whether or not anything is
//! logged inside it. The webhook opens a span per admission (uid, namespace, name), so that
//! formatting runs tens of thousands of times a second. tracing-subscriber's `DefaultVisitor`
//! writes each string field through `format_args!`, its colour wrappers (painting nothing when
//! colour is off) and `str`'s `Debug`, which walks the text a character at a time: some 1,500
//! instructions per field. [`PlainFields`] writes a string that `Debug` would print unchanged
//! between quotes (printable ASCII without `"` or `\`) as `name="value"` itself, and hands
//! every other field, and every field when colour is on, to `DefaultVisitor`. The output is the
//! same, byte for byte; the tests below check it against `DefaultFields`.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// `DefaultFields`, with plain strings written whole (see the module's documentation).
#[derive(Debug, Default)]
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        if writer.has_ansi_escapes() {
            // Colour, for a person at a terminal: tracing-subscriber's own, unchanged.
            let mut visitor = DefaultVisitor::new(writer, true);
            fields.record(&mut visitor);
            return visitor.finish();
        }
        let mut visitor = PlainVisitor {
            writer,
            pending: String::new(),
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.flush();
        visitor.result
    }
}

/// Writes `name="value"` for a plain string itself; every other field goes to a
/// `DefaultVisitor` over the same writer, told whether a field has been written before it.
struct PlainVisitor<'a> {
    writer: Writer<'a>,
    /// Plain fields not yet written: the writer's `String` is given them in one piece, so it
    /// grows once rather than with every piece.
    pending: String,
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    fn flush(&mut self) {
        if self.result.is_ok() && !self.pending.is_empty() {
            self.result = self.writer.write_str(&self.pending);
            self.pending.clear();
        }
    }

    fn delegate(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        self.flush();
        if self.result.is_err() {
            return;
        }
        let mut counting = Counting {
            writer: &mut self.writer,
            wrote: false,
        };
        let mut visitor = DefaultVisitor::new(Writer::new(&mut counting), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        // It writes nothing for the fields it leaves out (`log.` metadata).
        self.is_empty &= !counting.wrote;
    }
}

/// A writer that notes whether anything was written through it.
struct Counting<'w, 'a> {
    writer: &'w mut Writer<'a>,
    wrote: bool,
}

impl fmt::Write for Counting<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.wrote |= !s.is_empty();
        self.writer.write_str(s)
    }
}

// Numbers, booleans and bytes reach `record_debug` through `Visit`'s own defaults, as they do
// in `DefaultVisitor`, which overrides only these three.
impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let name = field.name();
        // `message` is written with `Display`, and `log.` fields are left out, by the default
        // visitor.
        if self.result.is_err()
            || name == "message"
            || name.starts_with("log.")
            || !debug_prints_unchanged(value)
        {
            return self.delegate(|v| v.record_str(field, value));
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        let pending = &mut self.pending;
        pending.reserve(128.max(name.len() + value.len() + 4));
        if !std::mem::take(&mut self.is_empty) {
            pending.push(' ');
        }
        pending.push_str(name);
        pending.push_str("=\"");
        pending.push_str(value);
        pending.push('"');
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.delegate(|v| v.record_debug(field, value))
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.delegate(|v| v.record_error(field, value))
    }
}

/// Whether `str`'s `Debug` prints `s` as it is between two quotes: printable ASCII, no `"`
/// and no `\`.
fn debug_prints_unchanged(s: &str) -> bool {
    s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

/// A failure that may come back at every try of a loop (a reload, an election, a read),
/// logged when it starts, changes or clears rather than at every try: keeps the one said last.
#[derive(Debug, Default)]
pub struct Lasting(Option<String>);

/// What a try's outcome is news of, for the log.
#[derive(Debug, PartialEq)]
pub enum Lasted<'a> {
    /// The same as the try before: nothing to say.
    Unchanged,
    /// A failure that is new, or other than the one before.
    Failing(&'a str),
    /// No failure, after one.
    Cleared,
}

impl Lasting {
    /// Records a try's outcome (`Some` failure, or `None`) and says what is news.
    pub fn record(&mut self, failure: Option<String>) -> Lasted<'_> {
        let before = std::mem::replace(&mut self.0, failure);
        match (&self.0, before) {
            (Some(now), before) if before.as_ref() != Some(now) => Lasted::Failing(now),
            (None, Some(_)) => Lasted::Cleared,
            _ => Lasted::Unchanged,
        }
    }

    /// The failure said last, while it lasts.
    pub fn current(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// Forgets it without a word: the next failure, even the same, is news.
    pub fn forget(&mut self) {
        self.0 = None;
    }
}

/// Panics in the process so far (see [`report_panics`]).
static PANICS: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);

/// From now on, every panic in the process is counted and logged through `tracing` (so that
/// `--log-format json` has it as a JSON line, with the task's span), then reported as before.
/// Without it a panic in a webhook connection's task (which tokio keeps to that task: the API
/// server sees the connection close and admits the pod unstamped) would move no metric and
/// reach the log only as plain text. Installed once, however often called; returns the count,
/// for a metrics registry.
pub fn report_panics() -> prometheus_client::metrics::counter::Counter {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.inc();
            tracing::error!(panic = %info, "panicked");
            previous(info);
        }));
    });
    PANICS.clone()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::DefaultFields;

    use super::*;

    /// Log output kept in memory, for tests that read what was logged.
    #[derive(Clone, Default)]
    pub(crate) struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Buffer {
        /// A plain-format subscriber at every level that writes here.
        pub(crate) fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
            let out = self.clone();
            tracing_subscriber::fmt()
                .without_time()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(move || out.clone())
                .finish()
        }

        pub(crate) fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer \"failure\"")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Spans and events with fields of every kind, including strings on both sides of the
    /// shortcut.
    fn log_everything() {
        let strings = [
            "",
            "705ab4f5-6393-11e8-b7cc-42010a800002",
            "emojivoto",
            "web-5d8f7c9b6-",
            "spaces and = and 'single' quotes ~",
            "quote \" in it",
            "back\\slash",
            "new\nline\ttab\r",
            "nul \0 and \u{1b}[31m escape",
            "del \u{7f}",
            "é ✓ 漢字",
            "combining e\u{301}",
            "\u{200b} zero width",
        ];
        for s in strings {
            let span = tracing::info_span!("admission", uid = s, namespace = "ns", name = s);
            let _entered = span.enter();
            tracing::info!(problem = s, "message with a {} placeholder", "value");
            tracing::info!(message = s);
            tracing::info!(r#type = s, other = %s, debugged = ?s);
        }
        let error = Outer(std::io::Error::other("inner"));
        let plain_error = std::io::Error::other("just one");
        tracing::warn!(
            count = 3u64,
            delta = -4i64,
            big = u128::MAX,
            small = i128::MIN,
            ratio = 0.5f64,
            flag = true,
            bytes = &b"\x00ab"[..],
            error = &error as &(dyn std::error::Error + 'static),
            plain = &plain_error as &(dyn std::error::Error + 'static),
            "every kind"
        );
        // Left out by the default visitor (tracing-log's metadata), then fields either side of
        // the shortcut, in both orders.
        tracing::info!(
            log.target = "x",
            first = "plain",
            second = 2,
            third = "plain"
        );
        tracing::info!(
            log.target = "x",
            first = 1,
            second = "plain",
            third = "a\"b"
        );
        let empty = tracing::info_span!("later", uid = tracing::field::Empty);
        empty.record("uid", "recorded-later");
        empty.in_scope(|| tracing::info!("inside"));
    }

    fn capture<N>(fields: N, ansi: bool) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(fields)
            .with_ansi(ansi)
            .without_time()
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log_everything);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn writes_what_default_fields_writes() {
        for ansi in [false, true] {
            let expected = capture(DefaultFields::new(), ansi);
            let ours = capture(PlainFields, ansi);
            assert!(expected.lines().count() > 40, "{expected}");
            let uid = r#"uid="705ab4f5-6393-11e8-b7cc-42010a800002""#;
            assert_eq!(expected.contains(uid), !ansi, "{expected}");
            pretty_assertions::assert_eq!(ours, expected, "ansi: {ansi}");
        }
    }

    #[test]
    fn takes_the_shortcut_only_for_what_debug_prints_unchanged() {
        for b in 0..=0x7fu8 {
            let s = char::from(b).to_string();
            assert_eq!(
                debug_prints_unchanged(&s),
                format!("{s:?}") == format!("\"{s}\""),
                "{b:#x}"
            );
        }
        assert!(!debug_prints_unchanged("é"));
    }
}
