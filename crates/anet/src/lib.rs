//! anet: a tower client and server for length-prefixed, tag-multiplexed TCP.
#![forbid(unsafe_code)]
