"""A cache of compiled programs, keyed by a fingerprint of everything that can invalidate them.

Layout: `<folder>/<key>/entry.json` (the fingerprint, readable) and `<group>-<i>/` (see artifact.py),
one group per compiled module kind (the transformer, or each repeated block).
Entries are written under a temporary name and renamed into place, so concurrent startups never
see half an entry; a damaged entry is reported, removed and compiled again. Processes sharing the folder
(replicas starting together, on one machine or on shared storage) compile a missing entry once: with
`build_once`, a lock file next to the entry (`.<key>.lock`) lets one compile while the others wait and load.
Optionally the same entries are pulled from and pushed to a Hugging Face Hub repository: pulled only at a pinned
commit or when signed by the Space's key (signing.py), as they are native code; pushed signed, with a token of their
own. Weights are never stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from . import artifact, signing
from .program import CompiledProgram

log = logging.getLogger(__name__)
ENTRY_FILE = "entry.json"


def environment(device: str) -> dict[str, Any]:
    """The parts of a fingerprint that describe this machine's compiler target."""
    # Inductor builds its C++ (a GPU program's host wrapper, a CPU program's kernels) with -march=native: on a CPU
    # without those instructions (another machine sharing the cache folder or the Hub repo) it would crash, not fail
    # to load.
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                           "machine": platform.machine(), "host_cpu": host_cpu()}
    if device.startswith("cuda"):
        env.update(cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(), capability=list(torch.cuda.get_device_capability()))
    else:
        from torch._inductor.cpu_vec_isa import pick_vec_isa  # compiled CPU code targets this ISA

        log.info("finding the CPU's vector instruction set: inductor builds and loads a test program for each "
                 "(~10 s with an empty inductor cache, a few seconds after)")
        env.update(cpu_isa=str(pick_vec_isa()))
    return env


