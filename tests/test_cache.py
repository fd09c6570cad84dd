"""The compiled-program cache: hits, misses that say why, damaged entries, concurrency, the Hub."""

import hashlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import zipfile

import huggingface_hub
import pytest

import aoti
from aoti import signing
from aoti.cache import ENTRY_FILE, key_of
from aoti.toolchain import _gnu_stack_flags_offset
from conftest import ROOT

FINGERPRINT = {"model": "tiny", "torch": "2.13.0", "gpu": "none", "static_sizes": [[256, 256]]}


def test_stored_programs_load_back(compiled_program, tmp_path):
    cache = aoti.ProgramCache(tmp_path)
    entry = cache.store(FINGERPRINT, {"transformer": [compiled_program], "Block": [compiled_program, compiled_program]})
    assert entry.name == key_of(FINGERPRINT)
    assert cache.load(dict(FINGERPRINT)) == {"transformer": [compiled_program], "Block": [compiled_program, compiled_program]}
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]  # no staging folders left


def test_group_names_must_be_safe_folder_names(compiled_program, tmp_path):
    with pytest.raises(ValueError, match="identifiers"):
        aoti.ProgramCache(tmp_path).store(FINGERPRINT, {"../escape": [compiled_program]})
    assert list(tmp_path.iterdir()) == []  # the staging folder is gone too


def test_a_miss_says_which_fields_differ(compiled_program, tmp_path, caplog):
    cache = aoti.ProgramCache(tmp_path)
    cache.store(FINGERPRINT, {"transformer": [compiled_program]})
    with caplog.at_level(logging.INFO, logger="aoti.cache"):
        assert cache.load({**FINGERPRINT, "torch": "2.14.0", "gpu": "NVIDIA H200"}) is None
    assert "differs in: gpu, torch" in caplog.text
    nested = aoti.ProgramCache(tmp_path / "nested")
    nested.store({**FINGERPRINT, "options": {"regional": True, "fp8": True}}, {"transformer": [compiled_program]})
    with caplog.at_level(logging.INFO, logger="aoti.cache"):
        assert nested.load({**FINGERPRINT, "options": {"regional": False, "fp8": True}}) is None
    assert "differs in: options.regional" in caplog.text


def test_every_compiler_relevant_option_is_in_the_key():
    """The key's options come from the config dataclass itself: a new option cannot be left out by hand; those the
    plan decides are recorded as the plan decided them."""
    import dataclasses

    import optimization
    from config import OptimizationConfig
    from plan import Plan

    base = OptimizationConfig()
    plan = Plan.assumed(base, "row")
    key = optimization.compiled_options(base, plan)
    fields = {f.name for f in dataclasses.fields(OptimizationConfig)}
    assert set(key) == {"plan"} | fields - optimization.SERVING_OPTIONS - optimization.PLANNED_OPTIONS
    changed = {"dynamic": False, "regional": False, "fuse_qkv": True, "static_sizes": "512x512",
               "inductor_configs": {"epilogue_fusion": True}}
    for name, value in changed.items():
        other = optimization.compiled_options(dataclasses.replace(base, **{name: value}), plan)
        assert other[name] != key[name], name
    for name, value in {"aot": False, "cuda_graphs": False, "cache": False, "cache_dir": "/x", "hub_repo": "a/b"}.items():
        assert optimization.compiled_options(dataclasses.replace(base, **{name: value}), plan) == key
    # What the GPU decided, not what was asked for: FP8 off on a card without it, the backend that could be set up.
    for decided in (Plan.assumed(base, None), Plan.assumed(base, "tensor"), Plan.assumed(base, "row", "_flash_3_hub")):
        assert optimization.compiled_options(base, decided)["plan"] != key["plan"]
    assert optimization.compiled_options(dataclasses.replace(base, fail_probes="all"), plan) == key  # only through the plan


def flip_package_byte(entry):
    package = entry / "transformer-0" / "program.pt2"
    data = bytearray(package.read_bytes())
    data[100] ^= 1
    package.write_bytes(bytes(data))


def truncate_package(entry):
    package = entry / "transformer-0" / "program.pt2"
    package.write_bytes(package.read_bytes()[:50])


def swap_fingerprint(entry):
    manifest = json.loads((entry / ENTRY_FILE).read_text())
    manifest["fingerprint"]["gpu"] = "another card"  # an entry made for another card, renamed into place
    (entry / ENTRY_FILE).write_text(json.dumps(manifest))


def break_entry_json(entry):
    (entry / ENTRY_FILE).write_text("{")


