//! Encode and decode throughput of `FrameCodec` for 64 B and 4 KiB payloads.
#![allow(missing_docs)] // criterion's macros generate undocumented items

use anet_proto::{Frame, FrameCodec, Tag};
use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::codec::{Decoder, Encoder};

const BATCH: usize = 1024;

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for size in [64usize, 4096] {
        let payload = Bytes::from(vec![0xa5; size]);
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            let mut codec = FrameCodec::new();
            let mut buf = BytesMut::with_capacity(BATCH * (size + 6));
            b.iter(|| {
                buf.clear();
                for i in 0..BATCH {
                    let frame = Frame::new(Tag::from_u32(i as u32), payload.clone());
                    codec.encode(frame, &mut buf).expect("encode");
                }
                std::hint::black_box(&buf);
            });
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for size in [64usize, 4096] {
        let mut codec = FrameCodec::new();
        let mut wire = BytesMut::new();
        for i in 0..BATCH {
            codec
                .encode(
                    Frame::new(Tag::from_u32(i as u32), vec![0x5a; size]),
                    &mut wire,
                )
                .expect("encode");
        }
        let wire = wire.freeze();
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &wire, |b, wire| {
            b.iter(|| {
                // One copy of the wire bytes per batch stands in for the socket read.
                let mut src = BytesMut::from(&wire[..]);
                let mut n = 0;
                while let Some(frame) = codec.decode(&mut src).expect("decode") {
                    n += frame.payload.len();
                }
                std::hint::black_box(n);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
