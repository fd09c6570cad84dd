"""The README is the Space author's page: short, in the order they need it, with commands and a call that work."""

import ast
import inspect
import re

import lora
from conftest import ROOT

README = (ROOT / "README.md").read_text()
SECTIONS = ["Duplicate this Space", "Two commands", "Call it from a program", "Settings", "How it works", "Speed",
            "ZeroGPU", "Beyond one GPU", "Security", "Troubleshooting"]


def test_readme_is_short_and_in_the_order_a_space_author_needs():
    # ZeroGPU's hardware (plan, probes, what is verified) and Security (what the owner must keep private) take 2 KB
    assert len(README.encode()) <= 14_000
    assert re.findall(r"^## (.+)$", README, flags=re.M) == SECTIONS


def test_exactly_two_commands_for_a_fresh_machine():
    commands = re.findall(r"^    (pip install .+)$", README, flags=re.M)
    assert commands == [
        "pip install -r requirements.txt && python app.py", "pip install -r requirements-dev.txt && python -m pytest"
    ]
    assert (ROOT / ".ci" / "run").read_text().count(commands[1]) == 1  # CI runs the README's test command
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in README  # the CPU wheel, for machines without a GPU


def test_the_client_example_calls_infer_with_its_parameters_in_order():
    import app

    code = re.search(r"```python\n(.+?)```", README, flags=re.S).group(1)
    calls = [node for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Call)]
    call = next(node for node in calls if getattr(node.func, "attr", "") == "predict")
    names = [name for name in inspect.signature(app.infer).parameters if name not in ("progress", "request")]  # Gradio's
    assert len(call.args) == len(names) and {k.arg: k.value.value for k in call.keywords} == {"api_name": "/infer"}
    comments = re.findall(r"# (\w+)", code.split("client.predict(")[1].split("api_name")[0])
    assert comments == names
    values = [ast.literal_eval(arg) for arg in call.args]
    app.check_inputs(*values[:7])  # the example's values are valid, and its LoRA names a Hub repo (not fetched here)
    assert isinstance(lora.resolve(values[7], app.CONFIG.lora_dir), lora.HubLora) and lora.check_scale(values[8])


def test_every_setting_the_readme_names_is_one_the_config_reads():
    import dataclasses

    import config

    def variables(cls) -> set[str]:
        names = set()
        for f in dataclasses.fields(cls):
            names |= {f.metadata["env"]} if "env" in f.metadata else set()
            names |= variables(type(f.default)) if dataclasses.is_dataclass(f.default) else set()
        return names

    read = variables(config.AppConfig) | variables(config.OptimizationConfig) | variables(config.ServeConfig)
    # Secrets stay out of the config (it is logged and compared): the code reads them from the environment itself.
    sources = [path.read_text() for path in [*ROOT.glob("*.py"), *ROOT.glob("aoti/*.py")]]
    read |= {name for source in sources for name in re.findall(r'os\.environ\.get\("((?:FLUX|AOTI|SERVE)_\w+)"', source)}
    named = set(re.findall(r"`((?:FLUX|AOTI|SERVE)_[A-Z0-9_]+)", README)) | set(re.findall(r"`(AOTI)`", README))
    assert named and named <= read, named - read
