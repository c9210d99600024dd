"""`retail-prediction registry …` as a real process against SeaweedFS and a local folder: exit codes, what it
prints, and refusals as one readable line (no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Weeks
from retail_prediction.artifact.archive import sha256_file
from s3server import MODELS_BUCKET, S3Server

from .conftest import Models


def run(env: dict[str, str] | None, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retail_prediction.cli", "registry", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=300)


def test_registry_commands_on_s3(s3_env: Callable[..., dict[str, str]], s3_server: S3Server, models: Models,
                                 worse_model: Path, weeks: Weeks, tmp_path: Path) -> None:
    env, root = s3_env(), f"s3://{MODELS_BUCKET}/cli-{uuid.uuid4().hex[:8]}"
    for archive in (models.v1, worse_model):
        pushed = run(env, "push", archive, "--root", root, "--by", "ci")
        assert pushed.returncode == 0, pushed.stderr
        assert json.loads(pushed.stdout)["pushed_by"] == "ci"
    again = run(env, "push", models.v1, "--root", root)
    assert again.returncode == 2 and again.stderr.strip() == (
        f"error: version v1 already exists in {root}: a version is pushed once (train a new model for a new version)")

    assert run(env, "promote", "v1", "--root", root).returncode == 0
    gated = run(env, "promote", "worse", "--root", root, "--gate-data", *weeks.later)
    assert gated.returncode == 3, gated.stderr
    assert "REFUSED" in gated.stderr and "Traceback" not in gated.stderr
    assert f"{root}/current/model.tar.gz is unchanged" in gated.stderr
    rows = [line.split() for line in gated.stderr.splitlines() if line.startswith(("accuracy", "macro_f1"))]
    assert len(rows) == 2 and all(float(current) > float(candidate) + 0.002 for _, current, candidate, _ in rows)

    listed = run(env, "list", "--root", root, "--json")
    assert listed.returncode == 0
    assert {r["version"]: r["current"] for r in json.loads(listed.stdout)} == {"v1": True, "worse": False}
    table = run(env, "list", "--root", root).stdout.splitlines()
    assert table[0].split()[:2] == ["version", "training"] and any(line.startswith("*  v1") for line in table)

    nothing = run(env, "rollback", "--root", root)
    assert nothing.returncode == 2 and "nothing to roll back to" in nothing.stderr and "Traceback" not in nothing.stderr

    run(env, "push", models.v2, "--root", root)
    s3_server.client().put_object(Bucket=MODELS_BUCKET, Key=f"{root.split('/', 3)[3]}/locks/current.json",
                              Body=b'{"kind": "promote", "version": "v9", "by": "bob", "host": "h", "at": "t"}')
    held = run(env, "promote", "v2", "--root", root)
    assert held.returncode == 2 and "another promote (v9, by bob on h, since t) holds" in held.stderr
    unlocked = run(env, "unlock", "--root", root)
    assert unlocked.returncode == 0 and '"by": "bob"' in unlocked.stderr
    assert run(env, "promote", "v2", "--root", root).returncode == 0


@pytest.mark.parametrize(("args", "message"), [
    (["promote", "v1", "--root", "ftp://host/x"], "only s3:// URIs and local paths"),
    (["promote", "v1", "--root", "{root}", "--max-drop", "2"], "is not a drop between 0 and 1"),
    (["push", "{missing}", "--root", "{root}"], "missing.tar.gz"),
    (["promote", "v7", "--root", "{root}"], "no version v7 in"),
])
def test_hostile_arguments_get_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    values = {"root": str(tmp_path / "registry"), "missing": str(tmp_path / "missing.tar.gz")}
    done = run(None, *(a.format(**values) for a in args))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("where", ["local", "s3"])
def test_concurrent_push_processes(where: str, models: Models, tmp_path: Path,
                                   request: pytest.FixtureRequest) -> None:
    """Three `registry push` processes of one version at once: exactly one stores it, two are refused."""
    if where == "s3":
        env = request.getfixturevalue("s3_env")()
        root = f"s3://{MODELS_BUCKET}/cli-{uuid.uuid4().hex[:8]}"
    else:
        env, root = None, str(tmp_path / "registry")
    command = [sys.executable, "-m", "retail_prediction.cli", "registry", "push", str(models.v1), "--root", root]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    errors = [p.communicate(timeout=300)[1] for p in procs]  # reads both pipes to the end, then waits
    outcomes = [(p.returncode, err) for p, err in zip(procs, errors, strict=True)]
    assert sorted(code for code, _ in outcomes) == [0, 2, 2], outcomes
    assert all("version v1 already exists" in err and "Traceback" not in err for code, err in outcomes if code)
    listed = json.loads(run(env, "list", "--root", root, "--json").stdout)
    assert [(r["version"], r["sha256"]) for r in listed] == [("v1", sha256_file(models.v1))]
