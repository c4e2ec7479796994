//! The wire codec for task arguments and results: serde + bincode with one fixed
//! configuration. The configuration is part of the contract between an app, the database
//! and a worker, so apps never choose it.
//!
//! Both directions are bounded by [`MAX_PAYLOAD`]: encoding, so that nothing is stored that
//! no decoder would read back; decoding, because bytes read from the database are
//! untrusted and a forged length prefix must not make a worker allocate gigabytes.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest encoded argument tuple or result Castor accepts, in bytes (64 MiB). `delay`
/// refuses larger arguments before writing anything; an attempt with a larger result
/// fails, and nothing is stored.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// Room for a child-protocol frame's own fields (names, options, a task's errors) around
/// one payload of up to [`MAX_PAYLOAD`].
pub const FRAME_OVERHEAD: usize = 1 << 20;

/// The largest child-protocol frame ([`encode_frame`], [`decode_frame`]).
pub const MAX_FRAME: usize = MAX_PAYLOAD + FRAME_OVERHEAD;

/// A value could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// serde could not serialize the value.
    #[error("cannot encode {type_name}: {reason}")]
    Serialize {
        /// The Rust type that was being encoded.
        type_name: &'static str,
        /// What bincode reported.
        reason: String,
    },
    /// The encoding is larger than the limit; it was not kept.
    #[error("{type_name} encodes to {}", over_limit(*size, *limit))]
    TooLarge {
        /// The Rust type that was being encoded.
        type_name: &'static str,
        /// The encoding's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
}

/// Bytes could not be decoded as the expected type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not an encoding of the type (another type, or damaged bytes).
    #[error("cannot decode {len} bytes as {type_name}: {reason}")]
    Invalid {
        /// The Rust type that was expected.
        type_name: &'static str,
        /// How many bytes were given.
        len: usize,
        /// What went wrong.
        reason: String,
    },
    /// The bytes are more than the limit.
    #[error("cannot decode {type_name}: the stored value is {}", over_limit(*len, *limit))]
    TooLarge {
        /// The Rust type that was expected.
        type_name: &'static str,
        /// How many bytes were given.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
}

/// `100.0 MiB (104,857,606 bytes), over the 64 MiB limit`.
pub fn over_limit(size: usize, limit: usize) -> String {
    format!(
        "{}, over the {} limit",
        castor_store::format::format_size(size),
        castor_store::format::format_size(limit)
    )
}

/// The failure message of an attempt whose result is over [`MAX_PAYLOAD`], the same
/// whichever side (the library's glue, the worker) finds it.
pub fn result_too_large(task: &str, size: usize) -> String {
    format!(
        "task `{task}`: its result encodes to {}; nothing was stored (return less: keep large \
         data elsewhere and return where it is)",
        over_limit(size, MAX_PAYLOAD)
    )
}

/// The refusal of a dispatch whose encoded arguments are over [`MAX_PAYLOAD`].
pub fn args_too_large(task: &str, size: usize) -> String {
    format!(
        "task `{task}`: its arguments encode to {}; nothing was dispatched (pass large data \
         another way, e.g. the path of a file)",
        over_limit(size, MAX_PAYLOAD)
    )
}

/// Keeps what is written up to a limit and counts the rest, so that an encoding past the
/// limit costs no memory beyond it yet still reports its full size.
struct CappedWriter {
    bytes: Vec<u8>,
    len: usize,
    limit: usize,
}

impl bincode::enc::write::Writer for CappedWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.len = self.len.saturating_add(bytes.len());
        if self.len <= self.limit {
            self.bytes.extend_from_slice(bytes);
        } else if self.bytes.capacity() > 0 {
            self.bytes = Vec::new();
        }
        Ok(())
    }
}

fn encode_within<T: Serialize + ?Sized, const LIMIT: usize>(
    value: &T,
) -> Result<Vec<u8>, EncodeError> {
    let type_name = std::any::type_name::<T>();
    let mut writer = CappedWriter {
        bytes: Vec::new(),
        len: 0,
        limit: LIMIT,
    };
    bincode::serde::encode_into_writer(value, &mut writer, bincode::config::standard()).map_err(
        |e| EncodeError::Serialize {
            type_name,
            reason: e.to_string(),
        },
    )?;
    if writer.len > LIMIT {
        return Err(EncodeError::TooLarge {
            type_name,
            size: writer.len,
            limit: LIMIT,
        });
    }
    Ok(writer.bytes)
}

/// A sound encoding never makes bincode claim more than this many times its own size for
/// what it decodes into (a `u128` in one byte is the worst case), so a claim past that is
/// a damaged or forged length. The bound keeps such a length from allocating more than
/// that: at most 64 MiB for inputs up to [`SMALL_INPUT`], and about 1 GiB for the largest.
const CLAIM_FACTOR: usize = 16;

/// Inputs up to this size decode under the small claim bound.
const SMALL_INPUT: usize = 4 << 20;

