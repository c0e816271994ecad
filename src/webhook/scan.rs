//! The fast path for the body the webhook reads tens of thousands of times a second: an
//! AdmissionReview v1 of a Pod, with every part the rules do not look at validated and skipped.
//!
//! Two stages. [`index`] goes over the text 64 bytes at a time with SIMD compares (the `wide`
//! crate: SSE2 on x86-64, NEON on arm64, plain code elsewhere, all behind a safe API) and
//! marks, a bit per byte, where tokens start and which quotes open and close strings; on the
//! way it checks everything about strings. The reader then walks those token starts with a
//! cursor: a string it passes over is one token, found by clearing one bit.
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

use wide::u8x16;

use super::admission::{
    ContainerIn, EnvVarIn, GroupVersionKind, ObjectMetaIn, PodIn, PodSpecIn, RequestIn, ReviewIn,
    Str,
};

/// Objects and lists nested deeper than this are left to serde_json (a Pod is about 10 deep).
pub const MAX_DEPTH: u32 = 64;

/// Reads `text` as an AdmissionReview of a Pod, or `None` to say "ask serde_json".
pub fn review_in(text: &str) -> Option<ReviewIn<'_, PodIn<'_>>> {
    let blocks = index(text.as_bytes())?;
    let mut reader = Reader {
        text,
        bytes: text.as_bytes(),
        bits: blocks.first().map_or(0, |b| b.starts),
        blocks,
        block: 0,
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
    /// The text's structural index: a [`Block`] per 64 bytes.
    blocks: Vec<Block>,
    /// The block the reader is in, and the token starts in it not yet consumed.
    block: usize,
    bits: u64,
    depth: u32,
}

// The shapes: one method per struct of `admission`, reading exactly its fields.
impl<'a> Reader<'a> {
    fn review(&mut self) -> Option<ReviewIn<'a, PodIn<'a>>> {
        let (mut api_version, mut kind, mut request) = (None, None, None);
        self.object(|r, key| match key {
            b"apiVersion" => fill(&mut api_version, r.nullable(Self::string)?),
            b"kind" => fill(&mut kind, r.nullable(Self::string)?),
            b"request" => fill(&mut request, r.nullable(Self::request)?),
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
            b"uid" => fill(&mut uid, r.nullable(Self::string)?),
            b"kind" => fill(&mut kind, r.nullable(Self::group_version_kind)?),
            b"operation" => fill(&mut operation, r.nullable(Self::string)?),
            b"subResource" => fill(&mut sub_resource, r.nullable(Self::string)?),
            b"namespace" => fill(&mut namespace, r.nullable(Self::string)?),
            b"name" => fill(&mut name, r.nullable(Self::string)?),
            b"object" => fill(&mut object, r.nullable(Self::pod)?),
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
            b"group" => fill(&mut group, r.string()?),
            b"kind" => fill(&mut kind, r.string()?),
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
            b"metadata" => fill(&mut metadata, r.nullable(Self::metadata)?),
            b"spec" => fill(&mut spec, r.nullable(Self::pod_spec)?),
            _ => r.skip(),
        })?;
        Some(PodIn {
            metadata: metadata.flatten(),
            spec: spec.flatten(),
        })
    }

    fn metadata(&mut self) -> Option<ObjectMetaIn<'a>> {
        let (mut annotations, mut labels) = (None, None);
        self.object(|r, key| match key {
            b"annotations" => fill(&mut annotations, r.nullable(Self::string_map)?),
            b"labels" => fill(&mut labels, r.nullable(Self::string_map)?),
            _ => r.skip(),
        })?;
        Some(ObjectMetaIn {
            annotations: annotations.flatten(),
            labels: labels.flatten(),
        })
    }

    fn pod_spec(&mut self) -> Option<PodSpecIn<'a>> {
        let (mut containers, mut init_containers) = (None, None);
        self.object(|r, key| match key {
            b"containers" => fill(&mut containers, r.list(Self::container)?),
            b"initContainers" => fill(
                &mut init_containers,
                r.nullable(|r| r.list(Self::container))?,
            ),
            _ => r.skip(),
        })?;
        Some(PodSpecIn {
            containers: containers.unwrap_or_default(),
            init_containers: init_containers.flatten(),
        })
    }

    fn container(&mut self) -> Option<ContainerIn<'a>> {
        let (mut name, mut env) = (None, None);
        self.object(|r, key| match key {
            b"name" => fill(&mut name, r.string()?),
            b"env" => fill(&mut env, r.nullable(|r| r.list(Self::env_var))?),
            _ => r.skip(),
        })?;
        Some(ContainerIn {
            name: name.unwrap_or_default(),
            env: env.flatten(),
        })
    }

    fn env_var(&mut self) -> Option<EnvVarIn<'a>> {
        let (mut name, mut value, mut value_from) = (None, None, None);
        self.object(|r, key| match key {
            b"name" => fill(&mut name, r.string()?),
            b"value" => fill(&mut value, r.nullable(Self::string)?),
            // Only whether it is there (and not null) matters.
            b"valueFrom" => fill(&mut value_from, r.nullable(Self::skip)?.is_some()),
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

// JSON itself, in two stages. The first ([`index`]) classifies the text 64 bytes at a time with
// SIMD compares, into a bit per byte: where tokens start, which quotes open and close strings,
// where backslashes are. It checks, on the way, everything about strings (no raw control
// characters, only JSON's escapes, every string closed). The second is the reader above,
// which walks the token starts: a string it passes over costs it nothing, since no token
// starts inside one.
impl<'a> Reader<'a> {
    /// The next token's first byte, not consumed ([`Reader::at`] is where it is).
    #[inline(always)]
    fn peek(&mut self) -> Option<u8> {
        while self.bits == 0 {
            self.block += 1;
            self.bits = self.blocks.get(self.block)?.starts;
        }
        self.bytes.get(self.at()).copied()
    }

    /// Where the token [`Reader::peek`] saw starts.
    #[inline(always)]
    fn at(&self) -> usize {
        self.block * 64 + self.bits.trailing_zeros() as usize
    }

    /// Consumes the token [`Reader::peek`] saw. A string's inside starts no token, so after an
    /// opening quote the next token is past the closing one.
    #[inline(always)]
    fn bump(&mut self) {
        self.bits &= self.bits.wrapping_sub(1);
    }

    /// Consumes every token that starts before `pos`: the later bytes of a number or literal.
    #[inline(always)]
    fn seek(&mut self, pos: usize) {
        self.block = pos / 64;
        self.bits = self
            .blocks
            .get(self.block)
            .map_or(0, |b| b.starts & u64::MAX << (pos % 64));
    }

    /// Consumes `byte` if it comes next.
    #[inline(always)]
    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.bump();
        }
        found
    }

    /// `null` (then `Some(None)`), or whatever `read` reads.
    #[inline(always)]
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek() == Some(b'n') {
            let end = literal(self.bytes, self.at(), b"null")?;
            self.seek(end);
            Some(None)
        } else {
            read(self).map(Some)
        }
    }

    /// An object, each field's value read by `field` (which sees the decoded key, as bytes:
    /// the keys it looks for are ASCII).
    #[inline(always)]
    fn object(&mut self, mut field: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        self.open(b'{')?;
        if !self.eat(b'}') {
            loop {
                let (start, end, escaped) = self.raw_string()?;
                let key = if escaped {
                    Cow::Owned(unescape(self.text.get(start..end)?)?.into_bytes())
                } else {
                    Cow::Borrowed(self.bytes.get(start..end)?)
                };
                self.eat(b':').then_some(())?;
                field(self, &key)?;
                if !self.eat(b',') {
                    self.eat(b'}').then_some(())?;
                    break;
                }
            }
        }
        self.depth -= 1;
        Some(())
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
    #[inline]
    fn string(&mut self) -> Option<Str<'a>> {
        let (start, end, escaped) = self.raw_string()?;
        let raw = self.text.get(start..end)?;
        Some(Str(if escaped {
            Cow::Owned(unescape(raw)?)
        } else {
            Cow::Borrowed(raw)
        }))
    }

    /// A string's text, as where it starts and ends and whether it holds escapes. The index
    /// has checked it already; what is left is to find its closing quote.
    #[inline(always)]
    fn raw_string(&mut self) -> Option<(usize, usize, bool)> {
        (self.peek()? == b'"').then_some(())?;
        let start = self.at() + 1;
        self.bump();
        // The closing quote, unless a backslash comes first.
        let stop = next_bit(&self.blocks, start, |b| b.quotes | b.backslashes)?;
        if self.bytes.get(stop) == Some(&b'\\') {
            Some((start, next_bit(&self.blocks, stop, |b| b.quotes)?, true))
        } else {
            Some((start, stop, false))
        }
    }

    /// Any JSON value, checked and passed over. Iterative, with the kind of each open container
    /// (object or list) kept as one bit per level: most of a Pod is skipped, and this is the
    /// loop that does it. A string costs it one token (the index checked it, and no token
    /// starts inside it); numbers and literals are read whole, so that what follows them must
    /// be a token of its own.
    fn skip(&mut self) -> Option<()> {
        let bytes = self.bytes;
        // Containers that may still open before MAX_DEPTH, and those open now (`level`).
        let room = MAX_DEPTH - self.depth;
        let mut level = 0;
        // Bit n set: the container at level n + 1 is an object.
        let mut objects: u64 = 0;
        loop {
            // A value is expected here.
            let byte = self.peek()?;
            let at = self.at();
            self.bump();
            match byte {
                b'"' => {}
                b'{' | b'[' => {
                    if level >= room {
                        return None;
                    }
                    let object = byte == b'{';
                    // `}` and `]` are two past `{` and `[`.
                    if self.peek()? == byte + 2 {
                        self.bump();
                    } else {
                        objects = objects & !(1 << level) | u64::from(object) << level;
                        level += 1;
                        if object {
                            self.key_colon()?;
                        }
                        continue;
                    }
                }
                b't' => self.seek(literal(bytes, at, b"true")?),
                b'f' => self.seek(literal(bytes, at, b"false")?),
                b'n' => self.seek(literal(bytes, at, b"null")?),
                b'-' | b'0'..=b'9' => self.seek(number(bytes, at)?),
                _ => return None,
            }
            // After a value: a separator, or the end of containers.
            loop {
                if level == 0 {
                    return Some(());
                }
                let object = objects >> (level - 1) & 1 == 1;
                let byte = self.peek()?;
                self.bump();
                match byte {
                    b',' if object => {
                        self.key_colon()?;
                        break;
                    }
                    b',' => break,
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                level -= 1;
            }
        }
    }

    /// An object's key and the colon after it, passed over.
    #[inline(always)]
    fn key_colon(&mut self) -> Option<()> {
        (self.eat(b'"') && self.eat(b':')).then_some(())
    }
}