def host_cpu() -> str:
    """This CPU's instruction-set extensions, as a short digest of /proc/cpuinfo's flags (x86) or features (Arm);
    the processor's name where there is no such file."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    flags = next((line.split(":", 1)[1] for line in lines if line.startswith(("flags", "Features"))), "")
    return hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:16]


def source_digest(root: Path, paths: Sequence[str]) -> str:
    """A digest of the Python sources at `paths` (files, or folders taken whole) under `root`: a program compiled by
    other code may differ under the same options, so a fingerprint that includes this is not served to new code."""
    digest = hashlib.sha256()
    for path in paths:
        files = sorted((root / path).rglob("*.py")) if (root / path).is_dir() else [root / path]
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _try_lock(file) -> bool:
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _remove(entry: Path) -> None:
    """Remove whatever stands at an entry's name (a folder, a file, a link, never followed); where the folder is
    read-only it stays, and is rejected again at the next start."""
    try:
        if entry.is_symlink() or not entry.is_dir():
            entry.unlink(missing_ok=True)
        else:
            shutil.rmtree(entry)
    except OSError as error:
        log.warning("could not remove %s (%s: %s)", entry, type(error).__name__, error)


def key_of(fingerprint: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _as_stored(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    # What the fingerprint reads as after a JSON round trip (tuples become lists, ...).
    return json.loads(json.dumps(fingerprint, default=str))


def _differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """The keys whose values differ, nested ones as `outer.inner`."""
    for key in set(a) | set(b):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            yield from _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            yield prefix + key


class ProgramCache:
    """`folder`'s entries; with `hub_repo`, also that repo's: read with `token` at `hub_revision` (a commit; "" for its
    head) and used only if pinned so or signed by `public_key`; entries this process stores are signed with
    `signing_key` and pushed with `push_token` (a write token for that repo alone), when given."""

    def __init__(
        self, folder: str | os.PathLike, hub_repo: str = "", token: str | None = None, *, hub_revision: str = "",
        public_key: str = "", signing_key: str | None = None, push_token: str | None = None,
    ):
        self.folder = Path(folder)
        self.hub_repo = hub_repo
        self.token = token
        self.hub_revision, self.public_key = hub_revision, public_key
        self.signing_key, self.push_token = signing_key, push_token

    def load(self, fingerprint: Mapping[str, Any]) -> dict[str, list[CompiledProgram]] | None:
        """The programs stored for this fingerprint, by group, or None (with one log line saying why)."""
        key = key_of(fingerprint)
        entry = self.folder / key
        try:
            if not entry.exists() and self.hub_repo:
                self._pull(key)
            found = entry.exists()
        except OSError as error:  # a folder this process may not search
            log.warning("cannot read the program cache in %s (%s: %s): compiling without it", self.folder,
                        type(error).__name__, error)
            return None
        if not found:
            log.info("no compiled program cached for this setup in %s%s; compiling", self.folder, self._nearest(fingerprint))
            return None
        try:
            manifest = json.loads((entry / ENTRY_FILE).read_text())
            if manifest.get("fingerprint") != _as_stored(fingerprint):
                raise artifact.ArtifactError("its fingerprint does not match its key")
            counts = manifest["programs"]
            # Checked before use: a group name is a path, and an empty list would only fail when the programs are applied.
            if not (isinstance(counts, dict) and counts and all(
                    group.isidentifier() and type(count) is int and count > 0 for group, count in counts.items())):
                raise artifact.ArtifactError("its program list is not group names with counts")
            return {group: [artifact.load(entry / f"{group}-{i}") for i in range(count)] for group, count in counts.items()}
        except (artifact.ArtifactError, OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            log.warning("rejected the cached program %s (%s); removing it and compiling again", entry, error)
            _remove(entry)
            return None

    def build_once(
        self, fingerprint: Mapping[str, Any], build: Callable[[], Mapping[str, Sequence[CompiledProgram]]]
    ) -> tuple[dict[str, list[CompiledProgram]], bool]:
        """After a miss: `build()`'s programs, stored, and False; or, when another process sharing the folder
        stored them while this one waited for the lock, theirs and True. Of processes that miss together, one builds.

        The cache is optional: where its folder cannot be locked or written (read-only, full, a filesystem without
        locks), a warning says so and the programs just built are returned all the same."""
        key = key_of(fingerprint)
        with self._lock(key) as usable:
            if usable and (self.folder / key).exists():
                programs = self.load(fingerprint)
                if programs is not None:
                    return programs, True
            programs = {group: list(members) for group, members in build().items()}
            if usable:
                try:
                    self.store(fingerprint, programs)
                except (OSError, ValueError) as error:  # ValueError: an AOTI_HUB_SIGNING_KEY that is no key
                    log.warning("could not store the compiled program in %s (%s: %s): serving it from memory; the next "
                                "start compiles again", self.folder, type(error).__name__, error)
        return programs, False

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[bool]:
        """Held while a missing entry is built; yields False (after a warning) where the folder cannot be locked."""
        # flock: released by the kernel when its holder dies, so a killed compile blocks no one; over NFS
        # Linux maps it to a byte-range lock that every client sees. The file stays: removing it would race.
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = open(self.folder / f".{key}.lock", "a")
        except OSError as error:
            log.warning("cannot use the program cache in %s (%s: %s): compiling without it", self.folder,
                        type(error).__name__, error)
            yield False
            return
        with lock:
            try:
                if not _try_lock(lock):
                    log.info("another process is compiling this setup; waiting for its entry in %s", self.folder)
                    fcntl.flock(lock, fcntl.LOCK_EX)
                locked = True
            except OSError as error:  # ENOLCK: a filesystem without locks
                log.warning("cannot lock the program cache in %s (%s: %s): compiling without it", self.folder,
                            type(error).__name__, error)
                locked = False
            yield locked

    def store(self, fingerprint: Mapping[str, Any], programs: Mapping[str, Sequence[CompiledProgram]]) -> Path:
        """Save the programs for this fingerprint, by group (a name per compiled module kind).

        A concurrent writer's identical entry wins.
        """
        key = key_of(fingerprint)
        entry = self.folder / key
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.folder, prefix=f".{key}."))
        try:
            for group, members in programs.items():
                if not group.isidentifier():
                    raise ValueError(f"program group names must be identifiers, got {group!r}")
                for i, program in enumerate(members):
                    artifact.save(program, staging / f"{group}-{i}")
            manifest = {"fingerprint": fingerprint, "programs": {group: len(members) for group, members in programs.items()}}
            (staging / ENTRY_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
            if self.signing_key:
                signing.sign(staging, self.signing_key)
            os.rename(staging, entry)  # atomic; fails if another process got there first
        except OSError:
            if not entry.exists():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if self.hub_repo and self.push_token:
            self._push(key)
        return entry

    def _nearest(self, fingerprint: Mapping[str, Any]) -> str:
        """Which fields differ from the closest cached entry, so a miss says why."""
        best: list[str] | None = None
        current = _as_stored(fingerprint)
        for path in self.folder.glob(f"*/{ENTRY_FILE}"):
            try:
                cached = json.loads(path.read_text())["fingerprint"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not isinstance(cached, dict):  # a damaged entry: load removes it when its own key is asked for
                continue
            differ = sorted(_differences(cached, current))
            if best is None or len(differ) < len(best):
                best = differ
        return f" (the closest cached one differs in: {', '.join(best)})" if best else ""

    def _pull(self, key: str) -> None:
        from huggingface_hub import snapshot_download

        if not (self.hub_revision or self.public_key):
            log.warning("not loading compiled programs from %s: they are native code, and its head can be changed by "
                        "anyone who can write it; pin AOTI_HUB_REVISION to a commit or set AOTI_HUB_PUBLIC_KEY", self.hub_repo)
            return
        staging = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=self.folder, prefix=f".{key}.pull."))
            snapshot_download(self.hub_repo, allow_patterns=[f"{key}/*"], local_dir=staging, token=self.token,
                              revision=self.hub_revision or None)
            if (staging / key / ENTRY_FILE).exists():
                if self.public_key:
                    signing.verify(staging / key, self.public_key)
                os.rename(staging / key, self.folder / key)
                log.info("pulled the compiled program %s from %s", key, self.hub_repo)
        except signing.SignatureError as error:
            log.warning("rejected the compiled program %s from %s: %s; compiling instead", key, self.hub_repo, error)
        except Exception as error:  # offline, no such repo, no access: compile locally instead
            log.warning("could not pull %s from %s: %s: %s", key, self.hub_repo, type(error).__name__, error)
        finally:
            if staging:
                shutil.rmtree(staging, ignore_errors=True)

    def _push(self, key: str) -> None:
        from huggingface_hub import HfApi

        try:
            api = HfApi(token=self.push_token)
            api.create_repo(self.hub_repo, private=True, exist_ok=True)
            api.upload_folder(repo_id=self.hub_repo, folder_path=self.folder / key, path_in_repo=key,
                              commit_message=f"Add compiled program {key}")
            log.info("pushed the compiled program %s to %s", key, self.hub_repo)
        except Exception as error:  # read-only token, no network: the local copy still serves
            log.warning("could not push %s to %s: %s: %s", key, self.hub_repo, type(error).__name__, error)
