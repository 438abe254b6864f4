//! The guest kernel: found in an extracted Debian `linux-image-*-cloud-amd64`
//! package, and `vmlinux` (the ELF Firecracker boots) extracted from its bzImage.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::ImageError;

/// The largest kernel we accept to decompress (a bound against a corrupt or hostile
/// payload; Debian's cloud kernel is about 50 MiB).
const MAX_VMLINUX_BYTES: usize = 512 << 20;

/// A kernel package extracted into a directory (`dpkg-deb -x linux-image-….deb DIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPackage {
    /// `6.1.0-56-cloud-amd64`.
    pub version: String,
    pub bzimage: PathBuf,
    /// `lib/modules/<version>` (or `usr/lib/modules/<version>` in merged-/usr packages).
    pub modules_dir: PathBuf,
}

impl KernelPackage {
    /// Finds `boot/vmlinuz-<version>` with its `lib/modules/<version>` in `dir`; the
    /// newest version when there are several.
    pub fn find(dir: &Path) -> Result<KernelPackage, ImageError> {
        let hint = "extract a Debian linux-image-*-cloud-amd64 package there with `dpkg-deb -x`, or set AETHERIUM_KERNEL_DIR";
        if !dir.is_dir() {
            return Err(ImageError::Invalid(format!(
                "kernel directory {} does not exist: {hint}",
                dir.display()
            )));
        }
        let boot = dir.join("boot");
        let mut versions: Vec<String> = std::fs::read_dir(&boot)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix("vmlinuz-"))
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if versions.is_empty() {
            return Err(ImageError::Invalid(format!(
                "kernel directory {} has no boot/vmlinuz-*: {hint}",
                dir.display()
            )));
        }
        versions.sort();
        let mut missing = Vec::new();
        for version in versions.iter().rev() {
            let candidates = [
                dir.join("lib/modules").join(version),
                dir.join("usr/lib/modules").join(version),
            ];
            match candidates.into_iter().find(|p| p.join("kernel").is_dir()) {
                Some(modules_dir) => {
                    return Ok(KernelPackage {
                        version: version.clone(),
                        bzimage: boot.join(format!("vmlinuz-{version}")),
                        modules_dir,
                    });
                }
                None => missing.push(format!("lib/modules/{version}/kernel")),
            }
        }
        Err(ImageError::Invalid(format!(
            "kernel directory {} has a vmlinuz but no modules ({} missing): {hint}",
            dir.display(),
            missing.join(", ")
        )))
    }
}

fn bad(what: impl std::fmt::Display) -> ImageError {
    ImageError::Invalid(format!("cannot extract vmlinux from the bzImage: {what}"))
}

fn u32_at(data: &[u8], offset: usize) -> Option<u32> {
    let bytes = data.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// The compressed kernel inside a bzImage, located through the boot protocol's
/// setup header (Documentation/arch/x86/boot.rst): it starts `payload_offset` bytes
/// into the protected-mode code, which follows `setup_sects + 1` 512-byte sectors.
pub fn bzimage_payload(bzimage: &[u8]) -> Result<&[u8], ImageError> {
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("no \"HdrS\" setup header: not an x86 bzImage"));
    }
    let version = bzimage
        .get(0x206..0x208)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(0);
    if version < 0x0208 {
        return Err(bad(format!(
            "boot protocol {version:#06x} is older than 2.08 (no payload fields)"
        )));
    }
    let setup_sects = match bzimage[0x1f1] {
        0 => 4, // the boot protocol's rule for old kernels
        n => usize::from(n),
    };
    let (Some(payload_offset), Some(payload_length)) =
        (u32_at(bzimage, 0x248), u32_at(bzimage, 0x24c))
    else {
        return Err(bad("truncated setup header"));
    };
    let start = (setup_sects + 1) * 512 + payload_offset as usize;
    let end = start + payload_length as usize;
    bzimage.get(start..end).ok_or_else(|| {
        bad(format!(
            "payload {start}..{end} lies beyond the file's {} bytes",
            bzimage.len()
        ))
    })
}

/// Decompresses a bzImage's payload into the ELF `vmlinux` (stripped, as the
/// kernel's decompressor would lay it out). LZ4 (Debian's x86 kernels), zstd and gzip.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, ImageError> {
    let payload = bzimage_payload(bzimage)?;
    let elf = match payload {
        [0x02, 0x21, 0x4c, 0x18, ..] => lz4_legacy(payload)?,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => zstd(payload)?,
        [0x1f, 0x8b, ..] => gzip(payload)?,
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => {
            return Err(bad(
                "the payload is xz-compressed, which is not supported (LZ4, zstd and gzip are)",
            ));
        }
        _ => {
            let head: Vec<String> = payload.iter().take(6).map(|b| format!("{b:02x}")).collect();
            return Err(bad(format!(
                "unknown payload compression (starts with {})",
                head.join(" ")
            )));
        }
    };
    if !elf.starts_with(b"\x7fELF") {
        return Err(bad("the decompressed payload is not an ELF file"));
    }
    Ok(elf)
}

