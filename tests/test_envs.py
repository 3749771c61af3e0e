"""The project's layout: the conda environments used with `--sdm conda` agree with pyproject.toml,
and the tests mirror the modules."""

import re
import tomllib

import yaml
from helpers import REPO
from packaging.requirements import Requirement


def pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    return {Requirement(d).name.lower(): Requirement(d) for d in deps}


CONDA_TO_PYPI = {"pytorch": "torch"}


def env_packages(path):
    env = yaml.safe_load(path.read_text())
    conda, pip = {}, []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep["pip"]
        else:
            name, spec = re.match(r"^([A-Za-z0-9_.-]+)(.*)$", dep).groups()
            conda[CONDA_TO_PYPI.get(name.lower(), name.lower())] = (
                spec.replace("=", "==", 1) if spec.startswith("=") and not spec.startswith("==") else spec
            )
    return conda, pip


def test_every_env_pins_what_pyproject_pins_and_installs_the_package():
    required = pyproject_requirements()
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs
    for path in envs:
        conda, pip = env_packages(path)
        assert "--editable ../.." in pip, f"{path.name} does not install scencode itself"
        pinned = {**conda}
        for line in pip:
            if not line.startswith("-"):
                req = Requirement(line)
                pinned[req.name.lower()] = str(req.specifier)
        for name, spec in pinned.items():
            if name in ("python", "pip"):
                continue
            assert name in required, f"{path.name}: {name} is not a dependency in pyproject.toml"
            assert str(required[name].specifier) == str(Requirement(f"{name}{spec}").specifier), (
                f"{path.name}: {name}{spec} differs from pyproject's {required[name]}"
            )


def test_rules_reference_existing_envs():
    for rules in (REPO / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', rules.read_text()):
            assert (rules.parent / env).resolve().exists(), f"{rules.name}: {env} missing"


def test_every_module_has_a_test_module_of_its_name():
    modules = {p.stem for p in (REPO / "src" / "scencode").glob("*.py")} - {"__init__", "__main__"}
    missing = sorted(m for m in modules if not (REPO / "tests" / f"test_{m}.py").exists())
    assert missing == []
