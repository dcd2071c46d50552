//! The DP3 data-type system (data-model.md §3): the type grammar and the parsed form.
//!
//! `DataType::parse` implements DP3's grammar exactly (first match wins: primitive, array,
//! set, link, dict, category), with two deliberate changes, documented in
//! docs/configuration.md: `link<T,D;mirror=M>` is accepted without the whitespace DP3 needs
//! before `;`, and categories are restricted to `string`/`int` bases (DP3 converts members
//! with the base type's constructor, which silently misbehaves for other bases).
//! Value validation lives in `validate.rs`.

use std::fmt;
use std::sync::LazyLock;

use bson::Bson;
use regex::Regex;

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

/// Why a data-type string is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DataTypeError {
    pub message: String,
    /// What would have been accepted.
    pub expected: String,
    /// The nearest primitive name for a typo (`strng` → `string`).
    pub suggestion: Option<String>,
}

/// What a data type may be, for error messages.
pub const DATA_TYPE_EXPECTED: &str = "a primitive (tag, binary, string, int, int64, float, \
time, ipv4, ipv6, mac, special, json), array<T>, set<T>, link<etype[,data][;mirror=name]>, \
dict<key:type,key?:type> or category<string|int;v1,v2>";

fn unsupported(s: &str) -> DataTypeError {
    let lower = s.trim().to_lowercase();
    let suggestion = Primitive::ALL
        .iter()
        .map(|p| (strsim::jaro_winkler(&lower, p.name()), p.name()))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n.to_owned());
    DataTypeError {
        message: format!("data type '{s}' is not supported"),
        expected: DATA_TYPE_EXPECTED.into(),
        suggestion,
    }
}

fn error(message: String, expected: &str) -> DataTypeError {
    DataTypeError {
        message,
        expected: expected.into(),
        suggestion: None,
    }
}

static ARRAY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^array<(.+)>$").expect("static regex"));
static SET: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^set<(.+)>$").expect("static regex"));
static LINK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^link\s*<\s*(?P<etype>\w+)\s*(?:,\s*(?P<data>\S+)\s*)?(?:;\s*mirror=(?P<mirror>\S+)\s*)?>$",
    )
    .expect("static regex")
});
/// Our extension: `D;mirror=M` captured as the data part (DP3 needs `D ;mirror=M`).
static DATA_MIRROR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?P<data>.+);\s*mirror=(?P<mirror>\S+)$").expect("static regex")
});
static DICT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^dict\s*<(\s*(\w+\??:\w+,\s*)*(\w+\??:\w+\s*))>$").expect("static regex")
});
static CATEGORY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^category<\s*(?P<type>\w+)\s*;\s*(?P<vals>(?:\s*\w+,\s*)*\s*\w+\s*)>$")
        .expect("static regex")
});
static ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z_][a-zA-Z0-9_-]*$").expect("static regex"));

/// Angle brackets balanced (used to split `D;mirror=M` only at the top level of `D`).
fn balanced(s: &str) -> bool {
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0
}

