//! Offsets of kernel struct members, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), for the eBPF programs that follow kernel pointers: aya's Rust
//! programs have no CO-RE relocations, so the layout is looked up here and handed to them in a
//! map. aya parses BTF but keeps its type table private, hence this small reader of the format
//! (`Documentation/bpf/btf.rst`). Invariant: an offset is reported only if every member on the
//! chain was found with the expected kind and size; anything unexpected is an error, and the
//! caller then records no directory identity, or reads no io_uring names (fail safe, never a
//! wrong offset).

use std::{borrow::Cow, path::Path};

use root_tracker_ebpf::{BaseDirOffsets, IoUringOffsets};

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// `btf_header.magic`, native byte order.
const BTF_MAGIC: u16 = 0xeb9f;

/// `BTF_KIND_*` values from `linux/btf.h`.
mod btf_kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// Why the offsets could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot read the kernel's BTF at {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("BTF struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("BTF member {strukt}.{member} is not {expected}")]
    UnexpectedType {
        strukt: String,
        member: String,
        expected: &'static str,
    },
    #[error("BTF struct {strukt} ({size} bytes) does not fit in {container} ({room} bytes)")]
    DoesNotFit {
        strukt: String,
        size: u32,
        container: String,
        room: u32,
    },
}

/// One type of the table: its kind, name, `size`/`type` word and where its trailing data is.
#[derive(Clone, Copy, Debug)]
struct TypeEntry {
    kind: u32,
    name_off: u32,
    kind_flag: bool,
    vlen: u32,
    /// `size` (structs, unions, ints) or `type` (pointers, typedefs, modifiers).
    size_or_type: u32,
    /// Byte offset of the data after the 12-byte `btf_type` in the type section.
    data: usize,
}

/// A parsed BTF blob: the type table (id 1 first; id 0 is `void`) and the string section.
pub struct Btf {
    types: Vec<TypeEntry>,
    type_section: Vec<u8>,
    strings: Vec<u8>,
}

