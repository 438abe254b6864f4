//! A writer of "newc" cpio archives (what the kernel unpacks as an initramfs):
//! each entry is a 110-byte ASCII header, the NUL-terminated name and the data, the
//! last two padded to 4 bytes; a `TRAILER!!!` entry ends the archive.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// `path` without a leading `/` (`bin/busybox`); every entry is owned by root.
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | perm, 2, (0, 0), b"")
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node (no privilege needed to archive one).
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), b"")
    }

    /// Writes the trailer and returns the writer and the archive's size.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.next_ino = 0;
        self.entry("TRAILER!!!", 0, 1, (0, 0), b"")?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        (rdev_major, rdev_minor): (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio entry over 4 GiB"))?;
        if name.is_empty() || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad cpio entry name",
            ));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let name_size = name.len() + 1;
        let header = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{dev_major:08x}{dev_minor:08x}{rdev_major:08x}{rdev_minor:08x}{name_size:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            dev_major = 0,
            dev_minor = 0,
            check = 0,
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(b"\0")?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let padding = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..padding])
    }
}

/// One entry read back from a newc archive (tests and diagnostics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub name: String,
    pub mode: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// Parses a newc archive up to its trailer.
pub fn read_newc(mut archive: &[u8]) -> Result<Vec<CpioEntry>, String> {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    loop {
        let header = archive.get(..110).ok_or("truncated header")?;
        if &header[..6] != b"070701" {
            return Err(format!("bad magic at offset {offset}"));
        }
        let field = |i: usize| -> Result<u32, String> {
            let text = std::str::from_utf8(&header[6 + i * 8..14 + i * 8])
                .map_err(|_| "non-ASCII header".to_string())?;
            u32::from_str_radix(text, 16).map_err(|e| format!("bad header field: {e}"))
        };
        let (mode, size, rdev_major, rdev_minor, name_size) = (
            field(1)?,
            field(6)? as usize,
            field(9)?,
            field(10)?,
            field(11)? as usize,
        );
        let align = |n: usize| n.div_ceil(4) * 4;
        let name_end = 110 + name_size;
        let name = archive.get(110..name_end - 1).ok_or("truncated name")?;
        let name = String::from_utf8_lossy(name).into_owned();
        let data_start = align(offset + name_end) - offset;
        let data = archive
            .get(data_start..data_start + size)
            .ok_or("truncated data")?
            .to_vec();
        if name == "TRAILER!!!" {
            return Ok(entries);
        }
        let next = align(offset + data_start + size) - offset;
        entries.push(CpioEntry {
            name,
            mode,
            rdev: (rdev_major, rdev_minor),
            data,
        });
        archive = archive.get(next..).ok_or("truncated padding")?;
        offset += next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut writer = CpioWriter::new(Vec::new());
        writer.dir("bin", 0o755).expect("dir");
        writer.file("bin/busybox", 0o755, b"12345").expect("file");
        writer.symlink("bin/sh", "busybox").expect("link");
        writer.char_device("dev/console", 0o600, 5, 1).expect("dev");
        writer.file("init", 0o755, b"#!/bin/sh\n").expect("file");
        let (archive, size) = writer.finish().expect("finish");
        assert_eq!(size as usize, archive.len());
        assert_eq!(archive.len() % 4, 0);
        let entries = read_newc(&archive).expect("parse");
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "bin/busybox", "bin/sh", "dev/console", "init"]
        );
        assert_eq!(entries[1].data, b"12345");
        assert_eq!(entries[1].mode, S_IFREG | 0o755);
        assert_eq!(entries[2].data, b"busybox");
        assert_eq!(entries[3].rdev, (5, 1));
        assert_eq!(entries[4].data, b"#!/bin/sh\n");
    }

    #[test]
    fn parser_rejects_garbage() {
        assert!(read_newc(b"").is_err());
        assert!(read_newc(&[b'x'; 200]).is_err());
    }
}
