//! How keys and values become bytes at the edges of a topology and back.
//!
//! Records travel as bytes between the broker and the application; inside a topology the
//! steps see typed keys and values. A [`Serde`] is the conversion, chosen by the type: a
//! `KStream<String, u64>` reads and writes its keys as UTF-8 and its values as decimal
//! numbers. Numbers are decimal ASCII (`"42"`), not fixed-width binary, so that the topics
//! an application writes read as text in `eventflow consume` and in any Kafka tool; the
//! price is a few bytes and a parse per record.
//!
//! A null key or value (absent on the wire) reads as empty bytes: an empty `String`, an
//! empty `Vec<u8>`, and an error for the numbers; an `Option<T>` reads it as `None` and
//! writes `None` as null. Tables are the exception: there a null value is a tombstone and
//! deletes the key before any `Serde` is asked.

/// Conversion of one type to and from record bytes.
pub trait Serde: Sized {
    /// The bytes of `self`.
    fn to_bytes(&self) -> Vec<u8>;
    /// The value `bytes` encode; an error says why they do not.
    fn from_bytes(bytes: &[u8]) -> Result<Self, SerdeError>;

    /// Whether this value is written as null (no bytes at all): only `None` is.
    fn is_null(&self) -> bool {
        false
    }

    /// The value a null reads as: what empty bytes decode to, `None` for an `Option`.
    fn from_null() -> Result<Self, SerdeError> {
        Self::from_bytes(&[])
    }
}

/// The bytes of `value` as a record key or value: `None` for a null.
pub(crate) fn to_record_bytes<T: Serde>(value: &T) -> Option<Vec<u8>> {
    (!value.is_null()).then(|| value.to_bytes())
}

/// A record key or value (`None`: null) decoded.
pub(crate) fn from_record_bytes<T: Serde>(bytes: Option<&[u8]>) -> Result<T, SerdeError> {
    match bytes {
        Some(bytes) => T::from_bytes(bytes),
        None => T::from_null(),
    }
}

/// A value that may be null: `None` is written as a null value (a tombstone), and a null
/// reads as `None`. Session windows write `None` for a session merged into another.
impl<T: Serde> Serde for Option<T> {
    fn to_bytes(&self) -> Vec<u8> {
        self.as_ref().map(T::to_bytes).unwrap_or_default()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, SerdeError> {
        T::from_bytes(bytes).map(Some)
    }

    fn is_null(&self) -> bool {
        self.is_none()
    }

    fn from_null() -> Result<Self, SerdeError> {
        Ok(None)
    }
}

/// Bytes that do not decode as the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SerdeError(pub String);

/// Any type a topology can carry: it has a [`Serde`] and can be cloned when a stream
/// feeds more than one step.
pub trait Data: Serde + Clone + 'static {}

impl<T: Serde + Clone + 'static> Data for T {}

impl Serde for String {
    fn to_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, SerdeError> {
        String::from_utf8(bytes.to_vec()).map_err(|e| SerdeError(format!("not UTF-8: {e}")))
    }
}

impl Serde for Vec<u8> {
    fn to_bytes(&self) -> Vec<u8> {
        self.clone()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, SerdeError> {
        Ok(bytes.to_vec())
    }
}

/// Decimal numbers: `to_string` and `parse`, surrounding whitespace refused.
macro_rules! decimal_serde {
    ($($t:ty),*) => {$(
        impl Serde for $t {
            fn to_bytes(&self) -> Vec<u8> {
                self.to_string().into_bytes()
            }

            fn from_bytes(bytes: &[u8]) -> Result<Self, SerdeError> {
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| SerdeError(format!("not a decimal {}: not UTF-8", stringify!($t))))?;
                text.parse().map_err(|e| {
                    SerdeError(format!("not a decimal {}: {text:?}: {e}", stringify!($t)))
                })
            }
        }
    )*};
}

decimal_serde!(u64, i64);

/// JSON documents (UTF-8 text, as serde_json writes them).
impl Serde for serde_json::Value {
    fn to_bytes(&self) -> Vec<u8> {
        // Serializing a `Value` cannot fail: its map keys are strings.
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, SerdeError> {
        serde_json::from_slice(bytes).map_err(|e| SerdeError(format!("not JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_decimal_text() {
        assert_eq!(42u64.to_bytes(), b"42");
        assert_eq!((-7i64).to_bytes(), b"-7");
        assert_eq!(u64::from_bytes(b"42"), Ok(42));
        assert_eq!(i64::from_bytes(b"-7"), Ok(-7));
        assert!(u64::from_bytes(b"").is_err());
        assert!(u64::from_bytes(b" 4").is_err());
        assert!(u64::from_bytes(&[0xff]).is_err());
    }

    #[test]
    fn strings_must_be_utf8() {
        assert_eq!(String::from_bytes(b"word"), Ok("word".to_string()));
        assert!(String::from_bytes(&[0xc3]).is_err());
    }

    #[test]
    fn options_are_null_when_none() {
        assert_eq!(to_record_bytes(&Some(5u64)), Some(b"5".to_vec()));
        assert_eq!(to_record_bytes(&None::<u64>), None);
        assert_eq!(from_record_bytes::<Option<u64>>(None), Ok(None));
        assert_eq!(from_record_bytes::<Option<u64>>(Some(b"5")), Ok(Some(5)));
        assert_eq!(from_record_bytes::<String>(None), Ok(String::new()));
        assert!(from_record_bytes::<u64>(None).is_err());
    }

    #[test]
    fn json_round_trips() {
        let doc = serde_json::json!({"id": 7, "name": "Ada"});
        assert_eq!(serde_json::Value::from_bytes(&doc.to_bytes()), Ok(doc));
        assert!(serde_json::Value::from_bytes(b"{").is_err());
    }
}
