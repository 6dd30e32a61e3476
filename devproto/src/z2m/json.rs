//! zigbee2mqtt's JSON serialization: `json-stable-stringify` (sorted keys, no spaces) with
//! JavaScript number formatting.
//!
//! What it does: turn a [`serde_json::Value`] into the exact bytes zigbee2mqtt publishes, so the
//! simulator's payloads and the codec tests compare byte for byte. Keys are sorted by UTF-16 code
//! units like JavaScript's default sort, numbers print like `JSON.stringify` (`0`, not `0.0`;
//! `42.17`; `1e+21`), strings escape like `JSON.stringify`.
//! What it does not do: parse (serde_json does that) or preserve insertion order.

use serde_json::{Number, Value};

/// Serializes `value` like zigbee2mqtt's `stringify` (json-stable-stringify): sorted keys, no
/// whitespace, JavaScript number formatting.
pub fn stable_stringify(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            // JavaScript compares strings by UTF-16 code units.
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, &map[key]);
            }
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    // serde_json escapes exactly the characters JSON.stringify escapes (", \, control
    // characters, with lowercase \u00xx), and Rust strings hold no lone surrogates.
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

fn write_number(out: &mut String, n: &Number) {
    if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(f) = n.as_f64() {
        out.push_str(&js_number(f));
    } else {
        out.push_str("null");
    }
}

/// Formats a float like JavaScript's `Number.prototype.toString` (as used by `JSON.stringify`).
pub fn js_number(f: f64) -> String {
    if !f.is_finite() {
        return "null".to_string();
    }
    if f == 0.0 {
        return "0".to_string();
    }
    let abs = f.abs();
    if (1e-6..1e21).contains(&abs) {
        // Rust's Display prints the shortest round-trip digits without an exponent, which is
        // what JavaScript does in this range.
        return format!("{f}");
    }
    let exp = format!("{f:e}");
    match exp.split_once('e') {
        Some((mantissa, e)) if !e.starts_with('-') => format!("{mantissa}e+{e}"),
        _ => exp,
    }
}

/// A JSON number for a float, the way JavaScript would hold it (integers stay integers).
pub fn number(f: f64) -> Value {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::from(f as i64)
    } else {
        Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_and_nested() {
        let v = json!({"status": "ok", "data": {"to": {"b": 1, "a": 2}, "id": "bulb"}});
        assert_eq!(
            stable_stringify(&v),
            r#"{"data":{"id":"bulb","to":{"a":2,"b":1}},"status":"ok"}"#
        );
    }

    #[test]
    fn numbers_print_like_javascript() {
        assert_eq!(js_number(0.0), "0");
        assert_eq!(js_number(-0.0), "0");
        assert_eq!(js_number(42.17), "42.17");
        assert_eq!(js_number(100.0), "100");
        assert_eq!(js_number(1e21), "1e+21");
        assert_eq!(js_number(1.5e-7), "1.5e-7");
        assert_eq!(js_number(f64::NAN), "null");
        assert_eq!(stable_stringify(&json!([0.5, 1.0, -3])), "[0.5,1,-3]");
        assert_eq!(stable_stringify(&number(36001.0)), "36001");
    }

    #[test]
    fn strings_escape_like_json_stringify() {
        assert_eq!(
            stable_stringify(&json!("a\"b\\c\n\u{1}é")),
            "\"a\\\"b\\\\c\\n\\u0001é\""
        );
    }
}
