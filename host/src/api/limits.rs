//! Request limits (`api.yml: limits`): a single linear scan of a JSON body that refuses
//! overlong strings, overlong arrays and deep nesting before the body is parsed, so a hostile
//! body cannot make the parser allocate or recurse without bound.
//!
//! The scan does not validate JSON (the parser does that afterwards); on malformed input it
//! may count differently, but it never panics and never reads past the body.

use dp3_model::config::ApiLimits;

/// The limits the body scan enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    pub max_string_length: usize,
    pub max_array_length: usize,
    pub max_nesting_depth: usize,
}

impl From<&ApiLimits> for JsonLimits {
    fn from(l: &ApiLimits) -> Self {
        JsonLimits {
            max_string_length: l.max_string_length,
            max_array_length: l.max_array_length,
            max_nesting_depth: l.max_nesting_depth,
        }
    }
}

impl Default for JsonLimits {
    fn default() -> Self {
        JsonLimits::from(&ApiLimits::default())
    }
}

/// Which limit a body exceeds, and where (byte offset in the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error(
        "a JSON string at byte {offset} is longer than limits.max_string_length ({limit} bytes)"
    )]
    StringLength { offset: usize, limit: usize },
    #[error("a JSON array at byte {offset} has more than limits.max_array_length ({limit}) items")]
    ArrayLength { offset: usize, limit: usize },
    #[error("JSON nesting at byte {offset} is deeper than limits.max_nesting_depth ({limit})")]
    NestingDepth { offset: usize, limit: usize },
}

struct Frame {
    is_array: bool,
    start: usize,
    /// Items seen so far (arrays only): commas + 1 once a value started.
    items: usize,
    /// A value started since the last comma (or the opening bracket).
    in_item: bool,
}

/// Scan `body` against `limits`. The top-level array is not length-limited here: that is the
/// list of datapoints, limited by `max_datapoints_per_request` and the body size.
pub fn check_json_limits(body: &[u8], limits: &JsonLimits) -> Result<(), LimitExceeded> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b',' => {
                if let Some(top) = stack.last_mut() {
                    top.in_item = false;
                }
            }
            b']' | b'}' => {
                stack.pop();
            }
            _ => {
                // Any other byte starts (or continues) a value in the enclosing array.
                let depth = stack.len();
                if let Some(top) = stack.last_mut()
                    && top.is_array
                    && !top.in_item
                {
                    top.in_item = true;
                    top.items += 1;
                    if depth > 1 && top.items > limits.max_array_length {
                        return Err(LimitExceeded::ArrayLength {
                            offset: top.start,
                            limit: limits.max_array_length,
                        });
                    }
                }
                match b {
                    b'[' | b'{' => {
                        if stack.len() >= limits.max_nesting_depth {
                            return Err(LimitExceeded::NestingDepth {
                                offset: i,
                                limit: limits.max_nesting_depth,
                            });
                        }
                        stack.push(Frame {
                            is_array: b == b'[',
                            start: i,
                            items: 0,
                            in_item: false,
                        });
                    }
                    b'"' => {
                        let start = i;
                        i += 1;
                        let mut len = 0usize;
                        while i < body.len() && body[i] != b'"' {
                            // An escape takes the next byte with it (`\"`, `\\`).
                            let step = if body[i] == b'\\' { 2 } else { 1 };
                            len += step;
                            i += step;
                        }
                        if len > limits.max_string_length {
                            return Err(LimitExceeded::StringLength {
                                offset: start,
                                limit: limits.max_string_length,
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(s: usize, a: usize, d: usize) -> JsonLimits {
        JsonLimits {
            max_string_length: s,
            max_array_length: a,
            max_nesting_depth: d,
        }
    }

    #[test]
    fn within_limits_passes() {
        let body = br#"[{"type":"A","id":"e1","attr":"x","v":[1,2,3]},{"v":{"a":"bcd"}}]"#;
        assert_eq!(check_json_limits(body, &limits(5, 3, 3)), Ok(()));
    }

    #[test]
    fn long_string_is_refused() {
        let body = br#"[{"v":"abcdef"}]"#;
        assert_eq!(
            check_json_limits(body, &limits(5, 10, 10)),
            Err(LimitExceeded::StringLength {
                offset: 6,
                limit: 5
            })
        );
        // Escapes count as written; an escaped quote does not end the string.
        assert!(check_json_limits(br#"["a\"bcd"]"#, &limits(5, 10, 10)).is_err());
        assert!(check_json_limits(br#"["a\"bc"]"#, &limits(5, 10, 10)).is_ok());
    }

    #[test]
    fn long_inner_array_is_refused_but_not_the_top_level() {
        let l = limits(100, 3, 10);
        assert!(check_json_limits(b"[1,2,3,4,5]", &l).is_ok());
        assert!(check_json_limits(br#"[{"v":[1,2,3]}]"#, &l).is_ok());
        assert_eq!(
            check_json_limits(br#"[{"v":[1, 2 ,3,"4"]}]"#, &l),
            Err(LimitExceeded::ArrayLength {
                offset: 6,
                limit: 3
            })
        );
        // Commas inside strings and nested values are not items of the outer array.
        assert!(check_json_limits(br#"[{"v":[",,,,", [1,2,3], {"a":1,"b":2}]}]"#, &l).is_ok());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let l = limits(100, 100, 4);
        assert!(check_json_limits(b"[[[[1]]]]", &l).is_ok());
        assert_eq!(
            check_json_limits(b"[[[[[1]]]]]", &l),
            Err(LimitExceeded::NestingDepth {
                offset: 4,
                limit: 4
            })
        );
        let deep = "[".repeat(1_000_000);
        assert!(check_json_limits(deep.as_bytes(), &l).is_err());
    }

    #[test]
    fn malformed_input_never_panics() {
        for body in [&b"\""[..], b"\"\\", b"]]]]", b"}{,,", b"[\"abc", b""] {
            let _ = check_json_limits(body, &limits(1, 1, 2));
        }
    }

    #[test]
    fn messages_name_the_limit_and_its_value() {
        let e = check_json_limits(b"[[[1]]]", &limits(1, 1, 2)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "JSON nesting at byte 2 is deeper than limits.max_nesting_depth (2)"
        );
    }
}
