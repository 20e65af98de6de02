"""The launch files in cluster/: they parse, hold what their engines require, and every editsweep
command written in them (code, comments, the guide) is one the `editsweep` CLI accepts."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

import editsweep.bench.cli as cli

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
SUBCOMMANDS = ("run", "report", "list", "bench")
COMMAND = re.compile(r"\beditsweep\s+(?:" + "|".join(SUBCOMMANDS) + r")\b")
SEPARATORS = {"&&", "||", ";", "|", "&"}


def load_yaml(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def commands_in(chunk: str) -> list[list[str]]:
    """The argv (after `editsweep`) of every command in one line of shell, also inside quoted strings."""
    found = []
    tokens = shlex.split(chunk.strip().lstrip("#").strip(), comments=True)
    for i, token in enumerate(tokens):
        if token == "editsweep" and i + 1 < len(tokens) and tokens[i + 1] in SUBCOMMANDS:
            argv = []
            for arg in tokens[i + 1 :]:
                if arg in SEPARATORS:
                    break
                argv.append(arg)
            found.append(argv)
        elif token != chunk and COMMAND.search(token):  # e.g. the command string of `ray exec "..."`
            found.extend(commands_in(token))
    return found


def yaml_strings(node, where: str):
    """(key path, text) of every string value in a YAML document."""
    if isinstance(node, dict):
        sep = "" if where.endswith(":") else "."
        for key, value in node.items():
            yield from yaml_strings(value, f"{where}{sep}{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from yaml_strings(value, f"{where}[{i}]")
    elif isinstance(node, str):
        yield where, node


def editsweep_commands() -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(where, argv) for every editsweep command written anywhere in cluster/; lines that mention
    one but cannot be read as shell."""
    commands, unreadable = [], []
    for path in sorted(p for p in CLUSTER.iterdir() if p.is_file()):
        lines = [(f"{path.name}:{n}", line) for n, line in enumerate(path.read_text().splitlines(), 1)]
        if path.suffix == ".yaml":  # comments line by line, values whole (a folded value spans lines)
            lines = [(w, line) for w, line in lines if line.lstrip().startswith("#")]
            lines += list(yaml_strings(yaml.safe_load(path.read_text()), f"{path.name}:"))
        for where, line in lines:
            if not COMMAND.search(line):
                continue
            spans = [s for s in re.findall(r"`([^`]+)`", line) if COMMAND.search(s)]
            try:
                found = [argv for chunk in spans or [line] for argv in commands_in(chunk)]
            except ValueError:  # unbalanced quotes: prose, not a command
                found = []
            if not found:
                unreadable.append(f"{where}: {line.strip()}")
            commands += [(where, argv) for argv in found]
    return commands, unreadable


COMMANDS, UNREADABLE = editsweep_commands()


def test_every_mentioned_editsweep_command_is_a_whole_command():
    assert not UNREADABLE, "write commands as shell lines or in `code spans`"


@pytest.fixture
def parse(monkeypatch):
    """Parse an argv with the real `editsweep` parser; the subcommand itself does not run."""
    seen = []
    for name in ("_run", "_report", "_list", "_bench"):
        monkeypatch.setattr(cli, name, lambda args: seen.append(args) or 0)

    def parse(argv: list[str]):
        try:
            assert cli.main(argv) == 0
        except SystemExit as exit:
            pytest.fail(f"`editsweep {shlex.join(argv)}` is rejected by the CLI (exit {exit.code})")
        return seen.pop()

    return parse


def test_every_launch_file_runs_a_sweep_on_the_cluster():
    files = {where.split(":")[0] for where, argv in COMMANDS if argv[0] == "run" and "--dry-run" not in argv}
    assert {"ray-cluster.yaml", "rayjob.yaml", "slurm.sbatch", "README.md"} <= files


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_editsweep_commands_are_accepted_by_the_cli(where, argv, parse):
    args = parse(argv)
    if argv[0] != "run":
        return
    if not args.dry_run:
        assert args.address == "auto", f"{where}: a cluster run connects with --address auto"
    if args.out and re.match(r"[a-z0-9]+://", args.out) and not args.dry_run:
        assert args.no_report, f"{where}: reports need a local run dir, so a URI --out needs --no-report"


