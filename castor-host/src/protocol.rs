//! The protocol between the worker and its process-mode children.
//!
//! A child is `castor` itself, re-executed in a hidden child mode with one end of a Unix
//! socket pair as its standard input. Messages cross that socket as frames: a 4-byte
//! little-endian length, then the message in Castor's bincode encoding. The child's
//! stdout and stderr are separate pipes the worker reads as the running task's log, so
//! nothing a task prints can corrupt a frame.
//!
//! ```text
//! worker                                  child
//!   ── (spawn) ─────────────────────────►  loads the library
//!   ◄────────────────────────────── Ready   (or LoadFailed)
//!   ── Run { task, id, args } ──────────►  runs it
//!   ◄──── Call { dispatch | snapshot .. }   (a task's TaskContext, through the worker)
//!   ── Reply { .. } ────────────────────►
//!   ◄──────────── Log, Progress (no reply)
//!   ── Cancel ─────────────────────────►   sets the task's cancellation flag
//!   ◄───────────────────── Done { result }  after writing an end marker to stdout/stderr
//! ```
//!
//! The child exits when the socket closes (the worker retired it, or died).

use std::io::{self, Read, Write};

use castor_abi::Uuid;
use castor_abi::abi::{DispatchOptionsAbi, FailureKind, SnapshotAbi};
use castor_abi::codec;
use castor_store::{LogLevel, TaskState};
use serde::{Deserialize, Serialize};

/// The line a child writes to its stdout and stderr after each task, so the worker
/// knows it has read all of that task's output. Control characters keep it from
/// colliding with anything a task prints.
pub const END_MARKER: &str = "\u{1}castor:end-of-task\u{1}";

/// An encoded argument tuple or result as it crosses the socket: written as one run of
/// bytes (serde's `bytes`), not byte by byte as a `Vec<u8>` is, which made a 64 MiB
/// payload cost seconds in a debug build. The encoding is the same either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(pub Vec<u8>);

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Payload;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(bytes))
            }
            fn visit_bytes<E>(self, bytes: &[u8]) -> Result<Payload, E> {
                Ok(Payload(bytes.to_vec()))
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

/// Worker to child.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToChild {
    /// Run one attempt.
    Run {
        /// The task's id.
        id: Uuid,
        /// Its name.
        task: String,
        /// The attempt number.
        attempt: u32,
        /// The attempt limit.
        max_attempts: u32,
        /// The encoded arguments.
        args: Payload,
    },
    /// The running task was cancelled or timed out: set its flag.
    Cancel,
    /// The answer to a [`FromChild::Call`].
    Reply {
        /// The call's number.
        call: u64,
        /// The answer.
        reply: Reply,
    },
}

/// Child to worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromChild {
    /// The library is loaded; tasks may come.
    Ready {
        /// The child's process id.
        pid: u32,
    },
    /// The library could not be loaded.
    LoadFailed {
        /// Why.
        message: String,
    },
    /// The attempt returned.
    Done {
        /// The encoded result, or how the attempt failed.
        result: Result<Payload, Failure>,
        /// How long the task ran, in microseconds.
        elapsed_us: u64,
    },
    /// A running task needs the worker's database.
    Call {
        /// The call's number, echoed in the reply.
        call: u64,
        /// What it asks.
        request: Request,
    },
    /// A running task logged a line.
    Log {
        /// The task's id; nil for a library's record made outside any task.
        id: Uuid,
        /// The level.
        level: LogLevel,
        /// The line.
        line: String,
    },
    /// A running task reported progress.
    Progress {
        /// The task's id.
        id: Uuid,
        /// Units done.
        done: u64,
        /// Units in all.
        total: u64,
        /// What it is doing.
        message: String,
    },
}

/// How an attempt in a child failed: the library's [`TaskFailure`](castor_abi::abi::TaskFailure)
/// as it crosses the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What kind of failure the library reported.
    #[serde(with = "FailureKindDef")]
    pub kind: FailureKind,
    /// The message for users, cut to fit in a frame.
    pub message: String,
}

/// serde for the ABI's [`FailureKind`], derived (`remote`) rather than written on the ABI
/// type, whose module must compile with abi_stable alone (the ABI fixtures build copies
/// of it). serde matches every variant of `FailureKind`, so one added there does not
/// compile until it is added here.
#[derive(Serialize, Deserialize)]
#[serde(remote = "FailureKind")]
enum FailureKindDef {
    Error,
    Discard,
    Panic,
    DecodeArgs,
    EncodeResult,
    Cancelled,
}

