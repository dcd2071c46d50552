//! Conversions between model types and the boundary views, and a small BSON *element* codec
//! for values.
//!
//! Values cross the boundary as one BSON element without a key: the element type byte followed
//! by the element's value bytes, exactly as in the BSON spec (documents and arrays nested as
//! BSON documents). The hand-written codec handles the types DP3 values use (double, string,
//! document, array, binary, bool, datetime, null, int32, int64) without building an
//! intermediate document, which is what makes a boundary crossing cost tens rather than
//! hundreds of nanoseconds; any other BSON type goes through the `bson` crate.

use std::net::{Ipv4Addr, Ipv6Addr};

use abi_stable::std_types::{RSlice, RStr};
use bson::spec::BinarySubtype;
use bson::{Binary, Bson, Document};
use chrono::{DateTime, Utc};
use dp3_model::{DataPoint, DataPointTask, Eid, MacAddr};

use super::{DataPointView, EidView, TaskView};

pub const EID_STRING: u8 = 0;
pub const EID_INT: u8 = 1;
pub const EID_IPV4: u8 = 2;
pub const EID_IPV6: u8 = 3;
pub const EID_MAC: u8 = 4;

/// Bytes from the other side of the boundary could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed data from the other side of the module boundary: {0}")]
pub struct CodecError(pub String);

fn err(msg: impl Into<String>) -> CodecError {
    CodecError(msg.into())
}

// ------------------------------------------------------------------------------ eids

/// Scratch space for the bytes of an address eid.
pub type EidScratch = [u8; 16];

pub fn eid_view<'a>(eid: &'a Eid, scratch: &'a mut EidScratch) -> EidView<'a> {
    let (kind, int, bytes): (u8, i64, &'a [u8]) = match eid {
        Eid::String(s) => (EID_STRING, 0, s.as_bytes()),
        Eid::Int(i) => (EID_INT, *i, &[]),
        Eid::Ipv4(a) => {
            scratch[..4].copy_from_slice(&a.octets());
            (EID_IPV4, 0, &scratch[..4])
        }
        Eid::Ipv6(a) => {
            *scratch = a.octets();
            (EID_IPV6, 0, &scratch[..])
        }
        Eid::Mac(m) => {
            scratch[..6].copy_from_slice(&m.0);
            (EID_MAC, 0, &scratch[..6])
        }
    };
    EidView {
        kind,
        int,
        bytes: RSlice::from_slice(bytes),
    }
}

pub fn decode_eid(v: &EidView<'_>) -> Result<Eid, CodecError> {
    let b = v.bytes.as_slice();
    match v.kind {
        EID_STRING => std::str::from_utf8(b)
            .map(|s| Eid::String(s.to_owned()))
            .map_err(|_| err("string eid is not UTF-8")),
        EID_INT => Ok(Eid::Int(v.int)),
        EID_IPV4 => <[u8; 4]>::try_from(b)
            .map(|o| Eid::Ipv4(Ipv4Addr::from(o)))
            .map_err(|_| err("IPv4 eid is not 4 bytes")),
        EID_IPV6 => <[u8; 16]>::try_from(b)
            .map(|o| Eid::Ipv6(Ipv6Addr::from(o)))
            .map_err(|_| err("IPv6 eid is not 16 bytes")),
        EID_MAC => <[u8; 6]>::try_from(b)
            .map(|o| Eid::Mac(MacAddr(o)))
            .map_err(|_| err("MAC eid is not 6 bytes")),
        k => Err(err(format!("unknown eid kind {k}"))),
    }
}

// ------------------------------------------------------------------------------ times

fn time_to_micros(t: Option<DateTime<Utc>>) -> (bool, i64) {
    t.map_or((false, 0), |t| (true, t.timestamp_micros()))
}

fn micros_to_time(set: bool, us: i64, what: &str) -> Result<Option<DateTime<Utc>>, CodecError> {
    if !set {
        return Ok(None);
    }
    DateTime::from_timestamp_micros(us)
        .map(Some)
        .ok_or_else(|| err(format!("{what} out of range")))
}

fn rstr_owned(s: RStr<'_>) -> String {
    s.as_str().to_owned()
}

// ------------------------------------------------------------------------------ datapoints & tasks

