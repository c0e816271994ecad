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
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::patch::JsonPatch;

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

/// One JSON object read as `T`, and nothing else: serde's derived structs also read an array,
/// its items taken as the fields in the order they are declared, so that an AdmissionReview,
/// a request or a pod sent as an array was once read (and patched) as if it were the object.
/// Every struct here is read through this: by [`from_json`] at the top, and in the fields by
/// [`object`], [`objects`], [`object_list`] and [`RequestObject`].
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        d.deserialize_map(ObjectVisitor(std::marker::PhantomData))
            .map(Object)
    }
}

/// A field that is an object or null.
fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Ok(Option::<Object<T>>::deserialize(d)?.map(|o| o.0))
}

/// A field that is a list of objects, or null.
fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    let list = Option::<Vec<Object<T>>>::deserialize(d)?;
    Ok(list.map(|l| l.into_iter().map(|o| o.0).collect()))
}

/// A field that is a list of objects (not null).
fn object_list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    let list = Vec::<Object<T>>::deserialize(d)?;
    Ok(list.into_iter().map(|o| o.0).collect())
}

/// How a request's `object` is read: a [`PodIn`] only from an object (or null); skipped
/// ([`IgnoredAny`]) whatever it is, so that a Pod request whose object is unusable is still
/// routed, and answered naming the object as the problem.
pub trait RequestObject<'de>: Sized {
    fn read<D: Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error>;
}

impl<'de> RequestObject<'de> for IgnoredAny {
    fn read<D: Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error> {
        Option::deserialize(d)
    }
}

impl<'de: 'a, 'a> RequestObject<'de> for PodIn<'a> {
    fn read<D: Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error> {
        object(d)
    }
}

/// The envelope, generic over how the object is read: as a [`PodIn`] in the one pass that
/// serves every Pod request, or skipped ([`IgnoredAny`]) to route and answer anything else.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: RequestObject<'de>"))]
pub struct ReviewIn<'a, O> {
    #[serde(borrow)]
    pub api_version: Option<Str<'a>>,
    #[serde(borrow)]
    pub kind: Option<Str<'a>>,
    #[serde(default, borrow, deserialize_with = "object")]
    pub request: Option<RequestIn<'a, O>>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: RequestObject<'de>"))]
pub struct RequestIn<'a, O> {
    #[serde(default, borrow)]
    pub uid: Option<Str<'a>>,
    #[serde(default, borrow, deserialize_with = "object")]
    pub kind: Option<GroupVersionKind<'a>>,
    #[serde(default, borrow)]
    pub operation: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub sub_resource: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub namespace: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub name: Option<Str<'a>>,
    #[serde(default = "none", deserialize_with = "RequestObject::read")]
    pub object: Option<O>,
}

/// All that is read of a body whose AdmissionReview fields have the wrong types (a number for
/// the operation, say): the request's uid, which the invalid answer still echoes.
#[derive(Debug, Deserialize, PartialEq)]
pub struct UidIn<'a> {
    #[serde(default, borrow, deserialize_with = "object")]
    pub request: Option<RequestUidIn<'a>>,
}

