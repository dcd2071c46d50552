//! Datapoints and tasks: the unit of ingestion (data-model.md §4, core.md §2).
//!
//! These are the *validated* forms. Validation against the entity model (from API JSON, from
//! queue messages, from plugin outputs) lives in [`crate::validate`].

use bson::{Bson, Document, doc};
use chrono::{DateTime, Utc};
use indexmap::IndexMap;

use crate::eid::Eid;
use crate::hash::entity_hash_of;
use crate::value;

/// One validated datapoint.
///
/// * plain: `t1`/`t2` are `None`;
/// * observations: `t1` set, `t2 >= t1` (defaults to `t1`), `c` in `0..=1`;
/// * timeseries: `t1`/`t2` set, `v` is a document `{series: [values]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPoint {
    pub etype: String,
    pub eid: Eid,
    pub attr: String,
    pub src: Option<String>,
    pub v: Bson,
    pub c: f64,
    pub t1: Option<DateTime<Utc>>,
    pub t2: Option<DateTime<Utc>>,
}

/// A task: datapoints of one entity, TTL tokens, or a delete request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DataPointTask {
    pub etype: String,
    pub eid: Eid,
    pub data_points: Vec<DataPoint>,
    /// Carried along, never interpreted by the core.
    pub tags: Vec<Bson>,
    pub ttl_tokens: Option<IndexMap<String, DateTime<Utc>>>,
    pub delete: bool,
}

impl Default for Eid {
    fn default() -> Self {
        Eid::String(String::new())
    }
}

/// A stored document could not be read back as a datapoint or task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {reason}")]
pub struct DecodeError {
    pub what: &'static str,
    pub reason: String,
}

fn decode_err(what: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError {
        what,
        reason: reason.into(),
    }
}

fn opt_time(t: Option<DateTime<Utc>>) -> Bson {
    t.map_or(Bson::Null, value::time)
}

impl DataPoint {
    /// The raw-log document, keys in DP3's order: `etype, eid, attr, src, v, c, t1, t2`.
    pub fn to_document(&self) -> Document {
        doc! {
            "etype": &self.etype,
            "eid": self.eid.to_bson(),
            "attr": &self.attr,
            "src": self.src.as_deref().map_or(Bson::Null, |s| Bson::String(s.to_owned())),
            "v": self.v.clone(),
            "c": self.c,
            "t1": opt_time(self.t1),
            "t2": opt_time(self.t2),
        }
    }

    /// Read a document written by [`DataPoint::to_document`].
    pub fn from_document(d: &Document) -> Result<DataPoint, DecodeError> {
        const W: &str = "datapoint";
        let s = |k: &str| {
            d.get_str(k)
                .map(str::to_owned)
                .map_err(|_| decode_err(W, format!("'{k}' is not a string")))
        };
        let t = |k: &str| match d.get(k) {
            None | Some(Bson::Null) => Ok(None),
            Some(v) => value::as_time(v)
                .map(Some)
                .ok_or_else(|| decode_err(W, format!("'{k}' is not a datetime"))),
        };
        Ok(DataPoint {
            etype: s("etype")?,
            eid: d
                .get("eid")
                .and_then(Eid::from_bson)
                .ok_or_else(|| decode_err(W, "'eid' is missing or not an eid"))?,
            attr: s("attr")?,
            src: match d.get("src") {
                None | Some(Bson::Null) => None,
                Some(Bson::String(s)) => Some(s.clone()),
                Some(_) => return Err(decode_err(W, "'src' is not a string")),
            },
            v: d.get("v").cloned().unwrap_or(Bson::Null),
            c: match d.get("c") {
                None | Some(Bson::Null) => 1.0,
                Some(v) => value::as_f64(v).ok_or_else(|| decode_err(W, "'c' is not a number"))?,
            },
            t1: t("t1")?,
            t2: t("t2")?,
        })
    }
}

impl DataPointTask {
    /// `"<etype>:<eid>"`, the key tasks are routed and serialised by.
    pub fn routing_key(&self) -> String {
        format!("{}:{}", self.etype, self.eid)
    }

    /// DP3's partition hash of the routing key.
    pub fn hash(&self) -> u16 {
        entity_hash_of(&self.etype, &self.eid)
    }

