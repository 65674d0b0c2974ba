//! Parsing what users type: `NAME`, `NAME:ID`, `NAME:TAG`, and sizes with K/M/G/T suffixes.
//!
//! Contract: as QEMU and the 2013 sheepdev parse it, a snapshot part made only of digits is
//! a snapshot id (0 is invalid), anything else is a tag. Names and tags are validated
//! (`VdiName`: 1..=255 bytes, no NUL). Errors are one lower-case line naming the problem.

use crate::proto::{lookup_field, VdiName, SD_LOOKUP_LEN};

/// Which inode of a name a lookup wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapSel {
    /// The working VDI.
    Working,
    /// The snapshot with this `snap_id`.
    Id(u32),
    /// The snapshot with this tag.
    Tag(VdiName),
}

impl SnapSel {
    pub fn is_snapshot(&self) -> bool {
        !matches!(self, SnapSel::Working)
    }
    /// The lookup payload and the `snapid` field. The payload is always name + tag
    /// ([`SD_LOOKUP_LEN`] bytes, the tag zeroed unless there is one), exactly as dog sends
    /// it: a name-only lookup with a snapid crashes a real sheep whose candidates carry a
    /// tag (reference §8).
    pub fn lookup_payload(&self, name: &VdiName) -> ([u8; SD_LOOKUP_LEN], u32) {
        let field = name.to_field();
        match self {
            SnapSel::Working => (lookup_field(&field, None), 0),
            SnapSel::Id(id) => (lookup_field(&field, None), *id),
            SnapSel::Tag(t) => (lookup_field(&field, Some(t)), 0),
        }
    }
}

impl std::fmt::Display for SnapSel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapSel::Working => Ok(()),
            SnapSel::Id(i) => write!(f, ":{i}"),
            SnapSel::Tag(t) => write!(f, ":{t}"),
        }
    }
}

/// A VDI as a user names it: `linux`, `linux:1`, `linux:snap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdiSpec {
    pub name: VdiName,
    pub snap: SnapSel,
}

impl VdiSpec {
    pub fn working(name: VdiName) -> VdiSpec {
        VdiSpec { name, snap: SnapSel::Working }
    }
}

impl std::str::FromStr for VdiSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<VdiSpec, String> {
        let (name, snap) = match s.split_once(':') {
            None => (s, None),
            Some((n, sn)) => (n, Some(sn)),
        };
        let name = VdiName::new(name).map_err(|e| format!("vdi {s:?}: {e}"))?;
        let snap = match snap {
            None => SnapSel::Working,
            Some(sn) if !sn.is_empty() && sn.bytes().all(|b| b.is_ascii_digit()) => {
                match sn.parse::<u32>() {
                    Ok(0) | Err(_) => {
                        return Err(format!("vdi {s:?}: snapshot id must be 1..{}", u32::MAX))
                    }
                    Ok(id) => SnapSel::Id(id),
                }
            }
            Some(sn) => SnapSel::Tag(VdiName::new(sn).map_err(|e| format!("vdi {s:?}: tag: {e}"))?),
        };
        Ok(VdiSpec { name, snap })
    }
}

impl std::fmt::Display for VdiSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.name, self.snap)
    }
}

/// A size like `4096`, `512K`, `10G`, `1.5T` (binary units; optional trailing `B`/`iB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower.strip_suffix("ib").or_else(|| lower.strip_suffix('b')).unwrap_or(&lower);
    let (num, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        Some('p') => (&body[..body.len() - 1], 50),
        _ => (body, 0),
    };
    let bad =
        || format!("bad size {s:?}: expected a number with an optional K, M, G, T or P suffix");
    if num.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(1u64 << shift).ok_or_else(|| format!("size {s:?} is too large"));
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    if !f.is_finite() || f < 0.0 {
        return Err(bad());
    }
    let v = f * (1u64 << shift) as f64;
    if v >= u64::MAX as f64 {
        return Err(format!("size {s:?} is too large"));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_like_qemu() {
        let s: VdiSpec = "linux".parse().unwrap_or_else(|e: String| panic!("{e}"));
        assert_eq!(s.snap, SnapSel::Working);
        let s: VdiSpec = "linux:1".parse().unwrap_or_else(|e: String| panic!("{e}"));
        assert_eq!(s.snap, SnapSel::Id(1));
        let s: VdiSpec = "linux:snap".parse().unwrap_or_else(|e: String| panic!("{e}"));
        assert!(matches!(s.snap, SnapSel::Tag(ref t) if t.as_str() == "snap"));
        assert!("linux:0".parse::<VdiSpec>().is_err());
        assert!(":1".parse::<VdiSpec>().is_err());
        assert!("linux:".parse::<VdiSpec>().is_err());
        assert!(format!("{}:1", "a".repeat(256)).parse::<VdiSpec>().is_err());
        assert!("linux:99999999999".parse::<VdiSpec>().is_err());
    }

    #[test]
    fn lookup_payloads() {
        let s: VdiSpec = "linux:snap".parse().unwrap_or_else(|e: String| panic!("{e}"));
        let (p, id) = s.snap.lookup_payload(&s.name);
        assert_eq!((p.len(), id), (512, 0));
        assert_eq!(&p[256..260], b"snap");
        let s: VdiSpec = "linux:3".parse().unwrap_or_else(|e: String| panic!("{e}"));
        let (p, id) = s.snap.lookup_payload(&s.name);
        assert_eq!((p.len(), id), (512, 3), "a lookup by id carries a zeroed tag, as dog's does");
        assert!(p[256..].iter().all(|&b| b == 0));
        let (p, id) = SnapSel::Working.lookup_payload(&s.name);
        assert_eq!((p.len(), id), (512, 0));
        assert_eq!(&p[..6], b"linux\0");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1.5M"), Ok(3 << 19));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("12x").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
    }
}
