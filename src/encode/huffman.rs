//! Deflate for PNG's filtered rows, fast: blocks coded by Huffman codes made for their own
//! bytes, with no matches but runs of zero bytes (a zero, then copies of it at distance 1).
//! Filters leave residuals that cluster near 0 and 255 and repeat little beyond runs of zeros
//! in flat areas, and a flat stretch of picture leaves residuals of a very different spread
//! from a detailed one: a code per block of a few rows takes them in fewer bits than one
//! fixed code, and coding eight bytes per write takes a fraction of the time of searching
//! for matches (docs/performance.md, "Encoding large pictures").

/// The longest code: four literals (56 bits) then fit one 64-bit write with 7 bits pending.
const LONGEST: u8 = 14;

/// Literal/length symbols: 256 bytes, end of block (256), lengths 3..=258 (257..=285).
const SYMBOLS: usize = 286;
const END: usize = 256;

/// Lengths 3..=258: each length symbol's shortest length and its count of extra bits.
const LENGTH_BASE: [u16; 29] =
    [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LENGTH_EXTRA: [u8; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];

/// The order in which a dynamic block's header lists the code-length code's lengths.
const CODE_LENGTH_ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

/// The most bytes a block's header takes: 17 bits of counts, 19 code-length lengths of 3
/// bits, and up to 288 lengths of at most 7 bits with 7 extra.
const HEADER_BYTES: usize = (17 + 19 * 3 + 288 * 14) / 8 + 1;

/// `data` as raw deflate in blocks of `block` bytes (the last may be shorter). With `end`,
/// the last block ends the stream; without, an empty stored block follows it (a sync flush),
/// which ends the bytes on a whole byte, so that more deflate data can follow them.
pub fn deflate(data: &[u8], block: usize, end: bool) -> Vec<u8> {
    let blocks = data.len().div_ceil(block.max(1)).max(1);
    // Most pictures take a fraction of their bytes; room for a block's worst is made as it comes.
    let mut out = Bits::new(data.len() / 4);
    let mut starts = (0..blocks).map(|i| i * block).peekable();
    while let Some(start) = starts.next() {
        let last = starts.peek().is_none();
        let bytes = &data[start.min(data.len())..if last { data.len() } else { start + block }];
        out.room(bytes.len() * LONGEST as usize / 8 + HEADER_BYTES + 16);
        let freq = scan(bytes, Counts::default()).total();
        let lengths = code_lengths(&freq, LONGEST);
        let mut coder = Coder::new(out, &lengths);
        write_header(&mut coder.out, &lengths, last && end);
        coder = scan(bytes, coder);
        coder.symbol(END);
        out = coder.out;
    }
    if !end {
        // Stored, not final; then to the byte; then a length of 0 and its complement.
        out.room(16);
        out.put(0, 3);
        out.put(0, (8 - out.count) % 8);
        out.put(0xffff_0000, 32);
    }
    out.finish()
}

/// What `scan` finds in a block, in order.
trait Tokens {
    /// Eight literals.
    fn eight(&mut self, bytes: [u8; 8]);
    /// `bytes[from..]` as literals.
    fn some(&mut self, bytes: [u8; 8], from: usize);
    fn literal(&mut self, byte: u8);
    /// A length symbol (257..=285) and its extra bits' value, copying from distance 1.
    fn copy(&mut self, symbol: usize, extra: u64);
}

/// Feeds `data`'s bytes to `tokens`, with each run of zeros that starts with two whole words of
/// them as a literal zero and copies of it. Shorter runs are literals: zero's code is short
/// where zeros are common, and one test of two words keeps the common path free of a branch
/// that guesses wrong. `tokens` comes and goes by value, so that its state can stay in registers.
#[inline(always)]
fn scan<T: Tokens>(data: &[u8], mut tokens: T) -> T {
    let whole = data.len() / 8;
    let word = |i: usize| u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().expect("eight bytes"));
    let mut i = 0;
    while i < whole {
        let w = word(i);
        // One test of both words, so that the branch goes one way on all but runs' starts.
        let next = if i + 1 < whole { word(i + 1) } else { 1 };
        if w | next != 0 {
            tokens.eight(w.to_le_bytes());
            i += 1;
            continue;
        }
        let mut end = i + 2;
        while end < whole && word(end) == 0 {
            end += 1;
        }
        let zeros = (end - i) * 8;
        if end == whole {
            zero_run(zeros, &mut tokens);
        } else {
            // The next word's first zero bytes end the run.
            let next = word(end);
            let head = (next.trailing_zeros() / 8) as usize;
            zero_run(zeros + head, &mut tokens);
            tokens.some(next.to_le_bytes(), head);
            end += 1;
        }
        i = end;
    }
    for &b in &data[whole * 8..] {
        tokens.literal(b);
    }
    tokens
}

