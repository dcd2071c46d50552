//! Compact binary encoding of the tasks of one accept-log row.
//!
//! Encoding every accepted task as a BSON document (building a `Document` per task and
//! datapoint, then serialising it) was a fifth of the CPU time of ingestion. This format is
//! written straight from the tasks: strings and values are copied once, a datapoint that
//! belongs to its task's entity (all of them, for API submissions) does not repeat the
//! entity, and times keep their full precision, so a replayed task equals the accepted one.
//! Values are stored as BSON elements (type byte + value bytes, see
//! [`dp3_model::bson_bytes`]).
//!
//! Layout (integers little endian, `str` = u32 length + UTF-8 bytes):
//!
//! ```text
//! blob  := MAGIC u32:ntasks task*
//! task  := str:etype eid u8:flags [tags] [ttl] u32:ndp dp*
//!          flags: 1 delete, 2 tags present, 4 ttl tokens present
//! tags  := value (a BSON array)
//! ttl   := u32:n (str:name time)*
//! dp    := u8:flags [str:etype eid] str:attr [str:src] value f64:c [time:t1] [time:t2]
//!          flags: 1 own entity (etype/eid follow), 2 src, 4 t1, 8 t2
//! eid   := u8:tag (0 string: str | 1 int: i64 | 2 ipv4: 4 bytes | 3 ipv6: 16 bytes |
//!          4 mac: 6 bytes)
//! time  := i64:seconds u32:nanoseconds
//! value := u8:BSON element type, u32:length, BSON value bytes
//! ```
//!
//! Rows written by older versions (one BSON document `{tasks: [...]}`) are still read.

use bson::{Bson, Document};
use chrono::{DateTime, Utc};
use dp3_model::bson_bytes;
use dp3_model::value::MacAddr;
use dp3_model::{DataPoint, DataPointTask, Eid};
use indexmap::IndexMap;

/// Starts every blob of this format ("DP3T" + format version 1).
const MAGIC: [u8; 5] = *b"DP3T\x01";

const TASK_DELETE: u8 = 1;
const TASK_TAGS: u8 = 2;
const TASK_TTL: u8 = 4;

const DP_OWN_ENTITY: u8 = 1;
const DP_SRC: u8 = 2;
const DP_T1: u8 = 4;
const DP_T2: u8 = 8;

/// A task that cannot be encoded (a document key with a NUL byte, which validation never
/// lets through).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task cannot be encoded: {0}")]
pub struct EncodeError(String);

/// Encode the tasks of one row.
pub fn encode(tasks: &[DataPointTask]) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer {
        out: Vec::with_capacity(64 + tasks.len() * 160),
    };
    w.out.extend_from_slice(&MAGIC);
    w.len(tasks.len())?;
    for t in tasks {
        w.task(t)?;
    }
    Ok(w.out)
}

/// Decode a row written by [`encode`] (or by the BSON format of older versions).
pub fn decode(blob: &[u8]) -> Result<Vec<DataPointTask>, String> {
    match blob.strip_prefix(&MAGIC) {
        Some(rest) => {
            let mut r = Reader { b: rest };
            let n = r.len()?;
            // Each task takes at least 11 bytes: bound the allocation by the input.
            let mut tasks = Vec::with_capacity(n.min(r.b.len() / 11));
            for _ in 0..n {
                tasks.push(r.task()?);
            }
            if !r.b.is_empty() {
                return Err(format!("{} trailing bytes", r.b.len()));
            }
            Ok(tasks)
        }
        None => decode_bson(blob),
    }
}

/// The format of older versions: `{tasks: [task document, ...]}`.
fn decode_bson(blob: &[u8]) -> Result<Vec<DataPointTask>, String> {
    let d: Document = bson::deserialize_from_slice(blob).map_err(|e| e.to_string())?;
    let tasks = d
        .get_array("tasks")
        .map_err(|_| "missing 'tasks' array".to_string())?;
    tasks
        .iter()
        .map(|t| match t {
            Bson::Document(td) => DataPointTask::from_document(td).map_err(|e| e.to_string()),
            _ => Err("task is not a document".to_string()),
        })
        .collect()
}

struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn len(&mut self, n: usize) -> Result<(), EncodeError> {
        let n = u32::try_from(n).map_err(|_| EncodeError("length exceeds 4 GiB".into()))?;
        self.out.extend_from_slice(&n.to_le_bytes());
        Ok(())
    }

    fn str(&mut self, s: &str) -> Result<(), EncodeError> {
        self.len(s.len())?;
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn time(&mut self, t: &DateTime<Utc>) {
        self.out.extend_from_slice(&t.timestamp().to_le_bytes());
        self.out
            .extend_from_slice(&t.timestamp_subsec_nanos().to_le_bytes());
    }

    fn eid(&mut self, eid: &Eid) -> Result<(), EncodeError> {
        match eid {
            Eid::String(s) => {
                self.out.push(0);
                self.str(s)?;
            }
            Eid::Int(i) => {
                self.out.push(1);
                self.out.extend_from_slice(&i.to_le_bytes());
            }
            Eid::Ipv4(a) => {
                self.out.push(2);
                self.out.extend_from_slice(&a.octets());
            }
            Eid::Ipv6(a) => {
                self.out.push(3);
                self.out.extend_from_slice(&a.octets());
            }
            Eid::Mac(m) => {
                self.out.push(4);
                self.out.extend_from_slice(&m.0);
            }
        }
        Ok(())
    }

    fn task(&mut self, t: &DataPointTask) -> Result<(), EncodeError> {
        self.str(&t.etype)?;
        self.eid(&t.eid)?;
        let mut flags = 0;
        if t.delete {
            flags |= TASK_DELETE;
        }
        if !t.tags.is_empty() {
            flags |= TASK_TAGS;
        }
        if t.ttl_tokens.is_some() {
            flags |= TASK_TTL;
        }
        self.out.push(flags);
        if !t.tags.is_empty() {
            // Tags are opaque values; one BSON array keeps them exactly.
            let tags = Bson::Array(t.tags.clone());
            self.value(&tags)?;
        }
        if let Some(tokens) = &t.ttl_tokens {
            self.len(tokens.len())?;
            for (name, at) in tokens {
                self.str(name)?;
                self.time(at);
            }
        }
        self.len(t.data_points.len())?;
        for dp in &t.data_points {
            self.datapoint(t, dp)?;
        }
        Ok(())
    }

    fn datapoint(&mut self, t: &DataPointTask, dp: &DataPoint) -> Result<(), EncodeError> {
        let own = dp.etype != t.etype || dp.eid != t.eid;
        let mut flags = 0;
        if own {
            flags |= DP_OWN_ENTITY;
        }
        if dp.src.is_some() {
            flags |= DP_SRC;
        }
        if dp.t1.is_some() {
            flags |= DP_T1;
        }
        if dp.t2.is_some() {
            flags |= DP_T2;
        }
        self.out.push(flags);
        if own {
            self.str(&dp.etype)?;
            self.eid(&dp.eid)?;
        }
        self.str(&dp.attr)?;
        if let Some(src) = &dp.src {
            self.str(src)?;
        }
        self.value(&dp.v)?;
        self.out.extend_from_slice(&dp.c.to_le_bytes());
        if let Some(t1) = &dp.t1 {
            self.time(t1);
        }
        if let Some(t2) = &dp.t2 {
            self.time(t2);
        }
        Ok(())
    }

    /// `u8:type u32:length bytes` of one BSON element value.
    fn value(&mut self, v: &Bson) -> Result<(), EncodeError> {
        self.out.push(v.element_type() as u8);
        let at = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        bson_bytes::write_value(&mut self.out, v).map_err(|e| EncodeError(e.to_string()))?;
        let n = self.out.len() - at - 4;
        let n = u32::try_from(n).map_err(|_| EncodeError("value exceeds 4 GiB".into()))?;
        self.out[at..at + 4].copy_from_slice(&n.to_le_bytes());
        Ok(())
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn len(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn str(&mut self) -> Result<String, String> {
        let n = self.len()?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "string is not UTF-8".to_string())
    }

    fn time(&mut self) -> Result<DateTime<Utc>, String> {
        let secs = self.i64()?;
        let nanos = u32::from_le_bytes(self.array()?);
        DateTime::from_timestamp(secs, nanos).ok_or_else(|| "time out of range".to_string())
    }

    fn eid(&mut self) -> Result<Eid, String> {
        Ok(match self.u8()? {
            0 => Eid::String(self.str()?),
            1 => Eid::Int(self.i64()?),
            2 => Eid::Ipv4(self.array::<4>()?.into()),
            3 => Eid::Ipv6(self.array::<16>()?.into()),
            4 => Eid::Mac(MacAddr(self.array()?)),
            tag => return Err(format!("unknown eid tag {tag}")),
        })
    }

    fn value(&mut self) -> Result<Bson, String> {
        let ty = self.u8()?;
        let n = self.len()?;
        let bytes = self.take(n)?;
        // Wrap the element as `{v: value}` and let the bson crate parse (and check) it.
        let len = i32::try_from(n + 8).map_err(|_| "value too large".to_string())?;
        let mut d = Vec::with_capacity(n + 8);
        d.extend_from_slice(&len.to_le_bytes());
        d.push(ty);
        d.extend_from_slice(b"v\0");
        d.extend_from_slice(bytes);
        d.push(0);
        let mut doc = Document::from_reader(d.as_slice()).map_err(|e| e.to_string())?;
        doc.remove("v").ok_or_else(|| "value missing".to_string())
    }

    fn task(&mut self) -> Result<DataPointTask, String> {
        let etype = self.str()?;
        let eid = self.eid()?;
        let flags = self.u8()?;
        let tags = if flags & TASK_TAGS != 0 {
            match self.value()? {
                Bson::Array(tags) => tags,
                _ => return Err("tags are not an array".into()),
            }
        } else {
            Vec::new()
        };
        let ttl_tokens = if flags & TASK_TTL != 0 {
            let n = self.len()?;
            let mut tokens = IndexMap::with_capacity(n.min(self.b.len() / 16));
            for _ in 0..n {
                let name = self.str()?;
                tokens.insert(name, self.time()?);
            }
            Some(tokens)
        } else {
            None
        };
        let n = self.len()?;
        // Each datapoint takes at least 18 bytes: bound the allocation by the input.
        let mut data_points = Vec::with_capacity(n.min(self.b.len() / 18));
        for _ in 0..n {
            data_points.push(self.datapoint(&etype, &eid)?);
        }
        Ok(DataPointTask {
            etype,
            eid,
            data_points,
            tags,
            ttl_tokens,
            delete: flags & TASK_DELETE != 0,
        })
    }

    fn datapoint(&mut self, etype: &str, eid: &Eid) -> Result<DataPoint, String> {
        let flags = self.u8()?;
        let (etype, eid) = if flags & DP_OWN_ENTITY != 0 {
            (self.str()?, self.eid()?)
        } else {
            (etype.to_owned(), eid.clone())
        };
        let attr = self.str()?;
        let src = if flags & DP_SRC != 0 {
            Some(self.str()?)
        } else {
            None
        };
        let v = self.value()?;
        let c = f64::from_le_bytes(self.array()?);
        let t1 = if flags & DP_T1 != 0 {
            Some(self.time()?)
        } else {
            None
        };
        let t2 = if flags & DP_T2 != 0 {
            Some(self.time()?)
        } else {
            None
        };
        Ok(DataPoint {
            etype,
            eid,
            attr,
            src,
            v,
            c,
            t1,
            t2,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::spec::BinarySubtype;
    use chrono::TimeZone;

    fn sample() -> Vec<DataPointTask> {
        let t = Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap();
        let ip = Eid::Ipv4("10.0.0.1".parse().unwrap());
        let dp = |attr: &str, v: Bson| DataPoint {
            etype: "ip".into(),
            eid: ip.clone(),
            attr: attr.into(),
            src: Some("scan".into()),
            v,
            c: 0.75,
            t1: Some(t),
            t2: Some(t + chrono::TimeDelta::seconds(60)),
        };
        vec![
            DataPointTask {
                etype: "ip".into(),
                eid: ip.clone(),
                data_points: vec![
                    dp("a", Bson::Int32(-5)),
                    dp("b", Bson::Int64(1 << 40)),
                    dp("c", Bson::Double(f64::NAN)),
                    dp("d", Bson::String("žluť\0ouček".into())),
                    dp("e", Bson::Boolean(true)),
                    dp("f", Bson::Null),
                    dp("g", Bson::DateTime(bson::DateTime::from_millis(-5))),
                    dp(
                        "h",
                        bson::bson!({"eid": "x", "data": [1, 2.5, {"k": null}], "e": {}}),
                    ),
                    dp("i", dp3_model::value::ipv6("::1".parse().unwrap())),
                    dp(
                        "j",
                        Bson::Binary(bson::Binary {
                            subtype: BinarySubtype::Generic,
                            bytes: vec![1, 2, 3],
                        }),
                    ),
                    dp(
                        "k",
                        Bson::Binary(bson::Binary {
                            subtype: BinarySubtype::Uuid,
                            bytes: vec![7; 16],
                        }),
                    ),
                    dp(
                        "l",
                        Bson::Timestamp(bson::Timestamp {
                            time: 5,
                            increment: 6,
                        }),
                    ),
                    dp(
                        "m",
                        Bson::ObjectId(bson::oid::ObjectId::from_bytes([9; 12])),
                    ),
                    dp("n", Bson::Array(vec![])),
                ],
                tags: vec![Bson::String("t".into()), Bson::Int32(1)],
                ttl_tokens: Some([("data".to_string(), t)].into_iter().collect()),
                delete: false,
            },
            DataPointTask {
                etype: "mac".into(),
                eid: Eid::Mac(MacAddr([1, 2, 3, 4, 5, 6])),
                data_points: vec![DataPoint {
                    // a datapoint of another entity (hook outputs are not trusted)
                    etype: "dev".into(),
                    eid: Eid::Int(-7),
                    attr: "x".into(),
                    src: None,
                    v: Bson::Int32(1),
                    c: 1.0,
                    t1: None,
                    t2: None,
                }],
                ..Default::default()
            },
            DataPointTask {
                etype: "h".into(),
                eid: Eid::String(String::new()),
                delete: true,
                ..Default::default()
            },
            DataPointTask {
                etype: "v6".into(),
                eid: Eid::Ipv6("2001:db8::1".parse().unwrap()),
                ttl_tokens: Some(IndexMap::new()),
                ..Default::default()
            },
        ]
    }

    /// NaN != NaN: compare through the debug rendering.
    fn same(a: &[DataPointTask], b: &[DataPointTask]) {
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn round_trip_is_exact() {
        let tasks = sample();
        let blob = encode(&tasks).unwrap();
        same(&decode(&blob).unwrap(), &tasks);
        assert_eq!(decode(&encode(&[]).unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn legacy_bson_rows_are_read() {
        use bson::doc;
        let tasks = &sample()[1..3];
        let d = doc! {
            "tasks": tasks.iter().map(|t| Bson::Document(t.to_document())).collect::<Vec<_>>(),
        };
        let blob = bson::serialize_to_vec(&d).unwrap();
        same(&decode(&blob).unwrap(), tasks);
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let blob = encode(&sample()).unwrap();
        for cut in [5, 9, 20, blob.len() / 2, blob.len() - 1] {
            assert!(decode(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = blob.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
        assert!(decode(b"junk").is_err());
        // flipping bytes never panics
        for i in 0..blob.len() {
            let mut b = blob.clone();
            b[i] ^= 0xff;
            let _ = decode(&b);
        }
    }

    #[test]
    fn nul_keys_are_refused() {
        let mut tasks = sample();
        tasks[0].data_points[0].v = bson::bson!({"a\0b": 1});
        assert!(encode(&tasks).is_err());
    }
}