impl DataType {
    /// Parse a data-type string (data-model.md §3.1). Link targets are not checked here (the
    /// model builder checks them against the configured entity types).
    pub fn parse(s: &str) -> Result<DataType, DataTypeError> {
        if let Some(p) = Primitive::from_name(s) {
            return Ok(DataType::Primitive(p));
        }
        for (re, what) in [(&*ARRAY, "an array"), (&*SET, "a set")] {
            if let Some(c) = re.captures(s) {
                let inner = c.get(1).map_or("", |m| m.as_str()).trim();
                let elem = DataType::parse(inner)?;
                if !matches!(elem, DataType::Primitive(_) | DataType::Link { .. }) {
                    return Err(error(
                        format!("data type {inner} is not supported as {what} element"),
                        "a primitive type or a link",
                    ));
                }
                let elem = Box::new(elem);
                return Ok(if what == "an array" {
                    DataType::Array(elem)
                } else {
                    DataType::Set(elem)
                });
            }
        }
        if let Some(c) = LINK.captures(s) {
            let etype = c.name("etype").map_or("", |m| m.as_str()).to_owned();
            let mut data = c.name("data").map(|m| m.as_str());
            let mut mirror = c.name("mirror").map(|m| m.as_str());
            if mirror.is_none()
                && let Some(d) = data
                && let Some(dm) = DATA_MIRROR.captures(d)
                && let (Some(dd), Some(mm)) = (dm.name("data"), dm.name("mirror"))
                && balanced(dd.as_str())
            {
                data = Some(dd.as_str());
                mirror = Some(mm.as_str());
            }
            let data = match data {
                Some(d) => {
                    let dt = DataType::parse(d).map_err(|e| DataTypeError {
                        message: format!("link data: {}", e.message),
                        ..e
                    })?;
                    if dt.has_mirror() {
                        return Err(error(
                            format!("a mirror is not allowed inside link data ('{d}')"),
                            "mirror=<name> only on the attribute's own link",
                        ));
                    }
                    Some(Box::new(dt))
                }
                None => None,
            };
            if let Some(m) = mirror
                && !ID.is_match(m)
            {
                return Err(error(
                    format!("invalid mirror attribute name '{m}'"),
                    "a name matching ^[a-zA-Z_][a-zA-Z0-9_-]*$",
                ));
            }
            return Ok(DataType::Link {
                etype,
                data,
                mirror: mirror.map(str::to_owned),
            });
        }
        if let Some(c) = DICT.captures(s) {
            let body = c.get(1).map_or("", |m| m.as_str());
            let mut fields: Vec<DictField> = Vec::new();
            for item in body.split(',') {
                let item = item.trim();
                let (key, ty) = item.split_once(':').unwrap_or((item, ""));
                let (name, optional) = match key.strip_suffix('?') {
                    Some(n) => (n, true),
                    None => (key, false),
                };
                let Some(ty) = Primitive::from_name(ty) else {
                    return Err(error(
                        format!("data type {ty} of key {name} is not supported as a dict field"),
                        "a primitive type (tag, binary, string, int, int64, float, time, ipv4, ipv6, mac, special, json)",
                    ));
                };
                let field = DictField {
                    name: name.to_owned(),
                    optional,
                    ty,
                };
                // DP3: a later definition of the same key wins.
                match fields.iter_mut().find(|f| f.name == name) {
                    Some(existing) => *existing = field,
                    None => fields.push(field),
                }
            }
            return Ok(DataType::Dict(fields));
        }
        if let Some(c) = CATEGORY.captures(s) {
            let base_str = c.name("type").map_or("", |m| m.as_str());
            let base = match DataType::parse(base_str)? {
                DataType::Primitive(p @ (Primitive::String | Primitive::Int)) => p,
                _ => {
                    return Err(error(
                        format!("category base type '{base_str}' is not supported"),
                        "category<string;...> or category<int;...> (DP3 converts members with \
                         the base type's constructor, which does not work for other types)",
                    ));
                }
            };
            let mut members: Vec<Bson> = Vec::new();
            for token in c.name("vals").map_or("", |m| m.as_str()).split(',') {
                let token = token.trim();
                let member = match base {
                    Primitive::Int => match parse_python_int(token) {
                        Some(i) => crate::value::int(i),
                        None => {
                            return Err(error(
                                format!("category member '{token}' is not an int"),
                                "decimal integers",
                            ));
                        }
                    },
                    _ => Bson::String(token.to_owned()),
                };
                // DP3 builds an enum: duplicate members collapse.
                if !members.contains(&member) {
                    members.push(member);
                }
            }
            return Ok(DataType::Category { base, members });
        }
        Err(unsupported(s))
    }

    /// Whether a link anywhere in this type declares a mirror.
    fn has_mirror(&self) -> bool {
        match self {
            DataType::Link { mirror, data, .. } => {
                mirror.is_some() || data.as_ref().is_some_and(|d| d.has_mirror())
            }
            DataType::Array(e) | DataType::Set(e) => e.has_mirror(),
            _ => false,
        }
    }

    /// The link of a relation (the link itself, or the element of an array/set of links).
    pub fn relation_link(&self) -> Option<&DataType> {
        match self {
            DataType::Link { .. } => Some(self),
            DataType::Array(e) | DataType::Set(e) if e.is_link() => Some(e),
            _ => None,
        }
    }

    /// The mirror attribute name declared by a relation (`link<T;mirror=M>`, also as an
    /// array/set element).
    pub fn mirror(&self) -> Option<&str> {
        match self.relation_link()? {
            DataType::Link { mirror, .. } => mirror.as_deref(),
            _ => None,
        }
    }

