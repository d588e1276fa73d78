//! The plugin's live statistics: the server's counters, and the stats
//! directory written from them and from the device in the kernel's formats.
//!
//! ```text
//! <stats-dir>/sys/block/<name>/{disksize,size,initstate,comp_algorithm,mm_stat,io_stat,bd_stat,backing_dev}
//! <stats-dir>/sys/kernel/debug/zsmalloc/<name>/classes
//! <stats-dir>/nbd.json        the server's counters and the device's figures
//! <stats-dir>/generation      bumped after each rewrite (written last)
//! <stats-dir>/summary.json    at unload: the final check and the figures
//! ```
//!
//! Each file is written beside itself and renamed into place, so that a
//! reader sees a whole old file or a whole new one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use zsmalloc_core::pool::stats::format_classes;
use zsmalloc_core::zram::{Algorithm, Zram};

/// The NBD commands the plugin counts, by their protocol names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
}

impl Op {
    const ALL: [Op; 7] =
        [Op::Read, Op::Write, Op::Flush, Op::Trim, Op::Cache, Op::WriteZeroes, Op::BlockStatus];

    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "NBD_CMD_READ",
            Op::Write => "NBD_CMD_WRITE",
            Op::Flush => "NBD_CMD_FLUSH",
            Op::Trim => "NBD_CMD_TRIM",
            Op::Cache => "NBD_CMD_CACHE",
            Op::WriteZeroes => "NBD_CMD_WRITE_ZEROES",
            Op::BlockStatus => "NBD_CMD_BLOCK_STATUS",
        }
    }
}

/// The server's counters, shared by every connection and thread.
#[derive(Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub active: AtomicU64,
    requests: [AtomicU64; 7],
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    /// error replies by errno name
    errors: Mutex<BTreeMap<String, u64>>,
    pub handshake_timeouts: AtomicU64,
    pub idle_disconnects: AtomicU64,
    pub maintenance_runs: AtomicU64,
    pub maintenance_pages_freed: AtomicU64,
    pub maintenance_pages_migrated: AtomicU64,
}

/// The errno's C name, for the counters.
pub fn errno_name(errno: i32) -> String {
    match errno {
        libc::EINVAL => "EINVAL".into(),
        libc::ENOSPC => "ENOSPC".into(),
        libc::EIO => "EIO".into(),
        libc::ENODEV => "ENODEV".into(),
        libc::EOPNOTSUPP => "EOPNOTSUPP".into(),
        libc::ESHUTDOWN => "ESHUTDOWN".into(),
        libc::ENOMEM => "ENOMEM".into(),
        n => format!("errno {n}"),
    }
}

impl Counters {
    pub fn request(&self, op: Op) {
        self.requests[Op::ALL.iter().position(|&o| o == op).unwrap_or(0)].fetch_add(1, Relaxed);
    }

    pub fn error(&self, errno: i32) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry(errno_name(errno)).or_default() += 1;
    }

    /// The counters as one JSON object.
    pub fn json(&self) -> String {
        let mut requests = Json::default();
        for (op, n) in Op::ALL.iter().zip(&self.requests) {
            let n = n.load(Relaxed);
            if n > 0 {
                requests.num(op.name(), n);
            }
        }
        let mut errors = Json::default();
        for (name, &n) in self.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            errors.num(name, n);
        }
        let mut j = Json::default();
        j.num("connections", self.connections.load(Relaxed));
        j.num("active", self.active.load(Relaxed));
        j.raw("requests", &requests.end());
        j.raw("errors", &errors.end());
        j.num("bytes_read", self.bytes_read.load(Relaxed));
        j.num("bytes_written", self.bytes_written.load(Relaxed));
        j.num("handshake_timeouts", self.handshake_timeouts.load(Relaxed));
        j.num("idle_disconnects", self.idle_disconnects.load(Relaxed));
        j.num("maintenance_runs", self.maintenance_runs.load(Relaxed));
        j.num("maintenance_pages_freed", self.maintenance_pages_freed.load(Relaxed));
        j.num("maintenance_pages_migrated", self.maintenance_pages_migrated.load(Relaxed));
        j.end()
    }
}