/// Where a member is and what it is.
#[derive(Clone, Copy, Debug)]
struct Member {
    /// Bytes from the start of the outermost struct searched.
    offset: u32,
    type_id: u32,
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, LayoutError> {
        let bytes = std::fs::read(path).map_err(|source| LayoutError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, LayoutError> {
        let malformed = LayoutError::Malformed;
        let u16_at = |at: usize| -> Option<u16> {
            Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
        };
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
        };
        if u16_at(0) != Some(BTF_MAGIC) {
            return Err(malformed("bad magic (or foreign byte order)"));
        }
        let field = |at| {
            u32_at(at)
                .map(|v| v as usize)
                .ok_or(malformed("short header"))
        };
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(4)?, field(8)?, field(12)?, field(16)?, field(20)?);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            bytes.get(start..start.checked_add(len)?)
        };
        let type_section = section(type_off, type_len)
            .ok_or(malformed("type section out of bounds"))?
            .to_vec();
        let strings = section(str_off, str_len)
            .ok_or(malformed("string section out of bounds"))?
            .to_vec();
        let types = parse_types(&type_section)?;
        Ok(Self {
            types,
            type_section,
            strings,
        })
    }

    fn entry(&self, id: u32) -> Option<&TypeEntry> {
        self.types.get(usize::try_from(id).ok()?.checked_sub(1)?)
    }

    fn name(&self, name_off: u32) -> Cow<'_, str> {
        let start = (name_off as usize).min(self.strings.len());
        let rest = &self.strings[start..];
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end])
    }

    fn u32_in_types(&self, at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(
            self.type_section.get(at..at + 4)?.try_into().ok()?,
        ))
    }

    /// Size in bytes of struct `name`.
    fn struct_size(&self, name: &str) -> Result<u32, LayoutError> {
        let id = self.struct_id(name)?;
        self.entry(id)
            .map(|entry| entry.size_or_type)
            .ok_or(LayoutError::Malformed("struct id out of range"))
    }

    /// Id of the first complete struct named `name` (forward declarations have another kind).
    fn struct_id(&self, name: &str) -> Result<u32, LayoutError> {
        (1..=self.types.len() as u32)
            .find(|&id| {
                self.entry(id).is_some_and(|entry| {
                    entry.kind == btf_kind::STRUCT && self.name(entry.name_off) == name
                })
            })
            .ok_or_else(|| LayoutError::NoStruct(name.to_owned()))
    }

    /// Follows typedefs and qualifiers (`const`, `volatile`, `__rcu` type tags, …).
    fn strip(&self, mut id: u32) -> Option<(u32, TypeEntry)> {
        // Bounded: a cycle would be malformed BTF.
        for _ in 0..32 {
            let entry = *self.entry(id)?;
            match entry.kind {
                btf_kind::TYPEDEF
                | btf_kind::VOLATILE
                | btf_kind::CONST
                | btf_kind::RESTRICT
                | btf_kind::TYPE_TAG => id = entry.size_or_type,
                _ => return Some((id, entry)),
            }
        }
        None
    }

    /// Member `name` of struct or union `id`, searching anonymous struct and union members
    /// too (the kernel wraps many fields in them), with its byte offset.
    fn member(&self, id: u32, name: &str, depth: u32) -> Option<Member> {
        let (_, outer) = self.strip(id)?;
        if !matches!(outer.kind, btf_kind::STRUCT | btf_kind::UNION) || depth > 8 {
            return None;
        }
        for index in 0..outer.vlen as usize {
            let at = outer.data + 12 * index;
            let (name_off, type_id, raw_offset) = (
                self.u32_in_types(at)?,
                self.u32_in_types(at + 4)?,
                self.u32_in_types(at + 8)?,
            );
            // With `kind_flag`, the top 8 bits hold a bitfield size: only the low 24 are
            // the bit offset.
            let bits = if outer.kind_flag {
                raw_offset & 0x00ff_ffff
            } else {
                raw_offset
            };
            if name_off == 0 {
                if let Some(inner) = self.member(type_id, name, depth + 1) {
                    if bits % 8 != 0 {
                        return None;
                    }
                    return Some(Member {
                        offset: inner.offset.checked_add(bits / 8)?,
                        type_id: inner.type_id,
                    });
                }
            } else if self.name(name_off) == name {
                // A bitfield has no byte offset the programs could read.
                if bits % 8 != 0 || (outer.kind_flag && raw_offset >> 24 != 0) {
                    return None;
                }
                return Some(Member {
                    offset: bits / 8,
                    type_id,
                });
            }
        }
        None
    }

    /// Offset of `strukt.member`, checking that the member is what `check` expects.
    fn offset_of(&self, strukt: &str, member: &str, expected: Expect) -> Result<u32, LayoutError> {
        let id = self.struct_id(strukt)?;
        let found = self
            .member(id, member, 0)
            .ok_or_else(|| LayoutError::NoMember {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            })?;
        if self.matches(found.type_id, expected) {
            Ok(found.offset)
        } else {
            Err(LayoutError::UnexpectedType {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
                expected: expected.describe(),
            })
        }
    }

    fn matches(&self, type_id: u32, expected: Expect) -> bool {
        let Some((_, entry)) = self.strip(type_id) else {
            return false;
        };
        match expected {
            Expect::Int { bytes } => entry.kind == btf_kind::INT && entry.size_or_type == bytes,
            Expect::PointerTo(target) => {
                entry.kind == btf_kind::PTR && self.pointee_is(entry.size_or_type, target)
            }
            Expect::PointerToInt { bytes } => {
                entry.kind == btf_kind::PTR
                    && self.strip(entry.size_or_type).is_some_and(|(_, inner)| {
                        inner.kind == btf_kind::INT && inner.size_or_type == bytes
                    })
            }
            Expect::PointerToPointerTo(target) => {
                entry.kind == btf_kind::PTR
                    && self.strip(entry.size_or_type).is_some_and(|(_, inner)| {
                        inner.kind == btf_kind::PTR && self.pointee_is(inner.size_or_type, target)
                    })
            }
            Expect::Struct(name) => {
                entry.kind == btf_kind::STRUCT && self.name(entry.name_off) == name
            }
        }
    }

    /// Whether `id` is `struct target` (complete or forward-declared).
    fn pointee_is(&self, id: u32, target: &str) -> bool {
        self.strip(id).is_some_and(|(_, entry)| {
            matches!(entry.kind, btf_kind::STRUCT | btf_kind::FWD)
                && self.name(entry.name_off) == target
        })
    }

    /// The members the programs follow to a relative path's base directory.
    pub fn base_dir_offsets(&self) -> Result<BaseDirOffsets, LayoutError> {
        use Expect::{Int, PointerTo, PointerToPointerTo, Struct};
        let fs_pwd = self.offset_of("fs_struct", "pwd", Struct("path"))?;
        let path_dentry = self.offset_of("path", "dentry", PointerTo("dentry"))?;
        Ok(BaseDirOffsets {
            valid: 1,
            task_files: self.offset_of("task_struct", "files", PointerTo("files_struct"))?,
            task_fs: self.offset_of("task_struct", "fs", PointerTo("fs_struct"))?,
            files_fdt: self.offset_of("files_struct", "fdt", PointerTo("fdtable"))?,
            fdtable_max_fds: self.offset_of("fdtable", "max_fds", Int { bytes: 4 })?,
            fdtable_fd: self.offset_of("fdtable", "fd", PointerToPointerTo("file"))?,
            file_inode: self.offset_of("file", "f_inode", PointerTo("inode"))?,
            fs_pwd_dentry: fs_pwd
                .checked_add(path_dentry)
                .ok_or(LayoutError::Malformed("offset overflow"))?,
            dentry_inode: self.offset_of("dentry", "d_inode", PointerTo("inode"))?,
            inode_ino: self.offset_of("inode", "i_ino", Int { bytes: 8 })?,
            inode_sb: self.offset_of("inode", "i_sb", PointerTo("super_block"))?,
            super_block_dev: self.offset_of("super_block", "s_dev", Int { bytes: 4 })?,
        })
    }
}

