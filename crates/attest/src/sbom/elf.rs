//! Just enough ELF to find a section by name: the header, the section
//! header table and the section name string table, for 32/64-bit and
//! either byte order. Every offset is bounds-checked.

/// A parsed ELF file's sections.
#[derive(Debug, Clone)]
pub struct Elf {
    sections: Vec<Section>,
    /// True for 64-bit files.
    pub is_64: bool,
    /// True for little-endian files.
    pub little_endian: bool,
}

/// One section header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Name from the section string table.
    pub name: String,
    /// Virtual address.
    pub addr: u64,
    /// File offset.
    pub offset: u64,
    /// Size in the file.
    pub size: u64,
    /// `SHT_NOBITS` sections (`.bss`) occupy no file bytes.
    pub nobits: bool,
}

struct Reader<'a> {
    b: &'a [u8],
    le: bool,
}

impl Reader<'_> {
    fn u16(&self, off: usize) -> Option<u16> {
        let s: [u8; 2] = self.b.get(off..off.checked_add(2)?)?.try_into().ok()?;
        Some(if self.le {
            u16::from_le_bytes(s)
        } else {
            u16::from_be_bytes(s)
        })
    }
    fn u32(&self, off: usize) -> Option<u32> {
        let s: [u8; 4] = self.b.get(off..off.checked_add(4)?)?.try_into().ok()?;
        Some(if self.le {
            u32::from_le_bytes(s)
        } else {
            u32::from_be_bytes(s)
        })
    }
    fn u64(&self, off: usize) -> Option<u64> {
        let s: [u8; 8] = self.b.get(off..off.checked_add(8)?)?.try_into().ok()?;
        Some(if self.le {
            u64::from_le_bytes(s)
        } else {
            u64::from_be_bytes(s)
        })
    }
}

impl Elf {
    /// Parse the section table of `bytes`; `None` if it is not a
    /// well-formed ELF file.
    pub fn parse(bytes: &[u8]) -> Option<Elf> {
        if bytes.get(..4)? != b"\x7fELF" {
            return None;
        }
        let is_64 = match bytes.get(4)? {
            1 => false,
            2 => true,
            _ => return None,
        };
        let le = match bytes.get(5)? {
            1 => true,
            2 => false,
            _ => return None,
        };
        let r = Reader { b: bytes, le };
        let (shoff, shentsize, shnum, shstrndx) = if is_64 {
            (r.u64(0x28)?, r.u16(0x3A)?, r.u16(0x3C)?, r.u16(0x3E)?)
        } else {
            (
                u64::from(r.u32(0x20)?),
                r.u16(0x2E)?,
                r.u16(0x30)?,
                r.u16(0x32)?,
            )
        };
        let min_ent = if is_64 { 0x40 } else { 0x28 };
        if shoff == 0 || usize::from(shentsize) < min_ent {
            return Some(Elf {
                sections: Vec::new(),
                is_64,
                little_endian: le,
            });
        }
        let mut raw = Vec::new();
        for i in 0..usize::from(shnum) {
            let base = usize::try_from(shoff)
                .ok()?
                .checked_add(i * usize::from(shentsize))?;
            let name_off = r.u32(base)?;
            let ty = r.u32(base + 4)?;
            let (addr, offset, size) = if is_64 {
                (
                    r.u64(base + 0x10)?,
                    r.u64(base + 0x18)?,
                    r.u64(base + 0x20)?,
                )
            } else {
                (
                    u64::from(r.u32(base + 0x0C)?),
                    u64::from(r.u32(base + 0x10)?),
                    u64::from(r.u32(base + 0x14)?),
                )
            };
            raw.push((name_off, ty, addr, offset, size));
        }
        let strtab = raw
            .get(usize::from(shstrndx))
            .and_then(|&(_, _, _, off, size)| {
                let start = usize::try_from(off).ok()?;
                bytes.get(start..start.checked_add(usize::try_from(size).ok()?)?)
            });
        let sections = raw
            .into_iter()
            .map(|(name_off, ty, addr, offset, size)| {
                let name = strtab
                    .and_then(|t| t.get(name_off as usize..))
                    .map(|t| {
                        let end = t.iter().position(|&b| b == 0).unwrap_or(t.len());
                        String::from_utf8_lossy(&t[..end]).to_string()
                    })
                    .unwrap_or_default();
                Section {
                    name,
                    addr,
                    offset,
                    size,
                    nobits: ty == 8,
                }
            })
            .collect();
        Some(Elf {
            sections,
            is_64,
            little_endian: le,
        })
    }

    /// The sections.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The section named `name`.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The file bytes of section `name`.
    pub fn section_data<'a>(&self, bytes: &'a [u8], name: &str) -> Option<&'a [u8]> {
        let s = self.section(name).filter(|s| !s.nobits)?;
        let start = usize::try_from(s.offset).ok()?;
        bytes.get(start..start.checked_add(usize::try_from(s.size).ok()?)?)
    }

    /// The file bytes at virtual address `addr` (`len` bytes), looked up
    /// through the section table.
    pub fn read_at_addr<'a>(&self, bytes: &'a [u8], addr: u64, len: u64) -> Option<&'a [u8]> {
        let s = self
            .sections
            .iter()
            .find(|s| !s.nobits && s.addr != 0 && addr >= s.addr && addr - s.addr < s.size)?;
        let start = s.offset.checked_add(addr - s.addr)?;
        if (addr - s.addr).checked_add(len)? > s.size {
            return None;
        }
        let start = usize::try_from(start).ok()?;
        bytes.get(start..start.checked_add(usize::try_from(len).ok()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_binary_sections() {
        let Ok(bytes) = std::fs::read("/bin/true") else {
            eprintln!("skipped: no /bin/true");
            return;
        };
        let elf = Elf::parse(&bytes).expect("/bin/true is ELF");
        assert!(elf.section(".text").is_some());
        assert!(elf.section_data(&bytes, ".shstrtab").unwrap().contains(&0));
        assert!(elf.section(".dep-v0").is_none());
    }

    #[test]
    fn garbage_is_rejected_without_panics() {
        assert!(Elf::parse(b"").is_none());
        assert!(Elf::parse(b"\x7fELF").is_none());
        let mut b = b"\x7fELF\x02\x01\x01".to_vec();
        b.resize(0x40, 0xff);
        // Huge section header offsets must not panic.
        assert!(Elf::parse(&b).is_none());
        for n in 0..200 {
            let mut v = b.clone();
            v.resize(0x40 + n, (n % 251) as u8);
            let _ = Elf::parse(&v);
        }
    }
}