#[derive(Debug, Deserialize, PartialEq)]
pub struct RequestUidIn<'a> {
    #[serde(default, borrow)]
    pub uid: Option<Str<'a>>,
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
    #[serde(default, borrow, deserialize_with = "object")]
    pub metadata: Option<ObjectMetaIn<'a>>,
    #[serde(default, borrow, deserialize_with = "object")]
    pub spec: Option<PodSpecIn<'a>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ObjectMetaIn<'a> {
    #[serde(default, borrow)]
    pub annotations: Option<BTreeMap<Str<'a>, Str<'a>>>,
    #[serde(default, borrow)]
    pub labels: Option<BTreeMap<Str<'a>, Str<'a>>>,
    /// The prefix the API server names a pod with after admission, when the request has no
    /// name yet (a controller's pods): only for the log.
    #[serde(default, borrow, rename = "generateName")]
    pub generate_name: Option<Str<'a>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecIn<'a> {
    #[serde(default, borrow, deserialize_with = "object_list")]
    pub containers: Vec<ContainerIn<'a>>,
    #[serde(default, borrow, deserialize_with = "objects")]
    pub init_containers: Option<Vec<ContainerIn<'a>>>,
    #[serde(default)]
    pub host_network: Option<bool>,
    #[serde(default)]
    pub automount_service_account_token: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerIn<'a> {
    #[serde(default, borrow)]
    pub name: Str<'a>,
    #[serde(default, borrow, deserialize_with = "objects")]
    pub env: Option<Vec<EnvVarIn<'a>>>,
    #[serde(default, borrow, deserialize_with = "objects")]
    pub volume_mounts: Option<Vec<VolumeMountIn<'a>>>,
}

/// Only where it is mounted matters (the injector looks for the service-account token's path).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMountIn<'a> {
    #[serde(default, borrow)]
    pub mount_path: Str<'a>,
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

/// One JSON object (never an array: see `Object`) read as `T`: `serde_json::from_slice`,
/// without its per-string UTF-8 check: text checked once up front (a quick pass over ASCII) is
/// read as a `str`, which serde_json trusts. Anything that is not UTF-8 is read as bytes, to
/// fail exactly as before.
pub fn from_json<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Result<T, serde_json::Error> {
    let object = match std::str::from_utf8(json) {
        Ok(text) => serde_json::from_str::<Object<T>>(text),
        Err(_) => serde_json::from_slice::<Object<T>>(json),
    };
    object.map(|o| o.0)
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
    pub fn patch(uid: &str, patch: &JsonPatch) -> Self {
        let mut out = Self::allow(uid);
        out.response.patch_type = Some("JSONPatch");
        out.response.patch =
            Some(base64::engine::general_purpose::STANDARD.encode(patch.as_bytes()));
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
            // Base64's alphabet needs no escaping in a JSON string.
            debug_assert!(super::scan::plain_len(patch.as_bytes()) == patch.len());
            out.extend_from_slice(br#","patch":""#);
            out.extend_from_slice(patch.as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b"}}");
        out
    }

    /// The decoded JSON Patch, if any (for tests and tools).
    pub fn decoded_patch(&self) -> Option<json_patch::Patch> {
        serde_json::from_slice(&self.patch_text()?).ok()
    }

    /// The JSON Patch's text, base64-decoded, if any.
    pub fn patch_text(&self) -> Option<Vec<u8>> {
        let b64 = self.response.patch.as_deref()?;
        base64::engine::general_purpose::STANDARD.decode(b64).ok()
    }
}

/// Writes `s` as a JSON string, escaped exactly as serde_json escapes (quote, backslash and
/// control characters; nothing else), copying it whole when nothing needs escaping.
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    // The bytes that need escaping are the ones that end a string's plain run when reading.
    if super::scan::plain_len(s.as_bytes()) == s.len() {
        out.extend_from_slice(s.as_bytes());
    } else {
        write_escaped(out, s.as_bytes());
    }
    out.push(b'"');
}

/// serde_json's escapes: the short forms it has, `\u00XX` (lowercase hex) for other controls.
/// Runs of plain bytes are copied whole.
pub(crate) fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() + 8);
    let mut rest = bytes;
    while let Some(at) = rest.iter().position(|&b| JSON_ESCAPE[usize::from(b)] != 0) {
        let b = rest[at];
        out.extend_from_slice(&rest[..at]);
        match JSON_ESCAPE[usize::from(b)] {
            b'u' => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
            short => out.extend_from_slice(&[b'\\', short]),
        }
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

/// For each byte, what follows the backslash when serde_json escapes it in a string (`u` for
/// the `\u00XX` form), or 0 for a byte written as it is.
pub(crate) const JSON_ESCAPE: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str_borrows_plain_text_and_reads_like_string() {
        let body = r#"["plain", "esc\"aped"]"#;
        let [plain, escaped]: [Str; 2] = serde_json::from_str(body).unwrap();
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
        let mut patch = JsonPatch::new();
        patch.add(&["metadata", "annotations", "a/b"], |out| {
            write_json_str(out, "x\"y")
        });
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
    fn write_json_str_escapes_as_serde_json_does() {
        let every_byte: String = (0..=0x7fu8).map(char::from).collect();
        for s in ["", "plain", "x\"y\n\u{1}\u{1f}\u{7f}é\\/", &every_byte] {
            let mut out = Vec::new();
            write_json_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }
}