/// Per 64 bytes of the text, bit `n` for byte `n`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Block {
    /// Where tokens start: each string's opening quote, and every other byte outside strings
    /// that is not whitespace. A number's or a literal's later bytes are marked too; the reader
    /// reads those tokens whole and looks for the next one past their end.
    starts: u64,
    /// The quotes that open and close strings (not the escaped ones).
    quotes: u64,
    /// Backslashes: the strings that hold one are decoded.
    backslashes: u64,
}

/// What one block passes to the next.
#[derive(Default)]
struct Carry {
    /// All ones when the block ends inside a string.
    in_string: u64,
    /// 1 when the block's last byte is a backslash that escapes the next block's first.
    escaped: u64,
}

/// The text's structural index, a [`Block`] per 64 bytes; `None` when a string is not valid
/// JSON (a raw control character, an escape JSON does not have, a surrogate escape, no closing
/// quote).
fn index(bytes: &[u8]) -> Option<Vec<Block>> {
    let mut blocks = Vec::with_capacity(bytes.len().div_ceil(64));
    let mut carry = Carry::default();
    let mut chunks = bytes.chunks_exact(64);
    for chunk in chunks.by_ref() {
        let base = blocks.len() * 64;
        blocks.push(block(chunk.try_into().ok()?, bytes, base, &mut carry)?);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        // Padded with spaces, which start no token.
        let mut last = [b' '; 64];
        last[..rest.len()].copy_from_slice(rest);
        let base = blocks.len() * 64;
        blocks.push(block(&last, bytes, base, &mut carry)?);
    }
    (carry.in_string == 0).then_some(blocks)
}

