"""Reject packages whose compiled library carries its own copy of libstdc++.

Some toolchains (seen: `CXX=/opt/gcc/bin/g++` on the GPU machine) link libstdc++ statically into
the AOTInductor wrapper library. Loaded into a Python process that already has the system
libstdc++, its `std::regex` meets two copies of the locale machinery and the process segfaults in
`aoti_load_package`, whatever LC_ALL says. Such a library lacks libstdc++.so.6 among its needed
shared libraries; checking that right after compiling turns the crash into an error with the fix.

The libraries also ask for an executable stack (GNU_STACK segment RWE: inductor's constants assembly
lacks a .note.GNU-stack section), which glibc 2.41+ and hardened sandboxes refuse to dlopen. Compiling
clears that flag (`clear_executable_stack`); loading refuses a package that still carries it.
"""

from __future__ import annotations

import io
import struct
import zipfile

LIBSTDCXX = "libstdc++.so.6"
_DT_NEEDED, _DT_STRTAB, _SHT_DYNAMIC = 1, 5, 6
_PT_GNU_STACK, _PF_X = 0x6474E551, 1


class ToolchainError(RuntimeError):
    """The C++ toolchain produced a library that cannot be loaded safely."""


def _check_elf(elf: bytes) -> None:
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")


def needed_libraries(elf: bytes) -> list[str]:
    """The DT_NEEDED entries of a 64-bit little-endian ELF shared library."""
    _check_elf(elf)
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind != _SHT_DYNAMIC:
            continue
        strings = sections[link][4]  # the string table the dynamic section links to
        entries = [struct.unpack_from("<qQ", elf, offset + i) for i in range(0, size, entsize or 16)]
        return [
            elf[strings + value : elf.index(b"\0", strings + value)].decode()
            for tag, value in entries
            if tag == _DT_NEEDED
        ]
    return []


def _gnu_stack_flags_offset(elf: bytes) -> int | None:
    """Where the p_flags of the PT_GNU_STACK program header are, None without such a header."""
    _check_elf(elf)
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for header in range(phoff, phoff + phnum * phentsize, phentsize):
        if struct.unpack_from("<I", elf, header)[0] == _PT_GNU_STACK:
            return header + 4
    return None


def executable_stack(elf: bytes) -> bool:
    """Whether the ELF library asks the loader for an executable stack."""
    offset = _gnu_stack_flags_offset(elf)
    # Without a GNU_STACK header the x86-64 loader assumes an executable stack.
    return offset is None or bool(struct.unpack_from("<I", elf, offset)[0] & _PF_X)


def without_executable_stack(elf: bytes) -> bytes:
    """The ELF library with PF_X cleared in its GNU_STACK header (unchanged if it has none).

    The generated code never executes on the stack; the flag only comes from an object that
    does not declare that (inductor's constants assembly).
    """
    offset = _gnu_stack_flags_offset(elf)
    if offset is None:
        return elf
    flags, = struct.unpack_from("<I", elf, offset)
    patched = bytearray(elf)
    struct.pack_into("<I", patched, offset, flags & ~_PF_X)
    return bytes(patched)


def clear_executable_stack(package: bytes) -> bytes:
    """The .pt2 package with every library's stack made non-executable; other members unchanged."""
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    buffer = io.BytesIO()
    # Same names, order, timestamps and compression. torch's 64-byte alignment padding is not kept:
    # the loader extracts the members to files, and the package carries no weights to mmap.
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, data in members:
            archive.writestr(info, without_executable_stack(data) if info.filename.endswith(".so") else data)
    return buffer.getvalue()


def check_package(package: bytes) -> None:
    """Raise ToolchainError if a library in the .pt2 package embeds libstdc++ or wants an executable stack."""
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        for name in archive.namelist():
            if not name.endswith(".so"):
                continue
            library, elf = name.rsplit("/", 1)[-1], archive.read(name)
            if LIBSTDCXX not in needed_libraries(elf):
                raise ToolchainError(
                    f"{library} was linked with a static libstdc++ (it does not load "
                    f"{LIBSTDCXX}); loading it would crash the process. Compile with the system C++ "
                    "compiler: set CXX=/usr/bin/g++ (or inductor option cpp.cxx) and compile again."
                )
            if executable_stack(elf):
                raise ToolchainError(
                    f"{library} requires an executable stack (GNU_STACK segment RWE); glibc 2.41 and "
                    "later, and hardened sandboxes, refuse to load it. Packages compiled by aoti.compile "
                    "have that flag cleared: compile this one again (or pass it through "
                    "aoti.toolchain.clear_executable_stack)."
                )