/// The LZ4 "legacy" frame the kernel's `lz4 -l` writes: a magic, then blocks of a
/// little-endian u32 compressed size and a raw LZ4 block of at most 8 MiB output. The
/// magic may repeat (concatenated frames); the kernel appends the uncompressed size
/// as a last u32, which no block could hold, so it ends the stream.
fn lz4_legacy(payload: &[u8]) -> Result<Vec<u8>, ImageError> {
    const MAGIC: u32 = 0x184c_2102;
    const BLOCK_OUTPUT_MAX: usize = 8 << 20;
    let mut out = Vec::new();
    let mut pos = 4;
    while let Some(word) = u32_at(payload, pos) {
        if word == MAGIC {
            pos += 4;
            continue;
        }
        let body = pos + 4;
        let Some(block) = payload.get(body..body + word as usize) else {
            break; // the trailing size word
        };
        if block.is_empty() {
            break;
        }
        let start = out.len();
        if start + BLOCK_OUTPUT_MAX > MAX_VMLINUX_BYTES {
            return Err(bad("the kernel decompresses to more than 512 MiB"));
        }
        out.resize(start + BLOCK_OUTPUT_MAX, 0);
        let written = lz4_flex::block::decompress_into(block, &mut out[start..])
            .map_err(|e| bad(format!("corrupt LZ4 block at offset {pos}: {e}")))?;
        out.truncate(start + written);
        pos = body + block.len();
    }
    if out.is_empty() {
        return Err(bad("the LZ4 payload holds no block"));
    }
    Ok(out)
}

fn zstd(payload: &[u8]) -> Result<Vec<u8>, ImageError> {
    // The kernel's zstd22 uses windows up to 128 MiB.
    let decoder = ruzstd::decoding::StreamingDecoder::new_with_max_window_size(payload, 256 << 20)
        .map_err(|e| bad(format!("corrupt zstd payload: {e}")))?;
    read_bounded(decoder, "zstd")
}

fn gzip(payload: &[u8]) -> Result<Vec<u8>, ImageError> {
    read_bounded(flate2::read::GzDecoder::new(payload), "gzip")
}

fn read_bounded(reader: impl std::io::Read, what: &str) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    reader
        .take(MAX_VMLINUX_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("corrupt {what} payload: {e}")))?;
    if out.len() > MAX_VMLINUX_BYTES {
        return Err(bad("the kernel decompresses to more than 512 MiB"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 2 * 512];
        image[0x1f1] = 1; // setup_sects: protected-mode code at 1024
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&[0u8; 16]);
        image.extend_from_slice(payload);
        image.extend_from_slice(b"trailing junk");
        image
    }

    fn elf_like(len: usize) -> Vec<u8> {
        let mut data = b"\x7fELF".to_vec();
        data.extend((0..len).map(|i| (i % 251) as u8));
        data
    }

    #[test]
    fn lz4_legacy_frames_with_trailing_size() {
        let elf = elf_like(20_000);
        let mut payload = 0x184c_2102u32.to_le_bytes().to_vec();
        for chunk in elf.chunks(7_000) {
            let block = lz4_flex::block::compress(chunk);
            payload.extend((block.len() as u32).to_le_bytes());
            payload.extend(block);
        }
        payload.extend((elf.len() as u32).to_le_bytes());
        let out = extract_vmlinux(&fake_bzimage(&payload)).expect("extract");
        assert_eq!(out, elf);
    }

    #[test]
    fn gzip_payload() {
        use std::io::Write as _;
        let elf = elf_like(5_000);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&elf).expect("gzip");
        let payload = encoder.finish().expect("gzip");
        assert_eq!(
            extract_vmlinux(&fake_bzimage(&payload)).expect("extract"),
            elf
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(extract_vmlinux(b"").is_err());
        assert!(extract_vmlinux(&[0u8; 4096]).is_err());
        let mut huge_offset = fake_bzimage(b"\x02\x21\x4c\x18");
        huge_offset[0x248..0x24c].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(extract_vmlinux(&huge_offset).is_err());
        let unknown = extract_vmlinux(&fake_bzimage(b"hello world")).unwrap_err();
        assert!(unknown.to_string().contains("unknown payload compression"));
        // A valid frame whose content is not an ELF.
        let mut payload = 0x184c_2102u32.to_le_bytes().to_vec();
        let block = lz4_flex::block::compress(b"not an elf at all");
        payload.extend((block.len() as u32).to_le_bytes());
        payload.extend(block);
        let err = extract_vmlinux(&fake_bzimage(&payload)).unwrap_err();
        assert!(err.to_string().contains("not an ELF"), "{err}");
        // A corrupt block.
        let mut corrupt = 0x184c_2102u32.to_le_bytes().to_vec();
        corrupt.extend(4u32.to_le_bytes());
        corrupt.extend([0xff, 0xff, 0xff, 0xff]);
        assert!(extract_vmlinux(&fake_bzimage(&corrupt)).is_err());
    }

    #[test]
    fn missing_kernel_dir_parts_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = KernelPackage::find(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let err = KernelPackage::find(dir.path()).unwrap_err();
        assert!(err.to_string().contains("no boot/vmlinuz"), "{err}");
        std::fs::create_dir_all(dir.path().join("boot")).expect("mkdir");
        std::fs::write(dir.path().join("boot/vmlinuz-6.1.0-test"), b"x").expect("write");
        let err = KernelPackage::find(dir.path()).unwrap_err();
        assert!(err.to_string().contains("no modules"), "{err}");
        std::fs::create_dir_all(dir.path().join("lib/modules/6.1.0-test/kernel")).expect("mkdir");
        let found = KernelPackage::find(dir.path()).expect("found");
        assert_eq!(found.version, "6.1.0-test");
    }
}
