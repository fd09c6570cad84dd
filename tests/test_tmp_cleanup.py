"""Extracted packages do not pile up in the temp dir, as on ZeroGPU.

The C++ loader extracts a package into an `aotinductor_*` folder that only its destructor removes,
and ZeroGPU's forked workers end without running it. Each process extracts into its own
`aoti-pid-<pid>-<random>` folder instead (mkdtemp: a name no one else can take first), removed at its exit
or, if it was killed, by the next process that loads a program.
"""

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

import aoti
from aoti.program import PROCESS_FOLDER_PREFIX, remove_dead_process_folders
from aoti.weights import named_weights
from conftest import ROOT, TEST_DIR, load_transformer, rel_error

TMP = Path(os.environ["TMPDIR"])  # conftest's TEST_DIR / "tmp"


def folder_of(pid: int) -> Path:
    """`pid`'s extraction folder, or where none is."""
    found = sorted(TMP.glob(f"{PROCESS_FOLDER_PREFIX}{pid}-*"))
    assert len(found) <= 1, found
    return found[0] if found else TMP / f"{PROCESS_FOLDER_PREFIX}{pid}-none"


def extraction_folders() -> set[str]:
    """Extraction folders in the temp dir, but this process's own (it may hold runners until it exits)."""
    return {p.name for p in TMP.glob("aotinductor_*")} | {
        p.name for p in TMP.glob(f"{PROCESS_FOLDER_PREFIX}*") if p != folder_of(os.getpid())
    }


def extracted_by(pid: int) -> list[str]:
    return sorted(p.name for p in folder_of(pid).glob("aotinductor_*"))


def run_and_report(transformer, kwargs, queue):
    torch.set_num_threads(1)  # the test process already ran OpenMP code; libgomp teams do not survive fork
    with torch.no_grad():
        out = transformer(**kwargs)[0].numpy()
    queue.put((os.getpid(), extracted_by(os.getpid()), out))  # exits with its runner still loaded, as on ZeroGPU


def load_and_hang(transformer, kwargs, loaded):
    torch.set_num_threads(1)
    with torch.no_grad():
        transformer(**kwargs)
    loaded.set()
    time.sleep(600)  # killed before


def load_wait_and_run(transformer, kwargs, ready, go, queue):
    torch.set_num_threads(1)
    with torch.no_grad():
        transformer(**kwargs)
        ready.set()
        go.wait(120)
        queue.put(transformer(**kwargs)[0].numpy())


def start(target, *args):
    worker = multiprocessing.get_context("fork").Process(target=target, args=args, daemon=True)  # ZeroGPU's kind
    worker.start()
    return worker


def run_worker(transformer, kwargs, queue) -> tuple[int, list[str], torch.Tensor]:
    worker = start(run_and_report, transformer, kwargs, queue)
    pid, extracted, out = queue.get(timeout=120)
    worker.join(timeout=60)
    assert worker.exitcode == 0
    return pid, extracted, torch.from_numpy(out)


def test_the_temp_dir_is_the_tests_own():
    assert TMP == TEST_DIR / "tmp"


def test_forked_workers_leave_no_extracted_package(compiled_program, call_for):
    transformer = load_transformer()
    aoti.apply(transformer, compiled_program)
    eager = load_transformer()
    queue = multiprocessing.get_context("fork").Queue()
    before = extraction_folders()
    for seed in range(3):  # one worker per request
        kwargs = call_for(512, 512, seed=seed)
        pid, extracted, out = run_worker(transformer, kwargs, queue)
        assert len(extracted) == 1  # extracted into its own folder while it ran
        assert not folder_of(pid).exists()
        with torch.no_grad():
            assert rel_error(out, eager(**kwargs)[0]) < 1e-5
    assert extraction_folders() == before


def test_a_killed_workers_folder_is_removed_by_the_next_process_that_loads(compiled_program, call_for):
    transformer = load_transformer()
    aoti.apply(transformer, compiled_program)
    context = multiprocessing.get_context("fork")
    # An event, not the queue: a process killed right after a put may still hold the queue's lock.
    loaded, queue = context.Event(), context.Queue()
    before = extraction_folders()
    killed = start(load_and_hang, transformer, call_for(256, 256), loaded)
    assert loaded.wait(120)
    pid = killed.pid
    os.kill(pid, signal.SIGKILL)
    killed.join(timeout=60)  # reaped: a zombie would still count as alive
    assert killed.exitcode == -signal.SIGKILL
    assert len(extracted_by(pid)) == 1  # left behind
    run_worker(transformer, call_for(256, 256), queue)
    assert not folder_of(pid).exists()
    assert extraction_folders() == before


def test_a_live_workers_folder_is_kept_when_another_process_sweeps(compiled_program, call_for):
    transformer = load_transformer()
    aoti.apply(transformer, compiled_program)
    context = multiprocessing.get_context("fork")
    ready, go, queue = context.Event(), context.Event(), context.Queue()
    before = extraction_folders()
    kwargs = call_for(384, 256, seed=3)
    live = start(load_wait_and_run, transformer, kwargs, ready, go, queue)
    assert ready.wait(120)
    extracted = extracted_by(live.pid)
    assert len(extracted) == 1
    run_worker(transformer, call_for(256, 256), queue)  # loads, so it sweeps
    assert extracted_by(live.pid) == extracted
    go.set()
    out = torch.from_numpy(queue.get(timeout=120))
    live.join(timeout=60)
    assert live.exitcode == 0
    with torch.no_grad():
        assert rel_error(out, load_transformer()(**kwargs)[0]) < 1e-5
    assert extraction_folders() == before