def test_ray_cluster_config():
    config = load_yaml("ray-cluster.yaml")
    for key in ("cluster_name", "provider", "head_node_type", "available_node_types", "setup_commands"):
        assert config.get(key), key
    assert config["provider"]["type"]
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0, "the head runs the driver, no GPU"
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "a worker node type with GPU >= 1"
    for node_type in gpu_types:
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"]
        assert node_type["node_config"]
    setup = "\n".join(config["setup_commands"])
    assert "editsweep" in setup and ("uv sync --locked" in setup or "pip install" in setup)
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert any("ray start --head" in c for c in starts) and any("--address" in c for c in starts)


def test_ray_cluster_config_matches_rays_own_schema():
    jsonschema = pytest.importorskip("jsonschema")
    ray_spec = importlib.util.find_spec("ray")  # locates Ray without importing it
    schema_path = Path(ray_spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    if not schema_path.is_file():
        pytest.skip("this Ray ships no autoscaler schema")
    jsonschema.validate(load_yaml("ray-cluster.yaml"), json.loads(schema_path.read_text()))


def test_rayjob(parse):
    job = load_yaml("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    entrypoint = spec["entrypoint"]
    assert entrypoint.startswith("editsweep run ") and "--address auto" in entrypoint
    assert parse(shlex.split(entrypoint)[1:]).address == "auto"
    assert spec["shutdownAfterJobFinishes"] is True

    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    groups = cluster["workerGroupSpecs"]
    for group in [head, *groups]:  # rayStartParams is a map of strings in the CRD
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]
    gpu_groups = [
        g
        for g in groups
        if any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1 for c in g["template"]["spec"]["containers"])
    ]
    assert gpu_groups, "a worker group with an nvidia.com/gpu limit"
    for group in gpu_groups:
        assert group["groupName"] and 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    containers = [c for g in [head, *groups] for c in g["template"]["spec"]["containers"]]
    assert len({c["image"] for c in containers}) == 1, "head and workers run one image (one environment)"


def test_ray_versions_match_the_lock():
    locked = re.search(r'name = "ray"\nversion = "([^"]+)"', (ROOT / "uv.lock").read_text())
    if locked is None:
        pytest.skip("no locked Ray version")
    assert load_yaml("rayjob.yaml")["spec"]["rayClusterSpec"]["rayVersion"] == locked[1]
    assert f"rayproject/ray:{locked[1]}-" in (CLUSTER / "README.md").read_text()


def test_slurm_script():
    path = CLUSTER / "slurm.sbatch"
    text = path.read_text()
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = text.splitlines()
    assert lines[0].startswith("#!")
    # sbatch reads #SBATCH lines only before the first command.
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#"))
    directives = [line for line in lines[:first_command] if line.startswith("#SBATCH")]
    assert not any(line.startswith("#SBATCH") for line in lines[first_command:])
    assert any(re.match(r"#SBATCH (--nodes=|-N ?)\d", d) for d in directives)
    assert any(re.match(r"#SBATCH (--gpus-per-task=|--gpus-per-node=|--gres=gpu:|--gpus=)", d) for d in directives)
    assert "set -euo pipefail" in text
    assert "ray start --head" in text and "ray start --address" in text
    assert re.search(r"^\s*editsweep run .*--address auto", text, re.M)
    assert re.search(r"^trap \S+ EXIT", text, re.M)
    # Waiting is polling with a deadline, never a long fixed sleep.
    assert all(int(n) <= 10 for n in re.findall(r"\bsleep (\d+)", text))
    assert "RAY_WAIT_SECONDS" in text
