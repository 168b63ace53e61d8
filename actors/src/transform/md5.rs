//! MD5 (RFC 1321) for the `md5` transform, arranged so that each step's dependency chain is as
//! short as the algorithm allows.
//!
//! MD5 is a chain of 64 steps per 64-byte block, each needing the one before, so its speed is
//! the latency of one step. A step is `b + rotl(a + m + k + f(b, c, d), s)`; only `f(b, ...)`,
//! the last add, the rotate and the add of `b` need the previous step: `a + m + k` and the
//! parts of `f` that do not involve `b` can be computed while the previous step runs. Written
//! that way, the compiler still re-associates the adds and puts the round constant `k` last
//! (constants rank lowest), which puts one more add on the chain of every step. Reading the
//! constants through [`std::hint::black_box`] (once per call, not per block) makes them
//! ordinary loaded values and keeps the order written: about a fifth faster than the `md-5`
//! crate on the machine of BENCHMARKS.md, and faster than `md5sum`.

/// Bytes in one MD5 block.
const BLOCK_BYTES: usize = 64;

/// The initial state (RFC 1321, 3.3).
const STATE_INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// The per-step constants `floor(abs(sin(i + 1)) * 2^32)` (RFC 1321, 3.4).
static ROUND_CONSTANTS: [u32; 64] = [
    0xd76a_a478,
    0xe8c7_b756,
    0x2420_70db,
    0xc1bd_ceee,
    0xf57c_0faf,
    0x4787_c62a,
    0xa830_4613,
    0xfd46_9501,
    0x6980_98d8,
    0x8b44_f7af,
    0xffff_5bb1,
    0x895c_d7be,
    0x6b90_1122,
    0xfd98_7193,
    0xa679_438e,
    0x49b4_0821,
    0xf61e_2562,
    0xc040_b340,
    0x265e_5a51,
    0xe9b6_c7aa,
    0xd62f_105d,
    0x0244_1453,
    0xd8a1_e681,
    0xe7d3_fbc8,
    0x21e1_cde6,
    0xc337_07d6,
    0xf4d5_0d87,
    0x455a_14ed,
    0xa9e3_e905,
    0xfcef_a3f8,
    0x676f_02d9,
    0x8d2a_4c8a,
    0xfffa_3942,
    0x8771_f681,
    0x6d9d_6122,
    0xfde5_380c,
    0xa4be_ea44,
    0x4bde_cfa9,
    0xf6bb_4b60,
    0xbebf_bc70,
    0x289b_7ec6,
    0xeaa1_27fa,
    0xd4ef_3085,
    0x0488_1d05,
    0xd9d4_d039,
    0xe6db_99e5,
    0x1fa2_7cf8,
    0xc4ac_5665,
    0xf429_2244,
    0x432a_ff97,
    0xab94_23a7,
    0xfc93_a039,
    0x655b_59c3,
    0x8f0c_cc92,
    0xffef_f47d,
    0x8584_5dd1,
    0x6fa8_7e4f,
    0xfe2c_e6e0,
    0xa301_4314,
    0x4e08_11a1,
    0xf753_7e82,
    0xbd3a_f235,
    0x2ad7_d2bb,
    0xeb86_d391,
];

/// Which message word each step reads (RFC 1321, 3.4): `i`, `5i + 1`, `3i + 5` and `7i`,
/// modulo 16, in rounds one to four.
const WORD_OF_STEP: [usize; 64] = {
    let mut words = [0; 64];
    let mut i = 0;
    while i < 16 {
        words[i] = i;
        words[16 + i] = (5 * i + 1) % 16;
        words[32 + i] = (3 * i + 5) % 16;
        words[48 + i] = (7 * i) % 16;
        i += 1;
    }
    words
};

/// Rotation of each step, by round and step within a group of four.
const SHIFTS: [[u32; 4]; 4] = [
    [7, 12, 17, 22],
    [5, 9, 14, 20],
    [4, 11, 16, 23],
    [6, 10, 15, 21],
];

/// An MD5 computation over bytes given in any number of pieces.
#[derive(Clone)]
pub struct Md5 {
    state: [u32; 4],
    /// The start of a block not yet complete.
    pending: [u8; BLOCK_BYTES],
    pending_len: usize,
    /// Bytes seen so far (the length is modulo 2^64 bits, as RFC 1321 says).
    length: u64,
}

impl Default for Md5 {
    fn default() -> Self {
        Self::new()
    }
}

