//! Helpers for anet's integration tests: small real servers on `127.0.0.1:0`.