impl Btf {
    /// The members the io_uring submission program reads to judge a prepared path operation
    /// by its names: the op's command struct sits in `io_kiocb.cmd` (`struct io_cmd_data`,
    /// Linux 6.0 and later; older kernels name each op's struct in a union instead and are
    /// refused here), and holds `int` directory fds and `struct filename *` names. Kernels that
    /// keep names another way (a `struct delayed_filename` embedded in the command struct,
    /// say) are refused too.
    pub fn io_uring_offsets(&self) -> Result<IoUringOffsets, LayoutError> {
        let cmd = self.offset_of("io_kiocb", "cmd", Expect::Struct("io_cmd_data"))?;
        let room = self.struct_size("io_cmd_data")?;
        let dfd = Expect::Int { bytes: 4 };
        let name = Expect::PointerTo("filename");
        // Offset from the request of `strukt.member`, a command struct living in `cmd`.
        let in_cmd = |strukt: &str, member: &str, expected: Expect| -> Result<u32, LayoutError> {
            let size = self.struct_size(strukt)?;
            if size > room {
                return Err(LayoutError::DoesNotFit {
                    strukt: strukt.to_owned(),
                    size,
                    container: "io_cmd_data".to_owned(),
                    room,
                });
            }
            let offset = self.offset_of(strukt, member, expected)?;
            // The program takes 0 for "no such field"; the command structs start with their
            // `struct file *`, so no member read here can be at the request's first byte.
            cmd.checked_add(offset)
                .filter(|&at| at != 0)
                .ok_or(LayoutError::UnexpectedType {
                    strukt: strukt.to_owned(),
                    member: member.to_owned(),
                    expected: "past the request's first byte",
                })
        };
        let pair_fields = |strukt: &str| -> Result<[u32; 4], LayoutError> {
            Ok([
                in_cmd(strukt, "old_dfd", dfd)?,
                in_cmd(strukt, "oldpath", name)?,
                in_cmd(strukt, "new_dfd", dfd)?,
                in_cmd(strukt, "newpath", name)?,
            ])
        };
        Ok(IoUringOffsets {
            valid: 1,
            filename_name: self.offset_of("filename", "name", Expect::PointerToInt { bytes: 1 })?,
            unlink: [
                in_cmd("io_unlink", "dfd", dfd)?,
                in_cmd("io_unlink", "filename", name)?,
            ],
            rename: pair_fields("io_rename")?,
            link: pair_fields("io_link")?,
        })
    }

