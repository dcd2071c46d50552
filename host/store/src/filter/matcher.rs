//! A compiled MongoDB query document, evaluated in Rust.
//!
//! Semantics follow MongoDB's matcher: dotted paths traverse embedded documents and arrays
//! (numeric components index arrays *and* name fields of array elements), a test on a path
//! holding an array matches the array itself or any of its elements, comparison operators
//! only match values of the operand's type bracket, `null` matches missing fields, and
//! negations (`$ne`, `$nin`, `$not`, `$exists: false`, `$nor`) negate the positive test over
//! the whole path.

use std::cmp::Ordering;

use bson::{Bson, Document};

use super::order::{bson_eq, cmp_bson, type_rank};
use crate::error::{Result, StoreError};

/// A compiled filter: build once with [`Filter::new`], test documents with [`Filter::matches`].
#[derive(Debug, Clone)]
pub struct Filter {
    root: Expr,
}

#[derive(Debug, Clone)]
enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Nor(Vec<Expr>),
    /// Every operator must hold for the value(s) at the path.
    Path {
        path: Vec<String>,
        ops: Vec<Op>,
    },
}

#[derive(Debug, Clone)]
enum Op {
    Eq(Bson),
    Ne(Bson),
    Cmp(Ordering, bool, Bson),
    In(Vec<InItem>),
    Nin(Vec<InItem>),
    Exists(bool),
    Regex(regex::Regex),
    Size(usize),
    /// `$size` with a negative or fractional operand: matches nothing.
    SizeNever,
    All(Vec<AllItem>),
    ElemMatch(Box<ElemMatch>),
    Not(Vec<Op>),
    Type(Vec<TypeSel>),
    Mod(i64, i64),
}

#[derive(Debug, Clone)]
enum InItem {
    Value(Bson),
    Regex(regex::Regex),
}

#[derive(Debug, Clone)]
enum AllItem {
    Value(Bson),
    Regex(regex::Regex),
    ElemMatch(ElemMatch),
}

#[derive(Debug, Clone)]
enum ElemMatch {
    /// `{$elemMatch: {$gt: 1, $lt: 5}}`: operators applied to each element.
    Value(Vec<Op>),
    /// `{$elemMatch: {field: ...}}`: a query over each (document) element.
    Doc(Expr),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TypeSel {
    Rank(u8),
    Exact(i32),
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::InvalidQuery(msg.into())
}

impl Filter {
    /// Compile a MongoDB query document. Unknown operators and malformed operands give
    /// [`StoreError::InvalidQuery`] naming the operator.
    pub fn new(query: &Document) -> Result<Filter> {
        Ok(Filter {
            root: compile_doc(query)?,
        })
    }