/// A flat JSON object written field by field (numbers, strings, nested objects).
#[derive(Default)]
pub struct Json(String);

impl Json {
    fn key(&mut self, k: &str) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        self.0 += &quote(k);
        self.0.push(':');
    }
    pub fn num(&mut self, k: &str, v: u64) {
        self.key(k);
        let _ = write!(self.0, "{v}");
    }
    pub fn float(&mut self, k: &str, v: f64) {
        self.key(k);
        let _ = write!(self.0, "{v:.3}");
    }
    pub fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.0 += &quote(v);
    }
    pub fn raw(&mut self, k: &str, json: &str) {
        self.key(k);
        self.0 += json;
    }
    pub fn end(self) -> String {
        if self.0.is_empty() {
            "{}".into()
        } else {
            self.0 + "}"
        }
    }
}

/// `s` as a JSON string.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            '\n' => out += "\\n",
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// zram's `comp_algorithm`: every algorithm, the device's in brackets.
pub fn comp_algorithm(current: Algorithm) -> String {
    let names: Vec<String> = Algorithm::ALL
        .iter()
        .map(|&a| if a == current { format!("[{}]", a.name()) } else { a.name().to_string() })
        .collect();
    names.join(" ") + "\n"
}

/// The device's figures and the server's counters as one JSON object (`nbd.json`, and
/// `summary.json` with `check`).
pub fn report(zram: &Zram, counters: &Counters, started: Instant, check: Option<&str>) -> String {
    let mm = zram.mm_stat();
    let io = zram.io_stat();
    let bd = zram.bd_stat();
    let mut m = Json::default();
    for (k, v) in [
        ("orig_data_size", mm.orig_data_size),
        ("compr_data_size", mm.compr_data_size),
        ("mem_used_total", mm.mem_used_total),
        ("mem_limit", mm.mem_limit),
        ("mem_used_max", mm.mem_used_max),
        ("same_pages", mm.same_pages),
        ("pages_compacted", mm.pages_compacted),
        ("huge_pages", mm.huge_pages),
        ("huge_pages_since", mm.huge_pages_since),
    ] {
        m.num(k, v);
    }
    let mut i = Json::default();
    for (k, v) in [
        ("failed_reads", io.failed_reads),
        ("failed_writes", io.failed_writes),
        ("invalid_io", io.invalid_io),
        ("notify_free", io.notify_free),
    ] {
        i.num(k, v);
    }
    let mut b = Json::default();
    for (k, v) in [("bd_count", bd.bd_count), ("bd_reads", bd.bd_reads), ("bd_writes", bd.bd_writes)] {
        b.num(k, v);
    }
    let mut j = Json::default();
    j.str("export", &zram.name);
    j.num("size", zram.disksize());
    j.str("algorithm", zram.comps().first().map_or("", |c| c.algorithm.name()));
    j.float("uptime_s", started.elapsed().as_secs_f64());
    j.raw("mm_stat", &m.end());
    j.raw("io_stat", &i.end());
    j.raw("bd_stat", &b.end());
    j.raw("server", &counters.json());
    if let Some(check) = check {
        j.str("check", check);
    }
    j.end()
}

/// Write `text` to `path` through a file beside it renamed into place.
pub fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("stat");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)
}

/// Rewrites the stats directory, one writer at a time.
pub struct StatsDir {
    root: std::path::PathBuf,
    generation: Mutex<u64>,
}

impl StatsDir {
    /// The directories under `root`, made now (mode 0700: the figures are the owner's).
    pub fn create(root: &Path, name: &str) -> io::Result<StatsDir> {
        use std::os::unix::fs::DirBuilderExt;
        let mut b = fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        b.create(root.join("sys/block").join(name))?;
        b.create(root.join("sys/kernel/debug/zsmalloc").join(name))?;
        Ok(StatsDir { root: root.to_path_buf(), generation: Mutex::new(0) })
    }

