//! The zram write path against its codec alone, on the same pages, timed
//! inside the engine (no Python on either side): the physical limit of a
//! batched write is the codec's own time.
//!
//! `zram_write PAGES_FILE [ALGORITHM] [ROUNDS] [BATCH] [THREADS]`: PAGES_FILE
//! holds whole 4 KiB pages.  Each round times, in turn, the codec
//! compressing every page into one buffer, and a fresh device storing every
//! page with `write_pages` in batches of BATCH pages (default 64), from
//! THREADS threads (default 1; thread t takes batches t, t + THREADS, ...),
//! and then a fresh arena handing out as many frames as that device ended
//! with (`alloc_page`, each faulted in by the OS on the way: the share of
//! the write path that is the kernel's page zeroing and fault handling); it
//! prints one JSON object with the seconds of each round.
//! `benchmarks/bench_zram.py` runs it.

use std::sync::Arc;
use std::time::Instant;

use zsmalloc_core::mm::memory::{PCP_BATCH, PCP_HIGH};
use zsmalloc_core::mm::Memory;
use zsmalloc_core::pool::{Pool, PoolConfig};
use zsmalloc_core::zram::{Algorithm, Codec, CodecSpec, Zram, ZramConfig, COMPRESS_BOUND, PAGE_SIZE};

fn device(n: usize, algorithm: Algorithm) -> Zram {
    let mem = Arc::new(Memory::new(n + 4096, PCP_HIGH, PCP_BATCH).expect("an arena"));
    let config = PoolConfig { background_work: false, ..PoolConfig::new("zram-bench") };
    let pool = Pool::new(config, mem, true).expect("a pool");
    let mut zc = ZramConfig::new((n * PAGE_SIZE) as u64);
    zc.algorithm = CodecSpec::new(algorithm);
    Zram::new(pool, zc).expect("a device")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: zram_write PAGES_FILE [ALGORITHM] [ROUNDS] [BATCH]");
        std::process::exit(2);
    };
    let data = std::fs::read(path).expect("the pages file");
    let algorithm: Algorithm = args.get(2).map_or("lz4", String::as_str).parse().expect("an algorithm");
    let rounds: usize = args.get(3).map_or(5, |s| s.parse().expect("rounds"));
    let batch: usize = args.get(4).map_or(64, |s| s.parse().expect("batch"));
    let threads: usize = args.get(5).map_or(1, |s| s.parse().expect("threads"));
    let n = data.len() / PAGE_SIZE;
    let codec = Codec::new(&CodecSpec::new(algorithm)).expect("a codec");
    let (mut codec_s, mut write_s, mut frames_s, mut stored) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut out = [0u8; COMPRESS_BOUND];
    for _ in 0..rounds {
        let t0 = Instant::now();
        let mut total = 0usize;
        for page in data.chunks_exact(PAGE_SIZE) {
            total += codec.compress(page, &mut out, COMPRESS_BOUND).unwrap_or(PAGE_SIZE);
        }
        codec_s.push(t0.elapsed().as_secs_f64());
        std::hint::black_box(total);

        let z = device(n, algorithm);
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let (z, data) = (&z, &data);
                s.spawn(move || {
                    for (i, chunk) in data[..n * PAGE_SIZE].chunks(batch * PAGE_SIZE).enumerate() {
                        if i % threads == t {
                            z.write_pages(i * batch, chunk).expect("a write");
                        }
                    }
                });
            }
        });
        write_s.push(t0.elapsed().as_secs_f64());
        stored = z.mm_stat().compr_data_size;
        z.check().expect("a consistent device");
        let frames = z.pool().total_pages();
        drop(z);

        let mem = Memory::new(frames, PCP_HIGH, PCP_BATCH).expect("an arena");
        let t0 = Instant::now();
        for _ in 0..frames {
            mem.alloc_page().expect("a frame");
        }
        frames_s.push(t0.elapsed().as_secs_f64());
    }
    println!(
        "{{\"pages\": {n}, \"algorithm\": \"{}\", \"batch\": {batch}, \"threads\": {threads}, \"codec_s\": {codec_s:?}, \"write_s\": {write_s:?}, \"frames_s\": {frames_s:?}, \"compr_data_size\": {stored}}}",
        algorithm.name()
    );
}
