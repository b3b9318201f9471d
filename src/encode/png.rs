//! PNG files: rows filtered by Paeth's predictor, deflated by `huffman` in blocks of a few
//! rows, each with a code of its own. As `pigz` makes gzip files, the rows are cut into strips
//! of a fixed height, each filtered and deflated on its own (while its rows are in cache) and
//! ending on a byte boundary (a sync flush), and the strips are joined into one zlib stream
//! whose checksum is combined from theirs. With several threads, each takes the next strip as
//! it comes free, which keeps every thread busy to the end (strips differ in cost by more than
//! twice with what they show). The file depends only on the picture, never on the threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::huffman;

/// Bytes of filtered rows, at least, coded with one code (whole rows; docs/performance.md,
/// "Encoding large pictures").
const BLOCK_BYTES: usize = 24 * 1024;

/// Rows per strip (docs/performance.md, "Encoding large pictures").
const STRIP_ROWS: usize = 32;

/// A strip's deflated bytes and the Adler-32 of its filtered bytes.
type Deflated = (Vec<u8>, u32);

/// Encodes interleaved 8-bit pixels (`channels` = 1, 3 or 4) using up to `threads` threads
/// (one: all on the caller's thread).
pub fn encode(data: &[u8], w: u32, h: u32, channels: u8, threads: usize) -> Vec<u8> {
    let (row, rows) = (w as usize * channels as usize, h as usize);
    assert_eq!(data.len(), row * rows, "pixels do not match {w}x{h}x{channels}");
    let line = row + 1;
    let strips = rows.div_ceil(STRIP_ROWS).max(1);
    let threads = threads.clamp(1, strips);
    let rows_of = |i: usize| i * STRIP_ROWS..((i + 1) * STRIP_ROWS).min(rows);
    // Strip `i` filtered into `filtered` (a thread's own, reused) and deflated.
    let strip = |i: usize, filtered: &mut Vec<u8>| -> Deflated {
        let strip_rows = rows_of(i);
        filtered.resize(strip_rows.len() * line, 0);
        filter_rows(data, row, channels as usize, strip_rows.start, filtered);
        let mut adler = simd_adler32::Adler32::new();
        adler.write(filtered);
        (huffman::deflate(filtered, block_bytes(line), i + 1 == strips), adler.finish())
    };

    let done: Vec<Deflated> = if threads == 1 {
        let mut filtered = Vec::new();
        (0..strips).map(|i| strip(i, &mut filtered)).collect()
    } else {
        let next = AtomicUsize::new(0);
        let done: Mutex<Vec<Option<Deflated>>> = Mutex::new(vec![None; strips]);
        let work = || {
            let mut filtered = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= strips {
                    break;
                }
                let deflated = strip(i, &mut filtered);
                done.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(deflated);
            }
        };
        // The caller's thread works too.
        std::thread::scope(|scope| {
            for _ in 1..threads {
                scope.spawn(work);
            }
            work();
        });
        let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
        done.into_iter().map(|strip| strip.expect("every strip was deflated")).collect()
    };

    let mut idat = Vec::with_capacity(done.iter().map(|(d, _)| d.len()).sum::<usize>() + 6);
    idat.extend_from_slice(&[0x78, 0x01]);
    let mut adler = 1;
    for (i, (deflated, strip_adler)) in done.into_iter().enumerate() {
        adler = adler32_combine(adler, strip_adler, rows_of(i).len() * line);
        idat.extend_from_slice(&deflated);
    }
    idat.extend_from_slice(&adler.to_be_bytes());
    container(w, h, channels, &idat)
}

/// Whole filtered rows of `line` bytes, `BLOCK_BYTES` or just over.
fn block_bytes(line: usize) -> usize {
    BLOCK_BYTES.div_ceil(line).max(1) * line
}

/// A PNG file of one IDAT chunk holding `idat`, a zlib stream of the filtered rows.
fn container(w: u32, h: u32, channels: u8, idat: &[u8]) -> Vec<u8> {
    let color = match channels {
        1 => 0,
        3 => 2,
        _ => 6,
    };
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, color, 0, 0, 0]);
    let mut out = Vec::with_capacity(idat.len() + 64);
    out.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// The Adler-32 of A followed by B, from A's, B's and B's length: the sums over B start
