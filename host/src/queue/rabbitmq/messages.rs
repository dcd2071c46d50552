//! Wire formats of the non-task messages DP3 sends over RabbitMQ: control actions (core.md §7)
//! and snapshot-run messages (core.md §5.3). Both are compact JSON, as pydantic's
//! `model_dump_json` writes them, so DP3's Python processes and ours understand each other.

use chrono::{DateTime, Utc};
use dp3_model::time::parse_datetime_json;
use dp3_model::value::format_api_datetime;
use dp3_model::{Eid, ModelSpec, dp3_hash};
use serde_json::{Map, Value as Json};

use crate::queue::ControlAction;

/// A message body that is not a valid control or snapshot message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} message: {reason}")]
pub struct MessageError {
    /// `"control"` or `"snapshot"`.
    pub what: &'static str,
    pub reason: String,
}

fn control_err(reason: impl Into<String>) -> MessageError {
    MessageError {
        what: "control",
        reason: reason.into(),
    }
}

fn snapshot_err(reason: impl Into<String>) -> MessageError {
    MessageError {
        what: "snapshot",
        reason: reason.into(),
    }
}

/// `{"action":"<name>","kwargs":{...}}`, DP3's `ControlMessage`.
pub fn control_to_json(action: &ControlAction) -> String {
    let mut kwargs = Map::new();
    match action {
        ControlAction::MakeSnapshots => {}
        ControlAction::RefreshOnEntityCreation { etype } => {
            kwargs.insert("etype".into(), Json::String(etype.clone()));
        }
        ControlAction::RefreshModuleConfig { module } => {
            kwargs.insert("module".into(), Json::String(module.clone()));
        }
    }
    let mut m = Map::new();
    m.insert("action".into(), Json::String(action.name().to_owned()));
    m.insert("kwargs".into(), Json::Object(kwargs));
    Json::Object(m).to_string()
}

/// Parse a control message. DP3 calls the handler with `**kwargs`, so a missing or extra
/// keyword argument is an error there (a `TypeError` the consumer logs); we reject it here.
pub fn control_from_json(body: &[u8]) -> Result<ControlAction, MessageError> {
    let json: Json = serde_json::from_slice(body).map_err(|e| control_err(e.to_string()))?;
    let Json::Object(mut m) = json else {
        return Err(control_err("the message is not a JSON object"));
    };
    let action = match m.remove("action") {
        Some(Json::String(s)) => s,
        Some(other) => return Err(control_err(format!("'action' is not a string: {other}"))),
        None => return Err(control_err("'action' is missing")),
    };
    let mut kwargs = match m.remove("kwargs") {
        None | Some(Json::Null) => Map::new(),
        Some(Json::Object(k)) => k,
        Some(other) => return Err(control_err(format!("'kwargs' is not an object: {other}"))),
    };
    let mut take_string = |key: &str| -> Result<String, MessageError> {
        match kwargs.remove(key) {
            Some(Json::String(s)) => Ok(s),
            Some(other) => Err(control_err(format!(
                "kwargs.{key} of '{action}' is not a string: {other}"
            ))),
            None => Err(control_err(format!(
                "'{action}' requires the keyword argument '{key}'"
            ))),
        }
    };
    let parsed = match action.as_str() {
        "make_snapshots" => ControlAction::MakeSnapshots,
        "refresh_on_entity_creation" => ControlAction::RefreshOnEntityCreation {
            etype: take_string("etype")?,
        },
        "refresh_module_config" => ControlAction::RefreshModuleConfig {
            module: take_string("module")?,
        },
        other => return Err(control_err(format!("unknown action '{other}'"))),
    };
    if let Some(extra) = kwargs.keys().next() {
        return Err(control_err(format!(
            "'{action}' got an unexpected keyword argument '{extra}'"
        )));
    }
    Ok(parsed)
}

/// The `type` of a snapshot-run message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMessageType {
    /// Run snapshot init hooks.
    RunStart,
    /// Linkless snapshots of the worker's own partition (`entities` = the linked ones to skip).
    LinkedEntities,
    /// Snapshot of one linked component (`entities`).
    Task,
    /// Run snapshot finalize hooks.
    RunEnd,
}

impl SnapshotMessageType {
    pub fn name(self) -> &'static str {
        match self {
            SnapshotMessageType::RunStart => "run_start",
            SnapshotMessageType::LinkedEntities => "linked_entities",
            SnapshotMessageType::Task => "task",
            SnapshotMessageType::RunEnd => "run_end",
        }
    }

    pub fn from_name(s: &str) -> Option<SnapshotMessageType> {
        Some(match s {
            "run_start" => SnapshotMessageType::RunStart,
            "linked_entities" => SnapshotMessageType::LinkedEntities,
            "task" => SnapshotMessageType::Task,
            "run_end" => SnapshotMessageType::RunEnd,
            _ => return None,
        })
    }
}