/// One block of [`index`]: `chunk` is `bytes[base..base + 64]` (padded at the end).
#[inline(always)]
fn block(chunk: &[u8; 64], bytes: &[u8], base: usize, carry: &mut Carry) -> Option<Block> {
    let lanes: [u8x16; 4] =
        std::array::from_fn(|k| u8x16::new(std::array::from_fn(|i| chunk[16 * k + i])));
    let splat = u8x16::splat;
    let quotes = bitmask(&lanes, |x| x.cmp_eq(splat(b'"')));
    let backslashes = bitmask(&lanes, |x| x.cmp_eq(splat(b'\\')));
    // Space and below: whitespace, and the control characters strings may not hold.
    let low = bitmask(&lanes, |x| x.min(splat(b' ')).cmp_eq(x));

    let escaped = if backslashes | carry.escaped == 0 {
        0
    } else {
        escaped(backslashes, &mut carry.escaped)
    };
    let quotes = quotes & !escaped;
    // From each opening quote (included) to its closing quote (not included).
    let inside = prefix_xor(quotes) ^ carry.in_string;
    carry.in_string = ((inside as i64) >> 63) as u64;
    let outside = !(inside | quotes);

    // Inside a string, a space is text and a control character is an error.
    if low & inside != 0 && bitmask(&lanes, |x| x.min(splat(0x1f)).cmp_eq(x)) & inside != 0 {
        return None;
    }
    // Outside, JSON's whitespace is space, tab, newline and return. Any other control character
    // is left marked as a token, which the reader refuses.
    let mut blank = low & outside;
    if blank != 0 {
        let mut controls = blank & !bitmask(&lanes, |x| x.cmp_eq(splat(b' ')));
        while controls != 0 {
            let i = controls.trailing_zeros();
            if !matches!(chunk[i as usize], b'\t' | b'\n' | b'\r') {
                blank &= !(1 << i);
            }
            controls &= controls - 1;
        }
    }
    let escapers = backslashes & !escaped & inside;
    if escapers != 0 {
        check_escapes(bytes, base, escapers)?;
    }
    Some(Block {
        starts: outside & !blank | quotes & inside,
        quotes,
        backslashes,
    })
}

