//! The `DEBUG` spans: one `anet.call` per client call and one `anet.request`
//! per server request, with their fields; none below `DEBUG`.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use anet::client::Client;
use anet_tests::{echo, start_server};
use bytes::Bytes;
use tracing::{
    Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{Layer, layer::Context, prelude::*, registry::LookupSpan};

/// A span's name and its fields as recorded.
type Seen = (String, BTreeMap<String, String>);

/// Every span seen, by span id.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<BTreeMap<u64, Seen>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let name = attrs.metadata().name().to_owned();
        self.0
            .lock()
            .expect("lock")
            .insert(id.into_u64(), (name, fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some((_, fields)) = self.0.lock().expect("lock").get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
}

/// Three calls to an anet echo server on a current-thread runtime with a
/// subscriber at `level` on this thread; the spans it saw.
fn spans_at(level: tracing::Level) -> Vec<Seen> {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(
        spans
            .clone()
            .with_filter(tracing_subscriber::filter::LevelFilter::from_level(level)),
    );
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let server = start_server(anet::server::Server::builder(), echo()).await;
            let client = Client::builder().endpoint(server.addr).build();
            for _ in 0..3 {
                client.call(Bytes::from_static(b"hi")).await.expect("echo");
            }
            client.close();
        });
    });
    let seen = spans.0.lock().expect("lock");
    seen.values()
        .filter(|(name, _)| name == "anet.call" || name == "anet.request")
        .cloned()
        .collect()
}

#[test]
fn each_call_and_each_served_request_has_a_debug_span_with_its_fields() {
    let spans = spans_at(tracing::Level::DEBUG);
    let calls: Vec<_> = spans.iter().filter(|(n, _)| n == "anet.call").collect();
    let requests: Vec<_> = spans.iter().filter(|(n, _)| n == "anet.request").collect();
    assert_eq!(calls.len(), 3, "{spans:#?}");
    assert_eq!(requests.len(), 3, "{spans:#?}");
    for (_, fields) in calls {
        assert!(fields["endpoint"].starts_with("127.0.0.1:"), "{fields:?}");
        assert_eq!(fields["attempt"], "1", "{fields:?}");
        assert_eq!(fields["outcome"], "ok", "{fields:?}");
        assert!(fields["latency_us"].parse::<u64>().is_ok(), "{fields:?}");
    }
    for (_, fields) in requests {
        assert!(fields["peer"].contains("127.0.0.1:"), "{fields:?}");
        assert_eq!(fields["outcome"], "ok", "{fields:?}");
    }
}

#[test]
fn no_request_span_is_built_at_info() {
    assert_eq!(spans_at(tracing::Level::INFO), Vec::new());
}