    /// Every entity type referenced by a link anywhere in this type (including link data).
    pub fn referenced_etypes(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_etypes(&mut out);
        out
    }

    fn collect_etypes<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            DataType::Link { etype, data, .. } => {
                out.push(etype);
                if let Some(d) = data {
                    d.collect_etypes(out);
                }
            }
            DataType::Array(e) | DataType::Set(e) => e.collect_etypes(out),
            _ => {}
        }
    }

    /// Whether values are hashable (data-model.md §3.2). DP3 decides by a substring test on
    /// the type string (so `category<string;settled>` counts as unhashable because it contains
    /// `set`); the property only selects between equivalent code paths, so we decide
    /// structurally.
    pub fn hashable(&self) -> bool {
        match self {
            DataType::Primitive(p) => !matches!(p, Primitive::Special | Primitive::Json),
            DataType::Category { .. } => true,
            _ => false,
        }
    }

    /// DP3's `type_info` string, stored in the schema document (data-model.md §3.2). Changing
    /// it counts as a schema change, so the strings are DP3's Python reprs verbatim.
    pub fn type_info(&self) -> String {
        match self {
            DataType::Primitive(p) => primitive_type_info(*p).to_owned(),
            DataType::Category { base, .. } => format!("<enum 'Category<{}>'>", base.name()),
            DataType::Array(e) | DataType::Set(e) => format!("list[{}]", inner_type_repr(e)),
            DataType::Link { etype, data, .. } => match data {
                Some(d) => format!("link<{etype},{d}>"),
                None => format!("link<{etype},None>"),
            },
            DataType::Dict(fields) => {
                let mut sorted: Vec<&DictField> = fields.iter().collect();
                sorted.sort_by(|a, b| a.name.cmp(&b.name));
                let items: Vec<String> = sorted
                    .iter()
                    .map(|f| {
                        if f.optional {
                            format!("{}:({}, None)", f.name, optional_repr(f.ty))
                        } else {
                            format!("{}:({}, Ellipsis)", f.name, primitive_type_info(f.ty))
                        }
                    })
                    .collect();
                format!("dict<{}>", items.join(","))
            }
        }
    }
}

/// DP3's integer conversion of a category token (`int("1_000")` is valid Python).
fn parse_python_int(token: &str) -> Option<i64> {
    let ok = !token.is_empty()
        && !token.starts_with('_')
        && !token.ends_with('_')
        && !token.contains("__")
        && token.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    if !ok {
        return None;
    }
    token.replace('_', "").parse().ok()
}

fn primitive_type_info(p: Primitive) -> &'static str {
    match p {
        Primitive::Tag | Primitive::Binary => "<class 'bool'>",
        Primitive::String => "<class 'str'>",
        Primitive::Int | Primitive::Int64 => "<class 'int'>",
        Primitive::Float => "<class 'float'>",
        Primitive::Time => "<class 'datetime.datetime'>",
        Primitive::Ipv4 => "<class 'ipaddress.IPv4Address'>",
        Primitive::Ipv6 => "<class 'ipaddress.IPv6Address'>",
        Primitive::Mac => "<class 'dp3.common.mac_address.MACAddress'>",
        Primitive::Special => "typing.Any",
        Primitive::Json => "typing.Union[typing.Annotated[typing.Any, Json], dict, list]",
    }
}

/// The Python repr of a type used as a generic argument (`int`, not `<class 'int'>`).
fn primitive_repr(p: Primitive) -> &'static str {
    match p {
        Primitive::Tag | Primitive::Binary => "bool",
        Primitive::String => "str",
        Primitive::Int | Primitive::Int64 => "int",
        Primitive::Float => "float",
        Primitive::Time => "datetime.datetime",
        Primitive::Ipv4 => "ipaddress.IPv4Address",
        Primitive::Ipv6 => "ipaddress.IPv6Address",
        Primitive::Mac => "dp3.common.mac_address.MACAddress",
        Primitive::Special => "typing.Any",
        Primitive::Json => "typing.Union[typing.Annotated[typing.Any, Json], dict, list]",
    }
}

