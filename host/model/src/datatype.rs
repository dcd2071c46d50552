//! The DP3 data-type system (data-model.md §3): the type grammar and the parsed form.
//!
//! Parsing (`DataType::parse`) and value validation live next to this type (see
//! `datatype/parse.rs` and `validate.rs`).

use bson::Bson;

/// Primitive data types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Primitive {
    Tag,
    Binary,
    String,
    Int,
    Int64,
    Float,
    Time,
    Ipv4,
    Ipv6,
    Mac,
    Special,
    Json,
}

impl Primitive {
    pub const ALL: [Primitive; 12] = [
        Primitive::Tag,
        Primitive::Binary,
        Primitive::String,
        Primitive::Int,
        Primitive::Int64,
        Primitive::Float,
        Primitive::Time,
        Primitive::Ipv4,
        Primitive::Ipv6,
        Primitive::Mac,
        Primitive::Special,
        Primitive::Json,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Primitive::Tag => "tag",
            Primitive::Binary => "binary",
            Primitive::String => "string",
            Primitive::Int => "int",
            Primitive::Int64 => "int64",
            Primitive::Float => "float",
            Primitive::Time => "time",
            Primitive::Ipv4 => "ipv4",
            Primitive::Ipv6 => "ipv6",
            Primitive::Mac => "mac",
            Primitive::Special => "special",
            Primitive::Json => "json",
        }
    }

    pub fn from_name(s: &str) -> Option<Primitive> {
        Primitive::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// One field of a `dict<...>` type.
#[derive(Debug, Clone, PartialEq)]
pub struct DictField {
    pub name: String,
    pub optional: bool,
    pub ty: Primitive,
}

/// A parsed data type.
#[derive(Debug, Clone, PartialEq)]
pub enum DataType {
    Primitive(Primitive),
    /// `category<base; v1, v2, ...>`: members are the converted values of the base type.
    Category {
        base: Primitive,
        members: Vec<Bson>,
    },
    /// `link<etype>`, `link<etype,data>`, optionally `;mirror=name`.
    Link {
        etype: String,
        data: Option<Box<DataType>>,
        mirror: Option<String>,
    },
    /// `array<elem>` (elem: primitive or link).
    Array(Box<DataType>),
    /// `set<elem>` (elem: primitive or link). DP3 keeps duplicates and order.
    Set(Box<DataType>),
    /// `dict<k:type,k2?:type>`; later duplicate keys replace earlier ones.
    Dict(Vec<DictField>),
}

impl DataType {
    /// `link<...>` itself (not an array/set of links).
    pub fn is_link(&self) -> bool {
        matches!(self, DataType::Link { .. })
    }

    /// A link, or an array/set of links ("relation" in DP3 terms).
    pub fn is_relation(&self) -> bool {
        self.link_target().is_some()
    }

    /// The target entity type of a relation (link or array/set of links).
    pub fn link_target(&self) -> Option<&str> {
        match self {
            DataType::Link { etype, .. } => Some(etype),
            DataType::Array(e) | DataType::Set(e) => match e.as_ref() {
                DataType::Link { etype, .. } => Some(etype),
                _ => None,
            },
            _ => None,
        }
    }

    /// Element type of an array/set.
    pub fn elem_type(&self) -> Option<&DataType> {
        match self {
            DataType::Array(e) | DataType::Set(e) => Some(e),
            _ => None,
        }
    }

    pub fn is_iterable(&self) -> bool {
        self.elem_type().is_some()
    }
}