    /// Every file from the device's state now, then `generation`.
    pub fn write(&self, zram: &Zram, counters: &Counters, started: Instant) -> io::Result<u64> {
        let mut generation = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        let block = self.root.join("sys/block").join(&zram.name);
        let algorithm = zram.comps().first().map_or(Algorithm::Lz4, |c| c.algorithm);
        let backing = zram.backing_file().map_or("none".to_string(), |p| p.display().to_string());
        let files = [
            ("disksize", format!("{}\n", zram.disksize())),
            ("size", format!("{}\n", zram.disksize() / 512)),
            ("initstate", "1\n".to_string()),
            ("comp_algorithm", comp_algorithm(algorithm)),
            ("mm_stat", zram.mm_stat().format()),
            ("io_stat", zram.io_stat().format()),
            ("bd_stat", zram.bd_stat().format()),
            ("backing_dev", backing + "\n"),
        ];
        for (file, text) in files {
            write_atomic(&block.join(file), &text)?;
        }
        let classes = format_classes(&zram.pool().class_stats());
        write_atomic(
            &self.root.join("sys/kernel/debug/zsmalloc").join(&zram.name).join("classes"),
            &classes,
        )?;
        write_atomic(&self.root.join("nbd.json"), &(report(zram, counters, started, None) + "\n"))?;
        *generation += 1;
        write_atomic(&self.root.join("generation"), &format!("{}\n", *generation))?;
        Ok(*generation)
    }

    /// `summary.json`: the report with the final check.
    pub fn write_summary(
        &self,
        zram: &Zram,
        counters: &Counters,
        started: Instant,
        check: &str,
    ) -> io::Result<()> {
        write_atomic(&self.root.join("summary.json"), &(report(zram, counters, started, Some(check)) + "\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use zsmalloc_core::mm::memory::{PCP_BATCH, PCP_HIGH};
    use zsmalloc_core::mm::Memory;
    use zsmalloc_core::pool::{Pool, PoolConfig};
    use zsmalloc_core::zram::ZramConfig;

    fn device() -> Zram {
        let mem = Arc::new(Memory::new(1 << 12, PCP_HIGH, PCP_BATCH).unwrap());
        let pool = Pool::new(PoolConfig::new("zram0"), mem, true).unwrap();
        Zram::new(pool, ZramConfig::new(1 << 20)).unwrap()
    }

    #[test]
    fn json_quotes_and_nests() {
        assert_eq!(quote("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        let mut j = Json::default();
        j.num("n", 3);
        j.raw("o", &Json::default().end());
        assert_eq!(j.end(), "{\"n\":3,\"o\":{}}");
    }

    #[test]
    fn comp_algorithm_brackets_the_current_one() {
        assert_eq!(comp_algorithm(Algorithm::Zstd), "lz4 lz4hc [zstd] deflate lz4-kernel\n");
    }

    #[test]
    fn the_directory_holds_the_device_figures() {
        let zram = device();
        zram.pwrite(0, &[7u8; 8192]).unwrap();
        zram.pwrite(8192, &b"compressible text ".repeat(400)[..4096]).unwrap();
        let counters = Counters::default();
        counters.request(Op::Write);
        counters.error(libc::ENOSPC);
        let root = std::env::temp_dir().join(format!("nbdkit-zsmalloc-test-{}", std::process::id()));
        let dir = StatsDir::create(&root, "zram0").unwrap();
        assert_eq!(dir.write(&zram, &counters, Instant::now()).unwrap(), 1);
        let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(read("sys/block/zram0/disksize"), "1048576\n");
        assert_eq!(read("sys/block/zram0/mm_stat"), zram.mm_stat().format());
        assert_eq!(read("sys/block/zram0/io_stat"), zram.io_stat().format());
        assert!(read("sys/kernel/debug/zsmalloc/zram0/classes").contains("Total"));
        let nbd = read("nbd.json");
        assert!(nbd.contains("\"orig_data_size\":12288"), "{nbd}");
        assert!(nbd.contains("\"requests\":{\"NBD_CMD_WRITE\":1}"), "{nbd}");
        assert!(nbd.contains("\"errors\":{\"ENOSPC\":1}"), "{nbd}");
        assert_eq!(read("generation"), "1\n");
        dir.write_summary(&zram, &counters, Instant::now(), "ok").unwrap();
        assert!(read("summary.json").contains("\"check\":\"ok\""));
        fs::remove_dir_all(&root).unwrap();
    }
}
