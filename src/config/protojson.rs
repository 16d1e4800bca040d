//! Serde helpers for the protobuf JSON encodings Buildbarn configurations use: durations
//! as strings (`'30s'`, `'1.5s'`, `'0.000001s'`) and int64 values as a number or a
//! decimal string (protojson accepts both).

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::time::Duration;

/// Parses a protobuf JSON duration: decimal seconds with up to 9 fractional digits,
/// followed by `s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration {text:?}: expected seconds with an 's' suffix, e.g. \"30s\" or \"1.5s\"")
    };
    let number = text.strip_suffix('s').ok_or_else(bad)?;
    if number.starts_with('-') {
        return Err(format!("invalid duration {text:?}: must not be negative"));
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 9
    {
        return Err(bad());
    }
    let seconds: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().map_err(|_| bad())?
    };
    Ok(Duration::new(seconds, nanos))
}

/// `#[serde(deserialize_with = "duration")]` for a required `Duration`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(de::Error::custom)
}

/// `#[serde(default, deserialize_with = "optional_duration")]` for an `Option<Duration>`.
pub fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

struct Int64Visitor;

impl<'de> Visitor<'de> for Int64Visitor {
    type Value = i64;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an integer, as a number or a decimal string")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("integer {v} is out of range")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        if v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 {
            Ok(v as i64)
        } else {
            Err(E::custom(format!("{v} is not an integer")))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        v.parse()
            .map_err(|_| E::custom(format!("{v:?} is not a decimal integer")))
    }
}

/// `#[serde(deserialize_with = "int64")]`: an int64 as a number or a string.
pub fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(Int64Visitor)
}

/// Like [`int64`], for sizes and counts that must not be negative.
pub fn uint64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = int64(d)?;
    u64::try_from(v).map_err(|_| de::Error::custom(format!("{v} must not be negative")))
}

/// `#[serde(default, deserialize_with = "optional_uint64")]` for an `Option<u64>`.
pub fn optional_uint64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    uint64(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(
            parse_duration("0.000000001s").unwrap(),
            Duration::from_nanos(1)
        );
        assert_eq!(parse_duration(".5s").unwrap(), Duration::from_millis(500));
        for bad in ["30", "s", "1m", "-1s", "1.0000000001s", "1e3s", ""] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[derive(serde::Deserialize)]
    struct Sizes {
        #[serde(deserialize_with = "int64")]
        a: i64,
        #[serde(deserialize_with = "uint64")]
        b: u64,
    }

    #[test]
    fn int64_as_number_or_string() {
        let s: Sizes = serde_json::from_str(r#"{"a": "-12", "b": 2097152}"#).unwrap();
        assert_eq!((s.a, s.b), (-12, 2097152));
        let s: Sizes = serde_json::from_str(r#"{"a": 3.0, "b": "9223372036854775807"}"#).unwrap();
        assert_eq!((s.a, s.b), (3, i64::MAX as u64));
        assert!(serde_json::from_str::<Sizes>(r#"{"a": 1.5, "b": 1}"#).is_err());
        assert!(serde_json::from_str::<Sizes>(r#"{"a": 1, "b": -1}"#).is_err());
    }
}