/// `X | None` as Python prints it for an optional dict field.
fn optional_repr(p: Primitive) -> String {
    match p {
        Primitive::Special => "typing.Optional[typing.Any]".into(),
        Primitive::Json => {
            "typing.Union[typing.Annotated[typing.Any, Json], dict, list, NoneType]".into()
        }
        _ => format!("{} | None", primitive_repr(p)),
    }
}

fn inner_type_repr(e: &DataType) -> String {
    match e {
        DataType::Primitive(p) => primitive_repr(*p).to_owned(),
        // Verbatim DP3 quirk: a link with data is named after its data type.
        DataType::Link { etype, data, .. } => match data {
            Some(d) => format!("dp3.common.datatype.Link<{d}>"),
            None => format!("dp3.common.datatype.Link<{etype}>"),
        },
        other => other.type_info(),
    }
}

impl fmt::Display for DataType {
    /// The canonical data-type string; parsing it gives the same type back. Mirrors are shown
    /// as `link<T,D;mirror=M>` (our accepted form).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataType::Primitive(p) => f.write_str(p.name()),
            DataType::Array(e) => write!(f, "array<{e}>"),
            DataType::Set(e) => write!(f, "set<{e}>"),
            DataType::Link {
                etype,
                data,
                mirror,
            } => {
                write!(f, "link<{etype}")?;
                if let Some(d) = data {
                    write!(f, ",{d}")?;
                }
                if let Some(m) = mirror {
                    write!(f, ";mirror={m}")?;
                }
                f.write_str(">")
            }
            DataType::Dict(fields) => {
                f.write_str("dict<")?;
                for (i, field) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    let q = if field.optional { "?" } else { "" };
                    write!(f, "{}{q}:{}", field.name, field.ty.name())?;
                }
                f.write_str(">")
            }
            DataType::Category { base, members } => {
                write!(f, "category<{};", base.name())?;
                for (i, m) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    match m {
                        Bson::String(s) => f.write_str(s)?,
                        other => match crate::value::as_int(other) {
                            Some(i) => write!(f, "{i}")?,
                            None => write!(f, "{other}")?,
                        },
                    }
                }
                f.write_str(">")
            }
        }
    }
}

