//! Turning a received text frame into a JSON value, strictly.
//!
//! Stricter than `serde_json::from_str`: duplicate keys are refused (two parsers
//! could keep different copies), and so is any number beyond ±(2^53−1) (RFC 8785
//! writes numbers as IEEE doubles, so such a number would be signed as its
//! rounded neighbour).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::error::Refusal;

/// Default largest text frame a receiver parses.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 << 20;

/// Largest integer an IEEE double represents exactly: 2^53 − 1.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Parses one text frame into a single JSON object, refusing oversized frames,
/// batches, duplicate keys and unsafe numbers.
pub fn parse_frame(text: &str, max_bytes: usize) -> Result<Map<String, Value>, Refusal> {
    if text.len() > max_bytes {
        return Err(Refusal::TooLarge {
            size: text.len(),
            limit: max_bytes,
        });
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value = StrictValue
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(classify)?;
    match value {
        Value::Object(map) => Ok(map),
        Value::Array(_) => Err(Refusal::Batch),
        _ => Err(Refusal::NotJsonRpc(
            "a message must be a JSON object".into(),
        )),
    }
}

// serde_json wraps our custom errors in its own; the prefixes recover which.
const DUPLICATE: &str = "duplicate key ";
const UNSAFE: &str = "unsafe number ";

fn classify(err: serde_json::Error) -> Refusal {
    let text = err.to_string();
    if let Some(rest) = text.strip_prefix(DUPLICATE) {
        Refusal::DuplicateKey(until_position(rest).to_string())
    } else if let Some(rest) = text.strip_prefix(UNSAFE) {
        Refusal::UnsafeNumber(until_position(rest).to_string())
    } else {
        Refusal::MalformedJson(text)
    }
}

fn until_position(s: &str) -> &str {
    s.rsplit_once(" at line ").map_or(s, |(head, _)| head)
}

/// Whether `number` survives every JSON implementation unchanged: within
/// ±(2^53−1), the integers an IEEE double holds exactly.
pub fn is_safe_number(number: &Number) -> bool {
    if let Some(i) = number.as_i64() {
        safe_integer(i.unsigned_abs())
    } else if let Some(u) = number.as_u64() {
        safe_integer(u)
    } else {
        number.as_f64().is_some_and(safe_float)
    }
}

/// The first number in `value` that is not [safe](is_safe_number), if any:
/// a sender checks what it is about to sign, since the receiver refuses it.
pub fn find_unsafe_number(value: &Value) -> Option<&Number> {
    match value {
        Value::Number(n) => (!is_safe_number(n)).then_some(n),
        Value::Array(items) => items.iter().find_map(find_unsafe_number),
        Value::Object(map) => map.values().find_map(find_unsafe_number),
        _ => None,
    }
}

fn safe_integer(magnitude: u64) -> bool {
    magnitude <= MAX_SAFE_INTEGER
}

fn safe_float(v: f64) -> bool {
    v.is_finite() && v.abs() <= MAX_SAFE_INTEGER as f64
}

/// Deserializes a `serde_json::Value` while enforcing the strict rules.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        if !safe_integer(v.unsigned_abs()) {
            return Err(E::custom(format_args!("{UNSAFE}{v}")));
        }
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        if !safe_integer(v) {
            return Err(E::custom(format_args!("{UNSAFE}{v}")));
        }
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // Integers too large for u64 arrive here, as do 1e300 and 9007199254740993.0.
        if !safe_float(v) {
            return Err(E::custom(format_args!("{UNSAFE}{v}")));
        }
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format_args!("{DUPLICATE}{key}")));
            }
            let value = access.next_value_seed(StrictValue)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_plain_object() {
        let map = parse_frame(r#"{"a":1,"b":[true,null,"x",-2.5]}"#, 1024).unwrap();
        assert_eq!(map["b"][3], serde_json::json!(-2.5));
    }

    #[test]
    fn refuses_duplicate_keys_even_nested() {
        assert_eq!(
            parse_frame(r#"{"a":{"k":1,"k":2}}"#, 1024),
            Err(Refusal::DuplicateKey("k".into()))
        );
    }

    #[test]
    fn refuses_integers_beyond_the_safe_range() {
        for text in [
            r#"{"n":9007199254740992}"#,
            r#"{"n":-9007199254740992}"#,
            r#"{"n":9007199254740993}"#,
            r#"{"n":18446744073709551616}"#,
            r#"{"n":9007199254740993.0}"#,
            r#"{"n":1e300}"#,
        ] {
            let refusal = parse_frame(text, 1024).unwrap_err();
            assert_eq!(refusal.reason(), "unsafe_number", "{text}: {refusal}");
        }
        assert!(parse_frame(r#"{"n":9007199254740991,"m":-9007199254740991}"#, 1024).is_ok());
    }

    #[test]
    fn refuses_batches_scalars_garbage_and_trailing_data() {
        assert_eq!(parse_frame("[]", 1024), Err(Refusal::Batch));
        assert_eq!(parse_frame("3", 1024).unwrap_err().reason(), "not_jsonrpc");
        assert_eq!(
            parse_frame("{", 1024).unwrap_err().reason(),
            "malformed_json"
        );
        assert_eq!(
            parse_frame("{} {}", 1024).unwrap_err().reason(),
            "malformed_json"
        );
    }

    #[test]
    fn refuses_oversized_frames_before_parsing() {
        assert_eq!(
            parse_frame(r#"{"a":"0123456789"}"#, 8),
            Err(Refusal::TooLarge { size: 18, limit: 8 })
        );
    }
}
