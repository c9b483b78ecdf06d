//! `anet send`: one request, its response on stdout.

use std::{fmt::Write as _, process::ExitCode, time::Duration};

use anet::client::Client;
use bytes::Bytes;

use crate::SendArgs;

pub(crate) async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let client = Client::builder()
        .endpoint(args.connect)
        .connect_timeout(timeout)
        .request_timeout(timeout)
        .build();
    let result = client.call(Bytes::from(args.payload.into_bytes())).await;
    client.close();
    match result {
        Ok(response) => {
            if args.hex {
                let mut hex = String::with_capacity(response.len() * 2);
                for b in &response {
                    let _ = write!(hex, "{b:02x}");
                }
                println!("{hex}");
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
