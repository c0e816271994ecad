//! The fast path for the body the webhook reads tens of thousands of times a second: an
//! AdmissionReview v1 of a Pod, read in one pass over the text, with every part the rules do
//! not look at validated and skipped.
//!
//! It is a shortcut, not a second parser of record. [`review_in`] answers only when the answer
//! is the one serde_json gives for the same text (the [`ReviewIn`] that
//! [`from_json`](super::admission::from_json) decodes); on anything else it returns `None`, and
//! the caller reads the body with serde_json, which decides and explains. It steps aside on any
//! error and on anything unusual: a value of another type where the shape wants an object, a
//! list or a string (including `null` where serde would refuse it), a field given twice,
//! escapes of UTF-16 surrogates, nesting deeper than [`MAX_DEPTH`]. "`Some(x)` means serde_json
//! reads `x`" is checked over the fixtures, by a property test over mutated bodies, and by the
//! fuzz target.
//!
//! Why it exists: under load, serde_json's visitor machinery cost more than half of an
//! admission's work, over a body the rules read a dozen fields of.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::admission::{
    ContainerIn, EnvVarIn, GroupVersionKind, ObjectMetaIn, PodIn, PodSpecIn, RequestIn, ReviewIn,
    Str, VolumeMountIn,
};

/// Objects and lists nested deeper than this are left to serde_json (a Pod is about 10 deep).
pub const MAX_DEPTH: u32 = 64;

/// Reads `text` as an AdmissionReview of a Pod, or `None` to say "ask serde_json".
pub fn review_in(text: &str) -> Option<ReviewIn<'_, PodIn<'_>>> {
    let mut reader = Reader {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let review = reader.review()?;
    (reader.peek().is_none()).then_some(review)
}

/// Stores a field's value the first time it is seen; `None` (step aside) on a repeat, which
/// serde's derived structs refuse as a duplicate field.
fn fill<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    slot.is_none().then(|| *slot = Some(value))
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: u32,
}

// The shapes: one method per struct of `admission`, reading exactly its fields.
impl<'a> Reader<'a> {
    fn review(&mut self) -> Option<ReviewIn<'a, PodIn<'a>>> {
        let (mut api_version, mut kind, mut request) = (None, None, None);
        self.object(|r, key| match key {
            "apiVersion" => fill(&mut api_version, r.nullable(Self::string)?),
            "kind" => fill(&mut kind, r.nullable(Self::string)?),
            "request" => fill(&mut request, r.nullable(Self::request)?),
            _ => r.skip(),
        })?;
        Some(ReviewIn {
            api_version: api_version.flatten(),
            kind: kind.flatten(),
            request: request.flatten(),
        })
    }

    fn request(&mut self) -> Option<RequestIn<'a, PodIn<'a>>> {
        let (mut uid, mut kind, mut operation, mut sub_resource) = (None, None, None, None);
        let (mut namespace, mut name, mut object) = (None, None, None);
        self.object(|r, key| match key {
            "uid" => fill(&mut uid, r.nullable(Self::string)?),
            "kind" => fill(&mut kind, r.nullable(Self::group_version_kind)?),
            "operation" => fill(&mut operation, r.nullable(Self::string)?),
            "subResource" => fill(&mut sub_resource, r.nullable(Self::string)?),
            "namespace" => fill(&mut namespace, r.nullable(Self::string)?),
            "name" => fill(&mut name, r.nullable(Self::string)?),
            "object" => fill(&mut object, r.nullable(Self::pod)?),
            _ => r.skip(),
        })?;
        Some(RequestIn {
            uid: uid.flatten(),
            kind: kind.flatten(),
            operation: operation.flatten(),
            sub_resource: sub_resource.flatten(),
            namespace: namespace.flatten(),
            name: name.flatten(),
            object: object.flatten(),
        })
    }

