//! The pool's statistics as the kernel prints them: debugfs
//! `zsmalloc/<pool>/classes` (`zs_stats_size_show`, 6.4 and later; rows of
//! a legacy pool as 4.8 to 6.3 print them, `almost_full` and `almost_empty`
//! in place of the ratios).
//!
//! One formatter for every caller that has an engine pool: the Python binding
//! (`Pool.format_classes`) and the nbdkit plugin's stats directory.  The
//! model's pure-Python pool keeps its own (`zsmalloc.pool.stats`), and a test
//! holds the two to the same text.

use super::legacy::{Fullness, ZS_ALMOST_EMPTY, ZS_ALMOST_FULL};
use super::zsmalloc::{ClassRow, NR_FULLNESS_GROUPS};

/// The fullness groups 1..=11 as the kernel's column heads (group 0, empty
/// zspages awaiting a deferred free, is not printed).
const RATIO_COLUMNS: [&str; NR_FULLNESS_GROUPS - 1] =
    ["10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%", "99%", "100%"];

/// Pages the class's zspages hold (`obj_allocated / objs_per_zspage * pages_per_zspage`).
pub fn pages_used(row: &ClassRow) -> u64 {
    row.objs_allocated / row.spec.objs_per_zspage as u64 * row.spec.pages_per_zspage as u64
}

/// The `classes` text of `rows`: a header, a row per canonical class, a
/// blank line and the Total row, in the kernel's column widths.
pub fn format_classes(rows: &[ClassRow]) -> String {
    if rows.first().is_some_and(|r| r.fullness == Fullness::Legacy) {
        return format_legacy(rows);
    }
    let mut out = format!(" {:>5} {:>5} ", "class", "size");
    for c in RATIO_COLUMNS {
        out += &format!("{c:>9} ");
    }
    out += &format!(
        "{:>13} {:>10} {:>10} {:>16} {:>8}\n",
        "obj_allocated", "obj_used", "pages_used", "pages_per_zspage", "freeable"
    );
    let mut totals = [0u64; NR_FULLNESS_GROUPS - 1];
    let (mut objs, mut used, mut pages, mut freeable) = (0u64, 0u64, 0u64, 0u64);
    for r in rows {
        out += &format!(" {:>5} {:>5} ", r.spec.index, r.spec.size);
        for (total, &n) in totals.iter_mut().zip(&r.zspages_per_group[1..]) {
            *total += u64::from(n);
            out += &format!("{n:>9} ");
        }
        let p = pages_used(r);
        out += &format!(
            "{:>13} {:>10} {:>10} {:>16} {:>8}\n",
            r.objs_allocated, r.objs_inuse, p, r.spec.pages_per_zspage, r.freeable
        );
        objs += r.objs_allocated;
        used += r.objs_inuse;
        pages += p;
        freeable += r.freeable;
    }
    out += &format!("\n {:>5} {:>5} ", "Total", "");
    for t in totals {
        out += &format!("{t:>9} ");
    }
    out += &format!("{objs:>13} {used:>10} {pages:>10} {:>16} {freeable:>8}\n", "");
    out
}

/// 6.1's `classes`: almost full and almost empty zspages, then the columns
/// every version prints.
fn format_legacy(rows: &[ClassRow]) -> String {
    let mut out = format!(" {:>5} {:>5} {:>11} {:>12} ", "class", "size", "almost_full", "almost_empty");
    out += &format!(
        "{:>13} {:>10} {:>10} {:>16} {:>8}\n",
        "obj_allocated", "obj_used", "pages_used", "pages_per_zspage", "freeable"
    );
    let (mut full, mut empty) = (0u64, 0u64);
    let (mut objs, mut used, mut pages, mut freeable) = (0u64, 0u64, 0u64, 0u64);
    for r in rows {
        let (f, e) = (r.zspages_per_group[ZS_ALMOST_FULL], r.zspages_per_group[ZS_ALMOST_EMPTY]);
        let p = pages_used(r);
        out += &format!(
            " {:>5} {:>5} {f:>11} {e:>12} {:>13} {:>10} {:>10} {:>16} {:>8}\n",
            r.spec.index, r.spec.size, r.objs_allocated, r.objs_inuse, p, r.spec.pages_per_zspage, r.freeable
        );
        full += u64::from(f);
        empty += u64::from(e);
        objs += r.objs_allocated;
        used += r.objs_inuse;
        pages += p;
        freeable += r.freeable;
    }
    out += &format!("\n {:>5} {:>5} {full:>11} {empty:>12} ", "Total", "");
    out += &format!("{objs:>13} {used:>10} {pages:>10} {:>16} {freeable:>8}\n", "");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::ClassSpec;

    fn row(index: usize, size: usize, groups: [u32; NR_FULLNESS_GROUPS], alloc: u64, inuse: u64) -> ClassRow {
        let spec = ClassSpec { index, size, pages_per_zspage: 2, objs_per_zspage: 8, huge: false };
        ClassRow {
            spec,
            zspages_per_group: groups,
            objs_allocated: alloc,
            objs_inuse: inuse,
            freeable: 1,
            fullness: Fullness::Ratio,
        }
    }

    #[test]
    fn the_kernel_layout() {
        let mut g = [0u32; NR_FULLNESS_GROUPS];
        g[0] = 7; // not printed
        g[1] = 1;
        g[11] = 2;
        let text = format_classes(&[row(3, 64, g, 24, 17), row(9, 160, [0; NR_FULLNESS_GROUPS], 0, 0)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with(" class  size       10%       20% "));
        assert!(lines[0].ends_with("obj_allocated   obj_used pages_used pages_per_zspage freeable"));
        assert_eq!(
            lines[1],
            "     3    64         1         0         0         0         0         0         0         0         0         0         2            24         17          6                2        1"
        );
        assert_eq!(lines[3], "");
        assert!(lines[4].starts_with(" Total       "));
        assert!(lines[4].ends_with("           24         17          6                         2"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn the_layout_before_6_4() {
        let mut g = [0u32; NR_FULLNESS_GROUPS];
        g[ZS_ALMOST_EMPTY] = 3;
        g[ZS_ALMOST_FULL] = 1;
        g[3] = 2; // full: not printed
        let text = format_classes(&[ClassRow { fullness: Fullness::Legacy, ..row(3, 64, g, 24, 17) }]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            " class  size almost_full almost_empty obj_allocated   obj_used pages_used pages_per_zspage freeable"
        );
        assert_eq!(lines[1], "     3    64           1            3            24         17          6                2        1");
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], " Total                 1            3            24         17          6                         1");
    }
}
