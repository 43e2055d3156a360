//! Input generation: a small seeded generator and mutations of a corpus
//! (the seeds, plus a sample of earlier inputs so that mutations stack up
//! over a run).

/// splitmix64: small, fast, and the same stream for the same seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Numbers at the edges, where arithmetic and bounds checks go wrong.
const INTERESTING: &[i64] = &[
    0,
    1,
    -1,
    2,
    5,
    7,
    9,
    12,
    13,
    127,
    128,
    255,
    256,
    65_535,
    65_536,
    i32::MAX as i64,
    i32::MIN as i64,
    u32::MAX as i64,
    4 * 1024 * 1024,
    9_000_000_000,
    i64::MAX,
    i64::MIN,
    i64::MAX - 1,
    i64::MIN + 1,
];

/// The same in text, for JSON, durations and header values.
const INTERESTING_TEXT: &[&str] = &[
    "0",
    "-1",
    "1e309",
    "0.5",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
    "\"\"",
    "null",
    "{}",
    "[]",
    "\\u0000",
    "\\ud800",
    "9999-12-31T23:59:59Z",
    "0000-01-01T00:00:00+23:59",
    "2025-01-02T03:04:05.9999999999Z",
    "µs",
    "99999999H",
    "%",
    "\r\n\r\n",
    "/*",
    "//",
];

pub struct Mutator {
    rng: Rng,
    seeds: Vec<Vec<u8>>,
    /// Earlier inputs worth mutating further, bounded.
    kept: Vec<Vec<u8>>,
    max_len: usize,
}

const MAX_KEPT: usize = 512;

impl Mutator {
    pub fn new(rng: Rng, seeds: Vec<Vec<u8>>, max_len: usize) -> Mutator {
        Mutator {
            rng,
            seeds,
            kept: Vec::new(),
            max_len,
        }
    }

    fn any_input(&mut self) -> Vec<u8> {
        if !self.kept.is_empty() && self.rng.chance(2) {
            self.rng.pick(&self.kept).clone()
        } else {
            self.rng.pick(&self.seeds).clone()
        }
    }

    /// The next input: a corpus entry with one to four mutations, or now
    /// and then random bytes.
    pub fn next_input(&mut self) -> Vec<u8> {
        if self.rng.chance(64) {
            let len = self.rng.below(256);
            return (0..len).map(|_| self.rng.byte()).collect();
        }
        let mut input = self.any_input();
        for _ in 0..=self.rng.below(4) {
            self.mutate(&mut input);
        }
        input.truncate(self.max_len);
        input
    }

    /// Keeps a sample of what ran (no coverage tells which were new).
    pub fn keep(&mut self, input: Vec<u8>) {
        if !self.rng.chance(16) {
            return;
        }
        if self.kept.len() < MAX_KEPT {
            self.kept.push(input);
        } else {
            let at = self.rng.below(MAX_KEPT);
            self.kept[at] = input;
        }
    }

    fn mutate(&mut self, input: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let len = input.len();
        match rng.below(15) {
            // Flip a few bits.
            0 => {
                for _ in 0..=rng.below(4) {
                    if len > 0 {
                        let at = rng.below(len);
                        input[at] ^= 1 << rng.below(8);
                    }
                }
            }
            // A byte at an edge value, or nudged.
            1 => {
                if len > 0 {
                    let at = rng.below(len);
                    input[at] = *rng.pick(&[0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'\n']);
                }
            }
            2 => {
                if len > 0 {
                    let at = rng.below(len);
                    let delta = rng.below(33) as u8;
                    input[at] = if rng.chance(2) {
                        input[at].wrapping_add(delta)
                    } else {
                        input[at].wrapping_sub(delta)
                    };
                }
            }
            // Random bytes in.
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                input.splice(at..at, bytes);
            }
            // A piece out.
            4 => {
                if len > 0 {
                    let at = rng.below(len);
                    let n = 1 + rng.below((len - at).min(64));
                    input.drain(at..at + n);
                }
            }
            // A piece repeated.
            5 => {
                if len > 0 {
                    let at = rng.below(len);
                    let n = 1 + rng.below((len - at).min(64));
                    let piece = input[at..at + n].to_vec();
                    let to = rng.below(len + 1);
                    input.splice(to..to, piece);
                }
            }
            // Cut short.
            6 => input.truncate(rng.below(len + 1)),
            // The start of this input with the end of another.
            7 => {
                let other = self.any_input();
                let rng = &mut self.rng;
                let at = rng.below(input.len() + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            // A piece of another input inserted.
            8 => {
                let other = self.any_input();
                let rng = &mut self.rng;
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let n = 1 + rng.below((other.len() - from).min(256));
                    let at = rng.below(input.len() + 1);
                    input.splice(at..at, other[from..from + n].iter().copied());
                }
            }
            // A protobuf varint of an edge value over what is there.
            9 => {
                let value = *rng.pick(INTERESTING) as u64;
                let at = rng.below(len + 1);
                let varint = varint(value);
                let end = (at + varint.len()).min(len);
                input.splice(at..end, varint);
            }
            // A whole protobuf field: a tag, then a varint or a short
            // length-delimited value.
            10 => {
                let field = 1 + rng.below(16) as u64;
                let mut bytes = Vec::new();
                if rng.chance(2) {
                    bytes.extend(varint(field << 3));
                    bytes.extend(varint(*rng.pick(INTERESTING) as u64));
                } else {
                    bytes.extend(varint((field << 3) | 2));
                    let n = rng.below(8);
                    bytes.extend(varint(n as u64));
                    bytes.extend((0..n).map(|_| rng.byte()));
                }
                let at = rng.below(len + 1);
                input.splice(at..at, bytes);
            }
            // A 4-byte big-endian length (gRPC's prefix) at an edge.
            11 => {
                let value = *rng.pick(INTERESTING) as u32;
                if len >= 4 {
                    let at = rng.below(len - 3);
                    input[at..at + 4].copy_from_slice(&value.to_be_bytes());
                }
            }
            // A 2-byte little-endian length (the etcd target's framing).
            12 => {
                let value = *rng.pick(INTERESTING) as u16;
                if len >= 2 {
                    let at = rng.below(len - 1);
                    input[at..at + 2].copy_from_slice(&value.to_le_bytes());
                }
            }
            // An edge value in text, over a run of digits or anywhere.
            13 => {
                let text = rng.pick(INTERESTING_TEXT).as_bytes();
                let start = rng.below(len + 1);
                let digits = input[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                input.splice(start..start + digits, text.iter().copied());
            }
            // Two pieces swapped.
            _ => {
                if len >= 2 {
                    let a = rng.below(len);
                    let b = rng.below(len);
                    input.swap(a, b);
                }
            }
        }
    }
}

fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}
