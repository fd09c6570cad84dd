"""A library linked with its own static libstdc++ is refused before AOTInductor loads it."""

import io
import shutil
import subprocess
import zipfile

import pytest

import aoti
from aoti.toolchain import LIBSTDCXX, check_package, needed_libraries

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


def test_not_an_elf_file():
    with pytest.raises(ValueError, match="not a 64-bit"):
        needed_libraries(b"#!/bin/sh\n")