    /// Whether `doc` matches the filter.
    pub fn matches(&self, doc: &Document) -> bool {
        eval_expr(&self.root, doc)
    }
}

fn compile_doc(query: &Document) -> Result<Expr> {
    let mut parts = Vec::with_capacity(query.len());
    for (key, value) in query {
        if let Some(op) = key.strip_prefix('$') {
            match op {
                "and" | "or" | "nor" => {
                    let list = match value {
                        Bson::Array(a) if !a.is_empty() => a,
                        _ => return Err(invalid(format!("${op} must be a nonempty array"))),
                    };
                    let mut subs = Vec::with_capacity(list.len());
                    for item in list {
                        match item {
                            Bson::Document(d) => subs.push(compile_doc(d)?),
                            _ => {
                                return Err(invalid(format!(
                                    "${op} entries need to be full objects"
                                )));
                            }
                        }
                    }
                    parts.push(match op {
                        "and" => Expr::And(subs),
                        "or" => Expr::Or(subs),
                        _ => Expr::Nor(subs),
                    });
                }
                "comment" => {}
                _ => return Err(invalid(format!("unknown top level operator: {key}"))),
            }
        } else {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            parts.push(Expr::Path {
                path,
                ops: compile_field_value(key, value)?,
            });
        }
    }
    Ok(if parts.len() == 1 {
        parts.pop().unwrap_or(Expr::And(Vec::new()))
    } else {
        Expr::And(parts)
    })
}

/// Whether a document is an operator expression (`{$gt: 1}`) rather than a literal: MongoDB
/// decides by the first field name.
fn is_operator_doc(d: &Document) -> bool {
    d.keys().next().is_some_and(|k| k.starts_with('$'))
}

fn compile_field_value(field: &str, value: &Bson) -> Result<Vec<Op>> {
    match value {
        Bson::Document(d) if is_operator_doc(d) => compile_operators(field, d),
        Bson::RegularExpression(r) => Ok(vec![Op::Regex(build_regex(
            r.pattern.as_str(),
            r.options.as_str(),
        )?)]),
        other => Ok(vec![Op::Eq(other.clone())]),
    }
}

fn compile_operators(field: &str, d: &Document) -> Result<Vec<Op>> {
    let mut ops = Vec::with_capacity(d.len());
    let options = match d.get("$options") {
        None => None,
        Some(Bson::String(s)) => Some(s.as_str()),
        Some(_) => return Err(invalid(format!("$options on '{field}' has to be a string"))),
    };
    if options.is_some() && !d.contains_key("$regex") {
        return Err(invalid(format!("$options on '{field}' needs a $regex")));
    }
    for (key, operand) in d {
        let op = match key.as_str() {
            "$eq" => Op::Eq(operand.clone()),
            "$ne" => Op::Ne(operand.clone()),
            "$gt" => Op::Cmp(Ordering::Greater, false, operand.clone()),
            "$gte" => Op::Cmp(Ordering::Greater, true, operand.clone()),
            "$lt" => Op::Cmp(Ordering::Less, false, operand.clone()),
            "$lte" => Op::Cmp(Ordering::Less, true, operand.clone()),
            "$in" => Op::In(compile_in_list("$in", operand)?),
            "$nin" => Op::Nin(compile_in_list("$nin", operand)?),
            "$exists" => Op::Exists(truthy(operand)),
            "$regex" => {
                let (pattern, own_options) = match operand {
                    Bson::String(s) => (s.as_str(), ""),
                    Bson::RegularExpression(r) => (r.pattern.as_str(), r.options.as_str()),
                    _ => return Err(invalid("$regex has to be a string")),
                };
                Op::Regex(build_regex(pattern, options.unwrap_or(own_options))?)
            }
            "$options" => continue,
            "$size" => compile_size(operand)?,
            "$all" => compile_all(operand)?,
            "$elemMatch" => match operand {
                Bson::Document(q) => Op::ElemMatch(Box::new(compile_elem_match(q)?)),
                _ => return Err(invalid("$elemMatch needs an Object")),
            },
            "$not" => match operand {
                Bson::Document(q) if !q.is_empty() && is_operator_doc(q) => {
                    Op::Not(compile_operators(field, q)?)
                }
                Bson::Document(q) if q.is_empty() => {
                    return Err(invalid("$not cannot be empty"));
                }
                Bson::RegularExpression(r) => Op::Not(vec![Op::Regex(build_regex(
                    r.pattern.as_str(),
                    r.options.as_str(),
                )?)]),
                _ => return Err(invalid("$not needs a regex or a document")),
            },
            "$type" => Op::Type(compile_type(operand)?),
            "$mod" => compile_mod(operand)?,
            other => return Err(invalid(format!("unknown operator: {other}"))),
        };
        ops.push(op);
    }
    Ok(ops)
}

fn truthy(v: &Bson) -> bool {
    match v {
        Bson::Boolean(b) => *b,
        Bson::Null | Bson::Undefined => false,
        Bson::Int32(i) => *i != 0,
        Bson::Int64(i) => *i != 0,
        Bson::Double(f) => *f != 0.0,
        _ => true,
    }
}

fn compile_in_list(op: &str, operand: &Bson) -> Result<Vec<InItem>> {
    let list = match operand {
        Bson::Array(a) => a,
        _ => return Err(invalid(format!("{op} needs an array"))),
    };
    list.iter()
        .map(|item| match item {
            Bson::RegularExpression(r) => Ok(InItem::Regex(build_regex(
                r.pattern.as_str(),
                r.options.as_str(),
            )?)),
            Bson::Document(d) if is_operator_doc(d) => {
                Err(invalid(format!("cannot nest $ under {op}")))
            }
            other => Ok(InItem::Value(other.clone())),
        })
        .collect()
}

fn compile_size(operand: &Bson) -> Result<Op> {
    let n = match operand {
        Bson::Int32(i) => i64::from(*i),
        Bson::Int64(i) => *i,
        Bson::Double(f) if f.fract() == 0.0 && f.is_finite() => *f as i64,
        Bson::Double(_) => return Err(invalid("$size must be a whole number")),
        _ => return Err(invalid("$size needs a number")),
    };
    if n < 0 {
        return Err(invalid("$size may not be negative"));
    }
    Ok(usize::try_from(n).map_or(Op::SizeNever, Op::Size))
}

fn compile_all(operand: &Bson) -> Result<Op> {
    let list = match operand {
        Bson::Array(a) => a,
        _ => return Err(invalid("$all needs an array")),
    };
    let mut items = Vec::with_capacity(list.len());
    for item in list {
        items.push(match item {
            Bson::RegularExpression(r) => {
                AllItem::Regex(build_regex(r.pattern.as_str(), r.options.as_str())?)
            }
            Bson::Document(d) if is_operator_doc(d) => match (d.len(), d.get("$elemMatch")) {
                (1, Some(Bson::Document(q))) => AllItem::ElemMatch(compile_elem_match(q)?),
                _ => return Err(invalid("no $ expressions in $all except $elemMatch")),
            },
            other => AllItem::Value(other.clone()),
        });
    }
    Ok(Op::All(items))
}

fn compile_elem_match(q: &Document) -> Result<ElemMatch> {
    let value_form = q
        .keys()
        .next()
        .is_some_and(|k| k.starts_with('$') && !matches!(k.as_str(), "$and" | "$or" | "$nor"));
    if value_form {
        Ok(ElemMatch::Value(compile_operators("$elemMatch", q)?))
    } else {
        Ok(ElemMatch::Doc(compile_doc(q)?))
    }
}

fn compile_type(operand: &Bson) -> Result<Vec<TypeSel>> {
    let one = |v: &Bson| -> Result<TypeSel> {
        let code = match v {
            Bson::String(s) => match s.as_str() {
                "number" => return Ok(TypeSel::Rank(10)),
                "double" => 1,
                "string" => 2,
                "object" => 3,
                "array" => 4,
                "binData" => 5,
                "undefined" => 6,
                "objectId" => 7,
                "bool" => 8,
                "date" => 9,
                "null" => 10,
                "regex" => 11,
                "javascript" => 13,
                "int" => 16,
                "timestamp" => 17,
                "long" => 18,
                "decimal" => 19,
                "minKey" => -1,
                "maxKey" => 127,
                other => return Err(invalid(format!("unknown type name alias: {other}"))),
            },
            Bson::Int32(i) => *i,
            Bson::Int64(i) => {
                i32::try_from(*i).map_err(|_| invalid("invalid numerical type code"))?
            }
            Bson::Double(f) if f.fract() == 0.0 => *f as i32,
            _ => return Err(invalid("type must be represented as a number or a string")),
        };
        Ok(TypeSel::Exact(code))
    };
    match operand {
        Bson::Array(a) => a.iter().map(one).collect(),
        v => Ok(vec![one(v)?]),
    }
}

fn type_code(v: &Bson) -> i32 {
    match v {
        Bson::Double(_) => 1,
        Bson::String(_) => 2,
        Bson::Document(_) => 3,
        Bson::Array(_) => 4,
        Bson::Binary(_) => 5,
        Bson::Undefined => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Null => 10,
        Bson::RegularExpression(_) => 11,
        Bson::DbPointer(_) => 12,
        Bson::JavaScriptCode(_) => 13,
        Bson::Symbol(_) => 14,
        Bson::JavaScriptCodeWithScope(_) => 15,
        Bson::Int32(_) => 16,
        Bson::Timestamp(_) => 17,
        Bson::Int64(_) => 18,
        Bson::Decimal128(_) => 19,
        Bson::MinKey => -1,
        Bson::MaxKey => 127,
    }
}

fn compile_mod(operand: &Bson) -> Result<Op> {
    let as_int = |v: &Bson| match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(f) if f.is_finite() => Some(f.trunc() as i64),
        _ => None,
    };
    match operand {
        Bson::Array(a) if a.len() == 2 => {
            let (d, r) = match (as_int(&a[0]), as_int(&a[1])) {
                (Some(d), Some(r)) => (d, r),
                _ => return Err(invalid("$mod needs numeric divisor and remainder")),
            };
            if d == 0 {
                return Err(invalid("$mod divisor cannot be 0"));
            }
            Ok(Op::Mod(d, r))
        }
        _ => Err(invalid("$mod needs an array of 2 numbers")),
    }
}