fn decode_within<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    const SMALL_CLAIMS: usize = SMALL_INPUT * CLAIM_FACTOR;
    const LARGE_CLAIMS: usize = MAX_FRAME * CLAIM_FACTOR;
    let type_name = std::any::type_name::<T>();
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            type_name,
            len: bytes.len(),
            limit,
        });
    }
    let invalid = |reason: String| DecodeError::Invalid {
        type_name,
        len: bytes.len(),
        reason,
    };
    let decoded = if bytes.len() <= SMALL_INPUT {
        bincode::serde::decode_from_slice(
            bytes,
            bincode::config::standard().with_limit::<SMALL_CLAIMS>(),
        )
    } else {
        bincode::serde::decode_from_slice(
            bytes,
            bincode::config::standard().with_limit::<LARGE_CLAIMS>(),
        )
    };
    let (value, read) = decoded.map_err(|e| match e {
        bincode::error::DecodeError::LimitExceeded => invalid(format!(
            "a length inside claims more than {CLAIM_FACTOR} times the bytes' size (damaged \
             bytes, or another type's)"
        )),
        other => invalid(other.to_string()),
    })?;
    if read != bytes.len() {
        return Err(invalid(format!(
            "{} trailing bytes after the value",
            bytes.len() - read
        )));
    }
    Ok(value)
}

/// Encodes `value` with Castor's wire configuration.
///
/// # Errors
/// [`EncodeError::Serialize`] if serde cannot serialize the value,
/// [`EncodeError::TooLarge`] if its encoding is larger than [`MAX_PAYLOAD`].
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    encode_within::<T, MAX_PAYLOAD>(value)
}

/// Decodes a `T` from `bytes`, which must hold exactly one value.
///
/// # Errors
/// [`DecodeError::TooLarge`] if there are more than [`MAX_PAYLOAD`] bytes;
/// [`DecodeError::Invalid`] if they are not an encoding of `T` (a length inside them that
/// would allocate far more than their size included) or have bytes left over.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_within(bytes, MAX_PAYLOAD)
}

/// [`encode`] for a child-protocol frame, which may hold a payload and its envelope: up
/// to [`MAX_FRAME`].
///
/// # Errors
/// As [`encode`], with [`MAX_FRAME`] as the limit.
pub fn encode_frame<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    encode_within::<T, MAX_FRAME>(value)
}

/// [`decode`] for a child-protocol frame, up to [`MAX_FRAME`].
///
/// # Errors
/// As [`decode`], with [`MAX_FRAME`] as the limit.
pub fn decode_frame<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_within(bytes, MAX_FRAME)
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
        assert!(
            matches!(
                err,
                DecodeError::Invalid {
                    type_name: "(i64, i64)",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("cannot decode"), "{err}");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&7u8).unwrap();
        bytes.push(0);
        let err = decode::<u8>(&bytes).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    // A `String` encodes as its length (a marker byte and a u32, for these sizes) and its
    // bytes, in one write: quick even in a debug build, unlike a `Vec<u8>` byte by byte.
    const PREFIX: usize = 5;

    #[test]
    fn a_value_over_the_limit_is_refused_with_its_size() {
        let big = "x".repeat(MAX_PAYLOAD + 10);
        let err = encode(&big).expect_err("over the limit");
        let size = MAX_PAYLOAD + 10 + PREFIX;
        assert!(
            matches!(err, EncodeError::TooLarge { size: s, limit: MAX_PAYLOAD, .. } if s == size),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "alloc::string::String encodes to 64.0 MiB (67,108,879 bytes), over the 64 MiB limit"
        );
        // At the limit it still round-trips.
        let fits = "x".repeat(MAX_PAYLOAD - PREFIX);
        let bytes = encode(&fits).expect("at the limit");
        assert_eq!(bytes.len(), MAX_PAYLOAD);
        assert_eq!(decode::<String>(&bytes).expect("decodes"), fits);
        // The same limit for any type, counted as bytes are written.
        let err = encode_within::<_, 1000>(&vec![1000u64; 600]).expect_err("over");
        assert!(
            matches!(err, EncodeError::TooLarge { size: 1803, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_decode_over_the_limit_says_so() {
        let mut bytes = vec![0u8; MAX_PAYLOAD + 1];
        let err = decode::<Vec<u8>>(&bytes).expect_err("too large");
        assert_eq!(
            err.to_string(),
            "cannot decode alloc::vec::Vec<u8>: the stored value is 64.0 MiB (67,108,865 bytes), \
             over the 64 MiB limit"
        );
        bytes.truncate(12);
        bytes[0] = 253;
        bytes[1..9].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let err = decode::<String>(&bytes).expect_err("forged");
        assert_eq!(
            err.to_string(),
            "cannot decode 12 bytes as alloc::string::String: a length inside claims more than \
             16 times the bytes' size (damaged bytes, or another type's)"
        );
    }

    #[test]
    fn whatever_encodes_within_the_limit_decodes() {
        // A small u128 takes a byte but decodes into 16, the most bincode's allocation
        // guard ever counts per encoded byte: at the small bound's edge it still decodes.
        let wide: Vec<u128> = vec![1; SMALL_INPUT - PREFIX];
        let bytes = encode(&wide).expect("encodes");
        assert_eq!(bytes.len(), SMALL_INPUT);
        assert_eq!(
            decode::<Vec<u128>>(&bytes).expect("decodes").len(),
            wide.len()
        );
    }

    #[test]
    fn frames_have_room_for_a_payload_at_the_limit() {
        let payload = "x".repeat(MAX_PAYLOAD - PREFIX);
        let frame = encode_frame(&("run", 3u32, &payload)).expect("fits in a frame");
        assert!(frame.len() > MAX_PAYLOAD);
        let (_, _, back): (String, u32, String) = decode_frame(&frame).expect("decodes");
        assert_eq!(back.len(), payload.len());
        assert!(matches!(
            decode::<(String, u32, String)>(&frame),
            Err(DecodeError::TooLarge { .. })
        ));
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