def drop_a_program(entry):
    shutil.rmtree(entry / "transformer-0")


def no_programs(entry):
    """An entry that lists no programs: served, it would fail only when the programs are applied."""
    manifest = json.loads((entry / ENTRY_FILE).read_text())
    manifest["programs"] = {}
    (entry / ENTRY_FILE).write_text(json.dumps(manifest))


def a_count_that_is_text(entry):
    manifest = json.loads((entry / ENTRY_FILE).read_text())
    manifest["programs"] = {"transformer": "1"}
    (entry / ENTRY_FILE).write_text(json.dumps(manifest))


def a_group_outside_the_entry(entry):
    """A group name is part of a path: `../x` would load a program from beside the entry."""
    shutil.copytree(entry / "transformer-0", entry.parent / "x-0")
    manifest = json.loads((entry / ENTRY_FILE).read_text())
    manifest["programs"] = {"../x": 1}
    (entry / ENTRY_FILE).write_text(json.dumps(manifest))


def weight_names_that_are_not_names(entry):
    manifest = json.loads((entry / "transformer-0" / "manifest.json").read_text())
    manifest["weight_names"] = [1, 2]
    (entry / "transformer-0" / "manifest.json").write_text(json.dumps(manifest))


def a_file_in_its_place(entry):
    shutil.rmtree(entry)
    entry.write_text("not an entry")


def executable_stack(entry):
    """An intact entry made before compiling cleared the executable-stack flag: newer glibc refuses to load it."""
    program = entry / "transformer-0"
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO((program / "program.pt2").read_bytes())) as archive, zipfile.ZipFile(out, "w") as copy:
        for info in archive.infolist():
            data = bytearray(archive.read(info))
            if info.filename.endswith(".so"):
                offset = _gnu_stack_flags_offset(bytes(data))
                data[offset] |= 1  # PF_X
            copy.writestr(info, bytes(data))
    (program / "program.pt2").write_bytes(out.getvalue())
    manifest = json.loads((program / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(out.getvalue()).hexdigest()
    (program / "manifest.json").write_text(json.dumps(manifest))


DAMAGES = [flip_package_byte, truncate_package, swap_fingerprint, break_entry_json, drop_a_program, executable_stack,
           no_programs, a_count_that_is_text, a_group_outside_the_entry, weight_names_that_are_not_names,
           a_file_in_its_place]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_entry_is_rejected_removed_and_replaceable(compiled_program, tmp_path, caplog, damage):
    cache = aoti.ProgramCache(tmp_path)
    entry = cache.store(FINGERPRINT, {"transformer": [compiled_program]})
    damage(entry)
    with caplog.at_level(logging.WARNING, logger="aoti.cache"):
        assert cache.load(FINGERPRINT) is None
    assert "rejected the cached program" in caplog.text and not entry.exists()
    cache.store(FINGERPRINT, {"transformer": [compiled_program]})
    assert cache.load(FINGERPRINT) == {"transformer": [compiled_program]}


def test_a_start_after_a_damaged_entry_serves_what_it_builds_and_stores_it(compiled_program, tmp_path, caplog):
    """What optimization.load_or_build does at every start: a malformed entry costs one compile, not the start."""
    cache = aoti.ProgramCache(tmp_path)
    no_programs(cache.store(FINGERPRINT, {"transformer": [compiled_program]}))
    with caplog.at_level(logging.WARNING, logger="aoti.cache"):
        assert cache.load(FINGERPRINT) is None
        programs, shared = cache.build_once(FINGERPRINT, lambda: {"transformer": [compiled_program]})
    assert programs == {"transformer": [compiled_program]} and not shared
    assert "rejected the cached program" in caplog.text
    assert aoti.ProgramCache(tmp_path).load(FINGERPRINT) == {"transformer": [compiled_program]}  # the next start loads


@pytest.mark.parametrize("manifest", [[], {"fingerprint": 3}, {"fingerprint": ["gpu"]}])
def test_a_malformed_entry_of_another_setup_does_not_break_a_miss(compiled_program, tmp_path, caplog, manifest):
    """A miss compares the fingerprint with every cached one to say why it missed: a malformed one is skipped."""
    cache = aoti.ProgramCache(tmp_path)
    cache.store({**FINGERPRINT, "gpu": "NVIDIA H200"}, {"transformer": [compiled_program]})
    (tmp_path / "0123456789abcdef0123").mkdir()
    (tmp_path / "0123456789abcdef0123" / ENTRY_FILE).write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="aoti.cache"):
        assert cache.load(FINGERPRINT) is None
    assert "differs in: gpu" in caplog.text


def test_an_unreadable_cache_folder_is_a_warning_and_the_programs_are_served(compiled_program, tmp_path, caplog,
                                                                            monkeypatch):
    """A folder this process may not search (mode 000, another user's): looking an entry up fails with EACCES."""
    import errno
    import pathlib

    from aoti import cache as cache_module

    folder = tmp_path / "cache"
    folder.mkdir()
    if os.geteuid() == 0:  # root searches any folder: the error is raised where the OS would raise it
        stat = pathlib.Path.stat

        def no_search(path, *args, **kwargs):
            if path.parent == folder:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return stat(path, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "stat", no_search)
        monkeypatch.setattr(cache_module, "open", lambda *a, **k: (_ for _ in ()).throw(PermissionError(errno.EACCES, "no")),
                            raising=False)  # the lock file
    else:
        folder.chmod(0)
    try:
        cache = aoti.ProgramCache(folder)
        with caplog.at_level(logging.WARNING, logger="aoti.cache"):
            assert cache.load(FINGERPRINT) is None
            programs, shared = cache.build_once(FINGERPRINT, lambda: {"transformer": [compiled_program]})
    finally:
        folder.chmod(0o700)
    assert programs == {"transformer": [compiled_program]} and not shared
    assert "compiling without it" in caplog.text


def store_in_child(folder, program):
    aoti.ProgramCache(folder).store(FINGERPRINT, {"transformer": [program]})


def test_concurrent_writers_leave_one_valid_entry(compiled_program, tmp_path):
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=store_in_child, args=(tmp_path, compiled_program)) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    assert aoti.ProgramCache(tmp_path).load(FINGERPRINT) == {"transformer": [compiled_program]}
    assert [p.name for p in tmp_path.iterdir()] == [key_of(FINGERPRINT)]


