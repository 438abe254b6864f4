//! serde helpers for the protobuf JSON mapping
//! (<https://protobuf.dev/programming-guides/json/>), which the Connect `json` codec
//! uses. Writers emit the canonical form; readers accept every form the mapping
//! allows: numbers or strings for integers, standard or URL-safe base64 with or
//! without padding for bytes, enum names or numbers.

use std::fmt;
use std::marker::PhantomData;

use base64::Engine as _;
use serde::Serializer;
use serde::de::{self, Deserializer, Visitor};

/// A protobuf enum: its values and their names, for the JSON mapping.
pub trait ProtoEnum {
    const VALUES: &'static [(i32, &'static str)];
}

/// Integers as JSON numbers or decimal strings (`5`, `"5"`, `5.0`).
macro_rules! lenient_int {
    ($name:ident, $ty:ty) => {
        pub fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = $ty;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str(concat!("a ", stringify!($ty), " as a number or a string"))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                    <$ty>::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                    <$ty>::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<$ty, E> {
                    // `1.0` and `1e3` are integers in the JSON mapping; `1.5` is not.
                    if v.fract() == 0.0 && v >= <$ty>::MIN as f64 && v <= <$ty>::MAX as f64 {
                        Ok(v as $ty)
                    } else {
                        Err(E::custom(format!("{v} is not a valid {}", stringify!($ty))))
                    }
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                    v.trim()
                        .parse::<$ty>()
                        .map_err(|e| E::custom(format!("{v:?}: {e}")))
                }
                fn visit_unit<E: de::Error>(self) -> Result<$ty, E> {
                    Ok(0)
                }
            }
            d.deserialize_any(V)
        }
    };
}

lenient_int!(de_u32, u32);
lenient_int!(de_i32, i32);
lenient_int!(de_i64, i64);

/// int64 is written as a string in the JSON mapping.
pub fn ser_i64_string<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Standard base64, padded: what the JSON mapping writes.
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Base64 in either alphabet, padded or not: what the JSON mapping accepts.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);
    let text = text.trim_end_matches('=');
    STANDARD.decode(text).or_else(|_| URL_SAFE.decode(text))
}

/// An enum field (`i32` in prost) as its value's name; an unknown value as its number.
pub fn ser_enum<E: ProtoEnum, S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
    match E::VALUES.iter().find(|(n, _)| n == v) {
        Some((_, name)) => s.serialize_str(name),
        None => s.serialize_i32(*v),
    }
}

/// An enum field from its name or its number.
pub fn de_enum<'de, E: ProtoEnum, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    struct V<E>(PhantomData<E>);
    impl<E: ProtoEnum> Visitor<'_> for V<E> {
        type Value = i32;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an enum value name or number")
        }
        fn visit_str<Err: de::Error>(self, v: &str) -> Result<i32, Err> {
            E::VALUES
                .iter()
                .find(|(_, name)| *name == v)
                .map(|(n, _)| *n)
                .ok_or_else(|| Err::custom(format!("unknown enum value {v:?}")))
        }
        fn visit_i64<Err: de::Error>(self, v: i64) -> Result<i32, Err> {
            i32::try_from(v).map_err(|_| Err::custom(format!("{v} is out of range")))
        }
        fn visit_u64<Err: de::Error>(self, v: u64) -> Result<i32, Err> {
            i32::try_from(v).map_err(|_| Err::custom(format!("{v} is out of range")))
        }
        fn visit_unit<Err: de::Error>(self) -> Result<i32, Err> {
            Ok(0)
        }
    }
    d.deserialize_any(V::<E>(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Ints {
        #[serde(deserialize_with = "de_u32")]
        a: u32,
        #[serde(deserialize_with = "de_i64")]
        b: i64,
    }

    #[test]
    fn integers_as_numbers_or_strings() {
        let ints: Ints = serde_json::from_str(r#"{"a":"7","b":-3}"#).expect("parse");
        assert_eq!((ints.a, ints.b), (7, -3));
        let ints: Ints =
            serde_json::from_str(r#"{"a":7.0,"b":"-9007199254740993"}"#).expect("parse");
        assert_eq!((ints.a, ints.b), (7, -9007199254740993));
        assert!(serde_json::from_str::<Ints>(r#"{"a":-1,"b":0}"#).is_err());
        assert!(serde_json::from_str::<Ints>(r#"{"a":1.5,"b":0}"#).is_err());
        assert!(serde_json::from_str::<Ints>(r#"{"a":"x","b":0}"#).is_err());
    }

    #[test]
    fn base64_in_every_accepted_form() {
        for text in ["aGk/", "aGk_", "aGk", "aGk=", "aA==", "aA"] {
            assert!(decode_base64(text).is_ok(), "{text}");
        }
        assert_eq!(decode_base64("aGk").expect("unpadded"), b"hi");
        assert_eq!(decode_base64("-_8").expect("url-safe"), vec![0xfb, 0xff]);
        assert!(decode_base64("a").is_err());
        assert!(decode_base64("!!!!").is_err());
    }
}