    fn group_version_kind(&mut self) -> Option<GroupVersionKind<'a>> {
        let (mut group, mut kind) = (None, None);
        self.object(|r, key| match key {
            "group" => fill(&mut group, r.string()?),
            "kind" => fill(&mut kind, r.string()?),
            _ => r.skip(),
        })?;
        Some(GroupVersionKind {
            group: group.unwrap_or_default(),
            kind: kind.unwrap_or_default(),
        })
    }

    fn pod(&mut self) -> Option<PodIn<'a>> {
        let (mut metadata, mut spec) = (None, None);
        self.object(|r, key| match key {
            "metadata" => fill(&mut metadata, r.nullable(Self::metadata)?),
            "spec" => fill(&mut spec, r.nullable(Self::pod_spec)?),
            _ => r.skip(),
        })?;
        Some(PodIn {
            metadata: metadata.flatten(),
            spec: spec.flatten(),
        })
    }

    fn metadata(&mut self) -> Option<ObjectMetaIn<'a>> {
        let (mut annotations, mut labels, mut generate_name) = (None, None, None);
        self.object(|r, key| match key {
            "annotations" => fill(&mut annotations, r.nullable(Self::string_map)?),
            "labels" => fill(&mut labels, r.nullable(Self::string_map)?),
            "generateName" => fill(&mut generate_name, r.nullable(Self::string)?),
            _ => r.skip(),
        })?;
        Some(ObjectMetaIn {
            annotations: annotations.flatten(),
            labels: labels.flatten(),
            generate_name: generate_name.flatten(),
        })
    }

    fn pod_spec(&mut self) -> Option<PodSpecIn<'a>> {
        let (mut containers, mut init_containers) = (None, None);
        let (mut host_network, mut automount) = (None, None);
        self.object(|r, key| match key {
            "containers" => fill(&mut containers, r.list(Self::container)?),
            "initContainers" => fill(
                &mut init_containers,
                r.nullable(|r| r.list(Self::container))?,
            ),
            "hostNetwork" => fill(&mut host_network, r.nullable(Self::boolean)?),
            "automountServiceAccountToken" => fill(&mut automount, r.nullable(Self::boolean)?),
            _ => r.skip(),
        })?;
        Some(PodSpecIn {
            containers: containers.unwrap_or_default(),
            init_containers: init_containers.flatten(),
            host_network: host_network.flatten(),
            automount_service_account_token: automount.flatten(),
        })
    }

    fn container(&mut self) -> Option<ContainerIn<'a>> {
        let (mut name, mut env, mut volume_mounts) = (None, None, None);
        self.object(|r, key| match key {
            "name" => fill(&mut name, r.string()?),
            "env" => fill(&mut env, r.nullable(|r| r.list(Self::env_var))?),
            "volumeMounts" => fill(
                &mut volume_mounts,
                r.nullable(|r| r.list(Self::volume_mount))?,
            ),
            _ => r.skip(),
        })?;
        Some(ContainerIn {
            name: name.unwrap_or_default(),
            env: env.flatten(),
            volume_mounts: volume_mounts.flatten(),
        })
    }

    fn volume_mount(&mut self) -> Option<VolumeMountIn<'a>> {
        let mut mount_path = None;
        self.object(|r, key| match key {
            "mountPath" => fill(&mut mount_path, r.string()?),
            _ => r.skip(),
        })?;
        Some(VolumeMountIn {
            mount_path: mount_path.unwrap_or_default(),
        })
    }

    fn env_var(&mut self) -> Option<EnvVarIn<'a>> {
        let (mut name, mut value, mut value_from) = (None, None, None);
        self.object(|r, key| match key {
            "name" => fill(&mut name, r.string()?),
            "value" => fill(&mut value, r.nullable(Self::string)?),
            // Only whether it is there (and not null) matters.
            "valueFrom" => fill(&mut value_from, r.nullable(Self::skip)?.is_some()),
            _ => r.skip(),
        })?;
        Some(EnvVarIn {
            name: name.unwrap_or_default(),
            value: value.flatten(),
            value_from: value_from.unwrap_or_default(),
        })
    }

    /// An object of strings; a repeated key keeps its last value, as `BTreeMap` reads it.
    fn string_map(&mut self) -> Option<BTreeMap<Str<'a>, Str<'a>>> {
        let mut map = BTreeMap::new();
        self.object_with_keys(|r, key| {
            map.insert(key, r.string()?);
            Some(())
        })?;
        Some(map)
    }
}

// JSON itself. The position lives in a local for the length of each loop, and every per-byte
// step is inlined: a Pod is some 400 tokens, and a call per token cost more than the token.
impl<'a> Reader<'a> {
    /// The next byte after whitespace, not consumed.
    #[inline(always)]
    fn peek(&mut self) -> Option<u8> {
        self.pos = skip_ws(self.bytes, self.pos);
        self.bytes.get(self.pos).copied()
    }

