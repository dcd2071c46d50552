//! Table-driven matcher cases. Each case states the result MongoDB gives for
//! `db.c.find(<filter>)` on a collection holding the document (MongoDB 6/7 semantics).

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, Document, doc};

use super::{Filter, replace_magic_strings};
use crate::error::StoreError;

fn bin(subtype: u8, bytes: &[u8]) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::from(subtype),
        bytes: bytes.to_vec(),
    })
}

fn check(cases: &[(Document, Document, bool)]) {
    for (i, (filter, doc, expected)) in cases.iter().enumerate() {
        let f = Filter::new(filter).unwrap_or_else(|e| panic!("case {i}: {filter} → {e}"));
        assert_eq!(
            f.matches(doc),
            *expected,
            "case {i}: filter {filter} on {doc} should be {expected}"
        );
    }
}

#[test]
fn equality_and_null() {
    check(&[
        (doc! {"a": 1}, doc! {"a": 1}, true),
        (doc! {"a": 1}, doc! {"a": 1.0}, true),
        (doc! {"a": 1}, doc! {"a": Bson::Int64(1)}, true),
        (doc! {"a": 1}, doc! {"a": "1"}, false),
        (doc! {"a": 1}, doc! {"b": 1}, false),
        (doc! {"a": Bson::Null}, doc! {"b": 1}, true),
        (doc! {"a": Bson::Null}, doc! {"a": Bson::Null}, true),
        (doc! {"a": Bson::Null}, doc! {"a": 0}, false),
        (doc! {"a": {"$ne": Bson::Null}}, doc! {"b": 1}, false),
        (doc! {"a": {"$ne": Bson::Null}}, doc! {"a": 0}, true),
        (doc! {"a": {"$eq": 2}}, doc! {"a": [1, 2, 3]}, true),
        (doc! {"a": [1, 2]}, doc! {"a": [1, 2]}, true),
        (doc! {"a": [1, 2]}, doc! {"a": [2, 1]}, false),
        (doc! {"a": [1, 2]}, doc! {"a": [[1, 2], 3]}, true),
        (
            doc! {"a": {"b": 1, "c": 2}},
            doc! {"a": {"b": 1, "c": 2}},
            true,
        ),
        // embedded-document equality is field-order sensitive
        (
            doc! {"a": {"b": 1, "c": 2}},
            doc! {"a": {"c": 2, "b": 1}},
            false,
        ),
        (doc! {"a": Bson::Null}, doc! {"a": [1, Bson::Null]}, true),
        (doc! {}, doc! {"a": 1}, true),
    ]);
}

#[test]
fn comparisons_respect_type_brackets() {
    check(&[
        (doc! {"a": {"$gt": 5}}, doc! {"a": 6}, true),
        (doc! {"a": {"$gt": 5}}, doc! {"a": 5.5}, true),
        (doc! {"a": {"$gt": 5}}, doc! {"a": 5}, false),
        (doc! {"a": {"$gte": 5}}, doc! {"a": 5}, true),
        // a string is "greater" in BSON order, but $gt only compares within the bracket
        (doc! {"a": {"$gt": 5}}, doc! {"a": "x"}, false),
        (doc! {"a": {"$lt": "b"}}, doc! {"a": "a"}, true),
        (doc! {"a": {"$lt": "b"}}, doc! {"a": 1}, false),
        (doc! {"a": {"$gt": 5}}, doc! {"a": [1, 7]}, true),
        (doc! {"a": {"$gt": 5, "$lt": 7}}, doc! {"a": [1, 8]}, true),
        (
            doc! {"a": {"$elemMatch": {"$gt": 5, "$lt": 7}}},
            doc! {"a": [1, 8]},
            false,
        ),
        (
            doc! {"a": {"$elemMatch": {"$gt": 5, "$lt": 7}}},
            doc! {"a": [1, 6]},
            true,
        ),
        (doc! {"a": {"$gt": 5}}, doc! {"b": 1}, false),
        (doc! {"a": {"$gte": Bson::Null}}, doc! {"b": 1}, true),
        (
            doc! {"a": {"$lte": Bson::Null}},
            doc! {"a": Bson::Null},
            true,
        ),
        (doc! {"a": {"$gt": Bson::Null}}, doc! {"a": 1}, false),
        (doc! {"a": {"$lt": Bson::Null}}, doc! {"b": 1}, false),
        (
            doc! {"t": {"$gte": bson::DateTime::from_millis(1000)}},
            doc! {"t": bson::DateTime::from_millis(2000)},
            true,
        ),
        (
            doc! {"t": {"$gte": bson::DateTime::from_millis(1000)}},
            doc! {"t": 5000},
            false,
        ),
        (doc! {"a": {"$gt": [1]}}, doc! {"a": [1, 2]}, true),
        (doc! {"a": {"$gt": false}}, doc! {"a": true}, true),
        (doc! {"a": {"$ne": 2}}, doc! {"a": [1, 2]}, false),
        (doc! {"a": {"$ne": 3}}, doc! {"a": [1, 2]}, true),
        (doc! {"a": {"$ne": 3}}, doc! {"b": 1}, true),
    ]);
}