impl fmt::Display for Primitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> DataType {
        DataType::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match DataType::parse(s) {
            Ok(t) => panic!("{s} should be rejected, got {t:?}"),
            Err(e) => e.message,
        }
    }

    fn link(etype: &str, data: Option<DataType>, mirror: Option<&str>) -> DataType {
        DataType::Link {
            etype: etype.into(),
            data: data.map(Box::new),
            mirror: mirror.map(str::to_owned),
        }
    }

    #[test]
    fn primitives() {
        for prim in Primitive::ALL {
            assert_eq!(p(prim.name()), DataType::Primitive(prim));
        }
        assert!(err(" int").contains("not supported"));
        assert!(err("int ").contains("not supported"));
        assert!(err("Int").contains("not supported"));
        assert_eq!(
            DataType::parse("strng").unwrap_err().suggestion.as_deref(),
            Some("string")
        );
    }

    #[test]
    fn arrays_and_sets() {
        assert_eq!(
            p("array<int>"),
            DataType::Array(Box::new(DataType::Primitive(Primitive::Int)))
        );
        assert_eq!(
            p("set< ipv4 >"),
            DataType::Set(Box::new(DataType::Primitive(Primitive::Ipv4)))
        );
        assert_eq!(
            p("array<link<ip>>"),
            DataType::Array(Box::new(link("ip", None, None)))
        );
        assert!(err("array<array<int>>").contains("not supported as an array element"));
        assert!(err("set<dict<a:int>>").contains("not supported as a set element"));
        assert!(err("set<category<string;a>>").contains("as a set element"));
        assert!(err("array<foo>").contains("'foo' is not supported"));
        assert!(err("array<>").contains("not supported"));
    }

    #[test]
    fn links() {
        assert_eq!(p("link<ip>"), link("ip", None, None));
        assert_eq!(p("link < ip >"), link("ip", None, None));
        assert_eq!(
            p("link<ip, int>"),
            link("ip", Some(DataType::Primitive(Primitive::Int)), None)
        );
        assert_eq!(
            p("link<ip;mirror=devices>"),
            link("ip", None, Some("devices"))
        );
        assert_eq!(
            p("link<ip; mirror=devices>"),
            link("ip", None, Some("devices"))
        );
        let with_data = link("ip", Some(DataType::Primitive(Primitive::Int)), Some("m"));
        assert_eq!(p("link<ip,int ;mirror=m>"), with_data);
        // Our extension: no whitespace needed before `;`.
        assert_eq!(p("link<ip,int;mirror=m>"), with_data);
        assert_eq!(
            p("link<ip,category<string;a,b>>"),
            link("ip", Some(p("category<string;a,b>")), None)
        );
        assert_eq!(
            p("link<ip,category<string;a,b>;mirror=m>"),
            link("ip", Some(p("category<string;a,b>")), Some("m"))
        );
        assert_eq!(
            p("link<ip,array<int>>"),
            link("ip", Some(p("array<int>")), None)
        );
        assert!(err("link<ip,foo>").contains("link data"));
        assert!(err("link<ip;mirror=1x>").contains("mirror"));
        assert!(err("link<ip,link<x;mirror=m>>").contains("mirror"));
        assert!(err("link<a-b>").contains("not supported"));
        assert!(err("link<>").contains("not supported"));
    }

    #[test]
    fn dicts() {
        assert_eq!(
            p("dict<a:int,b?:ipv4>"),
            DataType::Dict(vec![
                DictField {
                    name: "a".into(),
                    optional: false,
                    ty: Primitive::Int
                },
                DictField {
                    name: "b".into(),
                    optional: true,
                    ty: Primitive::Ipv4
                },
            ])
        );
        assert!(matches!(p("dict< a:int, b:string >"), DataType::Dict(f) if f.len() == 2));
        assert_eq!(
            p("dict<a:int,a?:string>"),
            DataType::Dict(vec![DictField {
                name: "a".into(),
                optional: true,
                ty: Primitive::String
            }])
        );
        // DP3: no whitespace around ':' or before ','.
        assert!(err("dict<a: int>").contains("not supported"));
        assert!(err("dict<a:int ,b:int>").contains("not supported"));
        assert!(err("dict<a:foo>").contains("key a is not supported as a dict field"));
        assert!(err("dict<a:array>").contains("dict field"));
    }

    #[test]
    fn categories() {
        assert_eq!(
            p("category<string; up, down, up >"),
            DataType::Category {
                base: Primitive::String,
                members: vec![Bson::String("up".into()), Bson::String("down".into())]
            }
        );
        assert_eq!(
            p("category<int;1,2,1_000>"),
            DataType::Category {
                base: Primitive::Int,
                members: vec![Bson::Int32(1), Bson::Int32(2), Bson::Int32(1000)]
            }
        );
        assert!(err("category<int;1,x>").contains("'x' is not an int"));
        assert!(err("category<tag;false,true>").contains("base type 'tag'"));
        assert!(err("category<float;1,2>").contains("base type"));
        assert!(err("category<string;a b>").contains("not supported"));
        assert!(err("category<string;a ,b>").contains("not supported"));
        assert!(err("category<float;1.5,2>").contains("not supported"));
        assert!(err("category<foo;a>").contains("'foo' is not supported"));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "int",
            "array<link<ip>>",
            "set<mac>",
            "link<ip,int;mirror=m>",
            "link<ip;mirror=m>",
            "link<ip,dict<a:int,b?:string>>",
            "dict<a:int,b?:string>",
            "category<string;a,b>",
            "category<int;1,20>",
        ] {
            assert_eq!(p(s).to_string(), s);
            assert_eq!(p(&p(s).to_string()), p(s));
        }
        assert_eq!(
            p("link<ip, int ;mirror=m>").to_string(),
            "link<ip,int;mirror=m>"
        );
    }

    #[test]
    fn type_info_is_dp3_verbatim() {
        for (s, info) in [
            ("tag", "<class 'bool'>"),
            ("binary", "<class 'bool'>"),
            ("string", "<class 'str'>"),
            ("int", "<class 'int'>"),
            ("int64", "<class 'int'>"),
            ("float", "<class 'float'>"),
            ("time", "<class 'datetime.datetime'>"),
            ("ipv4", "<class 'ipaddress.IPv4Address'>"),
            ("ipv6", "<class 'ipaddress.IPv6Address'>"),
            ("mac", "<class 'dp3.common.mac_address.MACAddress'>"),
            ("special", "typing.Any"),
            (
                "json",
                "typing.Union[typing.Annotated[typing.Any, Json], dict, list]",
            ),
            ("category<string;a,b>", "<enum 'Category<string>'>"),
            ("array<int>", "list[int]"),
            ("set<ipv4>", "list[ipaddress.IPv4Address]"),
            ("array<link<e2>>", "list[dp3.common.datatype.Link<e2>]"),
            ("array<link<e2,int>>", "list[dp3.common.datatype.Link<int>]"),
            ("link<e2>", "link<e2,None>"),
            ("link<e2, int>", "link<e2,int>"),
            (
                "dict<b?:ipv4,a:int>",
                "dict<a:(<class 'int'>, Ellipsis),b:(ipaddress.IPv4Address | None, None)>",
            ),
        ] {
            assert_eq!(p(s).type_info(), info, "{s}");
        }
    }

    #[test]
    fn hashable() {
        assert!(p("int").hashable());
        assert!(p("category<string;settled,open>").hashable());
        for s in [
            "json",
            "special",
            "array<int>",
            "set<int>",
            "dict<a:int>",
            "link<x>",
        ] {
            assert!(!p(s).hashable(), "{s}");
        }
    }

    #[test]
    fn relation_helpers() {
        let t = p("set<link<ip;mirror=m>>");
        assert_eq!(t.mirror(), Some("m"));
        assert_eq!(t.link_target(), Some("ip"));
        assert_eq!(p("link<a,link<b>>").referenced_etypes(), vec!["a", "b"]);
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn primitive() -> impl Strategy<Value = Primitive> {
        proptest::sample::select(Primitive::ALL.to_vec())
    }

    fn ident() -> impl Strategy<Value = String> {
        "[a-z_][a-z0-9_]{0,6}"
    }

    fn link() -> impl Strategy<Value = DataType> {
        (
            ident(),
            proptest::option::of(primitive()),
            proptest::option::of(ident()),
        )
            .prop_map(|(etype, data, mirror)| DataType::Link {
                etype,
                data: data.map(|p| Box::new(DataType::Primitive(p))),
                mirror,
            })
    }

    fn data_type() -> impl Strategy<Value = DataType> {
        let elem = prop_oneof![primitive().prop_map(DataType::Primitive), link()];
        prop_oneof![
            primitive().prop_map(DataType::Primitive),
            link(),
            elem.clone().prop_map(|e| DataType::Array(Box::new(e))),
            elem.prop_map(|e| DataType::Set(Box::new(e))),
            proptest::collection::vec((ident(), any::<bool>(), primitive()), 1..4).prop_map(
                |fields| {
                    let mut out: Vec<DictField> = Vec::new();
                    for (name, optional, ty) in fields {
                        if !out.iter().any(|f| f.name == name) {
                            out.push(DictField { name, optional, ty });
                        }
                    }
                    DataType::Dict(out)
                }
            ),
            proptest::collection::vec(ident(), 1..4).prop_map(|vals| {
                let mut members: Vec<Bson> = Vec::new();
                for v in vals {
                    if !members.contains(&Bson::String(v.clone())) {
                        members.push(Bson::String(v));
                    }
                }
                DataType::Category {
                    base: Primitive::String,
                    members,
                }
            }),
            proptest::collection::btree_set(0i64..100_000, 1..4).prop_map(|vals| {
                DataType::Category {
                    base: Primitive::Int,
                    members: vals.into_iter().map(crate::value::int).collect(),
                }
            }),
        ]
    }

    proptest! {
        /// The canonical display parses back to the same type.
        #[test]
        fn display_round_trips(t in data_type()) {
            let shown = t.to_string();
            prop_assert_eq!(DataType::parse(&shown), Ok(t), "{}", shown);
        }

        /// Arbitrary input never panics, and whatever parses displays to something that
        /// parses to the same type.
        #[test]
        fn parse_never_panics(s in "[a-z<>,;:?= _0-9]{0,40}") {
            if let Ok(t) = DataType::parse(&s) {
                prop_assert_eq!(DataType::parse(&t.to_string()), Ok(t));
            }
        }
    }
}
