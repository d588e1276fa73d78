//! Size classes: which class an allocation lands in and how big its zspages
//! are (mm/zsmalloc.c `zs_create_pool`, `calculate_zspage_chain_size`, and
//! the pre-6.3 `get_pages_per_zspage`).  Pure functions; the pool builds its
//! table from them once.  The model's counterpart is
//! `zsmalloc/pool/size_class.py`, and a test holds the two equal.

use crate::mm::PAGE_SIZE;

pub const ZS_MIN_ALLOC_SIZE: usize = 32;
pub const ZS_MAX_ALLOC_SIZE: usize = PAGE_SIZE;
pub const ZS_SIZE_CLASS_DELTA: usize = 16;
pub const ZS_SIZE_CLASSES: usize = (ZS_MAX_ALLOC_SIZE - ZS_MIN_ALLOC_SIZE) / ZS_SIZE_CLASS_DELTA + 1;
pub const ZS_HANDLE_SIZE: usize = 8;
pub const ZS_MIN_CHAIN_SIZE: usize = 4;
pub const ZS_MAX_CHAIN_SIZE: usize = 16;
pub const ZS_DEFAULT_CHAIN_SIZE: usize = 8;

/// How pages per zspage are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassRule {
    /// mainline since 6.3: the least tail waste, the smaller chain on a tie
    MinWaste,
    /// before 6.3: the highest integer percentage used
    UsedPercentage,
}

impl ClassRule {
    pub fn name(self) -> &'static str {
        match self {
            ClassRule::MinWaste => "min-waste",
            ClassRule::UsedPercentage => "used-percentage",
        }
    }

    pub fn from_name(name: &str) -> Option<ClassRule> {
        match name {
            "min-waste" => Some(ClassRule::MinWaste),
            "used-percentage" => Some(ClassRule::UsedPercentage),
            _ => None,
        }
    }
}

/// One canonical size class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassSpec {
    pub index: usize,
    pub size: usize,
    pub pages_per_zspage: usize,
    pub objs_per_zspage: usize,
    pub huge: bool,
}

/// The class index for an object of `size` bytes, header included.
pub fn get_size_class_index(size: usize) -> usize {
    if size <= ZS_MIN_ALLOC_SIZE {
        return 0;
    }
    ((size - ZS_MIN_ALLOC_SIZE).div_ceil(ZS_SIZE_CLASS_DELTA)).min(ZS_SIZE_CLASSES - 1)
}

fn class_size(index: usize) -> usize {
    (ZS_MIN_ALLOC_SIZE + index * ZS_SIZE_CLASS_DELTA).min(ZS_MAX_ALLOC_SIZE)
}

/// Pages per zspage under the min-waste rule.
pub fn calculate_zspage_chain_size(size: usize, chain_size: usize) -> usize {
    if size.is_power_of_two() {
        return 1;
    }
    let (mut best, mut best_waste) = (1, PAGE_SIZE);
    for n in 1..=chain_size {
        let waste = (n * PAGE_SIZE) % size;
        if waste < best_waste {
            best = n;
            best_waste = waste;
        }
    }
    best
}

/// Pages per zspage under the older used-percentage rule.
pub fn get_pages_per_zspage(size: usize, chain_size: usize) -> usize {
    let (mut best, mut best_used) = (1, 0);
    for n in 1..=chain_size {
        let zspage_size = n * PAGE_SIZE;
        let used = (zspage_size - zspage_size % size) * 100 / zspage_size;
        if used > best_used {
            best = n;
            best_used = used;
        }
    }
    best
}

/// The pool's class table: for every one of the 255 classes the index of
/// the canonical class serving it, the canonical classes (largest first),
/// and `zs_huge_class_size`.
pub struct ClassTable {
    pub canonical: [usize; ZS_SIZE_CLASSES],
    pub specs: Vec<ClassSpec>,
    pub huge_class_size: usize,
}

pub fn build_class_table(chain_size: usize, rule: ClassRule) -> Result<ClassTable, String> {
    if !(ZS_MIN_CHAIN_SIZE..=ZS_MAX_CHAIN_SIZE).contains(&chain_size) {
        return Err(format!(
            "chain_size must be within {ZS_MIN_CHAIN_SIZE}..{ZS_MAX_CHAIN_SIZE}, not {chain_size}"
        ));
    }
    let pages_for = match rule {
        ClassRule::MinWaste => calculate_zspage_chain_size,
        ClassRule::UsedPercentage => get_pages_per_zspage,
    };
    let mut canonical = [0; ZS_SIZE_CLASSES];
    let mut specs: Vec<ClassSpec> = Vec::new();
    let mut huge_class_size = 0;
    for i in (0..ZS_SIZE_CLASSES).rev() {
        let size = class_size(i);
        let pages = pages_for(size, chain_size);
        let objs = pages * PAGE_SIZE / size;
        if pages != 1 && objs != 1 && huge_class_size == 0 {
            huge_class_size = size - (ZS_HANDLE_SIZE - 1);
        }
        if let Some(prev) = specs.last() {
            if prev.pages_per_zspage == pages && prev.objs_per_zspage == objs {
                canonical[i] = prev.index;
                continue;
            }
        }
        specs.push(ClassSpec {
            index: i,
            size,
            pages_per_zspage: pages,
            objs_per_zspage: objs,
            huge: pages == 1 && objs == 1,
        });
        canonical[i] = i;
    }
    Ok(ClassTable { canonical, specs, huge_class_size })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Documentation/mm/zsmalloc.rst: chain limit -> largest non-huge class size.
    #[test]
    fn huge_watermarks_match_the_kernel_table() {
        let table = [
            (4, 3264),
            (5, 3408),
            (6, 3504),
            (7, 3584),
            (8, 3632),
            (9, 3680),
            (10, 3712),
            (11, 3744),
            (12, 3776),
            (13, 3792),
            (14, 3808),
            (15, 3840),
            (16, 3840),
        ];
        for (chain, largest) in table {
            for rule in [ClassRule::MinWaste, ClassRule::UsedPercentage] {
                let t = build_class_table(chain, rule).unwrap();
                assert_eq!(t.huge_class_size, largest - 7, "chain {chain}");
            }
        }
    }

    /// The older rule reproduces the documented class counts.
    #[test]
    fn used_percentage_class_counts_match_the_kernel_table() {
        let counts = [69, 86, 93, 112, 123, 140, 143, 159, 164, 180, 183, 188, 191];
        for (chain, want) in (4..=16).zip(counts) {
            assert_eq!(build_class_table(chain, ClassRule::UsedPercentage).unwrap().specs.len(), want);
        }
    }

    #[test]
    fn worked_example_1568() {
        assert_eq!(calculate_zspage_chain_size(1568, 8), 5);
        assert_eq!(5 * PAGE_SIZE / 1568, 13);
    }

    #[test]
    fn class_index() {
        assert_eq!(get_size_class_index(1), 0);
        assert_eq!(get_size_class_index(33), 1);
        assert_eq!(get_size_class_index(4096 + 8), 254);
    }
}
