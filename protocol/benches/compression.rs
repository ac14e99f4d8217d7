//! Transport compression on a generated gateway corpus: every mode's bytes per event, CPU
//! per delivery at several fan-outs, and memory (the table in BENCHMARKS.md ("zstd-dict codec")),
//! then criterion timings of the zstd-dict hot paths.
//!
//! `cargo bench -p concord-protocol --bench compression`

use std::hint::black_box;

use concord_protocol::Seq;
use concord_protocol::corpus::Corpus;
use concord_protocol::zstd_dict::{
    self, BodyCompressor, DictSet, Dictionary, encode_frame_into, report,
};
use criterion::Criterion;

fn main() {
    let quick = std::env::var_os("CONCORD_BENCH_QUICK").is_some();
    let config = if quick {
        report::Config::quick()
    } else {
        report::Config::default()
    };
    match report::run(&config) {
        Ok(r) => println!("{r}"),
        Err(e) => {
            eprintln!("report failed: {e}");
            std::process::exit(1);
        }
    }

    let mut c = Criterion::default().configure_from_args();
    let dict = Dictionary::default_shipped();
    let dicts: DictSet = [dict.clone()].into_iter().collect();
    let events = Corpus::generate(0x5eed_0002, 256);
    let Ok(mut compressor) = BodyCompressor::new(zstd_dict::DEFAULT_LEVEL) else {
        return;
    };
    let bodies: Vec<_> = events
        .iter()
        .filter_map(|e| compressor.compress(Some(&dict), 0, Some(&e.t), &e.d).ok())
        .collect();
    let mut i = 0;
    c.bench_function("zstd-dict compress once (shipped 64 KiB dict)", |b| {
        b.iter(|| {
            i = (i + 1) % events.len();
            let e = &events[i];
            black_box(compressor.compress(Some(&dict), 0, Some(&e.t), &e.d).ok())
        })
    });
    let mut wire = Vec::with_capacity(8192);
    c.bench_function("zstd-dict per-recipient frame (header + body copy)", |b| {
        b.iter(|| {
            i = (i + 1) % bodies.len();
            wire.clear();
            encode_frame_into(&mut wire, Some(Seq(i as u64 + 1)), &bodies[i]);
            black_box(wire.len())
        })
    });
    let mut decoder = zstd_dict::Decoder::new(zstd_dict::DEFAULT_MAX_MESSAGE);
    let frames: Vec<Vec<u8>> = bodies
        .iter()
        .map(|body| {
            let mut w = Vec::new();
            encode_frame_into(&mut w, Some(Seq(7)), body);
            w
        })
        .collect();
    let mut out = Vec::new();
    c.bench_function("zstd-dict client decode", |b| {
        b.iter(|| {
            i = (i + 1) % frames.len();
            black_box(decoder.decode(&frames[i], &dicts, &mut out).is_ok())
        })
    });
    c.final_summary();
}