def load_or_build_in_child(folder, program, builds, results):
    def build():
        with open(builds, "a") as f:
            f.write("built\n")
        time.sleep(2)  # a compile: long enough for the other process to miss and wait
        return {"transformer": [program]}

    cache = aoti.ProgramCache(folder)
    loaded = cache.load(FINGERPRINT)
    programs, cached = (loaded, True) if loaded is not None else cache.build_once(FINGERPRINT, build)
    results.put((programs == {"transformer": [program]}, cached))


@pytest.mark.parametrize("failure", ["full disk", "read-only folder", "unwritable folder", "no locks", "bad signing key"])
def test_a_cache_that_cannot_be_written_is_a_warning_and_the_programs_are_served(compiled_program, tmp_path, caplog,
                                                                                 monkeypatch, failure):
    """The cache is optional: a full disk, a folder the app may not write (tests run as root, where chmod blocks
    nothing: the error is raised where the OS would raise it) or a filesystem without locks never stops a start."""
    import errno

    from aoti import artifact
    from aoti import cache as cache_module

    cache = aoti.ProgramCache(tmp_path / "cache")
    if failure == "full disk":
        monkeypatch.setattr(artifact, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    elif failure == "read-only folder":  # made writable by an earlier start, which left its lock file
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / f".{key_of(FINGERPRINT)}.lock").touch()
        (tmp_path / "cache").chmod(0o555)
        if os.geteuid() == 0:
            monkeypatch.setattr(cache_module.tempfile, "mkdtemp",
                                lambda *a, **k: (_ for _ in ()).throw(PermissionError(errno.EACCES, "Permission denied")))
    elif failure == "bad signing key":  # AOTI_HUB_SIGNING_KEY set to something that is no key
        cache = aoti.ProgramCache(tmp_path / "cache", signing_key="not a key")
    elif failure == "unwritable folder":
        cache = aoti.ProgramCache(tmp_path / "file" / "cache")
        (tmp_path / "file").write_text("a file where the folder's parent should be")  # mkdir: NotADirectoryError
    else:
        def no_locks(file, operation):
            raise OSError(errno.ENOLCK, "No locks available")

        monkeypatch.setattr(cache_module.fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="aoti.cache"):
        programs, shared = cache.build_once(FINGERPRINT, lambda: {"transformer": [compiled_program]})
    if failure == "read-only folder":
        (tmp_path / "cache").chmod(0o755)
    assert programs == {"transformer": [compiled_program]} and not shared
    assert "compiling without it" in caplog.text or "serving it from memory" in caplog.text, caplog.text
    if failure in ("full disk", "read-only folder", "bad signing key"):
        assert [p.name for p in (tmp_path / "cache").iterdir()] == [f".{key_of(FINGERPRINT)}.lock"]  # no half entry