#[test]
fn binary_ranges_compare_length_first() {
    // DP3's `$$Binary_ID{}` ranges select buckets of one eid only because of this.
    let id = |b: &[u8]| doc! {"_id": bin(0, b)};
    let range = doc! {"_id": {"$gte": bin(0, &[5, 0, 0]), "$lt": bin(0, &[5, 0xff, 0xff])}};
    check(&[
        (range.clone(), id(&[5, 0, 9]), true),
        (range.clone(), id(&[5, 0xff, 0xff]), false),
        // a longer id with the same prefix is greater than every 3-byte id
        (range.clone(), id(&[5, 0, 0, 0]), false),
        (range.clone(), id(&[4, 0xff]), false),
        (
            doc! {"a": {"$gt": bin(0, &[0xff])}},
            doc! {"a": bin(0, &[0, 0])},
            true,
        ),
        (
            doc! {"a": {"$lt": bin(0x81, &[1, 1, 1, 1])}},
            doc! {"a": bin(0, &[9, 9, 9, 9])},
            true,
        ),
        (
            doc! {"a": bin(0x81, &[1, 2, 3, 4])},
            doc! {"a": bin(0, &[1, 2, 3, 4])},
            false,
        ),
    ]);
}

#[test]
fn logical_operators() {
    check(&[
        (doc! {"$or": [{"a": 1}, {"b": 2}]}, doc! {"b": 2}, true),
        (doc! {"$or": [{"a": 1}, {"b": 2}]}, doc! {"b": 3}, false),
        (
            doc! {"$and": [{"a": 1}, {"b": 2}]},
            doc! {"a": 1, "b": 2},
            true,
        ),
        (doc! {"$and": [{"a": 1}, {"b": 2}]}, doc! {"a": 1}, false),
        (doc! {"$nor": [{"a": 1}, {"b": 2}]}, doc! {"c": 1}, true),
        (doc! {"$nor": [{"a": 1}, {"b": 2}]}, doc! {"a": 1}, false),
        (doc! {"a": {"$not": {"$gt": 5}}}, doc! {"a": 3}, true),
        (doc! {"a": {"$not": {"$gt": 5}}}, doc! {"a": 7}, false),
        (doc! {"a": {"$not": {"$gt": 5}}}, doc! {"b": 1}, true),
        (doc! {"a": {"$not": {"$gt": 5}}}, doc! {"a": "x"}, true),
        (
            doc! {"a": {"$not": {"$regex": "^x"}}},
            doc! {"a": "xy"},
            false,
        ),
        (
            doc! {"a": 1, "$or": [{"b": 1}, {"c": 1}]},
            doc! {"a": 1, "c": 1},
            true,
        ),
        (doc! {"a": 1, "$comment": "why"}, doc! {"a": 1}, true),
    ]);
}