    /// True when the task carries nothing (DP3 rejects such tasks outside synthetic contexts).
    pub fn is_empty(&self) -> bool {
        self.data_points.is_empty()
            && self.ttl_tokens.as_ref().is_none_or(|t| t.is_empty())
            && !self.delete
    }

    /// The task as a BSON document (used by the accept log and across the plugin boundary).
    pub fn to_document(&self) -> Document {
        let mut d = doc! {
            "etype": &self.etype,
            "eid": self.eid.to_bson(),
            "data_points": self.data_points.iter().map(|dp| Bson::Document(dp.to_document())).collect::<Vec<_>>(),
        };
        if !self.tags.is_empty() {
            d.insert("tags", self.tags.clone());
        }
        if let Some(tokens) = &self.ttl_tokens {
            let t: Document = tokens
                .iter()
                .map(|(k, v)| (k.clone(), value::time(*v)))
                .collect();
            d.insert("ttl_tokens", t);
        }
        if self.delete {
            d.insert("delete", true);
        }
        d
    }

    /// Read a document written by [`DataPointTask::to_document`]. This checks shape only;
    /// validation against the model is [`crate::validate`]'s job.
    pub fn from_document(d: &Document) -> Result<DataPointTask, DecodeError> {
        const W: &str = "task";
        let etype = d
            .get_str("etype")
            .map_err(|_| decode_err(W, "'etype' is not a string"))?
            .to_owned();
        let eid = d
            .get("eid")
            .and_then(Eid::from_bson)
            .ok_or_else(|| decode_err(W, "'eid' is missing or not an eid"))?;
        let data_points = match d.get("data_points") {
            None | Some(Bson::Null) => Vec::new(),
            Some(Bson::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Bson::Document(dp) => DataPoint::from_document(dp)
                        .map_err(|e| decode_err(W, format!("data_points[{i}]: {}", e.reason))),
                    _ => Err(decode_err(W, format!("data_points[{i}] is not a document"))),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(decode_err(W, "'data_points' is not an array")),
        };
        let tags = match d.get("tags") {
            None | Some(Bson::Null) => Vec::new(),
            Some(Bson::Array(a)) => a.clone(),
            Some(_) => return Err(decode_err(W, "'tags' is not an array")),
        };
        let ttl_tokens = match d.get("ttl_tokens") {
            None | Some(Bson::Null) => None,
            Some(Bson::Document(t)) => Some(
                t.iter()
                    .map(|(k, v)| {
                        value::as_time(v).map(|t| (k.clone(), t)).ok_or_else(|| {
                            decode_err(W, format!("ttl token '{k}' is not a datetime"))
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => return Err(decode_err(W, "'ttl_tokens' is not a document")),
        };
        let delete = match d.get("delete") {
            None | Some(Bson::Null) => false,
            Some(Bson::Boolean(b)) => *b,
            Some(_) => return Err(decode_err(W, "'delete' is not a bool")),
        };
        Ok(DataPointTask {
            etype,
            eid,
            data_points,
            tags,
            ttl_tokens,
            delete,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn task_document_round_trip() {
        let t1 = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let task = DataPointTask {
            etype: "ip".into(),
            eid: Eid::Ipv4("1.2.3.4".parse().unwrap()),
            data_points: vec![DataPoint {
                etype: "ip".into(),
                eid: Eid::Ipv4("1.2.3.4".parse().unwrap()),
                attr: "open_ports".into(),
                src: Some("scan".into()),
                v: Bson::Int32(22),
                c: 0.5,
                t1: Some(t1),
                t2: Some(t1),
            }],
            tags: vec![Bson::String("x".into())],
            ttl_tokens: Some([("data".to_string(), t1)].into_iter().collect()),
            delete: false,
        };
        let d = task.to_document();
        assert_eq!(DataPointTask::from_document(&d).unwrap(), task);
        assert_eq!(task.routing_key(), "ip:1.2.3.4");
        assert_eq!(task.hash(), 32693);
        assert!(!task.is_empty());
    }

    #[test]
    fn malformed_documents_are_errors_not_panics() {
        assert!(DataPointTask::from_document(&doc! {"etype": 1}).is_err());
        assert!(
            DataPointTask::from_document(&doc! {"etype": "a", "eid": "x", "data_points": [1]})
                .is_err()
        );
        assert!(
            DataPointTask::from_document(&doc! {"etype": "a", "eid": "x", "ttl_tokens": {"a": 1}})
                .is_err()
        );
    }
}
