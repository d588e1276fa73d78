//! The backing device of zram's writeback: a file of 4 KiB blocks and the
//! bitmap that says which are taken (`zram->bitmap`).
//!
//! ```text
//!   file (sparse, nr_blocks * 4096 bytes)
//!   +---------+---------+---------+---------+-- ... --+
//!   | block 0 | block 1 | block 2 | block 3 |         |
//!   +---------+---------+---------+---------+-- ... --+
//!   bitmap     1         0         1         1           (bit b % 64 of word b / 64)
//! ```
//!
//! `alloc_block_bdev` takes the lowest clear bit, `free_block_bdev` clears
//! it; the bitmap is behind one lock, the block I/O (positional `pread` and
//! `pwrite`, so threads never share an offset) runs outside it, under the
//! caller's slot lock.  The model's counterpart is `zsmalloc/zram/backing.py`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::codec::PAGE_SIZE;
use crate::sync::Mutex;

struct Bitmap {
    words: Vec<u64>,
    /// no clear bit in the words below this one
    hint: usize,
    used: u64,
}

pub struct BackingFile {
    pub path: PathBuf,
    pub nr_blocks: u64,
    file: File,
    bitmap: Mutex<Bitmap>,
}

impl BackingFile {
    /// `nr_blocks` blocks in the file at `path`, created 0600 or grown if needed.
    pub fn open(path: &Path, nr_blocks: u64) -> io::Result<BackingFile> {
        if nr_blocks == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a backing file needs at least one block",
            ));
        }
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
        let bytes = nr_blocks * PAGE_SIZE as u64;
        if file.metadata()?.len() < bytes {
            file.set_len(bytes)?;
        }
        let bitmap = Bitmap { words: vec![0; nr_blocks.div_ceil(64) as usize], hint: 0, used: 0 };
        let b = BackingFile { path: path.to_path_buf(), nr_blocks, file, bitmap: Mutex::new(bitmap) };
        b.clear();
        Ok(b)
    }

    /// `alloc_block_bdev`: the lowest free block, or None when the file is full.
    pub fn alloc_block(&self) -> Option<u64> {
        let mut bm = self.bitmap.lock();
        let start = bm.hint;
        let Some(pos) = bm.words[start..].iter().position(|&w| w != u64::MAX).map(|p| p + start) else {
            bm.hint = bm.words.len();
            return None;
        };
        let bit = bm.words[pos].trailing_ones();
        bm.words[pos] |= 1 << bit;
        bm.hint = pos;
        bm.used += 1;
        Some(pos as u64 * 64 + bit as u64)
    }

    /// `free_block_bdev`.
    pub fn free_block(&self, block: u64) -> Result<(), String> {
        let mut bm = self.bitmap.lock();
        let (pos, bit) = ((block / 64) as usize, 1u64 << (block % 64));
        if block >= self.nr_blocks || bm.words[pos] & bit == 0 {
            return Err(format!("backing block {block} is not in use"));
        }
        bm.words[pos] &= !bit;
        bm.hint = bm.hint.min(pos);
        bm.used -= 1;
        Ok(())
    }

    pub fn block_used(&self, block: u64) -> bool {
        block < self.nr_blocks && self.bitmap.lock().words[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// Blocks in use (`bd_count`).
    pub fn nr_used(&self) -> u64 {
        self.bitmap.lock().used
    }

    /// Every block free (a device reset); the bits past the last block stay taken.
    pub fn clear(&self) {
        let mut bm = self.bitmap.lock();
        bm.words.fill(0);
        let tail = self.nr_blocks % 64;
        if tail != 0 {
            *bm.words.last_mut().expect("at least one block") = !((1u64 << tail) - 1);
        }
        bm.hint = 0;
        bm.used = 0;
    }

    pub fn write_block(&self, block: u64, page: &[u8]) -> Result<(), String> {
        self.file
            .write_all_at(page, block * PAGE_SIZE as u64)
            .map_err(|e| format!("backing file {:?}: write of block {block} failed: {e}", self.path))
    }

    pub fn read_block(&self, block: u64, page: &mut [u8]) -> Result<(), String> {
        self.file.read_exact_at(page, block * PAGE_SIZE as u64).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                format!("backing file {:?}: short read of block {block}", self.path)
            }
            _ => format!("backing file {:?}: read of block {block} failed: {e}", self.path),
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_taken_lowest_first_and_given_back() {
        let dir = std::env::temp_dir().join(format!("zs-backing-{}", std::process::id()));
        let b = BackingFile::open(&dir, 70).unwrap();
        let taken: Vec<u64> = (0..70).map(|_| b.alloc_block().unwrap()).collect();
        assert_eq!(taken, (0..70).collect::<Vec<_>>());
        assert_eq!(b.alloc_block(), None);
        b.free_block(65).unwrap();
        assert!(b.free_block(65).is_err());
        assert!(b.free_block(70).is_err());
        assert_eq!(b.alloc_block(), Some(65));
        let page = [7u8; PAGE_SIZE];
        b.write_block(3, &page).unwrap();
        let mut back = [0u8; PAGE_SIZE];
        b.read_block(3, &mut back).unwrap();
        assert_eq!(back, page);
        assert_eq!(b.nr_used(), 70);
        b.clear();
        assert_eq!(b.nr_used(), 0);
        std::fs::remove_file(&dir).unwrap();
    }
}