/// Build a regex with MongoDB's `$options` (`i`, `m`, `s`, `x`; `u` is implied).
pub(crate) fn build_regex(pattern: &str, options: &str) -> Result<regex::Regex> {
    let mut flags = String::new();
    for c in options.chars() {
        match c {
            'i' | 'm' | 's' | 'x' => {
                if !flags.contains(c) {
                    flags.push(c);
                }
            }
            'u' => {}
            other => {
                return Err(invalid(format!("invalid flag in regex options: {other}")));
            }
        }
    }
    let full = if flags.is_empty() {
        pattern.to_owned()
    } else {
        format!("(?{flags}){pattern}")
    };
    regex::Regex::new(&full).map_err(|e| {
        invalid(format!(
            "$regex '{pattern}' is not a valid regular expression: {e}"
        ))
    })
}

// ------------------------------------------------------------------------------ evaluation

fn eval_expr(e: &Expr, doc: &Document) -> bool {
    match e {
        Expr::And(subs) => subs.iter().all(|s| eval_expr(s, doc)),
        Expr::Or(subs) => subs.iter().any(|s| eval_expr(s, doc)),
        Expr::Nor(subs) => !subs.iter().any(|s| eval_expr(s, doc)),
        Expr::Path { path, ops } => {
            let mut cands = Vec::new();
            resolve_in_doc(doc, path, &mut cands);
            if cands.is_empty() {
                cands.push(None);
            }
            ops.iter().all(|op| eval_op(op, &cands))
        }
    }
}