/// A datapoint's view; `value` holds the encoded `v` (see [`encode_value`]).
pub fn dp_view<'a>(
    dp: &'a DataPoint,
    scratch: &'a mut EidScratch,
    value: &'a [u8],
) -> DataPointView<'a> {
    let (has_t1, t1) = time_to_micros(dp.t1);
    let (has_t2, t2) = time_to_micros(dp.t2);
    DataPointView {
        etype: RStr::from_str(&dp.etype),
        eid: eid_view(&dp.eid, scratch),
        attr: RStr::from_str(&dp.attr),
        has_src: dp.src.is_some(),
        src: RStr::from_str(dp.src.as_deref().unwrap_or("")),
        v: RSlice::from_slice(value),
        c: dp.c,
        has_t1,
        t1,
        has_t2,
        t2,
    }
}

pub fn decode_dp(v: &DataPointView<'_>) -> Result<DataPoint, CodecError> {
    Ok(DataPoint {
        etype: rstr_owned(v.etype),
        eid: decode_eid(&v.eid)?,
        attr: rstr_owned(v.attr),
        src: v.has_src.then(|| rstr_owned(v.src)),
        v: decode_value(v.v.as_slice())?,
        c: v.c,
        t1: micros_to_time(v.has_t1, v.t1, "t1")?,
        t2: micros_to_time(v.has_t2, v.t2, "t2")?,
    })
}

/// Call `f` with the encoding of `v` (see [`encode_value`]) in a per-thread reused buffer.
pub fn with_value_bytes<R>(v: &Bson, f: impl FnOnce(&[u8]) -> R) -> Result<R, CodecError> {
    thread_local! {
        static VBUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(128));
    }
    VBUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            encode_value(v, &mut buf)?;
            Ok(f(&buf))
        }
        Err(_) => {
            let mut buf = Vec::new();
            encode_value(v, &mut buf)?;
            Ok(f(&buf))
        }
    })
}

/// Datapoints per task handled without heap allocation for the view arrays.
const INLINE_DPS: usize = 4;

/// Call `f` with a view of `task`. The value buffer is reused per thread; the view arrays
/// live on this stack frame for tasks of up to [`INLINE_DPS`] datapoints.
pub fn with_task_view<R>(
    task: &DataPointTask,
    f: impl FnOnce(&TaskView<'_>) -> R,
) -> Result<R, CodecError> {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(256));
    }
    // A nested call on the same thread (re-entrancy) falls back to a fresh buffer.
    let mut own = None;
    BUF.with(|cell| {
        let mut guard = cell.try_borrow_mut().ok();
        let buf: &mut Vec<u8> = match guard.as_deref_mut() {
            Some(b) => b,
            None => own.get_or_insert_with(Vec::new),
        };
        buf.clear();
        task_view_in(task, buf, f)
    })
}