/// What a task in a child asks the worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Dispatch a task of the same manager.
    Dispatch {
        /// The task's name.
        task: String,
        /// Its encoded arguments.
        args: Payload,
        /// The resolved options.
        options: DispatchOptions,
    },
    /// Read a task.
    Snapshot {
        /// The task's id.
        id: Uuid,
    },
    /// The database's change counter.
    Generation,
    /// Wait for the counter to pass `since` (bounded by the worker).
    WaitChange {
        /// The counter last seen.
        since: u64,
        /// The longest wait.
        timeout_ms: u64,
    },
}

/// The worker's answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The new task's id, or why not.
    Dispatched(Result<Uuid, String>),
    /// The task, if it exists, or why it could not be read.
    Snapshot(Result<Option<Snapshot>, String>),
    /// The change counter.
    Generation(u64),
}

/// [`DispatchOptionsAbi`] as it crosses the socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DispatchOptions {
    run_at_us: Option<i64>,
    priority: i32,
    unique_key: Option<String>,
    max_attempts: u32,
    timeout_ms: Option<u64>,
    backoff_base_ms: u64,
    backoff_cap_ms: u64,
    args_fingerprint: String,
    concurrency_key: Option<String>,
}

impl From<&DispatchOptionsAbi> for DispatchOptions {
    fn from(o: &DispatchOptionsAbi) -> Self {
        DispatchOptions {
            run_at_us: o.run_at_us.into_option(),
            priority: o.priority,
            unique_key: o.unique_key.as_ref().map(|k| k.to_string()).into_option(),
            max_attempts: o.max_attempts,
            timeout_ms: o.timeout_ms.into_option(),
            backoff_base_ms: o.backoff_base_ms,
            backoff_cap_ms: o.backoff_cap_ms,
            args_fingerprint: o.args_fingerprint.to_string(),
            concurrency_key: o
                .concurrency_key
                .as_ref()
                .map(|k| k.to_string())
                .into_option(),
        }
    }
}

impl From<DispatchOptions> for DispatchOptionsAbi {
    fn from(o: DispatchOptions) -> Self {
        DispatchOptionsAbi {
            run_at_us: o.run_at_us.into(),
            priority: o.priority,
            unique_key: o.unique_key.map(Into::into).into(),
            max_attempts: o.max_attempts,
            timeout_ms: o.timeout_ms.into(),
            backoff_base_ms: o.backoff_base_ms,
            backoff_cap_ms: o.backoff_cap_ms,
            args_fingerprint: o.args_fingerprint.into(),
            concurrency_key: o.concurrency_key.map(Into::into).into(),
        }
    }
}

/// A task as a running task reads it through the worker (`TaskContext::snapshot`): what
/// the worker's services return, typed, in the worker and over the socket. It becomes a
/// [`SnapshotAbi`] only where it crosses into the library.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// Where the task is now.
    pub state: TaskState,
    /// The task's name.
    pub task: String,
    /// Attempts started so far.
    pub attempt: u32,
    /// The attempt limit.
    pub max_attempts: u32,
    /// The encoded result, once completed.
    pub result: Option<Payload>,
    /// Every failed attempt's error, oldest first, as the JSON list [`SnapshotAbi`] takes:
    /// written once by the worker, read only by the library.
    pub errors_json: String,
    /// The result's fingerprint as recorded by the worker that produced it (empty:
    /// unknown).
    pub result_fingerprint: String,
}

impl From<Snapshot> for SnapshotAbi {
    fn from(s: Snapshot) -> Self {
        SnapshotAbi {
            state: s.state.as_str().into(),
            task: s.task.into(),
            attempt: s.attempt,
            max_attempts: s.max_attempts,
            result: s.result.map(|r| r.0.into()).into(),
            errors_json: s.errors_json.into(),
            result_fingerprint: s.result_fingerprint.into(),
        }
    }
}

/// Writes one frame. A message larger than [`codec::MAX_FRAME`] is refused before any
/// byte is sent (the other side would refuse it), as an `InvalidInput` error.
///
/// # Errors
/// The message does not encode or is too large, or the socket is closed.
pub fn write_frame<T: Serialize>(out: &mut impl Write, message: &T) -> io::Result<()> {
    let bytes =
        codec::encode_frame(message).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let len = u32::try_from(bytes.len()).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + bytes.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&bytes);
    out.write_all(&frame)?;
    out.flush()
}