/// DP3's `Snapshot` message:
/// `{"entities":[["A",1],["B","b1"]],"time":"2025-01-01T00:00:00Z","type":"task","final":true}`.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotMessage {
    pub kind: SnapshotMessageType,
    /// The snapshot time of the whole run.
    pub time: DateTime<Utc>,
    /// `(etype, eid)` pairs (empty for `run_start`/`run_end`).
    pub entities: Vec<(String, Eid)>,
    /// Set on the last `task` message of a run.
    pub is_final: bool,
}

impl SnapshotMessage {
    /// A message without entities (`run_start`, `run_end`).
    pub fn new(kind: SnapshotMessageType, time: DateTime<Utc>) -> SnapshotMessage {
        SnapshotMessage {
            kind,
            time,
            entities: Vec::new(),
            is_final: false,
        }
    }

    /// `"A:1-B:b1"`: the entity keys joined with `-` (core.md §1.5).
    pub fn routing_key(&self) -> String {
        self.entities
            .iter()
            .map(|(etype, eid)| format!("{etype}:{eid}"))
            .collect::<Vec<_>>()
            .join("-")
    }

    /// DP3's hash of [`Self::routing_key`]; the target worker is this mod N.
    pub fn hash(&self) -> u16 {
        dp3_hash(&self.routing_key())
    }

    /// Compact JSON with all four fields, in pydantic's order.
    pub fn to_json(&self) -> String {
        let entities = self
            .entities
            .iter()
            .map(|(etype, eid)| Json::Array(vec![Json::String(etype.clone()), eid.to_json()]))
            .collect();
        let mut m = Map::new();
        m.insert("entities".into(), Json::Array(entities));
        m.insert("time".into(), Json::String(format_api_datetime(&self.time)));
        m.insert("type".into(), Json::String(self.kind.name().to_owned()));
        m.insert("final".into(), Json::Bool(self.is_final));
        Json::Object(m).to_string()
    }

    /// Parse a snapshot message; each eid is decoded with its etype's id type.
    pub fn from_json(model: &ModelSpec, body: &[u8]) -> Result<SnapshotMessage, MessageError> {
        let json: Json = serde_json::from_slice(body).map_err(|e| snapshot_err(e.to_string()))?;
        let Json::Object(m) = json else {
            return Err(snapshot_err("the message is not a JSON object"));
        };
        let kind = match m.get("type") {
            Some(Json::String(s)) => SnapshotMessageType::from_name(s)
                .ok_or_else(|| snapshot_err(format!("unknown type '{s}'")))?,
            Some(other) => return Err(snapshot_err(format!("'type' is not a string: {other}"))),
            None => return Err(snapshot_err("'type' is missing")),
        };
        let time = match m.get("time") {
            Some(t) => parse_datetime_json(t).map_err(|e| snapshot_err(format!("time: {e}")))?,
            None => return Err(snapshot_err("'time' is missing")),
        };
        let is_final = match m.get("final") {
            None | Some(Json::Null) => false,
            Some(Json::Bool(b)) => *b,
            Some(other) => return Err(snapshot_err(format!("'final' is not a bool: {other}"))),
        };
        let entities = match m.get("entities") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| parse_entity(model, i, item))
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(snapshot_err(format!("'entities' is not a list: {other}")));
            }
        };
        Ok(SnapshotMessage {
            kind,
            time,
            entities,
            is_final,
        })
    }
}

