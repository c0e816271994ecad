//! AdmissionReview v1 on the wire, as the webhook sees it: the few request fields it reads,
//! decoded in one pass with everything else skipped rather than built, and the response it
//! writes.
//!
//! Decoding a whole `Pod` into typed structs cost three quarters of the handler's time (and far
//! more under load, in allocations), for the dozen fields the rules look at. The shapes here
//! are those fields and nothing else, and their strings are borrowed from the body ([`Str`]).

use std::borrow::{Borrow, Cow};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;

use base64::Engine;
use json_patch::PatchOperation;
use serde::de::{IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// A string of the request: borrowed from the body when it has no JSON escapes (nearly every
/// string does), owned when it has. A `String` per name, label and annotation was most of the
/// allocations an admission made.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Str<'a>(pub Cow<'a, str>);

impl Str<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Str<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// So that maps keyed by `Str` are looked up by `&str`.
impl Borrow<str> for Str<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StrVisitor;

        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;

            // As `String` says it, so a wrong type is reported in the same words as before.
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }

        d.deserialize_str(StrVisitor)
    }
}

/// The envelope, generic over how the object is read: as a [`PodIn`] in the one pass that
/// serves every Pod request, or skipped ([`IgnoredAny`]) to route and answer anything else.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReviewIn<'a, O> {
    // No `default`s here: missing Options are None in an object anyway, and without them a
    // JSON array is refused instead of read as an empty envelope.
    #[serde(borrow)]
    pub api_version: Option<Str<'a>>,
    #[serde(borrow)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow)]
    pub request: Option<RequestIn<'a, O>>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestIn<'a, O> {
    #[serde(default, borrow)]
    pub uid: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub kind: Option<GroupVersionKind<'a>>,
    #[serde(default, borrow)]
    pub operation: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub sub_resource: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub namespace: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub name: Option<Str<'a>>,
    #[serde(default = "none")]
    pub object: Option<O>,
}

fn none<O>() -> Option<O> {
    None
}

#[derive(Debug, Deserialize, PartialEq)]
pub struct GroupVersionKind<'a> {
    #[serde(default, borrow)]
    pub group: Str<'a>,
    #[serde(default, borrow)]
    pub kind: Str<'a>,
}

/// What the rules read of a Pod.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PodIn<'a> {
    #[serde(default, borrow)]
    pub metadata: Option<ObjectMetaIn<'a>>,
    #[serde(default, borrow)]
    pub spec: Option<PodSpecIn<'a>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ObjectMetaIn<'a> {
    #[serde(default, borrow)]
    pub annotations: Option<BTreeMap<Str<'a>, Str<'a>>>,
    #[serde(default, borrow)]
    pub labels: Option<BTreeMap<Str<'a>, Str<'a>>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecIn<'a> {
    #[serde(default, borrow)]
    pub containers: Vec<ContainerIn<'a>>,
    #[serde(default, borrow)]
    pub init_containers: Option<Vec<ContainerIn<'a>>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ContainerIn<'a> {
    #[serde(default, borrow)]
    pub name: Str<'a>,
    #[serde(default, borrow)]
    pub env: Option<Vec<EnvVarIn<'a>>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarIn<'a> {
    #[serde(default, borrow)]
    pub name: Str<'a>,
    #[serde(default, borrow)]
    pub value: Option<Str<'a>>,
    /// Only whether it is there matters.
    #[serde(default, with = "presence")]
    pub value_from: bool,
}

mod presence {
    use super::IgnoredAny;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        Ok(Option::<IgnoredAny>::deserialize(d)?.is_some())
    }
}

impl<'a> PodIn<'a> {
    /// Decodes the fields the rules read from any JSON form of a Pod.
    pub fn from_json(json: &'a [u8]) -> Result<Self, serde_json::Error> {
        from_json(json)
    }
}

/// `serde_json::from_slice`, without its per-string UTF-8 check: text checked once up front
/// (a quick pass over ASCII) is read as a `str`, which serde_json trusts. Anything that is not
/// UTF-8 is read as bytes, to fail exactly as before.
pub fn from_json<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Result<T, serde_json::Error> {
    match std::str::from_utf8(json) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(json),
    }
}