/// `n` zeros (16 or more): a literal zero, then copies of it.
#[inline(always)]
fn zero_run(mut n: usize, tokens: &mut impl Tokens) {
    tokens.literal(0);
    n -= 1;
    while n >= 3 {
        // Never leave one or two: copies are 3..=258 long.
        let take = if n > 258 && n - 258 < 3 { n - 3 } else { n.min(258) };
        let i = LENGTH_BASE.partition_point(|&base| base as usize <= take) - 1;
        tokens.copy(257 + i, (take - LENGTH_BASE[i] as usize) as u64);
        n -= take;
    }
    for _ in 0..n {
        tokens.literal(0);
    }
}

/// Counts of every literal/length symbol; a table per byte of a word, so that repeats of a
/// byte value (zeros, mostly) do not wait on each other's increments.
struct Counts([[u32; 256]; 8], [u32; 29]);

impl Default for Counts {
    fn default() -> Self {
        Counts([[0; 256]; 8], [0; 29])
    }
}

impl Counts {
    fn total(&self) -> [u32; SYMBOLS] {
        let mut freq = [0u32; SYMBOLS];
        for (b, f) in freq.iter_mut().enumerate().take(256) {
            *f = self.0.iter().map(|t| t[b]).sum();
        }
        freq[END] = 1;
        freq[257..].copy_from_slice(&self.1);
        freq
    }
}

impl Tokens for Counts {
    #[inline(always)]
    fn eight(&mut self, bytes: [u8; 8]) {
        for (table, &b) in self.0.iter_mut().zip(&bytes) {
            table[b as usize] += 1;
        }
    }
    #[inline(always)]
    fn some(&mut self, bytes: [u8; 8], from: usize) {
        for (i, (table, &b)) in self.0.iter_mut().zip(&bytes).enumerate() {
            table[b as usize] += u32::from(i >= from);
        }
    }
    #[inline(always)]
    fn literal(&mut self, byte: u8) {
        self.0[0][byte as usize] += 1;
    }
    #[inline(always)]
    fn copy(&mut self, symbol: usize, _: u64) {
        self.1[symbol - 257] += 1;
    }
}

/// Writes tokens in a block's code.
struct Coder<'a> {
    /// Owned while the block is written, so that its state can live in registers.
    out: Bits,
    /// Each byte's code, and its length from bit 16.
    bytes: [u32; 256],
    codes: Vec<u16>,
    lengths: &'a [u8],
}

impl<'a> Coder<'a> {
    fn new(out: Bits, lengths: &'a [u8]) -> Self {
        let codes = canonical_codes(lengths);
        let bytes = std::array::from_fn(|b| u32::from(codes[b]) | u32::from(lengths[b]) << 16);
        Coder { out, bytes, codes, lengths }
    }

    /// Byte `b`'s code and its length.
    #[inline(always)]
    fn byte(&self, b: u8) -> (u64, u32) {
        let e = self.bytes[b as usize];
        (u64::from(e & 0xffff), e >> 16)
    }

    fn symbol(&mut self, s: usize) {
        self.out.put(u64::from(self.codes[s]), u32::from(self.lengths[s]));
    }
}