    /// Offset of `task_struct.nvcsw`, which `nivcsw` must follow at once (both `unsigned
    /// long`): the task's voluntary and involuntary context-switch counts, which the programs
    /// read as one 16-byte pair to learn whether their task left the CPU while it used the
    /// CPU's scratch memory.
    pub fn task_switch_counts_offset(&self) -> Result<u32, LayoutError> {
        let voluntary = self.offset_of("task_struct", "nvcsw", Expect::Int { bytes: 8 })?;
        let involuntary = self.offset_of("task_struct", "nivcsw", Expect::Int { bytes: 8 })?;
        if voluntary.checked_add(8) != Some(involuntary) {
            return Err(LayoutError::UnexpectedType {
                strukt: "task_struct".to_owned(),
                member: "nivcsw".to_owned(),
                expected: "right after nvcsw",
            });
        }
        Ok(voluntary)
    }
}

/// What a member must be for the programs to read it as they do.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Int {
        bytes: u32,
    },
    PointerTo(&'static str),
    /// A pointer to an integer of this size (`const char *`: 1).
    PointerToInt {
        bytes: u32,
    },
    PointerToPointerTo(&'static str),
    Struct(&'static str),
}

impl Expect {
    fn describe(self) -> &'static str {
        match self {
            Self::Int { bytes: 4 } => "a 4-byte integer",
            Self::Int { .. } => "an 8-byte integer",
            Self::PointerTo(_) => "a pointer to the expected struct",
            Self::PointerToInt { .. } => "a pointer to chars",
            Self::PointerToPointerTo(_) => "a pointer to pointers to the expected struct",
            Self::Struct(_) => "the expected embedded struct",
        }
    }
}

/// Walks the type section: each `btf_type` is 12 bytes followed by kind-specific data.
fn parse_types(section: &[u8]) -> Result<Vec<TypeEntry>, LayoutError> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(
            section.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    let mut types = Vec::new();
    let mut at = 0;
    while at < section.len() {
        let (name_off, info, size_or_type) = match (u32_at(at), u32_at(at + 4), u32_at(at + 8)) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => return Err(LayoutError::Malformed("truncated type")),
        };
        let kind = (info >> 24) & 0x1f;
        let vlen = info & 0xffff;
        let data = at + 12;
        let extra = match kind {
            btf_kind::INT | btf_kind::VAR | btf_kind::DECL_TAG => 4,
            btf_kind::ARRAY => 12,
            btf_kind::STRUCT | btf_kind::UNION | btf_kind::DATASEC | btf_kind::ENUM64 => {
                12 * vlen as usize
            }
            btf_kind::ENUM | btf_kind::FUNC_PROTO => 8 * vlen as usize,
            btf_kind::PTR
            | btf_kind::FWD
            | btf_kind::TYPEDEF
            | btf_kind::VOLATILE
            | btf_kind::CONST
            | btf_kind::RESTRICT
            | btf_kind::FUNC
            | btf_kind::FLOAT
            | btf_kind::TYPE_TAG => 0,
            // A kind this reader does not know has a size it cannot skip.
            _ => return Err(LayoutError::Malformed("unknown type kind")),
        };
        types.push(TypeEntry {
            kind,
            name_off,
            kind_flag: info >> 31 != 0,
            vlen,
            size_or_type,
            data,
        });
        at = data + extra;
    }
    if at != section.len() {
        return Err(LayoutError::Malformed("type section ends inside a type"));
    }
    Ok(types)
}