/// The AdmissionReview v1 the webhook answers with.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOut {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub response: ResponseOut,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResponseOut {
    pub uid: String,
    /// Always true: the webhook never denies (an unusable body is answered, not refused).
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// The JSON Patch, base64 as the API server's `[]byte` field is encoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
}

/// A `metav1.Status` saying why a body was unusable.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StatusOut {
    pub status: &'static str,
    pub reason: &'static str,
    pub code: u16,
    pub message: String,
}

impl ReviewOut {
    fn new(response: ResponseOut) -> Self {
        Self {
            api_version: super::review::ADMISSION_API_VERSION,
            kind: "AdmissionReview",
            response,
        }
    }

    /// Allowed as it is.
    pub fn allow(uid: &str) -> Self {
        Self::new(ResponseOut {
            uid: uid.to_owned(),
            allowed: true,
            status: None,
            patch_type: None,
            patch: None,
        })
    }

    /// Allowed with a JSON Patch.
    pub fn patch(uid: &str, patch: &[PatchOperation]) -> Self {
        let mut out = Self::allow(uid);
        out.response.patch_type = Some("JSONPatch");
        out.response.patch =
            Some(base64::engine::general_purpose::STANDARD.encode(patch_json(patch)));
        out
    }

    /// The body was not a usable AdmissionReview. Still `allowed`: if an API server ever sent
    /// something we cannot read, a denial would block its pod, which failurePolicy Ignore is
    /// there to prevent; the status says what was wrong.
    pub fn invalid(uid: Option<&str>, message: &str) -> Self {
        let mut out = Self::allow(uid.unwrap_or_default());
        out.response.status = Some(StatusOut {
            status: "Failure",
            reason: "BadRequest",
            code: 400,
            message: message.to_owned(),
        });
        out
    }