fn task_view_in<R>(
    task: &DataPointTask,
    buf: &mut Vec<u8>,
    f: impl FnOnce(&TaskView<'_>) -> R,
) -> Result<R, CodecError> {
    let n = task.data_points.len();
    let mut ranges_inline = [(0usize, 0usize); INLINE_DPS];
    let mut ranges_heap = Vec::new();
    let ranges: &mut [(usize, usize)] = if n <= INLINE_DPS {
        &mut ranges_inline[..n]
    } else {
        ranges_heap.resize(n, (0, 0));
        &mut ranges_heap
    };
    for (dp, r) in task.data_points.iter().zip(ranges.iter_mut()) {
        let start = buf.len();
        encode_value(&dp.v, buf)?;
        *r = (start, buf.len());
    }
    let tags_range = if task.tags.is_empty() {
        (0, 0)
    } else {
        let start = buf.len();
        encode_value(&Bson::Array(task.tags.clone()), buf)?;
        (start, buf.len())
    };
    let ttl_range = match &task.ttl_tokens {
        None => (0, 0),
        Some(tokens) => {
            let d: Document = tokens
                .iter()
                .map(|(k, t)| (k.clone(), dp3_model::value::time(*t)))
                .collect();
            let start = buf.len();
            encode_value(&Bson::Document(d), buf)?;
            (start, buf.len())
        }
    };
    let buf: &[u8] = buf;
    let slice = |(a, b): (usize, usize)| buf.get(a..b).unwrap_or(&[]);
    let mut task_scratch: EidScratch = [0; 16];
    let mut scratch_inline: [EidScratch; INLINE_DPS] = [[0; 16]; INLINE_DPS];
    let mut scratch_heap = Vec::new();
    let scratch: &mut [EidScratch] = if n <= INLINE_DPS {
        &mut scratch_inline[..n]
    } else {
        scratch_heap.resize(n, [0; 16]);
        &mut scratch_heap
    };
    let empty = DataPointView {
        etype: RStr::from_str(""),
        eid: EidView {
            kind: EID_INT,
            int: 0,
            bytes: RSlice::from_slice(&[]),
        },
        attr: RStr::from_str(""),
        has_src: false,
        src: RStr::from_str(""),
        v: RSlice::from_slice(&[]),
        c: 0.0,
        has_t1: false,
        t1: 0,
        has_t2: false,
        t2: 0,
    };
    let mut views_inline = [empty; INLINE_DPS];
    let mut views_heap = Vec::new();
    let made = task
        .data_points
        .iter()
        .zip(scratch.iter_mut())
        .zip(ranges.iter())
        .map(|((dp, s), r)| dp_view(dp, s, slice(*r)));
    let views: &[DataPointView<'_>] = if n <= INLINE_DPS {
        for (slot, v) in views_inline.iter_mut().zip(made) {
            *slot = v;
        }
        &views_inline[..n]
    } else {
        views_heap.extend(made);
        &views_heap
    };
    let view = TaskView {
        etype: RStr::from_str(&task.etype),
        eid: eid_view(&task.eid, &mut task_scratch),
        data_points: RSlice::from_slice(views),
        tags: RSlice::from_slice(slice(tags_range)),
        ttl_tokens: RSlice::from_slice(slice(ttl_range)),
        delete: task.delete,
    };
    Ok(f(&view))
}

pub fn decode_task(v: &TaskView<'_>) -> Result<DataPointTask, CodecError> {
    let data_points = v
        .data_points
        .as_slice()
        .iter()
        .map(decode_dp)
        .collect::<Result<Vec<_>, _>>()?;
    let tags = if v.tags.is_empty() {
        Vec::new()
    } else {
        match decode_value(v.tags.as_slice())? {
            Bson::Array(a) => a,
            _ => return Err(err("task tags are not an array")),
        }
    };
    let ttl_tokens = if v.ttl_tokens.is_empty() {
        None
    } else {
        match decode_value(v.ttl_tokens.as_slice())? {
            Bson::Document(d) => Some(
                d.iter()
                    .map(|(k, t)| {
                        dp3_model::value::as_time(t)
                            .map(|t| (k.clone(), t))
                            .ok_or_else(|| err(format!("ttl token '{k}' is not a datetime")))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            _ => return Err(err("task ttl_tokens are not a document")),
        }
    };
    Ok(DataPointTask {
        etype: rstr_owned(v.etype),
        eid: decode_eid(&v.eid)?,
        data_points,
        tags,
        ttl_tokens,
        delete: v.delete,
    })
}

/// Wrap an `on_new_attr` closure so an in-process call performs exactly the conversions a
/// call into a module library performs (datapoint to view and back, output tasks to views
/// and back), without crossing a library boundary. The baseline of the boundary benchmark.
#[doc(hidden)]
pub fn through_codec_attr(hook: crate::hooks::AttrHookFn) -> crate::hooks::AttrHookFn {
    std::sync::Arc::new(move |eid: &Eid, dp: &DataPoint| {
        let mut s1 = [0; 16];
        let mut s2 = [0; 16];
        let (eid2, dp2) = with_value_bytes(&dp.v, |value| -> Result<_, CodecError> {
            let view = dp_view(dp, &mut s2, value);
            let ev = eid_view(eid, &mut s1);
            Ok((decode_eid(&ev)?, decode_dp(&view)?))
        })??;
        let tasks = hook(&eid2, &dp2)?;
        let mut out = Vec::with_capacity(tasks.len());
        for t in &tasks {
            out.push(with_task_view(t, decode_task)??);
        }
        Ok(out)
    })
}

// ------------------------------------------------------------------------------ documents

/// A whole document as BSON bytes (the standard document encoding).
pub fn encode_document(d: &Document, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    for (k, v) in d {
        encode_element(k, v, out)?;
    }
    out.push(0);
    patch_len(out, start)
}

pub fn decode_document(bytes: &[u8]) -> Result<Document, CodecError> {
    let mut r = Reader { b: bytes, pos: 0 };
    let d = r.document()?;
    if r.pos != bytes.len() {
        return Err(err("trailing bytes after document"));
    }
    Ok(d)
}

// ------------------------------------------------------------------------------ values

/// Append `v` as a BSON element without key: type byte, then the value bytes.
pub fn encode_value(v: &Bson, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let ty_pos = out.len();
    out.push(0);
    out[ty_pos] = encode_payload(v, out)?;
    Ok(())
}

/// Append the value bytes of `v`; returns its element type byte.
fn encode_payload(v: &Bson, out: &mut Vec<u8>) -> Result<u8, CodecError> {
    Ok(match v {
        Bson::Double(f) => {
            out.extend_from_slice(&f.to_le_bytes());
            0x01
        }
        Bson::String(s) => {
            put_string(s, out)?;
            0x02
        }
        Bson::Document(d) => {
            encode_document(d, out)?;
            0x03
        }
        Bson::Array(a) => {
            let start = out.len();
            out.extend_from_slice(&[0; 4]);
            let mut key = itoa_buf::new();
            for (i, item) in a.iter().enumerate() {
                encode_element(key.format(i), item, out)?;
            }
            out.push(0);
            patch_len(out, start)?;
            0x04
        }
        Bson::Binary(b) if u8::from(b.subtype) != 0x02 => {
            let len = i32::try_from(b.bytes.len()).map_err(|_| err("binary too long"))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.push(u8::from(b.subtype));
            out.extend_from_slice(&b.bytes);
            0x05
        }
        Bson::Boolean(x) => {
            out.push(u8::from(*x));
            0x08
        }
        Bson::DateTime(t) => {
            out.extend_from_slice(&t.timestamp_millis().to_le_bytes());
            0x09
        }
        Bson::Null => 0x0A,
        Bson::Int32(i) => {
            out.extend_from_slice(&i.to_le_bytes());
            0x10
        }
        Bson::Int64(i) => {
            out.extend_from_slice(&i.to_le_bytes());
            0x12
        }
        other => {
            // Rare types: let the bson crate encode `{"v": other}` and keep the element.
            let bytes = bson::doc! {"v": other.clone()}
                .to_vec()
                .map_err(|e| err(format!("cannot encode value: {e}")))?;
            // [len:4][type][b'v'][0][value...][0]
            let ty = *bytes.get(4).ok_or_else(|| err("short encoding"))?;
            let payload = bytes
                .get(7..bytes.len().saturating_sub(1))
                .ok_or_else(|| err("short encoding"))?;
            out.extend_from_slice(payload);
            ty
        }
    })
}

/// Read a value written by [`encode_value`].
pub fn decode_value(bytes: &[u8]) -> Result<Bson, CodecError> {
    let (&ty, rest) = bytes.split_first().ok_or_else(|| err("empty value"))?;
    let mut r = Reader { b: rest, pos: 0 };
    match r.value(ty)? {
        Some(v) => {
            if r.pos != rest.len() {
                return Err(err("trailing bytes after value"));
            }
            Ok(v)
        }
        // A type the fast reader does not know: the rest of the slice is its payload.
        None => decode_via_bson(ty, rest),
    }
}

fn decode_via_bson(ty: u8, payload: &[u8]) -> Result<Bson, CodecError> {
    let mut doc = Vec::with_capacity(payload.len() + 8);
    doc.extend_from_slice(&[0; 4]);
    doc.push(ty);
    doc.extend_from_slice(b"v\0");
    doc.extend_from_slice(payload);
    doc.push(0);
    patch_len(&mut doc, 0)?;
    let mut d = Document::from_reader(doc.as_slice())
        .map_err(|e| err(format!("cannot decode value of BSON type {ty:#04x}: {e}")))?;
    d.remove("v").ok_or_else(|| err("value vanished"))
}

fn encode_element(key: &str, v: &Bson, out: &mut Vec<u8>) -> Result<(), CodecError> {
    if key.as_bytes().contains(&0) {
        return Err(err(format!("document key {key:?} contains a NUL byte")));
    }
    let ty_pos = out.len();
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out.push(0);
    out[ty_pos] = encode_payload(v, out)?;
    Ok(())
}

fn put_string(s: &str, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let len = i32::try_from(s.len() + 1).map_err(|_| err("string too long"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    Ok(())
}

fn patch_len(out: &mut [u8], start: usize) -> Result<(), CodecError> {
    let len = i32::try_from(out.len() - start).map_err(|_| err("document too long"))?;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Array keys "0", "1", ... without allocating.
mod itoa_buf {
    pub struct Buf([u8; 20]);
    pub fn new() -> Buf {
        Buf([0; 20])
    }
    impl Buf {
        pub fn format(&mut self, mut n: usize) -> &str {
            let mut i = self.0.len();
            loop {
                i -= 1;
                self.0[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            std::str::from_utf8(&self.0[i..]).unwrap_or("0")
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| err("length overflow"))?;
        let s = self
            .b
            .get(self.pos..end)
            .ok_or_else(|| err("truncated value"))?;
        self.pos = end;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let s = self.take(N)?;
        <[u8; N]>::try_from(s).map_err(|_| err("truncated value"))
    }

    fn i32(&mut self) -> Result<i32, CodecError> {
        Ok(i32::from_le_bytes(self.arr()?))
    }

    fn cstr(&mut self) -> Result<&'a str, CodecError> {
        let rest = self.b.get(self.pos..).ok_or_else(|| err("truncated key"))?;
        let nul = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| err("unterminated key"))?;
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| err("key is not UTF-8"))?;
        self.pos += nul + 1;
        Ok(s)
    }

    /// A value of element type `ty`; `None` for types left to the bson crate.
    fn value(&mut self, ty: u8) -> Result<Option<Bson>, CodecError> {
        Ok(Some(match ty {
            0x01 => Bson::Double(f64::from_le_bytes(self.arr()?)),
            0x02 => {
                let len =
                    usize::try_from(self.i32()?).map_err(|_| err("negative string length"))?;
                let s = self.take(len)?;
                let (nul, text) = s.split_last().ok_or_else(|| err("empty string encoding"))?;
                if *nul != 0 {
                    return Err(err("string not NUL-terminated"));
                }
                Bson::String(
                    std::str::from_utf8(text)
                        .map_err(|_| err("string is not UTF-8"))?
                        .to_owned(),
                )
            }
            0x03 => Bson::Document(self.document()?),
            0x04 => Bson::Array(self.document()?.into_iter().map(|(_, v)| v).collect()),
            0x05 => {
                let len =
                    usize::try_from(self.i32()?).map_err(|_| err("negative binary length"))?;
                let [subtype] = self.arr::<1>()?;
                let mut bytes = self.take(len)?;
                // Subtype 0x02 ("binary old") holds its own length before the data, as the
                // encoder (through the bson crate) writes it; found by the plugin-bytes fuzz
                // target (a value changed across a round trip).
                if subtype == 0x02 {
                    let (inner, data) = bytes
                        .split_first_chunk::<4>()
                        .ok_or_else(|| err("old binary without its inner length"))?;
                    if usize::try_from(i32::from_le_bytes(*inner)).ok() != Some(data.len()) {
                        return Err(err("old binary inner length does not match"));
                    }
                    bytes = data;
                }
                let bytes = bytes.to_vec();
                Bson::Binary(Binary {
                    subtype: BinarySubtype::from(subtype),
                    bytes,
                })
            }
            0x08 => match self.arr::<1>()? {
                [0] => Bson::Boolean(false),
                [1] => Bson::Boolean(true),
                _ => return Err(err("invalid boolean")),
            },
            0x09 => Bson::DateTime(bson::DateTime::from_millis(i64::from_le_bytes(self.arr()?))),
            0x0A => Bson::Null,
            0x10 => Bson::Int32(self.i32()?),
            0x12 => Bson::Int64(i64::from_le_bytes(self.arr()?)),
            _ => return Ok(None),
        }))
    }

    fn document(&mut self) -> Result<Document, CodecError> {
        let start = self.pos;
        let len = usize::try_from(self.i32()?).map_err(|_| err("negative document length"))?;
        let end = start
            .checked_add(len)
            .ok_or_else(|| err("length overflow"))?;
        if len < 5 || end > self.b.len() {
            return Err(err("bad document length"));
        }
        let mut d = Document::new();
        loop {
            let [ty] = self.arr::<1>()?;
            if ty == 0 {
                break;
            }
            let key = self.cstr()?.to_owned();
            match self.value(ty)? {
                Some(v) => {
                    d.insert(key, v);
                }
                None => {
                    // Unknown element type inside: decode this whole document with bson.
                    let whole = self.b.get(start..end).ok_or_else(|| err("bad document"))?;
                    self.pos = end;
                    return Document::from_reader(whole)
                        .map_err(|e| err(format!("cannot decode document: {e}")));
                }
            }
        }
        if self.pos != end {
            return Err(err("document length does not match its contents"));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;
    use chrono::TimeZone;

    fn round_trip(v: Bson) {
        let mut buf = Vec::new();
        encode_value(&v, &mut buf).unwrap();
        assert_eq!(decode_value(&buf).unwrap(), v, "bytes {buf:?}");
    }

    #[test]
    fn values_round_trip() {
        round_trip(Bson::Int32(5));
        round_trip(Bson::Int64(1 << 40));
        round_trip(Bson::Double(0.5));
        round_trip(Bson::String("héllo".into()));
        round_trip(Bson::Null);
        round_trip(Bson::Boolean(true));
        round_trip(Bson::Array(vec![
            Bson::Int32(22),
            Bson::Int32(80),
            Bson::Int32(443),
        ]));
        round_trip(dp3_model::value::ipv4("1.2.3.4".parse().unwrap()));
        round_trip(dp3_model::value::mac(MacAddr([1, 2, 3, 4, 5, 6])));
        round_trip(Bson::DateTime(bson::DateTime::from_millis(
            1_700_000_000_123,
        )));
        round_trip(Bson::Document(
            doc! {"a": 1, "b": {"c": [1, "x", null]}, "eid": "e"},
        ));
        // rare types go through the bson crate, also nested
        round_trip(Bson::ObjectId(bson::oid::ObjectId::new()));
        round_trip(Bson::Document(
            doc! {"o": bson::oid::ObjectId::new(), "n": 1},
        ));
        round_trip(Bson::Decimal128(bson::Decimal128::from_bytes([7; 16])));
    }

    #[test]
    fn encoding_is_standard_bson() {
        let d = doc! {"a": 1, "b": [true, 2.5], "c": {"d": "x"}};
        let mut ours = Vec::new();
        encode_document(&d, &mut ours).unwrap();
        assert_eq!(ours, d.to_vec().unwrap());
        assert_eq!(decode_document(&ours).unwrap(), d);
    }

    #[test]
    fn malformed_bytes_are_errors() {
        for bad in [
            &[][..],
            &[0x02, 5, 0, 0, 0, b'a'],
            &[0x03, 3, 0, 0, 0],
            &[0x08, 7],
            &[0x10, 1],
        ] {
            assert!(decode_value(bad).is_err(), "{bad:?}");
        }
        assert!(
            decode_eid(&EidView {
                kind: EID_IPV4,
                int: 0,
                bytes: RSlice::from_slice(&[1, 2])
            })
            .is_err()
        );
        assert!(
            decode_eid(&EidView {
                kind: 9,
                int: 0,
                bytes: RSlice::from_slice(&[])
            })
            .is_err()
        );
    }

    #[test]
    fn tasks_round_trip() {
        let t1 = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
            + chrono::TimeDelta::microseconds(123_456);
        for eid in [
            Eid::String("e1".into()),
            Eid::Int(-7),
            Eid::Ipv4("10.0.0.1".parse().unwrap()),
            Eid::Ipv6("2001:db8::1".parse().unwrap()),
            Eid::Mac(MacAddr([1, 2, 3, 4, 5, 6])),
        ] {
            let task = DataPointTask {
                etype: "ip".into(),
                eid: eid.clone(),
                data_points: vec![
                    DataPoint {
                        etype: "ip".into(),
                        eid: eid.clone(),
                        attr: "ports".into(),
                        src: Some("scan".into()),
                        v: Bson::Array(vec![Bson::Int32(22)]),
                        c: 0.5,
                        t1: Some(t1),
                        t2: Some(t1),
                    },
                    DataPoint {
                        etype: "ip".into(),
                        eid: eid.clone(),
                        attr: "hostname".into(),
                        src: None,
                        v: Bson::String("h".into()),
                        c: 1.0,
                        t1: None,
                        t2: None,
                    },
                ],
                tags: vec![Bson::String("x".into())],
                ttl_tokens: Some([("data".to_string(), t1)].into_iter().collect()),
                delete: false,
            };
            let back = with_task_view(&task, decode_task).unwrap().unwrap();
            // ttl tokens travel as BSON datetimes (millisecond precision)
            let mut expected = task.clone();
            expected.ttl_tokens = Some(
                [(
                    "data".to_string(),
                    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
                        + chrono::TimeDelta::milliseconds(123),
                )]
                .into_iter()
                .collect(),
            );
            assert_eq!(back, expected);
        }
    }
}
