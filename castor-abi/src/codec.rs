//! The wire codec for task arguments and results: serde + bincode with one fixed
//! configuration. The configuration is part of the contract between an app, the database
//! and a worker, so apps never choose it.
//!
//! Decoding is bounded by [`MAX_PAYLOAD`]: bytes read from the database are untrusted, and a
//! forged length prefix must not make a worker allocate gigabytes.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest encoded argument or result Castor accepts, in bytes (64 MiB).
pub const MAX_PAYLOAD: usize = 64 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_PAYLOAD>()
}

/// A value could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {type_name}: {source}")]
pub struct EncodeError {
    /// The Rust type that was being encoded.
    pub type_name: &'static str,
    /// What bincode reported.
    #[source]
    pub source: bincode::error::EncodeError,
}

/// Bytes could not be decoded as the expected type.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {len} bytes as {type_name}: {reason}")]
pub struct DecodeError {
    /// The Rust type that was expected.
    pub type_name: &'static str,
    /// How many bytes were given.
    pub len: usize,
    /// What went wrong.
    pub reason: String,
}

/// Encodes `value` with Castor's wire configuration.
///
/// # Errors
/// Fails if serde cannot serialize the value or it is larger than [`MAX_PAYLOAD`].
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|source| EncodeError {
        type_name: std::any::type_name::<T>(),
        source,
    })
}

/// Decodes a `T` from `bytes`, which must hold exactly one value.
///
/// # Errors
/// Fails if the bytes are not a valid encoding of `T`, have bytes left over, or claim more
/// than [`MAX_PAYLOAD`] bytes of allocation.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let error = |reason: String| DecodeError {
        type_name: std::any::type_name::<T>(),
        len: bytes.len(),
        reason,
    };
    let (value, read) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| error(e.to_string()))?;
    if read != bytes.len() {
        return Err(error(format!(
            "{} trailing bytes after the value",
            bytes.len() - read
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Email {
        recipient: String,
        status: String,
    }

    #[test]
    fn round_trips_tuples_and_structs() {
        let args = ("a@example.com".to_owned(), 3u32);
        assert_eq!(
            decode::<(String, u32)>(&encode(&args).unwrap()).unwrap(),
            args
        );
        let email = Email {
            recipient: "a".into(),
            status: "sent".into(),
        };
        assert_eq!(decode::<Email>(&encode(&email).unwrap()).unwrap(), email);
        assert_eq!(decode::<()>(&encode(&()).unwrap()).unwrap(), ());
    }

    #[test]
    fn a_one_tuple_encodes_like_its_element() {
        assert_eq!(encode(&("x".to_owned(),)).unwrap(), encode("x").unwrap());
    }

    #[test]
    fn wrong_type_names_the_expected_type() {
        let bytes = encode(&("not a number",)).unwrap();
        let err = decode::<(i64, i64)>(&bytes).unwrap_err();
        assert_eq!(err.type_name, "(i64, i64)");
        assert!(err.to_string().starts_with("cannot decode"), "{err}");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&7u8).unwrap();
        bytes.push(0);
        let err = decode::<u8>(&bytes).unwrap_err();
        assert!(err.reason.contains("trailing"), "{err}");
    }

    #[test]
    fn a_forged_length_prefix_does_not_allocate() {
        // Length prefixes claiming 1 TiB: a decoder that trusted them would abort the
        // test process trying to allocate, so getting an error back is the assertion.
        {
            let marker = 253u8;
            let mut forged = vec![marker];
            forged.extend_from_slice(&(1u64 << 40).to_le_bytes());
            forged.extend_from_slice(b"abc");
            assert!(decode::<Vec<u8>>(&forged).is_err());
            assert!(decode::<String>(&forged).is_err());
            assert!(decode::<Vec<u64>>(&forged).is_err());
        }
    }
}
