"""Reject packages whose compiled library carries its own copy of libstdc++.

Some toolchains (seen: `CXX=/opt/gcc/bin/g++` on the GPU machine) link libstdc++ statically into
the AOTInductor wrapper library. Loaded into a Python process that already has the system
libstdc++, its `std::regex` meets two copies of the locale machinery and the process segfaults in
`aoti_load_package`, whatever LC_ALL says. Such a library lacks libstdc++.so.6 among its needed
shared libraries; checking that right after compiling turns the crash into an error with the fix.
"""

from __future__ import annotations

import io
import struct
import zipfile

LIBSTDCXX = "libstdc++.so.6"
_DT_NEEDED, _DT_STRTAB, _SHT_DYNAMIC = 1, 5, 6


class ToolchainError(RuntimeError):
    """The C++ toolchain produced a library that cannot be loaded safely."""


def needed_libraries(elf: bytes) -> list[str]:
    """The DT_NEEDED entries of a 64-bit little-endian ELF shared library."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
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


def check_package(package: bytes) -> None:
    """Raise ToolchainError if a C++ library in the .pt2 package embeds libstdc++."""
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        for name in archive.namelist():
            if name.endswith(".so") and LIBSTDCXX not in needed_libraries(archive.read(name)):
                raise ToolchainError(
                    f"{name.rsplit('/', 1)[-1]} was linked with a static libstdc++ (it does not load "
                    f"{LIBSTDCXX}); loading it would crash the process. Compile with the system C++ "
                    "compiler: set CXX=/usr/bin/g++ (or inductor option cpp.cxx) and compile again."
                )
