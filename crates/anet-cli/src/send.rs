//! `anet send`: one request, its response on stdout.

use std::{fmt::Write as _, process::ExitCode, time::Duration};

use anet::client::ConnectionConfig;
use anyhow::Context as _;
use bytes::Bytes;

use crate::{SendArgs, common};

pub(crate) async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let started = tokio::time::Instant::now();
    let timeout = common::timeout(args.timeout, args.timeout_ms, Duration::from_secs(1));
    let payload = if args.hex_input {
        common::from_hex(&args.payload)?
    } else {
        args.payload.into_bytes()
    };
    let config =
        ConnectionConfig::new().frame(args.frame.builder().max_frame_length(args.max_frame));
    config.validate().context("invalid frame options")?;
    // One request: the addresses a name has now are enough.
    let limit = common::lookup_limit(timeout);
    let client = common::client_builder(std::slice::from_ref(&args.connect), None, limit).await?;
    // The lookup's time counts against --timeout.
    let left = timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(1));
    let client = client
        .connection(config)
        .connect_timeout(left)
        .request_timeout(left)
        .build();
    let result = client.call(Bytes::from(payload)).await;
    client.close();
    match result {
        Ok(response) => {
            if args.hex {
                println!("{}", common::to_hex(&response));
            } else {
                println!("{}", String::from_utf8_lossy(&response));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let mut message = format!("error: {}: {e}", e.kind());
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let _ = write!(message, ": {s}");
                source = s.source();
            }
            eprintln!("{message}");
            Ok(ExitCode::FAILURE)
        }
    }
}
