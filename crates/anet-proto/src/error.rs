//! The error type of the wire format.

use std::{error::Error as StdError, fmt, io};

/// What went wrong while encoding, decoding, reading or writing a frame.
///
/// `FrameTooLarge` and `FrameTooShort` are protocol errors: after one, the byte
/// stream cannot be trusted and the connection that produced it should be closed.
#[derive(Debug)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame body (tag + payload) is longer than the configured maximum.
    /// On decode this is detected from the length field alone, before any buffer
    /// is reserved for the body.
    FrameTooLarge {
        /// The body length announced or requested.
        len: usize,
        /// The configured maximum body length.
        max: usize,
    },
    /// The frame body is shorter than the tag, so it cannot carry one.
    FrameTooShort {
        /// The body length announced.
        len: usize,
        /// The smallest valid body length (the tag width).
        min: usize,
    },
    /// A tag given to the encoder does not have the configured width.
    TagWidth {
        /// The width of the tag given.
        len: usize,
        /// The width the format requires.
        expected: usize,
    },
    /// The underlying I/O failed, or the stream ended inside a frame
    /// (`io::ErrorKind::UnexpectedEof`).
    Io(io::Error),
}

impl FrameError {
    /// Whether this error means the peer broke the protocol (as opposed to an I/O
    /// failure or a local misuse).
    pub fn is_protocol(&self) -> bool {
        matches!(
            self,
            FrameError::FrameTooLarge { .. } | FrameError::FrameTooShort { .. }
        )
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::FrameTooLarge { len, max } => {
                write!(f, "frame body of {len} bytes exceeds the maximum of {max}")
            }
            FrameError::FrameTooShort { len, min } => {
                write!(
                    f,
                    "frame body of {len} bytes is shorter than the {min}-byte tag"
                )
            }
            FrameError::TagWidth { len, expected } => {
                write!(
                    f,
                    "tag of {len} bytes given where the format needs {expected}"
                )
            }
            FrameError::Io(_) => f.write_str("frame i/o failed"),
        }
    }
}

impl StdError for FrameError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}