/// Bit `n` set where `test` marks byte `n` (all ones in its lane).
#[inline(always)]
fn bitmask(lanes: &[u8x16; 4], test: impl Fn(u8x16) -> u8x16) -> u64 {
    lanes.iter().enumerate().fold(0, |mask, (k, &lane)| {
        mask | u64::from(test(lane).move_mask() as u16) << (16 * k)
    })
}

/// Bit `n` set when an odd number of bits at or below `n` are.
#[inline(always)]
fn prefix_xor(mut bits: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        bits ^= bits << shift;
    }
    bits
}

/// The bytes escaped by a backslash: each backslash that is not itself escaped escapes the byte
/// after it. `carry` is the bit the previous block passed in, and is set for the next.
fn escaped(backslashes: u64, carry: &mut u64) -> u64 {
    let mut escaped = *carry;
    *carry = 0;
    let mut escapers = backslashes & !escaped;
    while escapers != 0 {
        let i = escapers.trailing_zeros();
        if i == 63 {
            *carry = 1;
        } else {
            escaped |= 2 << i;
        }
        escapers &= (escapers - 1) & !escaped;
    }
    escaped
}

/// Checks the escapes that the backslashes at `escapers` (bits of the block at `base`) begin.
#[inline(never)]
fn check_escapes(bytes: &[u8], base: usize, mut escapers: u64) -> Option<()> {
    while escapers != 0 {
        let at = base + escapers.trailing_zeros() as usize;
        match bytes.get(at + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
            // Surrogates (halves of a pair, or lone) are left to serde_json.
            b'u' => {
                char::from_u32(hex4(bytes.get(at + 2..at + 6)?)?)?;
            }
            _ => return None,
        }
        escapers &= escapers - 1;
    }
    Some(())
}

/// The first position at or after `from` that `field` marks.
#[inline(always)]
fn next_bit(blocks: &[Block], from: usize, field: impl Fn(&Block) -> u64) -> Option<usize> {
    let mut block = from / 64;
    let mut bits = field(blocks.get(block)?) & u64::MAX << (from % 64);
    while bits == 0 {
        block += 1;
        bits = field(blocks.get(block)?);
    }
    Some(block * 64 + bits.trailing_zeros() as usize)
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

/// The text of a string whose escapes [`index`] has checked, escapes decoded.
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
/// character. Eight bytes at a time, in a `u64`: the response writer's escaper uses it on short
/// strings, where setting up SIMD lanes would cost more than it saves.
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
        let text = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"ns","operation":"CREATE","userInfo":{"groups":["a","b"],"extra":{}},"dryRun":false,"options":{"fieldManager":"x"},"object":{"metadata":{"labels":{"app":"web"},"annotations":{"linkerd.io/inject":"enabled","a\u0026b":"c\"d\\e\/\n\u00e9"},"ownerReferences":[{"controller":true}]},"spec":{"containers":[{"name":"app","ports":[{"containerPort":8080}],"resources":{"limits":{"cpu":-1.5e+3}}},{"name":"linkerd-proxy","env":[{"name":"A","value":"1"},{"name":"B","valueFrom":{"fieldRef":{}}},{"name":"C","valueFrom":null}]}],"initContainers":null}}}}"#;
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

    /// The index works 64 bytes at a time and carries "inside a string" and "escaped" from one
    /// block to the next: every construct is tried at every offset across a block boundary.
    #[test]
    fn reads_the_same_wherever_block_boundaries_fall() {
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
    fn escapes_carry_across_blocks() {
        let mut carry = 0;
        // A backslash at bit 63 escapes the next block's first byte.
        assert_eq!(escaped(1 << 63, &mut carry), 0);
        assert_eq!(carry, 1);
        // Which, being a backslash, escapes nothing; the one after it escapes byte 2.
        assert_eq!(escaped(0b111, &mut carry), 0b101);
        assert_eq!(carry, 0);
        // Runs: `\\\"` escapes bytes 1, 3 and 5.
        assert_eq!(escaped(0b11_1111, &mut carry), 0b10_1010);
        // Inside from each opening quote up to its closing one, and on past an unclosed one.
        assert_eq!(prefix_xor(0b1001_0010), u64::MAX << 7 | 0b1110);
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
