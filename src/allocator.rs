//! The process allocator: mimalloc, called the way its fast paths expect.
//!
//! The `mimalloc` crate hands every request to `mi_malloc_aligned`. That call serves a
//! small request at once only when the current page of its size class already has a free
//! block; otherwise (and for every request over 1 KiB) mimalloc v3 takes its generic
//! aligned path, which over-allocates `size + align - 1` from a larger size class. Only the
//! plain `mi_malloc` refills a size class's free list, so a class that once ran dry keeps
//! taking the slow path and its blocks land one class up: a profile of the proxy's hot path
//! showed 8 of its ~40 allocations per request going that way.
//!
//! A plain `mi_malloc` block already has every alignment a Rust layout can ask of it when
//! that alignment is at most 16 (`MI_MAX_ALIGN_SIZE`) and divides the size: size classes
//! up to 64 bytes are exact multiples of the word, larger ones multiples of 16, and pages
//! start 16-aligned (the C rule for `malloc`: suitable for any object of that size). Such
//! layouts (nearly all: a Rust type's size is a multiple of its alignment) take the plain
//! calls; the rest keep the aligned ones.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// mimalloc as the global allocator (see the module docs for how it differs from
/// `mimalloc::MiMalloc`).
pub struct Mimalloc;

/// mimalloc's guaranteed block alignment for sizes that are multiples of it.
const MAX_PLAIN_ALIGN: usize = 16;

/// Whether a plain (unaligned) mimalloc call satisfies `align` for a block of `size`.
#[inline]
fn plain(size: usize, align: usize) -> bool {
    align <= MAX_PLAIN_ALIGN && size % align == 0
}

// SAFETY: every method forwards to the matching mimalloc call, which returns null on
// failure or a block of at least `size` bytes; `plain` only routes a layout to the
// unaligned calls when mimalloc's blocks for that size are aligned enough (module docs),
// and a block from any of these calls may be freed or reallocated by any other.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.size(), layout.align()) {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.size(), layout.align()) {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(new_size, layout.align()) {
            mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size up to 2 KiB and some larger, with every alignment the plain calls take
    /// and a few they do not: each block is aligned as asked, keeps its bytes through a
    /// reallocation, and zeroed blocks are zero.
    #[test]
    fn blocks_are_aligned_as_asked() {
        let sizes = (1..=2048).chain([4096, 4104, 12_000, 65_536, 100_000, 1 << 20, (1 << 22) + 8]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: non-zero sizes; each block is freed once with its own layout.
                unsafe {
                    let p = Mimalloc.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write(0xA5);
                    p.add(size - 1).write(0x5A);
                    let grown = size * 2 + 8;
                    let q = Mimalloc.realloc(p, layout, grown);
                    assert_eq!(
                        q as usize % align,
                        0,
                        "realloc {size}->{grown} align {align}"
                    );
                    let first = if size == 1 { 0x5A } else { 0xA5 };
                    assert_eq!((q.read(), q.add(size - 1).read()), (first, 0x5A));
                    Mimalloc.dealloc(q, Layout::from_size_align(grown, align).unwrap());

                    let z = Mimalloc.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed size {size} align {align}");
                    let zeroed = std::slice::from_raw_parts(z, size);
                    assert!(zeroed.iter().step_by(size / 256 + 1).all(|b| *b == 0));
                    assert_eq!(zeroed[size - 1], 0);
                    Mimalloc.dealloc(z, layout);
                }
            }
        }
    }

    #[test]
    fn plain_calls_only_where_mimalloc_guarantees_the_alignment() {
        assert!(plain(24, 8));
        assert!(plain(48, 16));
        assert!(!plain(24, 16), "a 24-byte block is only word-aligned");
        assert!(!plain(64, 32));
        assert!(!plain(4096, 4096));
    }
}