/// The values a dotted path reaches (`None` = missing).
fn resolve_in_doc<'a>(d: &'a Document, comps: &[String], out: &mut Vec<Option<&'a Bson>>) {
    let Some((first, rest)) = comps.split_first() else {
        return;
    };
    match d.get(first) {
        None => out.push(None),
        Some(v) => resolve_value(v, rest, out),
    }
}

fn resolve_value<'a>(v: &'a Bson, comps: &[String], out: &mut Vec<Option<&'a Bson>>) {
    let Some(first) = comps.first() else {
        out.push(Some(v));
        return;
    };
    match v {
        Bson::Document(d) => resolve_in_doc(d, comps, out),
        Bson::Array(items) => {
            let before = out.len();
            if !first.is_empty()
                && first.bytes().all(|b| b.is_ascii_digit())
                && let Some(item) = first.parse::<usize>().ok().and_then(|i| items.get(i))
            {
                resolve_value(item, &comps[1..], out);
            }
            for item in items {
                if let Bson::Document(d) = item {
                    resolve_in_doc(d, comps, out);
                }
            }
            if out.len() == before {
                out.push(None);
            }
        }
        _ => out.push(None),
    }
}

fn eval_op(op: &Op, cands: &[Option<&Bson>]) -> bool {
    match op {
        Op::Ne(v) => !any_leaf(cands, |x| eq_value(x, v)),
        Op::Nin(items) => !any_leaf(cands, |x| in_list(x, items)),
        Op::Not(ops) => !ops.iter().all(|o| eval_op(o, cands)),
        Op::Exists(want) => cands.iter().any(Option::is_some) == *want,
        Op::Eq(v) => any_leaf(cands, |x| eq_value(x, v)),
        Op::Cmp(dir, or_equal, v) => any_leaf(cands, |x| compare(x, *dir, *or_equal, v)),
        Op::In(items) => any_leaf(cands, |x| in_list(x, items)),
        Op::Regex(re) => any_leaf(cands, |x| regex_match(x, re)),
        Op::Type(sels) => any_leaf(cands, |x| {
            x.is_some_and(|x| {
                sels.iter().any(|s| match s {
                    TypeSel::Rank(r) => type_rank(x) == *r,
                    TypeSel::Exact(c) => type_code(x) == *c,
                })
            })
        }),
        Op::Mod(d, r) => any_leaf(cands, |x| match x {
            Some(Bson::Int32(i)) => i64::from(*i).wrapping_rem(*d) == *r,
            Some(Bson::Int64(i)) => i.wrapping_rem(*d) == *r,
            Some(Bson::Double(f)) if f.is_finite() => (f.trunc() as i64).wrapping_rem(*d) == *r,
            _ => false,
        }),
        Op::Size(n) => cands
            .iter()
            .any(|c| matches!(c, Some(Bson::Array(a)) if a.len() == *n)),
        Op::SizeNever => false,
        Op::All(items) => {
            !items.is_empty()
                && items.iter().all(|item| match item {
                    AllItem::Value(v) => any_leaf(cands, |x| eq_value(x, v)),
                    AllItem::Regex(re) => any_leaf(cands, |x| regex_match(x, re)),
                    AllItem::ElemMatch(em) => elem_match(cands, em),
                })
        }
        Op::ElemMatch(em) => elem_match(cands, em),
    }
}