/// Reads one frame; `None` at a clean end of stream.
///
/// # Errors
/// A truncated frame, one over [`codec::MAX_FRAME`], or one that does not decode.
pub fn read_frame<T: serde::de::DeserializeOwned>(input: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > codec::MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {}", codec::over_limit(len, codec::MAX_FRAME)),
        ));
    }
    let mut bytes = vec![0u8; len];
    input.read_exact(&mut bytes)?;
    codec::decode_frame(&bytes)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &ToChild::Run {
                id: Uuid::from_bytes([7; 16]),
                task: "add".into(),
                attempt: 1,
                max_attempts: 3,
                args: Payload(vec![1, 2, 3]),
            },
        )
        .expect("write");
        write_frame(&mut buf, &ToChild::Cancel).expect("write");
        let mut input = buf.as_slice();
        match read_frame::<ToChild>(&mut input).expect("read") {
            Some(ToChild::Run { task, args, .. }) => {
                assert_eq!(task, "add");
                assert_eq!(args, Payload(vec![1, 2, 3]));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_frame::<ToChild>(&mut input).expect("read"),
            Some(ToChild::Cancel)
        ));
        assert!(read_frame::<ToChild>(&mut input).expect("eof").is_none());
    }

    #[test]
    fn a_payload_at_the_limit_crosses_and_one_past_it_is_refused_before_sending() {
        let mut buf = Vec::new();
        let run = |args: Vec<u8>| ToChild::Run {
            id: Uuid::from_bytes([7; 16]),
            task: "echo_bytes".into(),
            attempt: 1,
            max_attempts: 3,
            args: Payload(args),
        };
        write_frame(&mut buf, &run(vec![1; codec::MAX_PAYLOAD])).expect("a full payload fits");
        match read_frame::<ToChild>(&mut buf.as_slice()).expect("read") {
            Some(ToChild::Run { args, .. }) => assert_eq!(args.0.len(), codec::MAX_PAYLOAD),
            other => panic!("{other:?}"),
        }
        let mut buf = Vec::new();
        let err = write_frame(&mut buf, &run(vec![1; codec::MAX_FRAME])).expect_err("too large");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("over the 65 MiB limit"), "{err}");
        assert!(buf.is_empty(), "nothing was sent");
    }

    fn round_trip<T: Serialize + serde::de::DeserializeOwned>(message: &T) -> T {
        let mut buf = Vec::new();
        write_frame(&mut buf, message).expect("write");
        read_frame(&mut buf.as_slice())
            .expect("read")
            .expect("a frame")
    }

    #[test]
    fn ids_failure_kinds_levels_and_states_cross_as_themselves() {
        let id = Uuid::from_u128(0x0190_f1e2_aa3b_7c4d_8e9f_0a1b_2c3d_4e5f);
        let kinds = [
            FailureKind::Error,
            FailureKind::Discard,
            FailureKind::Panic,
            FailureKind::DecodeArgs,
            FailureKind::EncodeResult,
            FailureKind::Cancelled,
        ];
        for kind in kinds {
            let done = FromChild::Done {
                result: Err(Failure {
                    kind,
                    message: "boom".into(),
                }),
                elapsed_us: 7,
            };
            match round_trip(&done) {
                FromChild::Done { result: Err(f), .. } => assert_eq!(f.kind, kind),
                other => panic!("{other:?}"),
            }
        }
        for level in [
            LogLevel::Debug,
            LogLevel::Info,
            LogLevel::Warn,
            LogLevel::Error,
        ] {
            let log = FromChild::Log {
                id,
                level,
                line: "hello".into(),
            };
            match round_trip(&log) {
                FromChild::Log {
                    id: got, level: l, ..
                } => assert_eq!((got, l), (id, level)),
                other => panic!("{other:?}"),
            }
        }
        for state in TaskState::ALL {
            let reply = Reply::Snapshot(Ok(Some(Snapshot {
                state,
                task: "add".into(),
                attempt: 1,
                max_attempts: 3,
                result: None,
                errors_json: "[]".into(),
                result_fingerprint: "0123456789abcdef".into(),
            })));
            match round_trip(&reply) {
                Reply::Snapshot(Ok(Some(s))) => {
                    assert_eq!(s.state, state);
                    assert_eq!(SnapshotAbi::from(s).state.as_str(), state.as_str());
                }
                other => panic!("{other:?}"),
            }
        }
        match round_trip(&Reply::Dispatched(Ok(id))) {
            Reply::Dispatched(Ok(got)) => assert_eq!(got, id),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_truncated_frame_is_an_error() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &ToChild::Cancel).expect("write");
        buf.truncate(buf.len() - 1);
        buf[0] += 5;
        assert!(read_frame::<ToChild>(&mut buf.as_slice()).is_err());
    }
}
