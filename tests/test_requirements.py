"""The pins: requirements.txt is what the Space installs (ZeroGPU's torch, the one measured), requirements-dev.txt
the same with the CPU tests' torch. Offline: reads the two files, README.md and the installed packages' metadata.
"""

import re
from importlib import metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import ROOT

# ZeroGPU's "Supported Versions": https://huggingface.co/docs/hub/spaces-zerogpu
# (huggingface/hub-docs, docs/hub/spaces-zerogpu.md, as of commit e7d53f5, May 2026).
ZEROGPU_TORCH = ["2.8.0", "2.9.1", "2.10.0", "2.11.0"]
ZEROGPU_PYTHON = ["3.10.13", "3.12.12"]
ZEROGPU_GRADIO = SpecifierSet(">=4")
TESTS_TORCH = "2.13.0"  # the CPU FP8 tests need it: torch 2.11's CPU _scaled_mm takes per-tensor scales only

README = (ROOT / "README.md").read_text()
FRONT_MATTER = dict(re.findall(r"^(\w+): \"?([^\"\n]*)\"?$", README.split("\n---\n")[0], flags=re.M))


def pins(path) -> dict[str, Requirement]:
    """The requirements a file names, through its -r includes, by canonical name (each name once)."""
    found: dict[str, Requirement] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        items = pins(path.parent / line[2:].strip()).values() if line.startswith("-r") else [Requirement(line)]
        for req in items:
            name = canonicalize_name(req.name)
            assert name not in found, f"{path.name}: {req.name} twice"
            found[name] = req
    return found


SPACE = pins(ROOT / "requirements.txt")
DEV = pins(ROOT / "requirements-dev.txt")


def exact(req: Requirement) -> str | None:
    """The version of an == pin, else None."""
    specs = list(req.specifier)
    return specs[0].version if len(specs) == 1 and specs[0].operator == "==" else None


def marker_env(extras: set[str] = frozenset()) -> list[dict[str, str]]:
    """Where the Space's packages are installed: README's Python on Linux x86_64, with these extras."""
    python = next((v for v in ZEROGPU_PYTHON if v.startswith(FRONT_MATTER["python_version"] + ".")), "")
    python = python or FRONT_MATTER["python_version"] + ".0"  # not ZeroGPU's: test_readme_python_... fails
    base = {"python_version": FRONT_MATTER["python_version"], "python_full_version": python, "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
            "platform_python_implementation": "CPython"}
    return [{**base, "extra": extra} for extra in sorted(extras | {""})]


def applies(req: Requirement, extras: set[str] = frozenset()) -> bool:
    return req.marker is None or any(req.marker.evaluate(env) for env in marker_env(extras))


def test_requirements_txt_stands_alone():
    """The Space's build mounts requirements.txt alone (`--mount=target=/tmp/requirements.txt`): an -r or -c line
    there would name a file the build does not have."""
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert not [line for line in lines if line.startswith("-")]


def test_the_space_pins_the_newest_zerogpu_torch_and_the_one_measured():
    torch = exact(SPACE["torch"])
    assert torch in ZEROGPU_TORCH, f"torch=={torch} is not among ZeroGPU's {ZEROGPU_TORCH}"
    summary = README.split("<!-- bench:summary -->")[1].split("<!-- /bench:summary -->")[0]
    measured = re.findall(r"torch ([\d.]+)\S*, diffusers ([\d.]+), torchao ([\d.]+)", summary)
    assert measured, "README's speed summary names no versions"
    for versions in measured:  # the speed numbers were measured with the Space's pins
        pinned = {name: exact(SPACE[name]) for name in ["torch", "diffusers", "torchao"]}
        assert dict(zip(pinned, versions)) == pinned, f"measured with {versions}, requirements.txt pins {pinned}"
    newest = max(ZEROGPU_TORCH, key=Version)
    assert torch == newest, f"ZeroGPU supports torch {newest}: measure it (bench/), then pin it"
    for pin in [torch, exact(DEV["torch"])]:
        assert f"`torch=={pin}`" in README, f"README's Two commands do not name `torch=={pin}`"


def test_readme_python_and_gradio_are_among_zerogpus():
    python = FRONT_MATTER["python_version"]
    assert any(v.startswith(python + ".") for v in ZEROGPU_PYTHON), f"python_version {python}: not ZeroGPU's"
    gradio = exact(SPACE["gradio"])
    # The build installs gradio[oauth,mcp]==sdk_version in the same pip command as requirements.txt.
    assert FRONT_MATTER["sdk_version"] == gradio, f"README's sdk_version {FRONT_MATTER['sdk_version']}, gradio=={gradio}"
    assert gradio in ZEROGPU_GRADIO
    for name in SPACE:  # each pinned package installs on that Python
        requires_python = metadata.metadata(name)["Requires-Python"]
        assert requires_python is None or marker_env()[0]["python_full_version"] in SpecifierSet(requires_python), (
            f"{name} needs Python {requires_python}")


def test_dev_pins_the_space_pins_but_torch():
    assert exact(DEV["torch"]) == TESTS_TORCH, f"requirements-dev.txt: {DEV['torch']}, the CPU tests need {TESTS_TORCH}"
    assert set(SPACE) <= set(DEV), f"requirements-dev.txt lacks {set(SPACE) - set(DEV)}"
    for name, req in SPACE.items():
        if name == "torch":
            continue
        dev = DEV[name]
        assert exact(dev), f"requirements-dev.txt: {dev} is not an == pin"
        assert dev.extras == req.extras and (exact(req) == exact(dev) if exact(req) else exact(dev) in req.specifier), (
            f"requirements.txt {req} vs requirements-dev.txt {dev}")


def test_installed_packages_are_the_dev_pins():
    """The metadata the next test reads is that of the pinned versions (after pip install -r requirements-dev.txt)."""
    for name, req in DEV.items():
        assert Version(metadata.version(name)) in req.specifier, f"installed {name} {metadata.version(name)}: {req}"


def test_every_pinned_packages_requirements_hold_under_both_torch_pins():
    """What spaces (and every other pinned package) requires of the packages we pin holds for the Space's versions and
    the tests': pip checks only the tests' torch here, and the Space's build is the first to check the other."""
    ours = {name: {v for v in (exact(SPACE[name]), exact(DEV[name])) if v} for name in SPACE}
    checked = set()
    for name in SPACE:
        if name == "torch":  # the metadata here is the CPU wheel's, not the Space's CUDA build
            continue
        extras = SPACE[name].extras
        for req in map(Requirement, metadata.requires(name) or []):
            target = canonicalize_name(req.name)
            if not applies(req, extras):
                continue
            if target in ours:
                for version in ours[target]:
                    assert version in req.specifier, f"{name} requires {req}; we pin {target}=={version}"
                checked.add((name, target))
            elif name == "spaces":  # the rest of spaces' requirements: pip resolved them beside our pins
                assert Version(metadata.version(req.name)) in req.specifier, f"spaces requires {req}"
    assert {("accelerate", "torch"), ("peft", "torch"), ("diffusers", "huggingface-hub"), ("spaces", "gradio")} <= checked
