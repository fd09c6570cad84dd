"""A compiled program: the AOTInductor package plus the contract it was compiled for.

It holds no weights, pickles small (it is what crosses process boundaries) and is turned into
a callable runner by `load`. The weights are either bound by pointer at load time (constants)
or passed in at every call (`weights_as_inputs`, one program for many modules).
"""

from __future__ import annotations

import logging
import multiprocessing.util
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from .signature import Signature
from .toolchain import check_package

log = logging.getLogger(__name__)

# The C++ loader extracts each package into a fresh `aotinductor_*` folder under $TMPDIR and removes
# it only in its destructor, which never runs in a ZeroGPU worker (killed, or ended by os._exit).
# So we point $TMPDIR at a folder of our own per process while it extracts, remove that folder at the
# process's exit, and sweep the folders of dead processes. "pid-" keeps these names apart from
# tempfile's `aoti-` + 8 random characters (compile's build folders), which can be all digits. The folder is
# `aoti-pid-<pid>-<random>`, made by mkdtemp (mode 0700): a name another user of a shared temp dir could guess
# and make first (a symbolic link, or a folder they can write) would let them swap the library we load.
PROCESS_FOLDER_PREFIX = "aoti-pid-"
_TMPDIR_LOCK = threading.Lock()  # $TMPDIR is process-wide: one extraction at a time
# A fork waits for an extraction in progress: the child gets neither a held lock nor our $TMPDIR.
os.register_at_fork(
    before=_TMPDIR_LOCK.acquire, after_in_parent=_TMPDIR_LOCK.release, after_in_child=_TMPDIR_LOCK.release
)
_folders: dict[tuple[int, Path], Path] = {}  # (pid, base): that process's folder (a forked child makes its own)


@dataclass(frozen=True)
class CompiledProgram:
    package: bytes  # the .pt2 archive: compiled library and metadata, no weights
    signature: Signature
    weight_names: tuple[str, ...]  # constants to bind, by fully qualified name
    compile_seconds: float = 0.0
    weights_as_inputs: bool = False  # the weights are its leading inputs at every call; nothing bound at load

    def load(self, weights: Mapping[str, torch.Tensor] | None = None) -> Runner:
        """Load the package in this process and bind `weights` without copying them.

        The caller must keep the tensors alive as long as the runner is used. A program that
        takes its weights as inputs binds nothing: pass no weights.
        """
        if self.weights_as_inputs != (weights is None):
            raise ValueError("pass weights to load exactly when the program binds them as constants")
        missing = sorted(set(self.weight_names) - set(weights)) if weights is not None else []
        if missing:
            raise ValueError(f"{len(missing)} weights the program needs are missing, e.g. {missing[:3]}")
        check_package(self.package)
        loader = _new_loader(self.package)
        if weights is not None:
            bound = {name: weights[name] for name in loader.get_constant_fqns()}
            loader.load_constants(bound, False, True, True)  # active buffer, check full update, user-managed
        return Runner(loader)


def _new_loader(package: bytes) -> torch._C._aoti.AOTIModelPackageLoader:
    """The C++ loader of `package`, extracted into this process's own folder."""
    with _TMPDIR_LOCK:
        folder = process_folder()
        with tempfile.TemporaryDirectory(prefix="load-", dir=folder) as tmp:
            path = Path(tmp) / "program.pt2"
            path.write_bytes(package)
            previous = os.environ.get("TMPDIR")
            os.environ["TMPDIR"] = str(folder)  # read by std::filesystem::temp_directory_path, in C++
            try:
                # The C++ loader itself: `aoti_load_package` probes the CPU's vector ISA (tens of
                # seconds in a fresh process on some machines) only to warn about a device mismatch
                # that the cache fingerprint already rules out, and its Python wrapper moves between
                # releases. Single-threaded: the default mode waits for the previous call's GPU work
                # before starting the next (an event sync per call), which stalls FLUX's 57
                # per-block calls; Runner serializes calls instead.
                return torch._C._aoti.AOTIModelPackageLoader(str(path), "model", True, 1, -1)
            finally:
                if previous is None:
                    del os.environ["TMPDIR"]
                else:
                    os.environ["TMPDIR"] = previous


def process_folder() -> Path:
    """This process's folder for extracted packages: made here, removed at its exit.

    The folder must outlive every runner of the process (CUDA kernels are read from it at their
    first call), so it goes at exit: multiprocessing's finalizers run both at a normal interpreter
    exit and at the end of a multiprocessing child, where atexit handlers do not. Folders of
    processes that are gone (killed) are removed first.
    """
    # Where the loader would extract: it reads $TMPDIR at every load, while tempfile caches its
    # answer (under pytest, from before conftest sets $TMPDIR).
    base = Path(os.environ.get("TMPDIR") or tempfile.gettempdir())
    remove_dead_process_folders(base)
    key = (os.getpid(), base)
    if key in _folders and not _own(_folders[key]):
        # Gone (a temp dir cleaner), or something else now at its name: a link, or a folder another user made
        # there after it went. Either is refused, not followed: a fresh folder is made.
        if _folders[key].is_symlink() or _folders[key].exists():
            log.warning("not extracting into %s: no longer this process's own folder (a link, or another user's)",
                        _folders[key])
        del _folders[key]
    if key not in _folders:
        _folders[key] = Path(tempfile.mkdtemp(prefix=f"{PROCESS_FOLDER_PREFIX}{os.getpid()}-", dir=base))
        # Last of the exit steps (multiprocessing's own are at -5 and above): no runner is used after.
        multiprocessing.util.Finalize(None, _remove_own, (_folders[key],), exitpriority=-100)
    return _folders[key]


def _own(folder: Path) -> bool:
    """Whether `folder` is a real folder (not a link) of this user, that only this user can enter."""
    try:
        info = folder.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def _remove_own(folder: Path) -> None:
    if _own(folder):
        shutil.rmtree(folder, ignore_errors=True)


def remove_dead_process_folders(base: Path) -> None:
    """Remove the extraction folders that processes which no longer exist left under `base`: only real folders of
    this user (a link is not followed, another user's folder is theirs)."""
    for folder in base.glob(f"{PROCESS_FOLDER_PREFIX}*"):
        pid = folder.name[len(PROCESS_FOLDER_PREFIX):].split("-")[0]
        if not (pid.isascii() and pid.isdigit() and int(pid) > 0) or _alive(int(pid)):
            continue
        if not folder.is_symlink() and folder.is_dir() and folder.lstat().st_uid == os.getuid():
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


class Runner:
    """A loaded program, called with its flat input tensors; returns the output tree."""

    def __init__(self, loader: torch._C._aoti.AOTIModelPackageLoader):
        self.loader = loader
        self._out_spec = pytree.treespec_loads(self.loader.get_call_spec()[1])  # parsed once, not per call
        self._lock = threading.Lock()

    def __call__(self, flat_inputs: list[torch.Tensor]) -> Any:
        with self._lock:  # loaded single-threaded: one call at a time
            outputs = self.loader.boxed_run(flat_inputs)
        return pytree.tree_unflatten(outputs, self._out_spec)