CHILD = """
import os, sys
import torch
from diffusers import FluxTransformer2DModel
sys.path.insert(0, {root!r})
import aoti
from config import EMBEDDED_MODEL

transformer = FluxTransformer2DModel.from_pretrained(EMBEDDED_MODEL, subfolder="transformer", dtype=torch.float32)
aoti.apply(transformer.eval(), aoti.load({artifact!r}))
with torch.no_grad():
    transformer(**torch.load({kwargs!r}))
import glob
[folder] = glob.glob(os.path.join({tmp!r}, "{prefix}%d-*" % os.getpid()))
print(os.getpid(), len([n for n in os.listdir(folder) if n.startswith("aotinductor_")]))
"""  # exits with its runner loaded: the loader's destructor may never run before the process ends


def test_a_process_removes_its_folder_at_a_normal_exit(compiled_program, call_for, tmp_path):
    artifact = aoti.save(compiled_program, tmp_path / "program")
    torch.save(call_for(256, 256), tmp_path / "kwargs.pt")
    code = CHILD.format(
        root=str(ROOT), artifact=str(artifact), kwargs=str(tmp_path / "kwargs.pt"), tmp=str(TMP),
        prefix=PROCESS_FOLDER_PREFIX,
    )
    before = extraction_folders()
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    pid, extracted = map(int, done.stdout.split()[-2:])
    assert extracted == 1
    assert not folder_of(pid).exists()
    assert extraction_folders() == before


def test_loading_follows_and_restores_tmpdir(compiled_program, monkeypatch):
    weights = named_weights(load_transformer())
    before = set(extracted_by(os.getpid()))
    monkeypatch.delenv("TMPDIR")
    monkeypatch.setattr(tempfile, "tempdir", str(TMP))  # then Python's temp dir is the base
    runner = compiled_program.load(weights)
    assert "TMPDIR" not in os.environ
    assert len(set(extracted_by(os.getpid())) - before) == 1
    elsewhere = TMP / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("TMPDIR", str(elsewhere))
    other = compiled_program.load(weights)
    assert os.environ["TMPDIR"] == str(elsewhere)
    assert len(list(elsewhere.glob(f"{PROCESS_FOLDER_PREFIX}{os.getpid()}-*/aotinductor_*"))) == 1
    del runner, other  # their destructors remove their extractions
    assert set(extracted_by(os.getpid())) <= before


def test_only_folders_of_dead_processes_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    names = [
        f"{PROCESS_FOLDER_PREFIX}{int(dead.stdout)}-k2x9",  # finished and reaped
        f"{PROCESS_FOLDER_PREFIX}{int(dead.stdout)}",  # the same, as older versions named it
        f"{PROCESS_FOLDER_PREFIX}{os.getpid()}-a1b2",  # this process
        f"{PROCESS_FOLDER_PREFIX}1",  # init: alive (PermissionError for a non-root user)
        f"{PROCESS_FOLDER_PREFIX}0",  # no process's
        f"{PROCESS_FOLDER_PREFIX}x",
        "aoti-12345678",  # a tempfile.TemporaryDirectory(prefix="aoti-") whose random part is digits
    ]
    for name in names:
        (tmp_path / name / "aotinductor_x").mkdir(parents=True)
    remove_dead_process_folders(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


def test_a_dead_processs_link_or_another_users_folder_is_not_followed_or_removed(tmp_path, monkeypatch):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    target = tmp_path / "precious"
    (target / "keep").mkdir(parents=True)
    (tmp_path / f"{PROCESS_FOLDER_PREFIX}{dead}-link").symlink_to(target)
    foreign = tmp_path / f"{PROCESS_FOLDER_PREFIX}{dead}-theirs"
    foreign.mkdir()
    monkeypatch.setattr(os, "getuid", lambda: foreign.stat().st_uid + 1)  # as if another user had made it
    remove_dead_process_folders(tmp_path)
    assert (target / "keep").is_dir() and foreign.is_dir()


def test_the_extraction_folder_is_a_fresh_private_one_not_a_guessable_name(tmp_path, monkeypatch):
    from aoti import program

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    planted = tmp_path / f"{PROCESS_FOLDER_PREFIX}{os.getpid()}"  # the name a process's folder used to have
    planted.symlink_to(tmp_path)
    folder = program.process_folder()
    assert folder.parent == tmp_path and folder.name.startswith(f"{PROCESS_FOLDER_PREFIX}{os.getpid()}-")
    assert not folder.is_symlink() and folder.stat().st_mode & 0o777 == 0o700
    assert program.process_folder() == folder  # one per process and base


def test_a_folder_replaced_by_a_link_or_another_users_is_refused(tmp_path, monkeypatch, caplog):
    """This process's folder, once gone, may be made again at its name by someone else: it is then never used (nor
    removed at exit), a fresh one is."""
    import logging

    from aoti import program

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    folder = program.process_folder()
    folder.rmdir()
    folder.symlink_to(theirs)
    with caplog.at_level(logging.WARNING, logger="aoti.program"):
        fresh = program.process_folder()
    assert "not extracting into" in caplog.text
    assert fresh != folder and fresh.parent == tmp_path and not fresh.is_symlink() and fresh.stat().st_mode & 0o777 == 0o700
    program._remove_own(folder)  # what the exit does with the old name: the link's target stays
    assert theirs.is_dir() and folder.is_symlink()
    fresh.chmod(0o777)  # anyone could put a library there
    writable = fresh
    fresh = program.process_folder()
    assert fresh not in (folder, writable) and fresh.parent == tmp_path
    with monkeypatch.context() as patch:
        patch.setattr(os, "getuid", lambda uid=fresh.stat().st_uid: uid + 1)  # as if another user had made it
        assert program.process_folder() not in (folder, writable, fresh)