fn parse_entity(model: &ModelSpec, i: usize, item: &Json) -> Result<(String, Eid), MessageError> {
    let pair = match item {
        Json::Array(pair) if pair.len() == 2 => pair,
        other => {
            return Err(snapshot_err(format!(
                "entities[{i}] is not an [etype, eid] pair: {other}"
            )));
        }
    };
    let etype = match pair.first() {
        Some(Json::String(s)) => s.clone(),
        other => {
            return Err(snapshot_err(format!(
                "entities[{i}][0] is not a string: {other:?}"
            )));
        }
    };
    let entity = model
        .entity(&etype)
        .ok_or_else(|| snapshot_err(format!("entities[{i}]: unknown entity type '{etype}'")))?;
    let raw_eid = pair.get(1).unwrap_or(&Json::Null);
    let eid = Eid::from_json(entity.spec.id_data_type, raw_eid)
        .map_err(|e| snapshot_err(format!("entities[{i}][1] ({raw_eid}): {e}")))?;
    Ok((etype, eid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip_in_dp3_format() {
        let cases = [
            (
                ControlAction::MakeSnapshots,
                r#"{"action":"make_snapshots","kwargs":{}}"#,
            ),
            (
                ControlAction::RefreshOnEntityCreation { etype: "ip".into() },
                r#"{"action":"refresh_on_entity_creation","kwargs":{"etype":"ip"}}"#,
            ),
            (
                ControlAction::RefreshModuleConfig {
                    module: "m1".into(),
                },
                r#"{"action":"refresh_module_config","kwargs":{"module":"m1"}}"#,
            ),
        ];
        for (action, wire) in cases {
            assert_eq!(control_to_json(&action), wire);
            assert_eq!(control_from_json(wire.as_bytes()), Ok(action));
        }
        // kwargs may be omitted (pydantic default) when the action takes none.
        assert_eq!(
            control_from_json(br#"{"action":"make_snapshots"}"#),
            Ok(ControlAction::MakeSnapshots)
        );
    }

    #[test]
    fn bad_control_messages_say_what_is_wrong() {
        let cases: [(&[u8], &str); 6] = [
            (b"not json", "expected"),
            (br#"{"kwargs":{}}"#, "'action' is missing"),
            (br#"{"action":"explode"}"#, "unknown action 'explode'"),
            (
                br#"{"action":"refresh_module_config","kwargs":{}}"#,
                "requires the keyword argument 'module'",
            ),
            (
                br#"{"action":"refresh_on_entity_creation","kwargs":{"etype":5}}"#,
                "kwargs.etype",
            ),
            (
                br#"{"action":"make_snapshots","kwargs":{"x":1}}"#,
                "unexpected keyword argument 'x'",
            ),
        ];
        for (body, expected) in cases {
            let err = control_from_json(body).expect_err("must be rejected");
            assert!(
                err.to_string().contains(expected),
                "{err} should mention {expected}"
            );
        }
    }

    fn model() -> ModelSpec {
        crate::queue::rabbitmq::test_support::model()
    }

    #[test]
    fn snapshot_message_matches_dp3_example_and_routes_by_component_key() {
        let wire = r#"{"entities":[["A",1],["B","b1"]],"time":"2025-01-01T00:00:00Z","type":"task","final":true}"#;
        let msg = SnapshotMessage::from_json(&model(), wire.as_bytes()).expect("valid");
        assert_eq!(msg.kind, SnapshotMessageType::Task);
        assert!(msg.is_final);
        assert_eq!(
            msg.entities,
            vec![
                ("A".to_owned(), Eid::Int(1)),
                ("B".to_owned(), Eid::String("b1".into()))
            ]
        );
        assert_eq!(msg.to_json(), wire);
        assert_eq!(msg.routing_key(), "A:1-B:b1");
        assert_eq!(msg.hash(), 56004);
    }

    #[test]
    fn snapshot_run_messages_have_all_fields_and_eids_are_typed() {
        let t = DateTime::parse_from_rfc3339("2025-01-01T00:00:00.5Z")
            .expect("valid")
            .with_timezone(&Utc);
        let start = SnapshotMessage::new(SnapshotMessageType::RunStart, t);
        assert_eq!(
            start.to_json(),
            r#"{"entities":[],"time":"2025-01-01T00:00:00.500000Z","type":"run_start","final":false}"#
        );
        assert_eq!(
            SnapshotMessage::from_json(&model(), start.to_json().as_bytes()),
            Ok(start)
        );
        // "12" is decoded by A's int id type; a text eid for the ip type becomes an address.
        let linked = SnapshotMessage::from_json(
            &model(),
            br#"{"entities":[["A","12"],["del_ttl_ip","10.0.0.1"]],"time":"2025-01-01T00:00:00Z","type":"linked_entities"}"#,
        )
        .expect("valid");
        assert_eq!(linked.entities[0].1, Eid::Int(12));
        assert_eq!(linked.entities[1].1, Eid::Ipv4([10, 0, 0, 1].into()));
        assert!(!linked.is_final);
    }

    #[test]
    fn bad_snapshot_messages_say_what_is_wrong() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"time":"2025-01-01T00:00:00Z"}"#, "'type' is missing"),
            (
                br#"{"type":"nope","time":"2025-01-01T00:00:00Z"}"#,
                "unknown type 'nope'",
            ),
            (br#"{"type":"task","time":"yesterday"}"#, "time:"),
            (
                br#"{"type":"task","time":"2025-01-01T00:00:00Z","entities":[["Z",1]]}"#,
                "unknown entity type 'Z'",
            ),
            (
                br#"{"type":"task","time":"2025-01-01T00:00:00Z","entities":[["A","x"]]}"#,
                "entities[0][1]",
            ),
        ];
        for (body, expected) in cases {
            let err = SnapshotMessage::from_json(&model(), body).expect_err("must be rejected");
            assert!(
                err.to_string().contains(expected),
                "{err} should mention {expected}"
            );
        }
    }
}