    /// Consumes `byte` if it comes next.
    #[inline(always)]
    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.pos += usize::from(found);
        found
    }

    /// `true` or `false`.
    fn boolean(&mut self) -> Option<bool> {
        let value = match self.peek()? {
            b't' => true,
            b'f' => false,
            _ => return None,
        };
        let word: &[u8] = if value { b"true" } else { b"false" };
        self.pos = literal(self.bytes, self.pos, word)?;
        Some(value)
    }

    /// `null` (then `Some(None)`), or whatever `read` reads.
    #[inline(always)]
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek() == Some(b'n') {
            self.pos = literal(self.bytes, self.pos, b"null")?;
            Some(None)
        } else {
            read(self).map(Some)
        }
    }

    /// An object, each field's value read by `field` (which sees the decoded key).
    #[inline(always)]
    fn object(&mut self, mut field: impl FnMut(&mut Self, &str) -> Option<()>) -> Option<()> {
        self.object_with_keys(|r, key| field(r, key.as_str()))
    }

    #[inline(always)]
    fn object_with_keys(
        &mut self,
        mut field: impl FnMut(&mut Self, Str<'a>) -> Option<()>,
    ) -> Option<()> {
        self.open(b'{')?;
        if !self.eat(b'}') {
            loop {
                let key = self.string()?;
                self.eat(b':').then_some(())?;
                field(self, key)?;
                if !self.eat(b',') {
                    self.eat(b'}').then_some(())?;
                    break;
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// A list, each item read by `item`.
    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        self.open(b'[')?;
        let mut items = Vec::new();
        if !self.eat(b']') {
            loop {
                items.push(item(self)?);
                if !self.eat(b',') {
                    self.eat(b']').then_some(())?;
                    break;
                }
            }
        }
        self.depth -= 1;
        Some(items)
    }

    #[inline(always)]
    fn open(&mut self, bracket: u8) -> Option<()> {
        (self.depth < MAX_DEPTH && self.eat(bracket)).then(|| self.depth += 1)
    }

    /// A string: borrowed from the text when it has no escapes, decoded when it has.
    #[inline(always)]
    fn string(&mut self) -> Option<Str<'a>> {
        (self.peek()? == b'"').then_some(())?;
        let start = self.pos + 1;
        let (end, escaped) = string_end(self.bytes, self.pos)?;
        self.pos = end + 1;
        let raw = self.text.get(start..end)?;
        Some(Str(if escaped {
            Cow::Owned(unescape(raw)?)
        } else {
            Cow::Borrowed(raw)
        }))
    }

    /// Any JSON value, checked and passed over. Iterative, with the kind of each open container
    /// (object or list) kept as one bit per level: most of a Pod is skipped, and this is the
    /// loop that does it.
    fn skip(&mut self) -> Option<()> {
        let bytes = self.bytes;
        let mut pos = self.pos;
        // Containers that may still open before MAX_DEPTH, and those open now (`level`).
        let room = MAX_DEPTH - self.depth;
        let mut level = 0;
        // Bit n set: the container at level n + 1 is an object.
        let mut objects: u64 = 0;
        loop {
            // A value is expected here. Whitespace is one more arm of the match rather than a
            // loop of its own before it: the API server sends compact JSON.
            match *bytes.get(pos)? {
                b' ' | b'\t' | b'\n' | b'\r' => {
                    pos += 1;
                    continue;
                }
                b'"' => pos = string_end(bytes, pos)?.0 + 1,
                open @ (b'{' | b'[') => {
                    if level >= room {
                        return None;
                    }
                    let object = open == b'{';
                    // `}` and `]` are two past `{` and `[`.
                    if let Some(close) = next(bytes, pos + 1, open + 2) {
                        pos = close + 1;
                    } else {
                        pos += 1;
                        objects = objects & !(1 << level) | u64::from(object) << level;
                        level += 1;
                        if object {
                            pos = key_colon(bytes, pos)?;
                        }
                        continue;
                    }
                }
                b't' => pos = literal(bytes, pos, b"true")?,
                b'f' => pos = literal(bytes, pos, b"false")?,
                b'n' => pos = literal(bytes, pos, b"null")?,
                b'-' | b'0'..=b'9' => pos = number(bytes, pos)?,
                _ => return None,
            }
            // After a value: a separator, or the end of containers.
            loop {
                if level == 0 {
                    self.pos = pos;
                    return Some(());
                }
                let object = objects >> (level - 1) & 1 == 1;
                match *bytes.get(pos)? {
                    b' ' | b'\t' | b'\n' | b'\r' => {
                        pos += 1;
                        continue;
                    }
                    b',' if object => {
                        pos = key_colon(bytes, pos + 1)?;
                        break;
                    }
                    b',' => {
                        pos += 1;
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                pos += 1;
                level -= 1;
            }
        }
    }
}

#[inline(always)]
fn skip_ws(bytes: &[u8], mut pos: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(pos) {
        pos += 1;
    }
    pos
}

/// An object's key and the colon after it, passed over: where its value starts.
#[inline(always)]
fn key_colon(bytes: &[u8], pos: usize) -> Option<usize> {
    let pos = next(bytes, pos, b'"')?;
    next(bytes, string_end(bytes, pos)?.0 + 1, b':').map(|pos| pos + 1)
}

/// Where `byte` is, if it comes next after whitespace.
#[inline(always)]
fn next(bytes: &[u8], pos: usize, byte: u8) -> Option<usize> {
    match bytes.get(pos) {
        Some(&b) if b == byte => Some(pos),
        Some(b' ' | b'\t' | b'\n' | b'\r') => {
            let pos = skip_ws(bytes, pos);
            (bytes.get(pos) == Some(&byte)).then_some(pos)
        }
        _ => None,
    }
}

#[inline(always)]
fn literal(bytes: &[u8], pos: usize, word: &[u8]) -> Option<usize> {
    (bytes.get(pos..pos + word.len())? == word).then_some(pos + word.len())
}

/// RFC 8259's number, `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`: where it ends.
fn number(bytes: &[u8], pos: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = pos + usize::from(bytes.get(pos) == Some(&b'-'));
    i = match bytes.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i + 1),
        _ => return None,
    };
    if bytes.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        (end > i + 1).then_some(())?;
        i = end;
    }
    if let Some(b'e' | b'E') = bytes.get(i) {
        i += 1 + usize::from(matches!(bytes.get(i + 1), Some(b'+' | b'-')));
        let end = digits(i);
        (end > i).then_some(())?;
        i = end;
    }
    Some(i)
}

/// From the opening quote at `quote`: where the closing quote is, and whether escapes came
/// before it. Checks the string: no raw control characters, only JSON's escapes. The first stop
/// byte is nearly always the closing quote; escapes are left to [`escaped_string_end`].
#[inline(always)]
fn string_end(bytes: &[u8], quote: usize) -> Option<(usize, bool)> {
    let mut i = quote + 1;
    loop {
        let Some(chunk) = bytes.get(i..i + 8) else {
            i += plain_len(bytes.get(i..)?);
            break;
        };
        let stops = stop_bytes(u64::from_le_bytes(chunk.try_into().ok()?));
        if stops != 0 {
            i += (stops.trailing_zeros() / 8) as usize;
            break;
        }
        i += 8;
    }
    match bytes.get(i)? {
        b'"' => Some((i, false)),
        b'\\' => escaped_string_end(bytes, i),
        // A raw control character, which JSON forbids in a string.
        _ => None,
    }
}

/// [`string_end`] from the first backslash on.
#[cold]
#[inline(never)]
fn escaped_string_end(bytes: &[u8], mut i: usize) -> Option<(usize, bool)> {
    loop {
        match bytes.get(i)? {
            b'"' => return Some((i, true)),
            b'\\' => {
                i += match bytes.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                    // Surrogates (halves of a pair, or lone) are left to serde_json.
                    b'u' => char::from_u32(hex4(bytes.get(i + 2..i + 6)?)?).map(|_| 6)?,
                    _ => return None,
                };
            }
            // A raw control character, which JSON forbids in a string.
            _ => return None,
        }
        i += plain_len(bytes.get(i..)?);
    }
}

