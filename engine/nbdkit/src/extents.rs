//! Block status for `base:allocation`: which byte ranges of a request are
//! holes that read as zeros and which are data, from the device's slots.
//!
//! A page never written, discarded, or same-filled with zeros is a hole; a
//! page same-filled with another word, stored compressed or written back is
//! data.  Adjacent pages of one kind make one extent.  A run of hole pages
//! shorter than [`MIN_HOLE`] is reported as data, unless it is the whole of
//! the range asked about: a client may take data for zeros (and reads them
//! as such), and a map of many small extents makes qemu-img split its reads
//! into as many small requests (15,000 extents for a 256 MiB kernel-build
//! image, one page in eight zero-filled: its copy out took twice as long).

use zsmalloc_core::zram::{PageState, PAGE_SIZE};

/// At most this many extents per reply, and at most this many bytes looked
/// at: a client asks again from where a reply ended.  Small, because some
/// clients (qemu's) use only the first extent of a reply and ask again at
/// its end: a reply that walked the whole rest of the disk each time would
/// make their walk quadratic.
pub const MAX_EXTENTS: usize = 64;
pub const MAX_SCAN: u64 = 64 << 20;
/// The shortest run of hole pages reported as a hole.
pub const MIN_HOLE: u64 = 64 << 10;

/// One extent: `[offset, offset + length)`, a hole (reads as zeros) or data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub hole: bool,
}

/// Whether a slot reads as zeros without holding anything.
pub fn is_hole(state: PageState) -> bool {
    matches!(state, PageState::Empty | PageState::Same(0))
}

/// The extents of `[offset, offset + count)`, from `hole(page index)`: the
/// first starts at `offset`, each is at most the rest of the range, at most
/// `max` of them (one with `req_one`), covering at most `scan` bytes; hole
/// runs shorter than `min_hole` bytes count as data unless they cover it all.
/// `count` is above 0.
pub fn extents(
    offset: u64,
    count: u64,
    req_one: bool,
    max: usize,
    scan: u64,
    min_hole: u64,
    hole: impl Fn(usize) -> bool,
) -> Vec<Extent> {
    let page = PAGE_SIZE as u64;
    let end = offset + count.min(scan.max(1));
    let next_page = |at: u64| ((at / page + 1) * page).min(end);
    let limit = if req_one { 1 } else { max.max(1) };
    let mut out: Vec<Extent> = Vec::new();
    let mut at = offset;
    while at < end {
        // the run of pages of one kind from here
        let h = hole((at / page) as usize);
        let mut next = next_page(at);
        while next < end && hole((next / page) as usize) == h {
            next = next_page(next);
        }
        let reported = h && (next - at >= min_hole || (at == offset && next == end));
        match out.last_mut() {
            Some(last) if last.hole == reported => last.length += next - at,
            _ => {
                if out.len() == limit {
                    break;
                }
                out.push(Extent { offset: at, length: next - at, hole: reported });
            }
        }
        at = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE as u64;

    fn holes(map: &'static str) -> impl Fn(usize) -> bool {
        move |i| map.as_bytes()[i] == b'.'
    }

    #[test]
    fn runs_of_pages_merge() {
        let e = extents(0, 6 * P, false, MAX_EXTENTS, MAX_SCAN, P, holes("..DD.D"));
        assert_eq!(
            e,
            vec![
                Extent { offset: 0, length: 2 * P, hole: true },
                Extent { offset: 2 * P, length: 2 * P, hole: false },
                Extent { offset: 4 * P, length: P, hole: true },
                Extent { offset: 5 * P, length: P, hole: false },
            ]
        );
    }

    #[test]
    fn unaligned_ranges_start_and_end_where_asked() {
        let e = extents(P + 100, 2 * P, false, MAX_EXTENTS, MAX_SCAN, P, holes(".D.."));
        assert_eq!(
            e,
            vec![
                Extent { offset: P + 100, length: P - 100, hole: false },
                Extent { offset: 2 * P, length: P + 100, hole: true },
            ]
        );
        let total: u64 = e.iter().map(|x| x.length).sum();
        assert_eq!(total, 2 * P);
        assert_eq!(
            extents(10, 1, false, MAX_EXTENTS, MAX_SCAN, P, holes("D")),
            vec![Extent { offset: 10, length: 1, hole: false }]
        );
    }

    #[test]
    fn req_one_and_the_cap_cut_the_list() {
        assert_eq!(
            extents(0, 4 * P, true, MAX_EXTENTS, MAX_SCAN, P, holes("..D.")),
            vec![Extent { offset: 0, length: 2 * P, hole: true }]
        );
        let e = extents(0, 8 * P, false, 3, MAX_SCAN, P, holes(".D.D.D.D"));
        assert_eq!(e.len(), 3);
        assert_eq!(e[2], Extent { offset: 2 * P, length: P, hole: true });
        // a long run is cut where the scan ends
        let e = extents(0, 8 * P, false, MAX_EXTENTS, 3 * P, P, holes("........"));
        assert_eq!(e, vec![Extent { offset: 0, length: 3 * P, hole: true }]);
    }

    #[test]
    fn short_hole_runs_are_data_unless_they_are_all_that_was_asked() {
        // runs of 1 and 2 hole pages among data, then a run of 4; holes from 3 pages on
        let e = extents(0, 12 * P, false, MAX_EXTENTS, MAX_SCAN, 3 * P, holes("D.DD..D....D"));
        assert_eq!(
            e,
            vec![
                Extent { offset: 0, length: 7 * P, hole: false },
                Extent { offset: 7 * P, length: 4 * P, hole: true },
                Extent { offset: 11 * P, length: P, hole: false },
            ]
        );
        // a short request within a hole, and a whole empty range: holes
        assert_eq!(
            extents(P, P, false, MAX_EXTENTS, MAX_SCAN, 3 * P, holes("D.DD")),
            vec![Extent { offset: P, length: P, hole: true }]
        );
        assert_eq!(
            extents(0, 2 * P, false, MAX_EXTENTS, MAX_SCAN, MIN_HOLE, holes("..")),
            vec![Extent { offset: 0, length: 2 * P, hole: true }]
        );
        // a short run at the end of the range is data: the next request sees the rest
        assert_eq!(
            extents(0, 3 * P, false, MAX_EXTENTS, MAX_SCAN, 3 * P, holes("D..")),
            vec![Extent { offset: 0, length: 3 * P, hole: false }]
        );
    }

    #[test]
    fn zero_filled_pages_are_holes_other_fills_are_data() {
        assert!(is_hole(PageState::Empty));
        assert!(is_hole(PageState::Same(0)));
        assert!(!is_hole(PageState::Same(0x0101_0101_0101_0101)));
        assert!(!is_hole(PageState::Stored));
        assert!(!is_hole(PageState::WrittenBack));
    }
}
