//! MongoDB's total order over BSON values (the order `$gt`/`$lt` and sorts use).
//!
//! Canonical type order: MinKey < null/undefined < numbers < strings/symbols < objects <
//! arrays < binary < ObjectId < booleans < dates < timestamps < regexes < MaxKey. Within a
//! type: numbers by value (int32/int64/double/decimal mixed, NaN below every number),
//! strings bytewise (no collation), objects field by field (type, name, value), arrays
//! element by element, binary by **length first**, then subtype, then bytes (DP3's binary
//! bucket-id ranges rely on this), dates by milliseconds.

use std::cmp::Ordering;

use bson::{Bson, Document};

/// Rank of a value's canonical type; values of different ranks never compare equal and
/// comparison operators (`$gt`, ...) only match values of the same rank.
pub fn type_rank(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => 0,
        Bson::Null | Bson::Undefined => 5,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 10,
        Bson::String(_) | Bson::Symbol(_) => 15,
        Bson::Document(_) => 20,
        Bson::Array(_) => 25,
        Bson::Binary(_) => 30,
        Bson::ObjectId(_) => 35,
        Bson::Boolean(_) => 40,
        Bson::DateTime(_) => 45,
        Bson::Timestamp(_) => 47,
        Bson::RegularExpression(_) => 50,
        Bson::DbPointer(_) => 55,
        Bson::JavaScriptCode(_) => 60,
        Bson::JavaScriptCodeWithScope(_) => 65,
        Bson::MaxKey => 127,
    }
}

/// A number widened for comparison: integers exactly, doubles as doubles.
#[derive(Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

fn num(v: &Bson) -> Num {
    match v {
        Bson::Int32(i) => Num::Int(i64::from(*i)),
        Bson::Int64(i) => Num::Int(*i),
        Bson::Double(f) => Num::Float(*f),
        // Decimal128 has no arithmetic in the bson crate; DP3 never stores it. Compare by
        // its textual value parsed as a double (good enough for ordering).
        Bson::Decimal128(d) => Num::Float(d.to_string().parse::<f64>().unwrap_or(f64::NAN)),
        _ => Num::Float(f64::NAN),
    }
}

fn cmp_f64(a: f64, b: f64) -> Ordering {
    // MongoDB: NaN equals NaN and is below every other number.
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

fn cmp_int_float(i: i64, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Greater;
    }
    // i64 -> f64 may round; compare exactly when the double is in i64 range.
    if f >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    if f < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    let fi = f.trunc() as i64;
    match i.cmp(&fi) {
        Ordering::Equal => {
            let frac = f - f.trunc();
            if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        o => o,
    }
}

fn cmp_num(a: &Bson, b: &Bson) -> Ordering {
    match (num(a), num(b)) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Float(x), Num::Float(y)) => cmp_f64(x, y),
        (Num::Int(x), Num::Float(y)) => cmp_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => cmp_int_float(y, x).reverse(),
    }
}

/// Compare two documents the way MongoDB does: pairwise in field order (type rank, then
/// field name, then value); a document that is a prefix of the other is smaller.
pub fn cmp_docs(a: &Document, b: &Document) -> Ordering {
    let mut ia = a.iter();
    let mut ib = b.iter();
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((ka, va)), Some((kb, vb))) => {
                let o = type_rank(va)
                    .cmp(&type_rank(vb))
                    .then_with(|| ka.as_bytes().cmp(kb.as_bytes()))
                    .then_with(|| cmp_bson(va, vb));
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// MongoDB's total order over BSON values.
pub fn cmp_bson(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Bson::String(x) | Bson::Symbol(x), Bson::String(y) | Bson::Symbol(y)) => {
            x.as_bytes().cmp(y.as_bytes())
        }
        (Bson::Document(x), Bson::Document(y)) => cmp_docs(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            for (ea, eb) in x.iter().zip(y.iter()) {
                let o = cmp_bson(ea, eb);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => x
            .pattern
            .as_str()
            .cmp(y.pattern.as_str())
            .then_with(|| x.options.as_str().cmp(y.options.as_str())),
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        _ if ra == 10 => cmp_num(a, b),
        // MinKey, MaxKey, null/undefined, and exotic types: equal within their rank.
        _ => Ordering::Equal,
    }
}

/// Equality as MongoDB's `$eq` sees it (numbers by value, null equals undefined).
pub fn bson_eq(a: &Bson, b: &Bson) -> bool {
    cmp_bson(a, b) == Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::spec::BinarySubtype;
    use bson::{Binary, doc};

    fn bin(subtype: u8, bytes: &[u8]) -> Bson {
        Bson::Binary(Binary {
            subtype: BinarySubtype::from(subtype),
            bytes: bytes.to_vec(),
        })
    }

    #[test]
    fn cross_type_order_follows_mongodb() {
        let ordered = [
            Bson::MinKey,
            Bson::Null,
            Bson::Double(f64::NAN),
            Bson::Int32(-5),
            Bson::Double(1.5),
            Bson::Int64(2),
            Bson::String("".into()),
            Bson::String("a".into()),
            Bson::Document(doc! {}),
            Bson::Array(vec![]),
            bin(0, &[9, 9]),
            Bson::ObjectId(bson::oid::ObjectId::from_bytes([0; 12])),
            Bson::Boolean(false),
            Bson::Boolean(true),
            Bson::DateTime(bson::DateTime::from_millis(-1)),
            Bson::MaxKey,
        ];
        for w in ordered.windows(2) {
            assert_eq!(
                cmp_bson(&w[0], &w[1]),
                Ordering::Less,
                "{:?} < {:?}",
                w[0],
                w[1]
            );
        }
    }

    #[test]
    fn binary_compares_length_then_subtype_then_bytes() {
        // MongoDB: shorter BinData sorts first regardless of content.
        assert_eq!(cmp_bson(&bin(0, &[0xff]), &bin(0, &[0, 0])), Ordering::Less);
        // same length: subtype decides before bytes
        assert_eq!(cmp_bson(&bin(0x81, &[0]), &bin(0, &[1])), Ordering::Greater);
        assert_eq!(cmp_bson(&bin(0, &[1, 2]), &bin(0, &[1, 3])), Ordering::Less);
    }

    #[test]
    fn numbers_compare_across_widths() {
        assert!(bson_eq(&Bson::Int32(3), &Bson::Double(3.0)));
        assert!(bson_eq(&Bson::Int64(3), &Bson::Int32(3)));
        assert_eq!(
            cmp_bson(&Bson::Int64(i64::MAX), &Bson::Double(9.3e18)),
            Ordering::Less
        );
        assert_eq!(
            cmp_bson(&Bson::Int32(3), &Bson::Double(3.5)),
            Ordering::Less
        );
        assert_eq!(
            cmp_bson(&Bson::Int32(-3), &Bson::Double(-3.5)),
            Ordering::Greater
        );
        assert!(bson_eq(&Bson::Null, &Bson::Undefined));
    }

    #[test]
    fn documents_compare_field_by_field() {
        let a = Bson::Document(doc! {"a": 1});
        let b = Bson::Document(doc! {"a": 1, "b": 0});
        let c = Bson::Document(doc! {"b": 0});
        assert_eq!(cmp_bson(&a, &b), Ordering::Less);
        assert_eq!(cmp_bson(&a, &c), Ordering::Less);
        // field order matters for equality
        assert!(!bson_eq(
            &Bson::Document(doc! {"a": 1, "b": 2}),
            &Bson::Document(doc! {"b": 2, "a": 1})
        ));
    }
}