impl Tokens for Coder<'_> {
    #[inline(always)]
    fn eight(&mut self, bytes: [u8; 8]) {
        self.some(bytes, 0);
    }
    #[inline(always)]
    fn some(&mut self, bytes: [u8; 8], from: usize) {
        // Four codes of at most 14 bits in each half; both halves in one write where they fit.
        let (mut code, mut len) = ([0u64; 8], [0u32; 8]);
        for i in 0..8 {
            let (c, n) = self.byte(bytes[i]);
            // Without a branch: `from` is 0 for most words, and 1-7 for the rest.
            (code[i], len[i]) = if i >= from { (c, n) } else { (0, 0) };
        }
        let half = |k: usize| {
            let (n0, n1, n2) = (len[k], len[k + 1], len[k + 2]);
            let bits = code[k] | code[k + 1] << n0 | code[k + 2] << (n0 + n1) | code[k + 3] << (n0 + n1 + n2);
            (bits, n0 + n1 + n2 + len[k + 3])
        };
        let ((low, low_len), (high, high_len)) = (half(0), half(4));
        if low_len + high_len <= 57 {
            self.out.put(low | high << low_len, low_len + high_len);
        } else {
            self.out.put(low, low_len);
            self.out.put(high, high_len);
        }
    }
    #[inline(always)]
    fn literal(&mut self, byte: u8) {
        let (code, len) = self.byte(byte);
        self.out.put(code, len);
    }
    #[inline(always)]
    fn copy(&mut self, symbol: usize, extra: u64) {
        // The length's code, its extra bits, then distance code 0 (a distance of 1, one bit 0).
        let len = u32::from(self.lengths[symbol]);
        let extra_len = u32::from(LENGTH_EXTRA[symbol - 257]);
        self.out.put(u64::from(self.codes[symbol]) | extra << len, len + extra_len + 1);
    }
}

/// A deflate stream's bits, least significant first, into bytes made ready by `room`.
struct Bits {
    bytes: Vec<u8>,
    pos: usize,
    pending: u64,
    count: u32,
}

impl Bits {
    fn new(capacity: usize) -> Self {
        Bits { bytes: vec![0; capacity + 8], pos: 0, pending: 0, count: 0 }
    }

    /// Makes room for `bytes` more (and the 8 that every write stores).
    fn room(&mut self, bytes: usize) {
        let needed = self.pos + bytes + 8;
        if self.bytes.len() < needed {
            self.bytes.resize(needed.max(2 * self.bytes.len()), 0);
        }
    }

    /// Appends the low `len` bits of `bits` (`len` at most 57; the rest of `bits` zero).
    #[inline(always)]
    fn put(&mut self, bits: u64, len: u32) {
        debug_assert!(len <= 57 && bits >> len == 0);
        self.pending |= bits << self.count;
        self.count += len;
        self.bytes[self.pos..self.pos + 8].copy_from_slice(&self.pending.to_le_bytes());
        let whole = self.count / 8;
        self.pos += whole as usize;
        // Two shifts: `whole` may be 8, and a shift by 64 is not defined.
        self.pending = (self.pending >> (whole * 4)) >> (whole * 4);
        self.count &= 7;
    }

    /// The bytes so far, the last one padded with zero bits.
    fn finish(mut self) -> Vec<u8> {
        let end = self.pos + (self.count as usize).div_ceil(8);
        self.bytes.truncate(end);
        self.bytes
    }
}

