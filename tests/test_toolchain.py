"""Libraries that would not load safely (own static libstdc++, executable stack) are refused before
AOTInductor loads them; compiling clears the executable-stack flag."""

import ctypes
import io
import shutil
import subprocess
import zipfile

import pytest

import aoti
from aoti.toolchain import (
    LIBSTDCXX,
    check_package,
    clear_executable_stack,
    executable_stack,
    needed_libraries,
    without_executable_stack,
)

SOURCE = '#include <regex>\nextern "C" int ok(const char* s) { return std::regex_match(s, std::regex("cuda:[0-9]+")); }\n'


def build_library(tmp_path, *flags) -> bytes:
    (tmp_path / "lib.cpp").write_text(SOURCE)
    out = tmp_path / "lib.so"
    subprocess.run(["g++", "-shared", "-fPIC", *flags, str(tmp_path / "lib.cpp"), "-o", str(out)], check=True)
    return out.read_bytes()


def as_package(library: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/data/aotinductor/model/abc.wrapper.so", library)
    return buffer.getvalue()


pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def test_dynamic_libstdcxx_passes(tmp_path):
    library = build_library(tmp_path)
    assert LIBSTDCXX in needed_libraries(library)
    check_package(as_package(library))


def test_static_libstdcxx_is_refused_with_the_fix(tmp_path):
    library = build_library(tmp_path, "-static-libstdc++")
    assert LIBSTDCXX not in needed_libraries(library)
    with pytest.raises(aoti.ToolchainError, match="CXX=/usr/bin/g\\+\\+"):
        check_package(as_package(library))


def test_compiled_program_refuses_to_load_such_a_package(tmp_path, compiled_program):
    bad = aoti.CompiledProgram(as_package(build_library(tmp_path, "-static-libstdc++")), compiled_program.signature, ())
    with pytest.raises(aoti.ToolchainError):
        bad.load({})


def libraries(package: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        return {name: archive.read(name) for name in archive.namelist() if name.endswith(".so")}


def stack_flags(path) -> str:
    """The GNU_STACK flags as readelf shows them (RW, RWE), or from our parser without readelf."""
    if shutil.which("readelf") is None:
        return "RWE" if executable_stack(path.read_bytes()) else "RW"
    headers = subprocess.run(["readelf", "-lW", str(path)], check=True, capture_output=True, text=True).stdout
    fields = next(line.split() for line in headers.splitlines() if "GNU_STACK" in line)
    return "".join(fields[6:-1])  # between the memory size and the alignment: "RW" or "RWE"


def test_executable_stack_is_cleared_and_the_library_still_works(tmp_path):
    library = build_library(tmp_path, "-Wl,-z,execstack")
    assert executable_stack(library)
    assert not executable_stack(build_library(tmp_path, "-Wl,-z,noexecstack"))
    package = as_package(library)
    cleared = clear_executable_stack(package)
    (name, fixed), = libraries(cleared).items()
    assert name == "model/data/aotinductor/model/abc.wrapper.so"
    path = tmp_path / "cleared.so"
    path.write_bytes(fixed)
    assert stack_flags(path) == "RW"
    assert not executable_stack(fixed) and without_executable_stack(fixed) == fixed
    assert sum(a != b for a, b in zip(library, fixed)) == 1 and len(library) == len(fixed)  # only p_flags
    check_package(cleared)
    ok = ctypes.CDLL(str(path)).ok
    ok.argtypes = [ctypes.c_char_p]
    assert ok(b"cuda:0") == 1 and ok(b"cpu") == 0


def test_clearing_keeps_the_other_members(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/archive_format", "pt2")
        archive.writestr("model/data/aotinductor/model/abc.wrapper.so", build_library(tmp_path, "-Wl,-z,execstack"))
        archive.writestr("model/data/aotinductor/model/abc.wrapper.cpp", "int x;\n" * 100, zipfile.ZIP_DEFLATED)
    before = zipfile.ZipFile(buffer)
    after = zipfile.ZipFile(io.BytesIO(clear_executable_stack(buffer.getvalue())))
    assert [(i.filename, i.compress_type) for i in after.infolist()] == [
        (i.filename, i.compress_type) for i in before.infolist()
    ]
    for name in ("model/archive_format", "model/data/aotinductor/model/abc.wrapper.cpp"):
        assert after.read(name) == before.read(name)


def test_executable_stack_is_refused(tmp_path):
    with pytest.raises(aoti.ToolchainError, match=r"abc\.wrapper\.so requires an executable stack.*glibc 2\.41"):
        check_package(as_package(build_library(tmp_path, "-Wl,-z,execstack")))


def test_compiled_program_has_no_executable_stack(compiled_program):
    found = libraries(compiled_program.package)
    assert found and not any(executable_stack(library) for library in found.values())
    check_package(compiled_program.package)


def test_compiled_program_refuses_to_load_an_executable_stack(tmp_path, compiled_program):
    bad = aoti.CompiledProgram(as_package(build_library(tmp_path, "-Wl,-z,execstack")), compiled_program.signature, ())
    with pytest.raises(aoti.ToolchainError, match="executable stack"):
        bad.load({})


def test_not_an_elf_file():
    with pytest.raises(ValueError, match="not a 64-bit"):
        needed_libraries(b"#!/bin/sh\n")
    with pytest.raises(ValueError, match="not a 64-bit"):
        executable_stack(b"#!/bin/sh\n")