/// Test every candidate and, for arrays, each of their elements (one level).
fn any_leaf(cands: &[Option<&Bson>], test: impl Fn(Option<&Bson>) -> bool) -> bool {
    cands.iter().any(|c| match c {
        Some(Bson::Array(items)) => test(*c) || items.iter().any(|i| test(Some(i))),
        _ => test(*c),
    })
}

fn elem_match(cands: &[Option<&Bson>], em: &ElemMatch) -> bool {
    cands.iter().any(|c| match c {
        Some(Bson::Array(items)) => items.iter().any(|item| match em {
            ElemMatch::Value(ops) => ops.iter().all(|op| eval_op(op, &[Some(item)])),
            ElemMatch::Doc(expr) => match item {
                Bson::Document(d) => eval_expr(expr, d),
                _ => false,
            },
        }),
        _ => false,
    })
}

fn is_nullish(v: &Bson) -> bool {
    matches!(v, Bson::Null | Bson::Undefined)
}

fn eq_value(x: Option<&Bson>, v: &Bson) -> bool {
    match x {
        None => is_nullish(v),
        Some(x) => bson_eq(x, v),
    }
}

fn compare(x: Option<&Bson>, dir: Ordering, or_equal: bool, v: &Bson) -> bool {
    if is_nullish(v) {
        // `$gte: null` / `$lte: null` match null and missing; `$gt`/`$lt: null` nothing.
        return or_equal && eq_value(x, v);
    }
    let Some(x) = x else {
        return matches!(v, Bson::MaxKey) && dir == Ordering::Less
            || matches!(v, Bson::MinKey) && dir == Ordering::Greater;
    };
    // Type bracketing: only MinKey/MaxKey operands compare across types.
    if type_rank(x) != type_rank(v) && !matches!(v, Bson::MinKey | Bson::MaxKey) {
        return false;
    }
    let o = cmp_bson(x, v);
    o == dir || (or_equal && o == Ordering::Equal)
}

fn in_list(x: Option<&Bson>, items: &[InItem]) -> bool {
    items.iter().any(|i| match i {
        InItem::Value(v) => eq_value(x, v),
        InItem::Regex(re) => regex_match(x, re),
    })
}

fn regex_match(x: Option<&Bson>, re: &regex::Regex) -> bool {
    match x {
        Some(Bson::String(s) | Bson::Symbol(s)) => re.is_match(s),
        _ => false,
    }
}