/// The running kernel's BTF, from [`VMLINUX_BTF`]: parsed once per attach, for every offset
/// the programs need.
pub fn running_kernel_btf() -> Result<Btf, LayoutError> {
    Btf::from_file(Path::new(VMLINUX_BTF))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob type by type, as the kernel would lay it out.
    #[derive(Default)]
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        count: u32,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                strings: vec![0],
                ..Self::default()
            }
        }

        fn string(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        fn push(&mut self, name: &str, kind: u32, flag: bool, vlen: u32, word: u32) -> u32 {
            let name = self.string(name);
            let info = (u32::from(flag) << 31) | (kind << 24) | vlen;
            for value in [name, info, word] {
                self.types.extend_from_slice(&value.to_ne_bytes());
            }
            self.count += 1;
            self.count
        }

        fn int(&mut self, name: &str, bytes: u32) -> u32 {
            let id = self.push(name, btf_kind::INT, false, 0, bytes);
            self.types.extend_from_slice(&(bytes * 8).to_ne_bytes());
            id
        }

        fn ptr(&mut self, to: u32) -> u32 {
            self.push("", btf_kind::PTR, false, 0, to)
        }

        fn fwd(&mut self, name: &str) -> u32 {
            self.push(name, btf_kind::FWD, false, 0, 0)
        }

        /// Members as (name, type, bit offset).
        fn strukt(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.push(name, kind, false, members.len() as u32, size);
            for &(member, type_id, bits) in members {
                let member = self.string(member);
                for value in [member, type_id, bits] {
                    self.types.extend_from_slice(&value.to_ne_bytes());
                }
            }
            id
        }

        fn build(&self) -> Vec<u8> {
            let mut blob = Vec::new();
            blob.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
            blob.extend_from_slice(&[1, 0]);
            let header = [
                24,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ];
            for value in header {
                blob.extend_from_slice(&value.to_ne_bytes());
            }
            blob.extend_from_slice(&self.types);
            blob.extend_from_slice(&self.strings);
            blob
        }
    }

    /// A miniature kernel: every struct on the chains, with members at odd offsets, some
    /// inside anonymous unions and behind typedefs, `const` and an `__rcu` type tag.
    fn kernel() -> Builder {
        use btf_kind::{CONST, STRUCT, TYPE_TAG, TYPEDEF, UNION};
        let mut b = Builder::new();
        let u32_ = b.int("unsigned int", 4);
        let ulong = b.int("long unsigned int", 8);
        let dev_t = b.push("dev_t", TYPEDEF, false, 0, u32_);
        let super_block = b.strukt(
            STRUCT,
            "super_block",
            64,
            &[("s_list", ulong, 0), ("s_dev", dev_t, 128)],
        );
        let super_block_ptr = b.ptr(super_block);
        let inode_fwd = b.fwd("inode");
        let inode_ptr = b.ptr(inode_fwd);
        let anon = b.strukt(UNION, "", 8, &[("i_ino", ulong, 0), ("other", u32_, 0)]);
        b.strukt(
            STRUCT,
            "inode",
            256,
            &[
                ("i_mode", u32_, 0),
                ("i_sb", super_block_ptr, 320),
                ("", anon, 512),
            ],
        );
        let dentry = b.strukt(
            STRUCT,
            "dentry",
            128,
            &[("d_flags", u32_, 0), ("d_inode", inode_ptr, 384)],
        );
        let dentry_ptr = b.ptr(dentry);
        let path = b.strukt(
            STRUCT,
            "path",
            16,
            &[("mnt", ulong, 0), ("dentry", dentry_ptr, 64)],
        );
        let fs = b.strukt(
            STRUCT,
            "fs_struct",
            56,
            &[("users", u32_, 0), ("root", path, 192), ("pwd", path, 320)],
        );
        let fs_ptr = b.ptr(fs);
        let file = b.strukt(
            STRUCT,
            "file",
            200,
            &[("f_count", ulong, 0), ("f_inode", inode_ptr, 256)],
        );
        let file_ptr = b.ptr(file);
        let rcu_file_ptr = b.push("rcu", TYPE_TAG, false, 0, file_ptr);
        let file_ptr_ptr = b.ptr(rcu_file_ptr);
        let fdtable = b.strukt(
            STRUCT,
            "fdtable",
            56,
            &[("max_fds", u32_, 0), ("fd", file_ptr_ptr, 64)],
        );
        let fdtable_ptr = b.ptr(fdtable);
        let files = b.strukt(
            STRUCT,
            "files_struct",
            700,
            &[("count", u32_, 0), ("fdt", fdtable_ptr, 256)],
        );
        let files_ptr = b.ptr(files);
        let const_files_ptr = b.push("", CONST, false, 0, files_ptr);
        b.strukt(
            STRUCT,
            "task_struct",
            9000,
            &[
                ("state", u32_, 0),
                ("nvcsw", ulong, 8 * 2000),
                ("nivcsw", ulong, 8 * 2008),
                ("fs", fs_ptr, 8 * 3000),
                ("files", const_files_ptr, 8 * 3008),
            ],
        );
        b
    }

    #[test]
    fn finds_the_chain_through_typedefs_tags_and_anonymous_unions() {
        let btf = Btf::parse(&kernel().build()).unwrap();
        let offsets = btf.base_dir_offsets().unwrap();
        assert_eq!(
            offsets,
            BaseDirOffsets {
                valid: 1,
                task_files: 3008,
                task_fs: 3000,
                files_fdt: 32,
                fdtable_max_fds: 0,
                fdtable_fd: 8,
                file_inode: 32,
                fs_pwd_dentry: 40 + 8,
                dentry_inode: 48,
                inode_ino: 64,
                inode_sb: 40,
                super_block_dev: 16,
            }
        );
    }

    #[test]
    fn switch_counts_are_a_pair_of_adjacent_longs() {
        let btf = Btf::parse(&kernel().build()).unwrap();
        assert_eq!(btf.task_switch_counts_offset().unwrap(), 2000);
        // Apart, or one of them 4 bytes: the programs' 16-byte read would be wrong.
        for (nivcsw_bits, nivcsw_bytes) in [(8 * 2016, 8), (8 * 2008, 4)] {
            let mut b = Builder::new();
            let ulong = b.int("long unsigned int", 8);
            let other = b.int("unsigned int", nivcsw_bytes);
            b.strukt(
                btf_kind::STRUCT,
                "task_struct",
                4096,
                &[("nvcsw", ulong, 8 * 2000), ("nivcsw", other, nivcsw_bits)],
            );
            let btf = Btf::parse(&b.build()).unwrap();
            assert!(matches!(
                btf.task_switch_counts_offset(),
                Err(LayoutError::UnexpectedType { .. })
            ));
        }
    }

    #[test]
    fn a_member_of_the_wrong_size_or_kind_is_refused() {
        let mut b = Builder::new();
        let ulong = b.int("long unsigned int", 8);
        let sb = b.strukt(btf_kind::STRUCT, "super_block", 8, &[("s_dev", ulong, 0)]);
        b.strukt(btf_kind::STRUCT, "inode", 8, &[("i_sb", sb, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        // An 8-byte `s_dev` would be read as its low half: refused.
        assert!(matches!(
            btf.offset_of("super_block", "s_dev", Expect::Int { bytes: 4 }),
            Err(LayoutError::UnexpectedType { .. })
        ));
        // An embedded struct where a pointer is expected: refused.
        assert!(matches!(
            btf.offset_of("inode", "i_sb", Expect::PointerTo("super_block")),
            Err(LayoutError::UnexpectedType { .. })
        ));
        assert!(matches!(
            btf.base_dir_offsets(),
            Err(LayoutError::NoStruct(_))
        ));
    }

    /// How [`io_uring_kernel`] lays out `io_rename`.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum RenameLayout {
        /// As in Linux 6.1 to 6.18.
        Pointers,
        /// Names kept in an embedded struct (a `struct delayed_filename`), not pointers.
        EmbeddedNames,
        /// Larger than `io_cmd_data`.
        TooLarge,
    }

    /// io_uring's request and command structs, shaped like Linux 6.1 to 6.18's but with the
    /// anonymous union holding `cmd` moved 8 bytes in (it is at 0 there), so a test sees that
    /// its offset is added.
    fn io_uring_kernel(rename: RenameLayout) -> Builder {
        use btf_kind::{CONST, STRUCT, UNION};
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let byte = b.int("unsigned char", 1);
        let char_ = b.int("char", 1);
        let const_char = b.push("", CONST, false, 0, char_);
        let char_ptr = b.ptr(const_char);
        let filename = b.strukt(
            STRUCT,
            "filename",
            32,
            &[("name", char_ptr, 0), ("uptr", char_ptr, 64)],
        );
        let filename_ptr = b.ptr(filename);
        let file_fwd = b.fwd("file");
        let file_ptr = b.ptr(file_fwd);
        let cmd_data = b.strukt(STRUCT, "io_cmd_data", 64, &[("file", file_ptr, 0)]);
        let anon = b.strukt(
            UNION,
            "",
            64,
            &[("file", file_ptr, 0), ("cmd", cmd_data, 0)],
        );
        b.strukt(
            STRUCT,
            "io_kiocb",
            256,
            &[("flags", int, 0), ("", anon, 64), ("opcode", byte, 8 * 72)],
        );
        b.strukt(
            STRUCT,
            "io_unlink",
            24,
            &[
                ("file", file_ptr, 0),
                ("dfd", int, 64),
                ("flags", int, 96),
                ("filename", filename_ptr, 128),
            ],
        );
        let delayed = b.strukt(STRUCT, "delayed_filename", 16, &[("name", filename_ptr, 0)]);
        for strukt in ["io_rename", "io_link"] {
            let (path, size) = match rename {
                RenameLayout::EmbeddedNames if strukt == "io_rename" => (delayed, 56),
                RenameLayout::TooLarge if strukt == "io_rename" => (filename_ptr, 72),
                _ => (filename_ptr, 40),
            };
            b.strukt(
                STRUCT,
                strukt,
                size,
                &[
                    ("file", file_ptr, 0),
                    ("old_dfd", int, 64),
                    ("new_dfd", int, 96),
                    ("oldpath", path, 128),
                    ("newpath", path, 256),
                    ("flags", int, 384),
                ],
            );
        }
        b
    }

    #[test]
    fn io_uring_names_are_found_through_the_command_union() {
        let btf = Btf::parse(&io_uring_kernel(RenameLayout::Pointers).build()).unwrap();
        assert_eq!(
            btf.io_uring_offsets().unwrap(),
            IoUringOffsets {
                valid: 1,
                filename_name: 0,
                unlink: [8 + 8, 8 + 16],
                rename: [8 + 8, 8 + 16, 8 + 12, 8 + 32],
                link: [8 + 8, 8 + 16, 8 + 12, 8 + 32],
            }
        );
    }

    #[test]
    fn io_uring_layouts_the_program_cannot_read_are_refused() {
        let embedded = Btf::parse(&io_uring_kernel(RenameLayout::EmbeddedNames).build()).unwrap();
        assert!(matches!(
            embedded.io_uring_offsets(),
            Err(LayoutError::UnexpectedType { member, .. }) if member == "oldpath"
        ));
        let large = Btf::parse(&io_uring_kernel(RenameLayout::TooLarge).build()).unwrap();
        assert!(matches!(
            large.io_uring_offsets(),
            Err(LayoutError::DoesNotFit { strukt, .. }) if strukt == "io_rename"
        ));
        // Before Linux 6.0 the request had no `cmd`: each op's struct was a union member.
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.strukt(btf_kind::STRUCT, "io_kiocb", 8, &[("opcode", int, 0)]);
        let old = Btf::parse(&b.build()).unwrap();
        assert!(matches!(
            old.io_uring_offsets(),
            Err(LayoutError::NoMember { member, .. }) if member == "cmd"
        ));
    }

    #[test]
    fn malformed_blobs_are_errors() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0]).is_err());
        let mut blob = kernel().build();
        blob.truncate(blob.len() - 3);
        assert!(Btf::parse(&blob).is_err());
    }

    #[test]
    fn running_kernel_has_the_chain_when_it_has_btf() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipped: no {VMLINUX_BTF} on this kernel");
            return;
        }
        let btf = running_kernel_btf().unwrap();
        let offsets = btf.base_dir_offsets().unwrap();
        assert_eq!(offsets.valid, 1);
        // `pwd` follows `root` in `fs_struct` on every kernel since 2.6.
        assert!(offsets.fs_pwd_dentry > 0 && offsets.inode_sb > 0);
        assert!(btf.task_switch_counts_offset().unwrap() > 0);
        // Linux 6.0 to 6.18 (this host's kernel is 6.18) keep io_uring names as
        // `struct filename *` in the request's command struct, after its `struct file *`.
        let io_uring = btf.io_uring_offsets().unwrap();
        eprintln!("io_uring offsets on this kernel: {io_uring:?}");
        assert_eq!(io_uring.valid, 1);
        assert!(io_uring.unlink[0] >= 8 && io_uring.unlink[1] > io_uring.unlink[0]);
    }
}