/// The header of a block with dynamic codes: the literal/length code's `lengths` (up to the
/// last one used) and two distance codes of one bit (only distance 1 is used; two make the
/// code complete, which every decoder accepts), listed in the code-length code with its
/// repeats (16: the last length 3-6 times; 17 and 18: 3-10 and 11-138 zeros).
fn write_header(out: &mut Bits, lengths: &[u8], last: bool) {
    let used = lengths.iter().rposition(|&l| l > 0).map_or(0, |i| i + 1).max(257);
    out.put(u64::from(last) | 2 << 1, 3);
    out.put((used - 257) as u64, 5);
    out.put(1, 5);
    let listed: Vec<u8> = lengths[..used].iter().copied().chain([1, 1]).collect();
    // (code-length symbol, extra bits' value, their count)
    let mut tokens: Vec<(usize, u64, u32)> = Vec::new();
    let mut i = 0;
    while i < listed.len() {
        let l = listed[i];
        let same = listed[i..].iter().take_while(|&&x| x == l).count();
        if l == 0 && same >= 11 {
            let n = same.min(138);
            tokens.push((18, (n - 11) as u64, 7));
            i += n;
        } else if l == 0 && same >= 3 {
            tokens.push((17, (same - 3) as u64, 3));
            i += same;
        } else if l > 0 && same >= 4 {
            tokens.push((l as usize, 0, 0));
            let n = (same - 1).min(6);
            tokens.push((16, (n - 3) as u64, 2));
            i += 1 + n;
        } else {
            tokens.push((l as usize, 0, 0));
            i += 1;
        }
    }
    let mut freq = [0u32; 19];
    for &(s, _, _) in &tokens {
        freq[s] += 1;
    }
    let meta = code_lengths(&freq, 7);
    let meta_codes = canonical_codes(&meta);
    let listed_meta = CODE_LENGTH_ORDER.iter().rposition(|&s| meta[s] > 0).map_or(0, |i| i + 1).max(4);
    out.put((listed_meta - 4) as u64, 4);
    for &s in &CODE_LENGTH_ORDER[..listed_meta] {
        out.put(u64::from(meta[s]), 3);
    }
    for (s, extra, bits) in tokens {
        let len = u32::from(meta[s]);
        out.put(u64::from(meta_codes[s]) | extra << len, len + bits);
    }
}

/// Code lengths of a Huffman code for `freq`, none longer than `longest`; symbols of count 0
/// get none (but for a lone symbol's partner). At least one symbol must have a count.
fn code_lengths(freq: &[u32], longest: u8) -> Vec<u8> {
    let mut order: Vec<usize> = (0..freq.len()).filter(|&s| freq[s] > 0).collect();
    // One symbol alone still takes a code of one bit: a second, unused, completes the code.
    if order.len() == 1 {
        order.push(if order[0] == 0 { 1 } else { 0 });
    }
    order.sort_by_key(|&s| (freq[s], s));
    let n = order.len();
    assert!(n >= 2, "a Huffman code needs two symbols");
    // Huffman's tree from two queues (leaves by count, then merged nodes, which come out
    // in order of count): node i < n is the leaf order[i], the rest are merges.
    let mut weight: Vec<u64> = order.iter().map(|&s| u64::from(freq[s].max(1))).collect();
    let mut parent = vec![0usize; 2 * n - 1];
    let (mut leaf, mut merged) = (0, n);
    for node in n..2 * n - 1 {
        let mut take = || {
            let from_leaf = leaf < n && (merged >= weight.len() || weight[leaf] <= weight[merged]);
            let i = if from_leaf { leaf } else { merged };
            if from_leaf {
                leaf += 1;
            } else {
                merged += 1;
            }
            i
        };
        let (a, b) = (take(), take());
        parent[a] = node;
        parent[b] = node;
        weight.push(weight[a] + weight[b]);
    }
    let mut depth = vec![0u32; 2 * n - 1];
    for node in (0..2 * n - 2).rev() {
        depth[node] = depth[parent[node]] + 1;
    }

    // Leaves deeper than `longest` move up to it; then, while the code is over-full, one
    // leaf at the limit goes and a shallower leaf splits into two one level deeper, which
    // keeps the count of leaves and takes one limit-sized share off the Kraft sum.
    let longest = longest as usize;
    let mut per_length = vec![0usize; longest + 1];
    for &d in &depth[..n] {
        per_length[(d as usize).min(longest)] += 1;
    }
    let mut kraft: usize = (1..=longest).map(|l| per_length[l] << (longest - l)).sum();
    while kraft > 1 << longest {
        per_length[longest] -= 1;
        let l = (1..longest).rev().find(|&l| per_length[l] > 0).expect("a shallower leaf");
        per_length[l] -= 1;
        per_length[l + 1] += 2;
        kraft -= 1;
    }
    // The most frequent symbols take the shortest codes.
    let mut lengths = vec![0u8; freq.len()];
    let mut rank = order.iter().rev();
    for (l, &count) in per_length.iter().enumerate().skip(1) {
        for &s in rank.by_ref().take(count) {
            lengths[s] = l as u8;
        }
    }
    lengths
}