/// from A's instead of 1, so `a` gains A's sum less the 1, and every one of B's `len`
/// running sums that `b` adds gains the same.
fn adler32_combine(first: u32, second: u32, len: usize) -> u32 {
    const MOD: u64 = 65521;
    let (a1, b1) = (u64::from(first & 0xffff), u64::from(first >> 16));
    let (a2, b2) = (u64::from(second & 0xffff), u64::from(second >> 16));
    let a = (a1 + a2 + MOD - 1) % MOD;
    let b = (b1 + b2 + (len as u64 % MOD) * ((a1 + MOD - 1) % MOD)) % MOD;
    ((b << 16) | a) as u32
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(body);
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

wide! {
/// The rows from `from` on that fit in `out`, each as the Paeth filter's type byte (4) and
/// its residuals.
fn filter_rows(data: &[u8], row: usize, bpp: usize, from: usize, out: &mut [u8]) {
    let zeros = if from == 0 { vec![0u8; row] } else { Vec::new() };
    for (r, dst) in (from..).zip(out.chunks_exact_mut(row + 1)) {
        let cur = &data[r * row..(r + 1) * row];
        let up = if r == 0 { &zeros[..] } else { &data[(r - 1) * row..r * row] };
        dst[0] = 4;
        let dst = &mut dst[1..];
        for i in 0..bpp.min(row) {
            dst[i] = cur[i].wrapping_sub(up[i]);
        }
        if row <= bpp {
            continue;
        }
        // Zipped slices: no bounds checks, so the loop runs on whole vectors.
        let (left, up_left) = (&cur[..row - bpp], &up[..row - bpp]);
        for ((((d, &x), &a), &b), &c) in dst[bpp..].iter_mut().zip(&cur[bpp..]).zip(left).zip(&up[bpp..]).zip(up_left) {
            *d = x.wrapping_sub(paeth(a, b, c));
        }
    }
}
}

/// The PNG specification's Paeth predictor: of the left (`a`), upper (`b`) and upper-left
/// (`c`) bytes, the one nearest `a + b - c`, ties to `a` then `b`. Without branches, so that
/// it vectorises: `|p - a| = |b - c|`, `|p - b| = |a - c|`, `|p - c| = |a + b - 2c|`.
#[inline(always)]
fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let (a16, b16, c16) = (i16::from(a), i16::from(b), i16::from(c));
    let (pa, pb, pc) = ((b16 - c16).abs(), (a16 - c16).abs(), (a16 + b16 - 2 * c16).abs());
    let b_or_c = if pb <= pc { b } else { c };
    if pa <= pb && pa <= pc {
        a
    } else {
        b_or_c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(w: usize, h: usize, c: usize) -> Vec<u8> {
        (0..w * h * c).map(|i| ((i * 7 + (i / (w * c)) * 13) % 251) as u8 ^ ((i % 5) as u8 * 40)).collect()
    }

    fn decode(png: &[u8], c: usize) -> Vec<u8> {
        let img = image::load_from_memory_with_format(png, image::ImageFormat::Png).expect("a valid PNG");
        match c {
            1 => img.to_luma8().into_raw(),
            3 => img.to_rgb8().into_raw(),
            _ => img.to_rgba8().into_raw(),
        }
    }

    #[test]
    fn one_thread_pictures_decode_to_their_pixels() {
        // Detailed, flat (runs of zero residuals past a block's end) and half of each; sizes
        // whose rows do not fill words, blocks or bands evenly.
        let flat = |w: usize, h: usize, c: usize| vec![93u8; w * h * c];
        for (w, h, c) in [(300, 700, 3), (64, 1, 1), (33, 257, 4), (1, 129, 3), (1, 1, 3), (512, 512, 3)] {
            let half: Vec<u8> = picture(w, h / 2, c).into_iter().chain(flat(w, h - h / 2, c)).collect();
            for data in [picture(w, h, c), flat(w, h, c), half] {
                let png = encode(&data, w as u32, h as u32, c as u8, 1);
                assert!(decode(&png, c) == data, "{w}x{h}x{c}: pixels differ");
            }
        }
        // Flat rows are runs: a 512 px flat picture (786,944 filtered bytes, which would take
        // 98 KB at one bit each) in under 3.5 KB.
        let n = encode(&flat(512, 512, 3), 512, 512, 3, 1).len();
        assert!(n < 3500, "a flat 512 px picture took {n} bytes");
    }

    #[test]
    fn paeth_without_branches_is_the_specifications_predictor() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                for c in 0..=255u8 {
                    let p = i16::from(a) + i16::from(b) - i16::from(c);
                    let (pa, pb, pc) = ((p - i16::from(a)).abs(), (p - i16::from(b)).abs(), (p - i16::from(c)).abs());
                    let spec = if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    };
                    assert_eq!(paeth(a, b, c), spec, "({a}, {b}, {c})");
                }
            }
        }
    }

    #[test]
    fn decodes_to_the_same_pixels_whatever_the_threads() {
        for (w, h, c) in [(300, 700, 3), (64, 1, 1), (33, 257, 4), (1, 129, 3)] {
            let data = picture(w, h, c);
            let one = encode(&data, w as u32, h as u32, c as u8, 1);
            assert_eq!(encode(&data, w as u32, h as u32, c as u8, 5), one, "{w}x{h}x{c}: bytes depend on threads");
            let img = image::load_from_memory_with_format(&one, image::ImageFormat::Png).unwrap();
            let back = match c {
                1 => img.to_luma8().into_raw(),
                3 => img.to_rgb8().into_raw(),
                _ => img.to_rgba8().into_raw(),
            };
            assert_eq!(back, data, "{w}x{h}x{c}");
        }
    }

    #[test]
    fn the_joined_stream_is_one_zlib_stream_with_the_right_checksum() {
        use std::io::Read;
        let (w, h, c) = (200usize, 301usize, 3usize);
        let png = encode(&picture(w, h, c), w as u32, h as u32, c as u8, 3);
        // One IDAT chunk after the 8-byte signature and the 25-byte IHDR chunk.
        let len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        assert_eq!(&png[37..41], b"IDAT");
        let mut inflated = Vec::new();
        flate2::read::ZlibDecoder::new(&png[41..41 + len]).read_to_end(&mut inflated).expect("a valid zlib stream");
        assert_eq!(inflated.len(), h * (w * c + 1));
    }

    #[test]
    fn combined_checksums_equal_the_checksum_of_the_whole() {
        let data = picture(300, 200, 3);
        let whole = |bytes: &[u8]| {
            let mut a = simd_adler32::Adler32::new();
            a.write(bytes);
            a.finish()
        };
        for cut in [0, 1, 5000, 65521, data.len() - 1, data.len()] {
            let (a, b) = data.split_at(cut);
            assert_eq!(adler32_combine(whole(a), whole(b), b.len()), whole(&data), "cut at {cut}");
        }
        let ff = vec![0xffu8; 200_000];
        assert_eq!(adler32_combine(whole(&ff[..70_000]), whole(&ff[70_000..]), 130_000), whole(&ff));
    }
}