/// The text of a string that [`Reader::string_end`] has checked, escapes decoded.
fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let (decoded, len) = match *rest.as_bytes().get(at + 1)? {
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'n' => ('\n', 2),
            b'r' => ('\r', 2),
            b't' => ('\t', 2),
            b'u' => (
                char::from_u32(hex4(rest.as_bytes().get(at + 2..at + 6)?)?)?,
                6,
            ),
            // `"`, `\` and `/` stand for themselves.
            other => (char::from(other), 2),
        };
        out.push(decoded);
        rest = &rest[at + len..];
    }
    out.push_str(rest);
    Some(out)
}

/// Four hex digits, as a code unit.
fn hex4(digits: &[u8]) -> Option<u32> {
    digits
        .iter()
        .try_fold(0, |n, &d| Some(n << 4 | char::from(d).to_digit(16)?))
}

const ONES: u64 = u64::from_ne_bytes([1; 8]);
const HIGH_BITS: u64 = ONES * 0x80;

/// How many bytes from the start are plain string content: not `"`, `\` or a control
/// character. Eight bytes at a time, in a `u64` (the crate has no `unsafe`, so no SIMD loads).
#[inline]
pub(crate) fn plain_len(bytes: &[u8]) -> usize {
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let stops = stop_bytes(word);
        if stops != 0 {
            return i + (stops.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + bytes[i..]
        .iter()
        .take_while(|&&b| !(b < 0x20 || b == b'"' || b == b'\\'))
        .count()
}

/// The high bit of each byte of `word` that ends a plain run. Exact for the lowest such byte
/// (a borrow can mark bytes above a true one, never below), which is the only one used.
fn stop_bytes(word: u64) -> u64 {
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let zero_at = |x: u64| x.wrapping_sub(ONES) & !x;
    let quote = zero_at(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_at(word ^ (ONES * u64::from(b'\\')));
    (below_space | quote | backslash) & HIGH_BITS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::admission::from_json;

    /// The fast path's answer, checked against serde_json's whenever it gives one.
    fn fast(text: &str) -> Option<ReviewIn<'_, PodIn<'_>>> {
        let fast = review_in(text);
        if let Some(fast) = &fast {
            let slow = from_json::<ReviewIn<PodIn>>(text.as_bytes()).unwrap_or_else(|e| {
                panic!("fast path accepted what serde_json refuses ({e}): {text}")
            });
            assert_eq!(fast, &slow, "{text}");
        }
        fast
    }

    #[test]
    fn plain_len_finds_the_first_stop_byte_at_every_offset() {
        for len in 0..40 {
            for stop in [b'"', b'\\', 0x00, 0x1f] {
                for at in 0..=len {
                    let mut bytes = vec![b'a'; len];
                    // Non-ASCII and near-miss bytes must not stop the run.
                    for (i, b) in bytes.iter_mut().enumerate() {
                        *b = [b'a', 0xe2, b'#', b']', 0x20, 0x7f][i % 6];
                    }
                    if at < len {
                        bytes[at] = stop;
                        // A second stop after the first changes nothing.
                        if at + 1 < len {
                            bytes[at + 1] = b'"';
                        }
                    }
                    assert_eq!(plain_len(&bytes), at, "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn reads_a_pod_review_as_serde_json_does() {
        let text = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"ns","operation":"CREATE","userInfo":{"groups":["a","b"],"extra":{}},"dryRun":false,"options":{"fieldManager":"x"},"object":{"metadata":{"labels":{"app":"web"},"annotations":{"linkerd.io/inject":"enabled","a\u0026b":"c\"d\\e\/\n\u00e9"},"ownerReferences":[{"controller":true}]},"spec":{"automountServiceAccountToken":null,"containers":[{"name":"app","volumeMounts":[{"name":"t","mountPath":"/var/run/secrets/kubernetes.io/serviceaccount","readOnly":true}],"ports":[{"containerPort":8080}],"resources":{"limits":{"cpu":-1.5e+3}}},{"name":"linkerd-proxy","env":[{"name":"A","value":"1"},{"name":"B","valueFrom":{"fieldRef":{}}},{"name":"C","valueFrom":null}]}],"initContainers":null}}}}"#;
        let review = fast(text).expect("the fast path reads it");
        let pod = review.request.unwrap().object.unwrap();
        let annotations = pod.metadata.unwrap().annotations.unwrap();
        assert_eq!(annotations["a&b"].as_str(), "c\"d\\e/\n\u{e9}");
        let env = pod.spec.unwrap().containers[1].env.clone().unwrap();
        assert_eq!(
            env.iter().map(|e| e.value_from).collect::<Vec<_>>(),
            [false, true, false]
        );
    }

    #[test]
    fn steps_aside_where_serde_json_refuses_or_is_unusual() {
        let cases = [
            // Not JSON, or not all of it.
            "",
            "{",
            r#"{"kind":"AdmissionReview"} x"#,
            r#"{"kind":"AdmissionReview",}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":tru}"#,
            "{\"a\":\"raw\ncontrol\"}",
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            // Types the shape does not take.
            r#"{"kind":5}"#,
            r#"{"request":[]}"#,
            r#"{"request":{"object":{"spec":{"containers":null}}}}"#,
            r#"{"request":{"object":{"metadata":{"labels":{"a":null}}}}}"#,
            r#"{"request":{"kind":{"group":null}}}"#,
            r#"{"request":{"object":{"spec":{"containers":[{"volumeMounts":[{"mountPath":null}]}]}}}}"#,
            r#"{"request":{"object":{"spec":{"containers":[{"volumeMounts":{}}]}}}}"#,
            r#"{"request":{"object":{"spec":{"automountServiceAccountToken":"false"}}}}"#,
            // Duplicate fields (serde refuses), surrogate escapes (left to serde).
            r#"{"kind":"a","kind":"b"}"#,
            r#"{"request":{"uid":"a","uid":"b"}}"#,
            r#"{"a":"\ud83d\ude00"}"#,
            // A list where serde would read a struct from its fields in order.
            r#"["admission.k8s.io/v1","AdmissionReview",null]"#,
        ];
        for text in cases {
            assert!(fast(text).is_none(), "{text}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(70), "]".repeat(70));
        assert!(fast(&deep).is_none());
        let fine = format!("{{\"a\":{}{}}}", "[".repeat(60), "]".repeat(60));
        assert!(fast(&fine).is_some());
    }

    /// Every construct tried at every offset over 130 bytes: the scanner reads strings eight
    /// bytes at a time, and where a word boundary falls must not change the answer.
    #[test]
    fn reads_the_same_at_every_offset() {
        let good = [
            r#"{"request":{"uid":"a\\\"b","name":"x\u00e9\n","object":{"metadata":{"annotations":{"k\\":"v\"","e":"\\"}}}}}"#,
            "{\"request\":\t{\"uid\" :\r\n\"u\" , \"dryRun\":true,\"options\":[null,false,-1.5e3,{}]}}",
            r#"{"kind":"AdmissionReview","x":[[],{},"", " spaced string ", 0]}"#,
        ];
        let bad = [
            // An escaped quote does not close; an escaped backslash before a quote does.
            r#"{"kind":"a\"}"#,
            r#"{"kind":"a\\"\"}"#,
            // A backslash or a stray control character outside strings.
            r#"{"kind":\"a"}"#,
            "{\"kind\":\u{1}\"a\"}",
            // A raw control character or a tab inside a string.
            "{\"kind\":\"a\u{1f}\"}",
            "{\"kind\":\"a\tb\"}",
            // Escapes JSON does not have, a short one, a surrogate.
            r#"{"kind":"\x"}"#,
            r#"{"kind":"\u12"}"#,
            r#"{"kind":"\udc00"}"#,
            // Scalars run into what follows them.
            r#"{"x":truex}"#,
            r#"{"x":1"a"}"#,
            r#"{"x":"a"1}"#,
            r#"{"x":nul}"#,
        ];
        for pad in 0..130 {
            let lead = " ".repeat(pad);
            for text in good {
                let text = format!("{lead}{text}");
                assert!(fast(&text).is_some(), "{text}");
            }
            for text in bad {
                let text = format!("{lead}{text}");
                assert!(fast(&text).is_none(), "{text}");
            }
        }
    }

    #[test]
    fn keeps_the_last_of_a_repeated_annotation_as_btreemap_does() {
        let text = r#"{"request":{"object":{"metadata":{"annotations":{"a":"1","a":"2"}}}}}"#;
        let review = fast(text).unwrap();
        let pod = review.request.unwrap().object.unwrap();
        assert_eq!(
            pod.metadata.unwrap().annotations.unwrap()["a"].as_str(),
            "2"
        );
    }
}