impl Md5 {
    pub fn new() -> Self {
        Self {
            state: STATE_INIT,
            pending: [0; BLOCK_BYTES],
            pending_len: 0,
            length: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.length = self.length.wrapping_add(data.len() as u64);
        if self.pending_len > 0 {
            let take = (BLOCK_BYTES - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < BLOCK_BYTES {
                return;
            }
            let block = self.pending;
            compress(&mut self.state, &block);
            self.pending_len = 0;
        }
        let whole = data.len() - data.len() % BLOCK_BYTES;
        compress(&mut self.state, &data[..whole]);
        let rest = &data[whole..];
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// The 16-byte digest.
    pub fn finalize(mut self) -> [u8; 16] {
        let bits = self.length.wrapping_mul(8);
        // A one bit, zeros up to 8 bytes short of a block end, then the length in bits.
        let mut tail = [0u8; 2 * BLOCK_BYTES];
        tail[..self.pending_len].copy_from_slice(&self.pending[..self.pending_len]);
        tail[self.pending_len] = 0x80;
        let end = if self.pending_len < BLOCK_BYTES - 8 {
            BLOCK_BYTES
        } else {
            2 * BLOCK_BYTES
        };
        tail[end - 8..end].copy_from_slice(&bits.to_le_bytes());
        compress(&mut self.state, &tail[..end]);
        let mut digest = [0u8; 16];
        for (out, word) in digest.chunks_exact_mut(4).zip(self.state) {
            out.copy_from_slice(&word.to_le_bytes());
        }
        digest
    }
}

/// Runs the compression function over `blocks`, whose length is a multiple of 64.
fn compress(state: &mut [u32; 4], blocks: &[u8]) {
    debug_assert_eq!(
        blocks.len() % BLOCK_BYTES,
        0,
        "md5 compress takes whole blocks"
    );
    // See the module's comment: opaque constants keep the order of the adds as written.
    let constants = std::hint::black_box(&ROUND_CONSTANTS);
    for block in blocks.chunks_exact(BLOCK_BYTES) {
        compress_block(state, block, constants);
    }
}

#[inline(always)]
fn compress_block(state: &mut [u32; 4], block: &[u8], constants: &[u32; 64]) {
    let mut words = [0u32; 16];
    for (word, bytes) in words.iter_mut().zip(block.chunks_exact(4)) {
        *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    let [mut a, mut b, mut c, mut d] = *state;
    // Each step: `t` (independent of the previous step) first, then the part that needs it.
    macro_rules! step {
        ($round:expr, $i:expr, $w:ident, $x:ident, $y:ident, $z:ident) => {{
            let t = $w
                .wrapping_add(words[WORD_OF_STEP[$i]])
                .wrapping_add(constants[$i]);
            let mixed = match $round {
                // F = (x & y) | (!x & z), as z ^ (x & (y ^ z)): two operations after x.
                0 => t.wrapping_add($z ^ ($x & ($y ^ $z))),
                // G = (x & z) | (y & !z): the halves never overlap, so add the half without
                // x first: one operation after x.
                1 => t.wrapping_add($y & !$z).wrapping_add($x & $z),
                // H = x ^ y ^ z, with y ^ z first.
                2 => t.wrapping_add($x ^ ($y ^ $z)),
                // I = y ^ (x | !z).
                _ => t.wrapping_add($y ^ ($x | !$z)),
            };
            $w = mixed.rotate_left(SHIFTS[$round][$i % 4]).wrapping_add($x);
        }};
    }
    macro_rules! round {
        ($round:expr) => {
            round!(@four $round, 16 * $round);
            round!(@four $round, 16 * $round + 4);
            round!(@four $round, 16 * $round + 8);
            round!(@four $round, 16 * $round + 12);
        };
        (@four $round:expr, $first:expr) => {
            step!($round, $first, a, b, c, d);
            step!($round, $first + 1, d, a, b, c);
            step!($round, $first + 2, c, d, a, b);
            step!($round, $first + 3, b, c, d, a);
        };
    }
    round!(0);
    round!(1);
    round!(2);
    round!(3);
    state[0] = state[0].wrapping_add(a);
    state[1] = state[1].wrapping_add(b);
    state[2] = state[2].wrapping_add(c);
    state[3] = state[3].wrapping_add(d);
}

#[cfg(test)]
mod tests {
    use super::Md5;
    use md5::Digest;

    fn hex(digest: [u8; 16]) -> String {
        super::super::hex(&digest)
    }

    fn digest(data: &[u8]) -> [u8; 16] {
        let mut md5 = Md5::new();
        md5.update(data);
        md5.finalize()
    }

    #[test]
    fn rfc_1321_test_suite() {
        let suite = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, want) in suite {
            assert_eq!(hex(digest(input.as_bytes())), want, "md5({input:?})");
        }
    }

    /// Every length around the padding's edges, fed whole and in uneven pieces, against the
    /// `md-5` crate.
    #[test]
    fn matches_the_reference_at_every_length_and_split() {
        let data: Vec<u8> = (0..3000u32)
            .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1])
            .collect();
        for len in (0..300).chain([1000, 2047, 2048, 2049, 3000]) {
            let input = &data[..len];
            let want: [u8; 16] = md5::Md5::digest(input).into();
            assert_eq!(digest(input), want, "length {len}");
            for piece in [1, 7, 63, 64, 65, 129] {
                let mut md5 = Md5::new();
                for chunk in input.chunks(piece) {
                    md5.update(chunk);
                }
                assert_eq!(md5.finalize(), want, "length {len} in pieces of {piece}");
            }
        }
    }
}