#[test]
fn in_nin_exists_size_all_type_mod() {
    check(&[
        (doc! {"a": {"$in": [1, 2]}}, doc! {"a": 2}, true),
        (doc! {"a": {"$in": [1, 2]}}, doc! {"a": [5, 1]}, true),
        (doc! {"a": {"$in": [1, 2]}}, doc! {"a": 3}, false),
        (doc! {"a": {"$in": [Bson::Null]}}, doc! {"b": 1}, true),
        (doc! {"a": {"$in": []}}, doc! {"a": 1}, false),
        (doc! {"a": {"$nin": [1, 2]}}, doc! {"a": 3}, true),
        (doc! {"a": {"$nin": [1, 2]}}, doc! {"b": 3}, true),
        (doc! {"a": {"$nin": [1, 2]}}, doc! {"a": [3, 2]}, false),
        (doc! {"a": {"$exists": true}}, doc! {"a": Bson::Null}, true),
        (doc! {"a": {"$exists": true}}, doc! {"b": 1}, false),
        (doc! {"a": {"$exists": false}}, doc! {"b": 1}, true),
        (doc! {"a": {"$exists": 0}}, doc! {"a": 1}, false),
        (
            doc! {"a.b": {"$exists": true}},
            doc! {"a": [{"c": 1}, {"b": 2}]},
            true,
        ),
        (
            doc! {"a.b": {"$exists": false}},
            doc! {"a": [{"c": 1}, {"b": 2}]},
            false,
        ),
        (doc! {"a": {"$size": 2}}, doc! {"a": [1, 2]}, true),
        (doc! {"a": {"$size": 1}}, doc! {"a": [[1, 2]]}, true),
        (doc! {"a": {"$size": 2}}, doc! {"a": [[1, 2]]}, false),
        (doc! {"a": {"$size": 0}}, doc! {"b": 1}, false),
        (doc! {"a": {"$all": [1, 2]}}, doc! {"a": [2, 3, 1]}, true),
        (doc! {"a": {"$all": [1, 2]}}, doc! {"a": [2, 3]}, false),
        (doc! {"a": {"$all": []}}, doc! {"a": [1]}, false),
        (doc! {"a": {"$all": [1]}}, doc! {"a": 1}, true),
        (
            doc! {"a": {"$all": [{"$elemMatch": {"b": 1}}, {"$elemMatch": {"b": 2}}]}},
            doc! {"a": [{"b": 1}, {"b": 2}]},
            true,
        ),
        (doc! {"a": {"$type": "string"}}, doc! {"a": "x"}, true),
        (doc! {"a": {"$type": "number"}}, doc! {"a": 1.5}, true),
        (
            doc! {"a": {"$type": "int"}},
            doc! {"a": Bson::Int64(1)},
            false,
        ),
        (doc! {"a": {"$type": "array"}}, doc! {"a": [1]}, true),
        (
            doc! {"a": {"$type": ["null", "bool"]}},
            doc! {"a": true},
            true,
        ),
        (doc! {"a": {"$mod": [4, 1]}}, doc! {"a": 9}, true),
        (doc! {"a": {"$mod": [4, 1]}}, doc! {"a": 10}, false),
    ]);
}

#[test]
fn regex_with_options() {
    check(&[
        (doc! {"a": {"$regex": "^ab"}}, doc! {"a": "abc"}, true),
        (doc! {"a": {"$regex": "^AB"}}, doc! {"a": "abc"}, false),
        (
            doc! {"a": {"$regex": "^AB", "$options": "i"}},
            doc! {"a": "abc"},
            true,
        ),
        (doc! {"a": {"$regex": "b"}}, doc! {"a": "abc"}, true),
        (doc! {"a": {"$regex": "^b"}}, doc! {"a": "a\nb"}, false),
        (
            doc! {"a": {"$regex": "^b", "$options": "m"}},
            doc! {"a": "a\nb"},
            true,
        ),
        (doc! {"a": {"$regex": "a.b"}}, doc! {"a": "a\nb"}, false),
        (
            doc! {"a": {"$regex": "a.b", "$options": "s"}},
            doc! {"a": "a\nb"},
            true,
        ),
        (
            doc! {"a": {"$regex": "a b # comment", "$options": "x"}},
            doc! {"a": "ab"},
            true,
        ),
        (doc! {"a": {"$regex": "1"}}, doc! {"a": 1}, false),
        (doc! {"a": {"$regex": "^x"}}, doc! {"a": ["y", "xz"]}, true),
        (
            doc! {"a": Bson::RegularExpression(bson::Regex {
                pattern: "^X".try_into().unwrap(),
                options: "i".try_into().unwrap(),
            })},
            doc! {"a": "xy"},
            true,
        ),
        (
            doc! {"a": {"$in": [Bson::RegularExpression(bson::Regex {
                pattern: "^q".try_into().unwrap(),
                options: "".try_into().unwrap(),
            }), 5]}},
            doc! {"a": "qq"},
            true,
        ),
    ]);
}