def test_a_change_of_the_compiled_code_or_the_host_cpu_misses_naming_it(compiled_program, tmp_path, monkeypatch,
                                                                        caplog):
    """A program compiled by other code, or for a CPU with other instructions (inductor's C++ is built with
    -march=native), is compiled again, and the miss says which."""
    import torch

    import compile_options
    import optimization
    from aoti import cache as cache_module
    from conftest import load_transformer, tiny_config
    from plan import Plan

    root = tmp_path / "project"
    (root / "aoti").mkdir(parents=True)
    (root / "aoti" / "stage.py").write_text("x = 1\n")
    (root / "vae.py").write_text("y = 2\n")
    cpu = "fpu sse2 avx2"
    monkeypatch.setattr(cache_module.Path, "read_text", lambda self, *args, read=cache_module.Path.read_text, **kwargs:
                        f"flags\t\t: {cpu}" if str(self) == "/proc/cpuinfo" else read(self, *args, **kwargs))

    def fingerprint():
        return {**FINGERPRINT, "code": cache_module.source_digest(root, ["aoti", "vae.py"]), **cache_module.environment("cpu")}

    cache = aoti.ProgramCache(tmp_path / "cache")
    cache.store(fingerprint(), {"transformer": [compiled_program]})
    assert cache.load(fingerprint()) == {"transformer": [compiled_program]}
    (root / "aoti" / "stage.py").write_text("x = 2\n")
    with caplog.at_level(logging.INFO, logger="aoti.cache"):
        assert cache.load(fingerprint()) is None
    assert "differs in: code)" in caplog.text
    (root / "aoti" / "stage.py").write_text("x = 1\n")
    cpu += " avx512f"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="aoti.cache"):
        assert cache.load(fingerprint()) is None
    assert "differs in: host_cpu)" in caplog.text
    # GPU builds record it too: there it is the host wrapper that is built for this CPU.
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (9, 0))
    assert cache_module.environment("cuda")["host_cpu"] == cache_module.host_cpu()
    # And the real keys hold both: the project's compiled code (each path there) and the environment.
    assert all((ROOT / path).exists() for path in compile_options.COMPILED_CODE)
    config = tiny_config()
    key = optimization.fingerprint(load_transformer(), config, {}, Plan.assumed(config, None))
    assert key["code"] == compile_options.code_version() and key["host_cpu"] == cache_module.host_cpu()


def test_processes_that_miss_together_compile_once(compiled_program, tmp_path):
    """Two replicas starting at once on one cache folder: one compiles, the other waits and loads its entry."""
    context = multiprocessing.get_context("fork")
    results, builds = context.Queue(), tmp_path / "builds"
    racers = [context.Process(target=load_or_build_in_child, args=(tmp_path / "cache", compiled_program, builds, results))
              for _ in range(2)]
    for racer in racers:
        racer.start()
    outcomes = sorted(results.get(timeout=120) for _ in racers)
    for racer in racers:
        racer.join(timeout=30)
        assert racer.exitcode == 0
    assert builds.read_text() == "built\n"
    assert outcomes == [(True, False), (True, True)]  # both got the programs; exactly one compiled them


