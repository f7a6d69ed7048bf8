//! Test-only encoders: build TC and GPP strings bit by bit, so tests can
//! make exactly the (valid or broken) strings they need without node.
#![allow(dead_code, unreachable_pub)]

const DICT: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

#[derive(Default, Clone)]
pub struct Bits(pub Vec<bool>);

impl Bits {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn int(mut self, value: u64, width: usize) -> Self {
        for shift in (0..width).rev() {
            self.0.push(shift < 64 && (value >> shift) & 1 == 1);
        }
        self
    }
    pub fn bit(self, b: bool) -> Self {
        self.int(u64::from(b), 1)
    }
    pub fn flags(mut self, ids: &[u16], n: usize) -> Self {
        for i in 1..=n {
            self.0.push(ids.contains(&(i as u16)));
        }
        self
    }
    pub fn letters(self, s: &str) -> Self {
        let b = s.as_bytes();
        self.int(u64::from(b[0] - b'A'), 6)
            .int(u64::from(b[1] - b'A'), 6)
    }
    /// Fibonacci code of `n >= 1` (GPP).
    pub fn fib(mut self, n: u64) -> Self {
        let mut fibs = vec![1u64, 2];
        while fibs[fibs.len() - 1] + fibs[fibs.len() - 2] <= n {
            let next = fibs[fibs.len() - 1] + fibs[fibs.len() - 2];
            fibs.push(next);
        }
        let mut rest = n;
        let mut code = vec![false; fibs.len()];
        for i in (0..fibs.len()).rev() {
            if fibs[i] <= rest {
                code[i] = true;
                rest -= fibs[i];
            }
        }
        while code.len() > 1 && !code[code.len() - 1] {
            code.pop();
        }
        self.0.extend(code);
        self.0.push(true);
        self
    }
    /// Base64url, zero-padded to whole characters.
    pub fn encode(&self) -> String {
        let mut bits = self.0.clone();
        while !bits.len().is_multiple_of(6) {
            bits.push(false);
        }
        bits.chunks(6)
            .map(|c| {
                let v = c.iter().fold(0usize, |acc, b| (acc << 1) | usize::from(*b));
                DICT[v] as char
            })
            .collect()
    }
}

/// (purpose id, restriction type, vendor ranges)
pub type Restriction = (u64, u64, Vec<(u16, u16)>);

/// The fields of a TC core segment that tests vary.
#[derive(Clone, Debug)]
pub struct Core {
    pub version: u64,
    pub created_ds: u64,
    pub updated_ds: u64,
    pub cmp_id: u64,
    pub cmp_version: u64,
    pub screen: u64,
    pub language: String,
    pub vendor_list_version: u64,
    pub policy_version: u64,
    pub service_specific: bool,
    pub non_standard: bool,
    pub special_features: Vec<u16>,
    pub purposes: Vec<u16>,
    pub purposes_li: Vec<u16>,
    pub purpose_one_treatment: bool,
    pub country: String,
    pub vendors: Vec<u16>,
    pub vendors_li: Vec<u16>,
    /// (purpose, type, vendor ranges)
    pub restrictions: Vec<Restriction>,
}

impl Default for Core {
    fn default() -> Self {
        Self {
            version: 2,
            created_ds: 17_000_000_000,
            updated_ds: 17_000_000_000,
            cmp_id: 300,
            cmp_version: 2,
            screen: 1,
            language: "EN".into(),
            vendor_list_version: 150,
            policy_version: 4,
            service_specific: true,
            non_standard: false,
            special_features: vec![1],
            purposes: vec![1, 3, 4],
            purposes_li: vec![2, 7],
            purpose_one_treatment: false,
            country: "DE".into(),
            vendors: vec![5, 10, 755],
            vendors_li: vec![],
            restrictions: vec![],
        }
    }
}

/// A vendor vector as a bitfield.
pub fn vendor_bitfield(b: Bits, ids: &[u16]) -> Bits {
    let max = ids.iter().copied().max().unwrap_or(0);
    b.int(u64::from(max), 16)
        .bit(false)
        .flags(ids, usize::from(max))
}

/// A vendor vector as ranges.
pub fn vendor_ranges(b: Bits, ranges: &[(u16, u16)]) -> Bits {
    let max = ranges.iter().map(|r| r.1).max().unwrap_or(0);
    let b = b.int(u64::from(max), 16).bit(true);
    range_list(b, ranges)
}

pub fn range_list(mut b: Bits, ranges: &[(u16, u16)]) -> Bits {
    b = b.int(ranges.len() as u64, 12);
    for (first, last) in ranges {
        if first == last {
            b = b.bit(false).int(u64::from(*first), 16);
        } else {
            b = b
                .bit(true)
                .int(u64::from(*first), 16)
                .int(u64::from(*last), 16);
        }
    }
    b
}

pub fn core_bits(c: &Core) -> Bits {
    let mut b = Bits::new()
        .int(c.version, 6)
        .int(c.created_ds, 36)
        .int(c.updated_ds, 36)
        .int(c.cmp_id, 12)
        .int(c.cmp_version, 12)
        .int(c.screen, 6)
        .letters(&c.language)
        .int(c.vendor_list_version, 12)
        .int(c.policy_version, 6)
        .bit(c.service_specific)
        .bit(c.non_standard)
        .flags(&c.special_features, 12)
        .flags(&c.purposes, 24)
        .flags(&c.purposes_li, 24)
        .bit(c.purpose_one_treatment)
        .letters(&c.country);
    b = vendor_bitfield(b, &c.vendors);
    b = vendor_bitfield(b, &c.vendors_li);
    b = b.int(c.restrictions.len() as u64, 12);
    for (purpose, kind, ranges) in &c.restrictions {
        b = b.int(*purpose, 6).int(*kind, 2);
        b = range_list(b, ranges);
    }
    b
}

pub fn core(c: &Core) -> String {
    core_bits(c).encode()
}

/// A GPP header listing `ids` (ascending) as single entries.
pub fn gpp_header(ids: &[u64]) -> String {
    let mut b = Bits::new().int(3, 6).int(1, 6).int(ids.len() as u64, 12);
    let mut last = 0;
    for id in ids {
        b = b.bit(false).fib(id - last);
        last = *id;
    }
    b.encode()
}

/// A usnat v2 core: 6-bit version then fifteen 2-bit fields/lists.
pub fn usnat_core(sale: u64, sharing: u64, targeted: u64, sensitive: &[u64; 16]) -> String {
    let mut b = Bits::new().int(2, 6);
    for _ in 0..6 {
        b = b.int(1, 2); // notices
    }
    b = b.int(sale, 2).int(sharing, 2).int(targeted, 2);
    for s in sensitive {
        b = b.int(*s, 2);
    }
    b = b.int(0, 2).int(0, 2).int(0, 2); // known child
    b = b.int(2, 2).int(1, 2).int(0, 2).int(0, 2); // personal data, mspa x3
    b.encode()
}

/// A GPC sub-segment.
pub fn gpc_segment(gpc: bool) -> String {
    Bits::new().int(1, 2).bit(gpc).encode()
}
