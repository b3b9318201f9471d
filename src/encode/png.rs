//! PNG for large pictures, made on several threads: the rows are cut into strips of a fixed
//! height, each strip is filtered (Paeth) and deflated on its own thread, ending on a byte
//! boundary (a sync flush), and the strips are joined into one zlib stream, as `pigz` joins
//! its blocks. The file depends only on the picture, never on the number of cores.

use flate2::{Compress, Compression, FlushCompress, Status};

/// Rows per strip: long enough that cutting the stream costs little compression.
const STRIP_ROWS: usize = 128;

/// zlib-rs's level 2: on a 2048 px portrait 6 % smaller than the single-threaded fast
/// encoder's file, at about twice its time on one core (docs/performance.md).
const LEVEL: u32 = 2;

/// Encodes interleaved 8-bit pixels (`channels` = 1, 3 or 4) using up to `threads` threads.
pub fn encode(data: &[u8], w: u32, h: u32, channels: u8, threads: usize) -> Vec<u8> {
    let (row, rows) = (w as usize * channels as usize, h as usize);
    assert_eq!(data.len(), row * rows, "pixels do not match {w}x{h}x{channels}");
    let strips: Vec<(usize, usize)> = (0..rows).step_by(STRIP_ROWS).map(|s| (s, (s + STRIP_ROWS).min(rows))).collect();
    let (strips, last) = (&strips, strips.len() - 1);
    let work = |i: usize| -> (Vec<u8>, Vec<u8>) {
        let (from, to) = strips[i];
        let filtered = filter_rows(data, row, channels as usize, from, to);
        (deflate(&filtered, i == last), filtered)
    };
    let threads = threads.clamp(1, strips.len());
    let per_thread = strips.len().div_ceil(threads);
    // Each thread takes a run of strips; joining in order keeps the strips in order.
    let done: Vec<(Vec<u8>, Vec<u8>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..strips.len())
            .step_by(per_thread)
            .map(|start| {
                let work = &work;
                scope.spawn(move || (start..(start + per_thread).min(strips.len())).map(work).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a PNG strip's thread panicked")).collect()
    });
    let mut adler = simd_adler32::Adler32::new();
    let mut idat = vec![0x78, 0x01];
    for (deflated, filtered) in done {
        adler.write(&filtered);
        idat.extend_from_slice(&deflated);
    }
    idat.extend_from_slice(&adler.finish().to_be_bytes());

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
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
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

/// Rows `from..to`, each as the Paeth filter's type byte (4) and its residuals.
fn filter_rows(data: &[u8], row: usize, bpp: usize, from: usize, to: usize) -> Vec<u8> {
    let mut out = vec![0u8; (to - from) * (row + 1)];
    let zeros = vec![0u8; row];
    for (r, dst) in (from..to).zip(out.chunks_exact_mut(row + 1)) {
        let cur = &data[r * row..(r + 1) * row];
        let up = if r == 0 { &zeros[..] } else { &data[(r - 1) * row..r * row] };
        dst[0] = 4;
        let dst = &mut dst[1..];
        for i in 0..bpp {
            dst[i] = cur[i].wrapping_sub(up[i]);
        }
        for i in bpp..row {
            dst[i] = cur[i].wrapping_sub(paeth(cur[i - bpp], up[i], up[i - bpp]));
        }
    }
    out
}

/// The PNG specification's Paeth predictor.
fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    let (pa, pb, pc) = ((p - i16::from(a)).abs(), (p - i16::from(b)).abs(), (p - i16::from(c)).abs());
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

/// Raw deflate at `LEVEL`; a strip that is not the last ends with a sync flush, so
/// the next strip's blocks can follow it byte for byte.
fn deflate(input: &[u8], last: bool) -> Vec<u8> {
    let mut z = Compress::new(Compression::new(LEVEL), false);
    let mut out = Vec::with_capacity(input.len() + input.len() / 64 + 1024);
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    loop {
        let consumed = z.total_in() as usize;
        let status = z.compress_vec(&input[consumed..], &mut out, flush).expect("deflate of memory input");
        // A flush is complete once it returns with output space left over.
        let room = out.capacity() > out.len();
        let finished = if last { status == Status::StreamEnd } else { z.total_in() as usize == input.len() && room };
        if finished {
            return out;
        }
        out.reserve(out.capacity().max(1024));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(w: usize, h: usize, c: usize) -> Vec<u8> {
        (0..w * h * c).map(|i| ((i * 7 + (i / (w * c)) * 13) % 251) as u8 ^ ((i % 5) as u8 * 40)).collect()
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
}
