//! Kernel modules for the initramfs: the ones a microVM needs, with their
//! dependencies read from each `.ko`'s `.modinfo` section (`depends=`), in load order.

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::ImageError;

/// What a guest needs before its root filesystem is reachable: the virtio transports
/// (MMIO for Firecracker, PCI for QEMU), the disk, the network and vsock.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "vsock",
    "vmw_vsock_virtio_transport",
];

/// One module to load, by its canonical name (`_`, never `-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelModule {
    pub name: String,
    pub path: PathBuf,
}

impl KernelModule {
    /// The module as an uncompressed `.ko` (busybox `insmod` cannot decompress).
    pub fn read(&self) -> Result<Vec<u8>, ImageError> {
        let data = std::fs::read(&self.path)
            .map_err(|e| ImageError::io(format!("cannot read {}", self.path.display()), e))?;
        let name = self.path.to_string_lossy();
        if name.ends_with(".ko.zst") {
            let mut out = Vec::new();
            ruzstd::decoding::StreamingDecoder::new(data.as_slice())
                .map_err(|e| ImageError::Invalid(format!("corrupt {name}: {e}")))?
                .read_to_end(&mut out)
                .map_err(|e| ImageError::Invalid(format!("corrupt {name}: {e}")))?;
            Ok(out)
        } else {
            Ok(data)
        }
    }
}

fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Every module file under `<modules_dir>/kernel`, by canonical name; and the names
/// built into the kernel (`modules.builtin`), which need no loading.
struct ModuleIndex {
    files: HashMap<String, PathBuf>,
    builtin: HashSet<String>,
}

impl ModuleIndex {
    fn scan(modules_dir: &Path) -> Result<ModuleIndex, ImageError> {
        let mut files = HashMap::new();
        let mut pending = vec![modules_dir.join("kernel")];
        while let Some(dir) = pending.pop() {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| ImageError::io(format!("cannot list {}", dir.display()), e))?;
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(path);
                    continue;
                }
                let file_name = entry.file_name().to_string_lossy().into_owned();
                let stem = file_name
                    .strip_suffix(".ko")
                    .or_else(|| file_name.strip_suffix(".ko.zst"));
                if let Some(stem) = stem {
                    files.insert(canonical(stem), path);
                }
            }
        }
        let builtin = std::fs::read_to_string(modules_dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.rsplit('/').next())
            .filter_map(|name| name.strip_suffix(".ko"))
            .map(canonical)
            .collect();
        Ok(ModuleIndex { files, builtin })
    }
}

/// The `depends=` of a module: its `.modinfo` ELF section holds NUL-separated
/// `key=value` strings.
pub fn module_depends(ko: &[u8]) -> Result<Vec<String>, String> {
    let modinfo = elf_section(ko, b".modinfo")?.ok_or("no .modinfo section")?;
    Ok(modinfo
        .split(|b| *b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|list| list.split(|b| *b == b','))
        .filter(|name| !name.is_empty())
        .map(|name| canonical(&String::from_utf8_lossy(name)))
        .collect())
}

/// The contents of a named section of a little-endian ELF64 file.
fn elf_section<'a>(elf: &'a [u8], wanted: &[u8]) -> Result<Option<&'a [u8]>, String> {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .and_then(|v| usize::try_from(v).ok())
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return Err("not a little-endian ELF64 file".into());
    }
    let truncated = || "truncated ELF headers".to_string();
    let shoff = u64_at(0x28).ok_or_else(truncated)?;
    let shentsize = u16_at(0x3a).ok_or_else(truncated)?;
    let shnum = u16_at(0x3c).ok_or_else(truncated)?;
    let shstrndx = u16_at(0x3e).ok_or_else(truncated)?;
    let section = |index: usize| -> Option<(usize, &'a [u8])> {
        let header = shoff.checked_add(index.checked_mul(shentsize)?)?;
        let name = u32_at(header)?;
        let offset = u64_at(header + 24)?;
        let size = u64_at(header + 32)?;
        Some((name, elf.get(offset..offset.checked_add(size)?)?))
    };
    let (_, names) = section(shstrndx).ok_or_else(truncated)?;
    for index in 0..shnum {
        let (name_offset, data) = section(index).ok_or_else(truncated)?;
        let name = names
            .get(name_offset..)
            .and_then(|rest| rest.split(|b| *b == 0).next())
            .unwrap_or_default();
        if name == wanted {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

/// The modules to load for `wanted`, dependencies first, each once. Modules built
/// into the kernel are left out.
pub fn load_order(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<KernelModule>, ImageError> {
    let index = ModuleIndex::scan(modules_dir)?;
    let mut order = Vec::new();
    let mut done = HashSet::new();
    for name in wanted {
        visit(
            &index,
            &canonical(name),
            &mut Vec::new(),
            &mut done,
            &mut order,
        )?;
    }
    Ok(order)
}

fn visit(
    index: &ModuleIndex,
    name: &str,
    path: &mut Vec<String>,
    done: &mut HashSet<String>,
    order: &mut Vec<KernelModule>,
) -> Result<(), ImageError> {
    if done.contains(name) || index.builtin.contains(name) {
        return Ok(());
    }
    if path.iter().any(|p| p == name) {
        return Err(ImageError::Invalid(format!(
            "kernel module dependency cycle: {} -> {name}",
            path.join(" -> ")
        )));
    }
    let Some(file) = index.files.get(name) else {
        let needed_by = path
            .last()
            .map(|p| format!(" (needed by {p})"))
            .unwrap_or_default();
        return Err(ImageError::Invalid(format!(
            "the kernel has no module {name}{needed_by}: it is neither in the modules directory nor built in"
        )));
    };
    let module = KernelModule {
        name: name.to_string(),
        path: file.clone(),
    };
    let depends = module_depends(&module.read()?)
        .map_err(|e| ImageError::Invalid(format!("cannot read {}: {e}", file.display())))?;
    path.push(name.to_string());
    for dependency in depends {
        visit(index, &dependency, path, done, order)?;
    }
    path.pop();
    done.insert(name.to_string());
    order.push(module);
    Ok(())
}