#[test]
fn dotted_paths_and_arrays() {
    check(&[
        (doc! {"last.eid": 5}, doc! {"last": {"eid": 5}}, true),
        (
            doc! {"last.bs.eid": "b1"},
            doc! {"last": {"bs": [{"eid": "b0"}, {"eid": "b1"}]}},
            true,
        ),
        (
            doc! {"last.bs.eid": "b9"},
            doc! {"last": {"bs": [{"eid": "b0"}, {"eid": "b1"}]}},
            false,
        ),
        (doc! {"a.0": 5}, doc! {"a": [5, 6]}, true),
        (doc! {"a.1": 5}, doc! {"a": [5, 6]}, false),
        (doc! {"a.1.b": 2}, doc! {"a": [{"b": 1}, {"b": 2}]}, true),
        // numeric component also names a field of array elements
        (doc! {"a.0": 7}, doc! {"a": [{"0": 7}]}, true),
        (doc! {"a.b": 1}, doc! {"a": [[{"b": 1}]]}, false),
        (doc! {"a.b": Bson::Null}, doc! {"a": [{"c": 1}]}, true),
        (doc! {"a.b": Bson::Null}, doc! {"a": 5}, true),
        (
            doc! {"a.b.c": 3},
            doc! {"a": [{"b": [{"c": 1}, {"c": 3}]}]},
            true,
        ),
        (
            doc! {"a": {"$elemMatch": {"b": 1, "c": 2}}},
            doc! {"a": [{"b": 1}, {"c": 2}]},
            false,
        ),
        (
            doc! {"a": {"$elemMatch": {"b": 1, "c": 2}}},
            doc! {"a": [{"b": 1, "c": 2}]},
            true,
        ),
        (
            doc! {"a.b": 1, "a.c": 2},
            doc! {"a": [{"b": 1}, {"c": 2}]},
            true,
        ),
        (
            doc! {"a": {"$elemMatch": {"$or": [{"b": 3}]}}},
            doc! {"a": [{"b": 3}]},
            true,
        ),
        (doc! {"a": {"$elemMatch": {"$gt": 1}}}, doc! {"a": 5}, false),
    ]);
}

#[test]
fn magic_strings_then_match() {
    let ip = dp3_model::value::ipv4("10.0.0.7".parse().unwrap());
    let mut f = doc! {"last.eid": "$$IPv4Prefix{10.0.0.0/24}"};
    replace_magic_strings(&mut f).unwrap();
    check(&[
        (f.clone(), doc! {"last": {"eid": ip.clone()}}, true),
        (
            f,
            doc! {"last": {"eid": dp3_model::value::ipv4("10.0.1.0".parse().unwrap())}},
            false,
        ),
    ]);
}

#[test]
fn invalid_queries_name_the_operator() {
    let cases = [
        (doc! {"$foo": 1}, "$foo"),
        (doc! {"a": {"$foo": 1}}, "$foo"),
        (doc! {"a": {"$gt": 1, "b": 1}}, "b"),
        (doc! {"$or": []}, "$or"),
        (doc! {"$and": [1]}, "$and"),
        (doc! {"a": {"$in": 1}}, "$in"),
        (doc! {"a": {"$size": -1}}, "$size"),
        (doc! {"a": {"$regex": "("}}, "("),
        (doc! {"a": {"$options": "i"}}, "$options"),
        (doc! {"a": {"$regex": "x", "$options": "q"}}, "q"),
        (doc! {"a": {"$not": 5}}, "$not"),
        (doc! {"a": {"$elemMatch": 5}}, "$elemMatch"),
        (doc! {"$where": "1"}, "$where"),
    ];
    for (q, needle) in cases {
        match Filter::new(&q) {
            Err(StoreError::InvalidQuery(msg)) => {
                assert!(
                    msg.contains(needle),
                    "{q}: message '{msg}' should name {needle}"
                )
            }
            other => panic!("{q}: expected InvalidQuery, got {other:?}"),
        }
    }
}