/// Deflate's canonical codes for `lengths`, bit-reversed for writing least significant first.
fn canonical_codes(lengths: &[u8]) -> Vec<u16> {
    let mut per_length = [0u16; 16];
    for &l in lengths {
        per_length[l as usize] += 1;
    }
    per_length[0] = 0;
    let mut next = [0u16; 16];
    for l in 1..16 {
        next[l] = (next[l - 1] + per_length[l - 1]) << 1;
    }
    lengths
        .iter()
        .map(|&l| {
            if l == 0 {
                return 0;
            }
            let code = next[l as usize];
            next[l as usize] += 1;
            code.reverse_bits() >> (16 - l)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A zlib stream of `deflated`, the raw deflate of `data`.
    fn zlib(deflated: &[u8], data: &[u8]) -> Vec<u8> {
        let mut adler = simd_adler32::Adler32::new();
        adler.write(data);
        [&[0x78, 0x01], deflated, &adler.finish().to_be_bytes()].concat()
    }

    fn inflate(stream: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(stream).read_to_end(&mut out).expect("a valid zlib stream");
        out
    }

    #[test]
    fn inflates_to_the_input_with_runs_of_every_length() {
        let mut cases: Vec<Vec<u8>> = vec![vec![], vec![0], vec![7], vec![0; 5], vec![0; 100_000], (0..=255).collect()];
        // Runs of zeros of every length up to 600 between non-zero bytes, at every offset in a word.
        let mut runs = Vec::new();
        for n in 0..600 {
            runs.push((n % 255 + 1) as u8);
            runs.extend(std::iter::repeat_n(0, n));
        }
        cases.push(runs);
        // Residual-like bytes: mostly near 0 and 255, some zeros, a few of everything.
        let mut x = 12345u32;
        cases.push(
            (0..70_001)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    let r = (x >> 16) as u8;
                    if r < 200 {
                        (r % 9).wrapping_sub(4)
                    } else {
                        r
                    }
                })
                .collect(),
        );
        for data in &cases {
            for block in [1, 7, 4096, 1 << 20] {
                let stream = zlib(&deflate(data, block, true), data);
                assert_eq!(inflate(&stream), *data, "{} bytes in blocks of {block}", data.len());
            }
        }
    }

    #[test]
    fn pieces_that_do_not_end_the_stream_join_byte_for_byte() {
        let data: Vec<u8> = (0..50_000u32).map(|i| if i % 7000 < 3000 { 0 } else { (i * 31 % 11) as u8 }).collect();
        for cut in [0, 1, 8, 3000, 49_999, 50_000] {
            let (a, b) = data.split_at(cut);
            let joined = [deflate(a, 4096, false), deflate(b, 4096, true)].concat();
            assert_eq!(inflate(&zlib(&joined, &data)), data, "cut at {cut}");
        }
    }

    #[test]
    fn codes_are_complete_within_the_limit_and_follow_the_counts() {
        // Counts of a Fibonacci sequence make Huffman's code as deep as the symbols are many.
        let mut fib = vec![1u32, 1];
        while fib.len() < 30 {
            fib.push(fib[fib.len() - 1] + fib[fib.len() - 2]);
        }
        for (freq, longest) in [(fib.clone(), 14u8), (fib, 7), (vec![5, 5], 3), (vec![1; 286], 14), (vec![1; 19], 7)] {
            let lengths = code_lengths(&freq, longest);
            let kraft: f64 = lengths.iter().map(|&l| 0.5f64.powi(i32::from(l))).sum();
            assert!((kraft - 1.0).abs() < 1e-12, "Kraft sum {kraft}");
            assert!(lengths.iter().all(|&l| (1..=longest).contains(&l)));
            for a in 0..freq.len() {
                for b in 0..freq.len() {
                    assert!(freq[a] <= freq[b] || lengths[a] <= lengths[b], "a commoner symbol got a longer code");
                }
            }
        }
    }
}