@pytest.fixture()
def local_hub(tmp_path, monkeypatch):
    """A folder standing in for a Hub model repo: the real pull/push code runs against it."""
    hub = tmp_path / "hub"
    hub.mkdir()

    def snapshot_download(repo_id, allow_patterns, local_dir, token=None, revision=None):
        prefix = allow_patterns[0].removesuffix("/*")
        if (hub / repo_id / prefix).exists():
            shutil.copytree(hub / repo_id / prefix, os.path.join(local_dir, prefix))
        return str(local_dir)

    class HfApi:
        def __init__(self, token=None):
            assert token == "write-token"

        def create_repo(self, repo_id, private, exist_ok):
            (hub / repo_id).mkdir(parents=True, exist_ok=True)

        def upload_folder(self, repo_id, folder_path, path_in_repo, commit_message):
            shutil.copytree(folder_path, hub / repo_id / path_in_repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", HfApi)
    return hub


KEYS = signing.new_key_pair()


def test_programs_travel_through_the_hub_repo_signed(compiled_program, tmp_path, local_hub):
    public, private = KEYS
    machine_a = aoti.ProgramCache(tmp_path / "machine-a", "me/flux-aoti", signing_key=private, push_token="write-token")
    machine_a.store(FINGERPRINT, {"transformer": [compiled_program]})
    assert (local_hub / "me/flux-aoti" / key_of(FINGERPRINT) / signing.SIGNATURE_FILE).exists()
    other_machine = aoti.ProgramCache(tmp_path / "machine-b", "me/flux-aoti", token="read-token", public_key=public)
    assert other_machine.load(FINGERPRINT) == {"transformer": [compiled_program]}
    assert (tmp_path / "machine-b" / key_of(FINGERPRINT)).is_dir()  # kept locally for the next start


def test_a_planted_or_unsigned_program_from_the_hub_is_never_loaded(compiled_program, tmp_path, local_hub, caplog):
    """Whoever can write the repo can replace a library and its checksum; not the signature of a key they lack."""
    public, private = KEYS
    aoti.ProgramCache(tmp_path / "builder", "me/flux-aoti", signing_key=private, push_token="write-token").store(
        FINGERPRINT, {"transformer": [compiled_program]})
    remote = local_hub / "me/flux-aoti" / key_of(FINGERPRINT)
    library = next(path for path in remote.rglob("*") if path.is_file() and path.name not in (ENTRY_FILE, signing.SIGNATURE_FILE))
    library.write_bytes(library.read_bytes() + b"planted")  # the attacker also fixes any checksum beside it
    with caplog.at_level(logging.WARNING, logger="aoti.cache"):
        assert aoti.ProgramCache(tmp_path / "space", "me/flux-aoti", public_key=public).load(FINGERPRINT) is None
    assert "not signed by the Space's key, or changed since it was signed" in caplog.text
    assert not (tmp_path / "space" / key_of(FINGERPRINT)).exists()
    (remote / signing.SIGNATURE_FILE).unlink()  # unsigned
    assert aoti.ProgramCache(tmp_path / "space", "me/flux-aoti", public_key=public).load(FINGERPRINT) is None
    assert "has no readable signature" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aoti.cache"):  # neither pinned nor a key: the head is not trusted
        assert aoti.ProgramCache(tmp_path / "space", "me/flux-aoti").load(FINGERPRINT) is None
    assert "pin AOTI_HUB_REVISION to a commit or set AOTI_HUB_PUBLIC_KEY" in caplog.text


def test_a_pinned_revision_is_what_is_fetched(compiled_program, tmp_path, local_hub, monkeypatch):
    asked = []
    fetch = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: asked.append(k["revision"]) or fetch(*a, **k))
    aoti.ProgramCache(tmp_path / "builder", "me/flux-aoti", push_token="write-token").store(
        FINGERPRINT, {"transformer": [compiled_program]})
    pinned = aoti.ProgramCache(tmp_path / "space", "me/flux-aoti", hub_revision="0123abcd")
    assert pinned.load(FINGERPRINT) == {"transformer": [compiled_program]} and asked == ["0123abcd"]


def test_keys_are_checked_and_a_signature_covers_every_file(tmp_path):
    public, private = KEYS
    entry = tmp_path / "entry"
    (entry / "group-0").mkdir(parents=True)
    (entry / ENTRY_FILE).write_text("{}")
    (entry / "group-0" / "program.pt2").write_bytes(b"code")
    signing.sign(entry, private)
    signing.verify(entry, public)
    (entry / "group-0" / "extra.so").write_bytes(b"more code")  # a file added after signing
    with pytest.raises(signing.SignatureError):
        signing.verify(entry, public)
    with pytest.raises(signing.SignatureError):
        signing.verify(entry, signing.new_key_pair()[0])
    with pytest.raises(ValueError, match="32 bytes in base64"):
        signing.verify(entry, "not a key")


def test_an_unreachable_hub_means_compiling_locally(tmp_path, monkeypatch, caplog):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with caplog.at_level(logging.WARNING, logger="aoti.cache"):
        assert aoti.ProgramCache(tmp_path, "me/flux-aoti", hub_revision="0123abcd").load(FINGERPRINT) is None
    assert "could not pull" in caplog.text


STARTUP = "import app; print('CACHED', app.report.cached, 'STATUS', app.STATUS)"


def test_the_second_start_of_the_app_loads_instead_of_compiling(app):
    assert not app.report.cached  # the first start, in this test process, compiled and stored
    second = subprocess.run([sys.executable, "-c", STARTUP], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "CACHED True" in second.stdout and "loaded from cache in" in second.stdout
    assert "no compiled program cached" not in second.stderr