    /// The JSON text, byte for byte what `serde_json::to_vec` writes, in one buffer of the
    /// right size. The answer is mostly the base64 patch, which never needs escaping: copied
    /// whole rather than through serde_json's byte-at-a-time escaper, it stops being a tenth
    /// of the handler's work.
    pub fn to_json(&self) -> Vec<u8> {
        let r = &self.response;
        let status = r.status.as_ref();
        let len = 128
            + r.uid.len()
            + r.patch.as_ref().map_or(0, String::len)
            + status.map_or(0, |s| 96 + s.message.len());
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(br#"{"apiVersion":"#);
        write_json_str(&mut out, self.api_version);
        out.extend_from_slice(br#","kind":"#);
        write_json_str(&mut out, self.kind);
        out.extend_from_slice(br#","response":{"uid":"#);
        write_json_str(&mut out, &r.uid);
        out.extend_from_slice(br#","allowed":"#);
        out.extend_from_slice(if r.allowed { b"true" } else { b"false" });
        if let Some(s) = status {
            out.extend_from_slice(br#","status":{"status":"#);
            write_json_str(&mut out, s.status);
            out.extend_from_slice(br#","reason":"#);
            write_json_str(&mut out, s.reason);
            out.extend_from_slice(br#","code":"#);
            out.extend_from_slice(s.code.to_string().as_bytes());
            out.extend_from_slice(br#","message":"#);
            write_json_str(&mut out, &s.message);
            out.push(b'}');
        }
        if let Some(patch_type) = r.patch_type {
            out.extend_from_slice(br#","patchType":"#);
            write_json_str(&mut out, patch_type);
        }
        if let Some(patch) = &r.patch {
            out.extend_from_slice(br#","patch":"#);
            write_json_str(&mut out, patch);
        }
        out.extend_from_slice(b"}}");
        out
    }

    /// The decoded JSON Patch, if any (for tests and tools).
    pub fn decoded_patch(&self) -> Option<json_patch::Patch> {
        let b64 = self.response.patch.as_deref()?;
        let json = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        serde_json::from_slice(&json).ok()
    }
}

/// The JSON text of a patch, byte for byte what `serde_json::to_vec` writes for it: the
/// operations this webhook makes (add, replace) written directly, any other through serde.
pub fn patch_json(patch: &[PatchOperation]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(b'[');
    for (i, op) in patch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let (name, path, value) = match op {
            PatchOperation::Add(a) => ("add", &a.path, &a.value),
            PatchOperation::Replace(r) => ("replace", &r.path, &r.value),
            other => {
                // Serialising a patch operation into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut out, other);
                continue;
            }
        };
        out.extend_from_slice(br#"{"op":"#);
        write_json_str(&mut out, name);
        out.extend_from_slice(br#","path":"#);
        write_json_str(&mut out, path.as_str());
        out.extend_from_slice(br#","value":"#);
        write_json_value(&mut out, value);
        out.push(b'}');
    }
    out.push(b']');
    out
}

/// Writes a JSON value as serde_json does, strings through [`write_json_str`].
fn write_json_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => write_json_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_str(out, key);
                out.push(b':');
                write_json_value(out, item);
            }
            out.push(b'}');
        }
        // Numbers, booleans and null: serialising them into a Vec cannot fail.
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// Writes `s` as a JSON string, escaped exactly as serde_json escapes (quote, backslash and
/// control characters; nothing else), copying it whole when nothing needs escaping.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // A fold rather than `any`: without the early exit the check is vectorised, several times
    // faster over the few hundred bytes of a patch.
    let needs_escape = s.bytes().fold(false, |found, b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Serialising a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str_borrows_plain_text_and_reads_like_string() {
        let body = br#"["plain", "esc\"aped"]"#;
        let [plain, escaped]: [Str; 2] = from_json(body).unwrap();
        assert!(matches!(plain.0, Cow::Borrowed("plain")));
        assert_eq!(escaped.as_str(), "esc\"aped");
        // A wrong type is reported in the words `String` used.
        for wrong in ["5", "null", "{}"] {
            assert_eq!(
                serde_json::from_str::<Str>(wrong).unwrap_err().to_string(),
                serde_json::from_str::<String>(wrong)
                    .unwrap_err()
                    .to_string()
            );
        }
    }

    #[test]
    fn to_json_writes_what_serde_json_writes() {
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "add", "path": "/metadata/annotations/a~1b", "value": "x\"y"}
        ]))
        .unwrap();
        let reviews = [
            ReviewOut::allow("705ab4f5-6393-11e8-b7cc-42010a800002"),
            ReviewOut::allow("quote \" backslash \\ newline \n tab \t nul \u{0} é ✓ \u{7f}"),
            ReviewOut::patch("uid", &patch),
            ReviewOut::invalid(
                None,
                "body is not an AdmissionReview: EOF at line 1 \"col\" 2",
            ),
            ReviewOut::invalid(Some("u\u{1f}"), ""),
        ];
        for review in reviews {
            assert_eq!(
                String::from_utf8(review.to_json()).unwrap(),
                serde_json::to_string(&review).unwrap()
            );
        }
    }

    #[test]
    fn patch_json_writes_what_serde_json_writes() {
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "add", "path": "/metadata/annotations/a~1b~0c", "value": "x\"y\n\u{1}é"},
            {"op": "add", "path": "/metadata/annotations", "value": {"b": "1", "a": "[{\"name\":\"A\"}]"}},
            {"op": "replace", "path": "/spec/containers/0/env/2", "value": {"name": "N", "value": "300s"}},
            {"op": "add", "path": "/spec/initContainers/0/env", "value": [{"name": "N", "value": "1"}]},
            {"op": "add", "path": "/x", "value": [1, -2.5, true, false, null, [], {}]},
            {"op": "remove", "path": "/y"},
            {"op": "test", "path": "/z", "value": "t"}
        ]))
        .unwrap();
        assert_eq!(
            String::from_utf8(patch_json(&patch)).unwrap(),
            serde_json::to_string(&patch).unwrap()
        );
        assert_eq!(patch_json(&[]), b"[]");
    }
}
