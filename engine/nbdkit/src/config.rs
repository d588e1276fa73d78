//! The plugin's configuration: the `key=value` parameters nbdkit passes to
//! `.config`, parsed and checked before anything is allocated.

use std::path::PathBuf;
use std::time::Duration;

use zsmalloc_core::zram::Algorithm;

/// What `nbdkit ... nbdkit-zsmalloc-plugin.so key=value ...` configures.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// bytes, required (rounded up to whole pages by the device)
    pub size: Option<u64>,
    pub algorithm: Algorithm,
    /// bytes, 0 for none
    pub mem_limit: u64,
    /// the device's and its pool's name (`/sys/block/<name>`, debugfs `zsmalloc/<name>`)
    pub name: String,
    /// where the live statistics are written, laid out like sysfs and debugfs
    pub stats_dir: Option<PathBuf>,
    /// how often the statistics are rewritten without being asked (SIGUSR1 asks)
    pub stats_interval: Duration,
    /// how often the pool is compacted and its pages migrated while serving; None: never
    pub maintain_interval: Option<Duration>,
    /// a connection still in its handshake this long after it was accepted is closed; None: no limit
    pub handshake_timeout: Option<Duration>,
    /// a connection whose server threads all waited this long on it, with nothing
    /// arriving and nothing leaving, is closed; None: no limit
    pub idle_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            size: None,
            algorithm: Algorithm::Lz4,
            mem_limit: 0,
            name: "zram0".into(),
            stats_dir: None,
            stats_interval: Duration::from_secs(1),
            maintain_interval: None,
            handshake_timeout: None,
            idle_timeout: None,
        }
    }
}

/// `.config_help`: one line per key.
pub const HELP: &str = "\
size=<BYTES>               (required) device size, e.g. 1G
algorithm=lz4|lz4hc|zstd|deflate   compression (default lz4)
mem-limit=<BYTES>          cap on the pool's memory (default 0: none)
name=<NAME>                device and pool name (default zram0)
stats-dir=<DIR>            write live stats there: sys/block/<name>/*, sys/kernel/debug/zsmalloc/<name>/classes
stats-interval=<SECONDS>   rewrite them this often (default 1; SIGUSR1 rewrites them at once)
maintain-interval=<SECONDS>  compact the pool and migrate its pages this often (default 0: never)
handshake-timeout=<SECONDS>  close a connection still in its handshake after this long (default 0: never)
idle-timeout=<SECONDS>     close a connection idle this long (default 0: never)";

/// A byte count: digits with an optional binary suffix K, M, G, T (`4096`, `64K`, `1G`).
pub fn parse_bytes(key: &str, value: &str) -> Result<u64, String> {
    let v = value.trim();
    let (digits, shift) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                _ => return Err(format!("{key}={value}: not a size (examples: 4096, 64K, 512M, 1G)")),
            };
            (&v[..i], shift)
        }
        _ => (v, 0),
    };
    let n: u64 =
        digits.parse().map_err(|_| format!("{key}={value}: not a size (examples: 4096, 64K, 512M, 1G)"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{key}={value}: too large"))
}

/// Seconds, a finite number >= 0; 0 means "off" (None).
pub fn parse_seconds(key: &str, value: &str) -> Result<Option<Duration>, String> {
    let s: f64 = value.trim().parse().map_err(|_| format!("{key}={value}: not a number of seconds"))?;
    if !(0.0..=1e9).contains(&s) {
        return Err(format!("{key}={value}: seconds must be a finite number >= 0"));
    }
    Ok((s > 0.0).then(|| Duration::from_secs_f64(s)))
}

impl Config {
    /// `.config`: one key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "size" => {
                let n = parse_bytes(key, value)?;
                if n == 0 {
                    return Err("size must be positive, not 0".into());
                }
                self.size = Some(n);
            }
            "algorithm" => self.algorithm = value.parse()?,
            "mem-limit" => self.mem_limit = parse_bytes(key, value)?,
            "name" => {
                let ok = !value.is_empty()
                    && value.len() <= 64
                    && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !ok {
                    return Err(format!("name={value}: 1 to 64 of [A-Za-z0-9_-]"));
                }
                self.name = value.into();
            }
            "stats-dir" => {
                if value.is_empty() {
                    return Err("stats-dir must name a directory".into());
                }
                self.stats_dir = Some(PathBuf::from(value));
            }
            "stats-interval" => {
                self.stats_interval = parse_seconds(key, value)?
                    .ok_or_else(|| "stats-interval must be more than 0 seconds".to_string())?
            }
            "maintain-interval" => self.maintain_interval = parse_seconds(key, value)?,
            "handshake-timeout" => self.handshake_timeout = parse_seconds(key, value)?,
            "idle-timeout" => self.idle_timeout = parse_seconds(key, value)?,
            _ => return Err(format!("unknown parameter {key:?}; see nbdkit <plugin> --help")),
        }
        Ok(())
    }

    /// `.config_complete`: what must be there is there.
    pub fn size(&self) -> Result<u64, String> {
        self.size.ok_or_else(|| "size=<BYTES> is required".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("size", "4096"), Ok(4096));
        assert_eq!(parse_bytes("size", "64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("size", "1g"), Ok(1 << 30));
        assert!(parse_bytes("size", "1X").is_err());
        assert!(parse_bytes("size", "").is_err());
        assert!(parse_bytes("size", "-1").is_err());
        assert!(parse_bytes("size", "99999999999T").is_err());
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("t", "0"), Ok(None));
        assert_eq!(parse_seconds("t", "1.5"), Ok(Some(Duration::from_millis(1500))));
        for bad in ["nan", "inf", "-1", "x"] {
            assert!(parse_seconds("t", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        let mut c = Config::default();
        assert!(c.size().is_err());
        c.set("size", "8M").unwrap();
        c.set("algorithm", "zstd").unwrap();
        c.set("mem-limit", "4M").unwrap();
        c.set("idle-timeout", "2").unwrap();
        assert_eq!(c.size(), Ok(8 << 20));
        assert_eq!(c.algorithm, Algorithm::Zstd);
        assert_eq!(c.mem_limit, 4 << 20);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(2)));
        assert!(c.set("algorithm", "lzo").is_err());
        assert!(c.set("size", "0").is_err());
        assert!(c.set("name", "../x").is_err());
        assert!(c.set("stats-interval", "0").is_err());
        assert!(c.set("bogus", "1").unwrap_err().contains("unknown parameter"));
    }
}
