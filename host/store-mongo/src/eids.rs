//! Typed eids from their canonical text (link-cache keys `"<etype>#<eid>"`).
//!
//! MongoDB keeps eids typed (`_id` is a string, int or Binary 129/130/131), but DP3's link
//! cache stores them as text. The entity model given at open says each type's id type; for
//! entity types the store was not told about, the text is interpreted by its shape (an int,
//! an IP or MAC address in canonical form, else a string), and lookups by `_id` try every
//! interpretation at once (`$in`) so they are exact even then.

use std::collections::HashMap;

use bson::Bson;
use dp3_model::{Eid, EidType, ModelSpec};

#[derive(Debug, Clone, Default)]
pub struct EidTypes {
    types: HashMap<String, EidType>,
}

impl EidTypes {
    pub fn from_model(model: &ModelSpec) -> EidTypes {
        EidTypes {
            types: model
                .entities
                .iter()
                .map(|(etype, et)| (etype.clone(), et.spec.id_data_type))
                .collect(),
        }
    }

    pub fn get(&self, etype: &str) -> Option<EidType> {
        self.types.get(etype).copied()
    }

    /// The eid of `etype` written as `text`.
    pub fn parse(&self, etype: &str, text: &str) -> Eid {
        match self.get(etype) {
            Some(ty) => Eid::parse(ty, text).unwrap_or_else(|_| Eid::String(text.to_owned())),
            None => candidates(text)
                .into_iter()
                .next()
                .unwrap_or_else(|| Eid::String(text.to_owned())),
        }
    }

    /// `_id` condition matching the eid of `etype` written as `text`.
    pub fn id_condition(&self, etype: &str, text: &str) -> Bson {
        match self.get(etype) {
            Some(_) => self.parse(etype, text).to_bson(),
            None => {
                let all: Vec<Bson> = candidates(text).iter().map(Eid::to_bson).collect();
                Bson::Document(bson::doc! {"$in": all})
            }
        }
    }
}

/// Every typed eid whose canonical text is exactly `text`, most specific first (the
/// string interpretation is always last).
pub fn candidates(text: &str) -> Vec<Eid> {
    let mut out = Vec::new();
    for ty in [EidType::Int, EidType::Ipv4, EidType::Ipv6, EidType::Mac] {
        if let Ok(e) = Eid::parse(ty, text)
            && e.to_string() == text
        {
            out.push(e);
        }
    }
    out.push(Eid::String(text.to_owned()));
    out
}

/// Split a link-cache key `"<etype>#<eid>"` (entity types never contain `#`).
pub fn split_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('#')
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn candidates_by_shape() {
        assert_eq!(
            candidates("12"),
            vec![Eid::Int(12), Eid::String("12".into())]
        );
        assert_eq!(candidates("012"), vec![Eid::String("012".into())]);
        assert_eq!(
            candidates("1.2.3.4"),
            vec![
                Eid::Ipv4("1.2.3.4".parse().expect("ip")),
                Eid::String("1.2.3.4".into())
            ]
        );
        assert_eq!(candidates("bus-1"), vec![Eid::String("bus-1".into())]);
    }

    #[test]
    fn known_types_parse_exactly() {
        let mut t = EidTypes::default();
        t.types.insert("bus".into(), EidType::String);
        t.types.insert("A".into(), EidType::Int);
        assert_eq!(t.parse("bus", "12"), Eid::String("12".into()));
        assert_eq!(t.parse("A", "12"), Eid::Int(12));
        assert_eq!(t.id_condition("A", "12"), Bson::Int32(12));
        assert_eq!(
            t.id_condition("unknown", "12"),
            Bson::Document(doc! {"$in": [12, "12"]})
        );
        assert_eq!(split_key("bus#a#b"), Some(("bus", "a#b")));
    }
}
