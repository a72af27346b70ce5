"""The pipeline's wiring: every stage depends on the hash of exactly the code its command imports
(fingerprints/code/<kind>.json, lists in moelab/stages.py), so editing report or benchmark code
re-runs no training; a cell whose evaluation alone changed re-evaluates without retraining;
bytecode, caches and editor files are never dependencies; the machine fingerprint is cheap and
stable; a narrowed study averages only what params.yaml asks for.

One throwaway lab (a tiny cell of every task) is reproduced once with a `moelab` on PATH that
records the modules each command really imported (tests/labrepo.py install_shim).
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from labrepo import install_shim, lab_env, lab_sh, make_lab, tiny_tasks
from moelab.provenance import TRAIN_CODE, code_files, code_hash
from moelab.stages import STAGE_CODE

ROOT = Path(__file__).resolve().parents[1]
CODE_DEP = "fingerprints/code/"
MACHINE = "fingerprints/dvc.yaml:machine"


sh = lab_sh  # run a command in the lab


def changed_stages(repo: Path) -> set[str]:
    """Stages `dvc status` reports, less the always-run machine stage."""
    return set(json.loads(sh("dvc status --json", repo))) - {MACHINE}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("pipeline")
    repo = make_lab(root / "lab", sh, tiny_tasks)
    log = root / "commands.jsonl"
    install_shim(root / "bin")
    shim = {"PATH": f"{root / 'bin'}:{os.environ['PATH']}", "MOELAB_SHIM_LOG": str(log)}
    sh("dvc repro && dvc repro layer/dvc.yaml", repo, **shim)  # the study, then the layer micro-benchmark
    sh("git add -A && git commit -qm study", repo)
    return repo, [json.loads(line) for line in log.read_text().splitlines()]


def module_file(src: Path, module: str) -> str:
    """moelab.x.y -> x/y.py or x/y/__init__.py (relative to the package)."""
    path = src.joinpath(*module.split("."))
    return str((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(src / "moelab"))


def pipeline_stages(repo: Path) -> list[tuple[str, str, str, list[str]]]:
    """(dvc.yaml file, stage name, cmd, deps) of every stage of the lab, as DVC resolves them."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return [
            (str(Path(s.path).relative_to(repo)), s.name, s.cmd, [str(d.def_path) for d in s.deps])
            for s in dvc_repo.index.stages
        ]


@pytest.mark.slow
def test_every_stage_depends_on_the_hash_of_exactly_the_code_its_command_imports(lab):
    repo, records = lab
    imported: dict[str, set[str]] = {kind: set() for kind in STAGE_CODE}
    for dvc_file, name, cmd, deps in pipeline_stages(repo):
        if dvc_file == "fingerprints/dvc.yaml" and name in ("machine", "code"):  # what the code hashes come from
            continue
        code_deps = [d for d in deps if d.startswith(CODE_DEP)]
        assert len(code_deps) == 1 and not [d for d in deps if d.startswith("src/")], f"{name}: {deps}"
        kind = code_deps[0].removeprefix(CODE_DEP).removesuffix(".json")
        (record,) = [r for r in records if r["argv"] == shlex.split(cmd)[1:]]  # each stage ran once
        imported[kind] |= {module_file(repo / "src", m) for m in record["moelab_modules"]}
    package = repo / "src" / "moelab"
    # a checkpoint records the hash of all of TRAIN_CODE (train/pretrain.py too, which the train command
    # does not import): a change there starts its runs fresh, so every stage that trains must re-run
    recorded = {str(f.relative_to(package)) for f in code_files(TRAIN_CODE, package)}
    elsewhere = {"scale": "scale/dvc.yaml"}  # kinds of pipelines the lab does not run (each minutes long)
    problems = []
    for kind, parts in STAGE_CODE.items():
        if kind in elsewhere:
            assert f"{CODE_DEP}{kind}.json" in (ROOT / elsewhere[kind]).read_text()
            continue
        declared = {str(f.relative_to(package)) for f in code_files(parts, package)}
        assert imported[kind], f"no stage of dvc.yaml depends on {CODE_DEP}{kind}.json"
        missing = sorted(imported[kind] - declared)
        unused = sorted(declared - imported[kind] - (recorded if kind in ("train", "exp", "scale") else set()))
        if missing or unused:
            problems.append(f"{kind}: imported but not declared {missing}; declared but never imported {unused}")
    assert not problems, "moelab/stages.py STAGE_CODE differs from the real imports:\n" + "\n".join(problems)
    for kind in ("train", "exp", "scale"):  # every checkpoint records the hash of TRAIN_CODE
        assert set(TRAIN_CODE) <= set(STAGE_CODE[kind])


@pytest.mark.slow
def test_the_fingerprint_commands_never_import_torch(lab):
    _, records = lab
    for command in ("machine", "code"):
        ran = [r for r in records if r["argv"][0] == command]  # machine: once per `dvc repro`
        assert ran and all("torch" not in r["packages"] and r["rc"] == 0 for r in ran)


@pytest.mark.slow
def test_every_checkpoint_records_the_hash_of_the_training_code(lab):
    """A run resumes only on the code that started it: each records code_hash(TRAIN_CODE), a part of
    the code the study's stage depends on (the first test)."""
    repo, _ = lab
    metas = sorted((repo / "metrics" / "study").glob("*/*/train/s0.meta.json"))
    metas += sorted((repo / "metrics" / "base").glob("*/train/*.meta.json"))
    assert len(metas) == 6 + 6  # 3 tasks x (one MoE variant + dense), and their bases (e8, dense)
    assert {json.loads(m.read_text())["code"] for m in metas} == {code_hash(TRAIN_CODE)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "edited, reruns", [("report/plots.py", {"report"}), ("bench/layer.py", {"benchmark", "layer/dvc.yaml:bench"})]
)
def test_editing_report_or_benchmark_code_reruns_no_training(lab, edited, reruns):
    repo, _ = lab
    path = repo / "src" / "moelab" / edited
    original = path.read_text()
    try:
        path.write_text(original + "\n# edited\n")
        assert changed_stages(repo) == {"fingerprints/dvc.yaml:code"}, "only the code hashes are out of date"
        sh("dvc repro --single-item fingerprints/dvc.yaml:code", repo)
        assert changed_stages(repo) == reruns
    finally:
        path.write_text(original)
        sh("dvc repro --single-item fingerprints/dvc.yaml:code", repo)
    assert changed_stages(repo) == set()


@pytest.mark.slow
def test_an_evaluation_only_change_re_runs_only_evaluate_stages(lab):
    """lm.evaluate changed: DVC re-runs the LM's evaluate stages (and the report), no train stage, and
    no stage of another task; the checkpoints are untouched."""
    repo, _ = lab
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["lm"]["evaluate"]["samples"] += 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = repo / "models" / "lm" / "linear-softmax-top2-e8" / "s0"
    stamps = {f.name: f.stat().st_mtime_ns for f in run.glob("*.pt")}
    try:
        stale = changed_stages(repo)
        study = "study/dvc.yaml:"
        assert {s for s in stale if s.startswith(study)} == {
            f"{study}evaluate@lm-linear-softmax-top2-e8",
            f"{study}evaluate-dense@lm",
            f"{study}references@lm",
        }, stale
        out = sh("dvc repro", repo)
        assert "Running stage 'study/dvc.yaml:evaluate@lm-linear-softmax-top2-e8'" in out
        assert "Running stage 'study/dvc.yaml:train" not in out and "classification" not in out.split("Running")[-1]
        assert {f.name: f.stat().st_mtime_ns for f in run.glob("*.pt")} == stamps, "a run was retrained"
        samples = repo / "metrics" / "study" / "lm" / "linear-softmax-top2-e8" / "eval" / "s0.samples.md"
        assert samples.read_text().count("## Sample ") == params["lm"]["evaluate"]["samples"]
    finally:  # back to the committed study: params, lock and the (git-tracked) evaluations; the checkpoints
        sh("git reset -q --hard && git clean -qfd", repo)  # never changed (above), so nothing needs re-running
    assert changed_stages(repo) == set()


@pytest.mark.slow
def test_a_new_gate_adds_its_stages_and_re_runs_nothing_else(lab):
    """A gate added to the study: DVC reports the new variant's train and evaluate stages (and the report
    and benchmark, which read every variant) and nothing of the finished variants; one variant's stage
    can be run alone; removing the gate again leaves the report without it."""
    repo, _ = lab
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["gates"].append("sparsemax")
    try:
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        stale = {s for s in changed_stages(repo) if s.startswith("study/")}
        assert stale == {
            f"study/dvc.yaml:{kind}@{task}-linear-sparsemax-e8"
            for kind in ("train", "evaluate")
            for task in ("lm", "summarization", "classification")
        }, stale
        out = sh("dvc repro study/dvc.yaml:train@classification-linear-sparsemax-e8", repo)
        assert "trained classification/linear-sparsemax-e8/s0" in out and out.count("Running stage 'study/") == 1, out
    finally:
        params_file.write_text(original)
    sh("dvc repro", repo)
    summary = json.loads((repo / "metrics" / "summary.json").read_text())
    assert "linear-sparsemax" not in json.dumps(summary)


@pytest.mark.slow
def test_bytecode_caches_and_editor_files_are_never_dependencies(lab):
    repo, _ = lab
    package = repo / "src" / "moelab"
    env = {k: v for k, v in lab_env(repo).items() if k != "PYTHONDONTWRITEBYTECODE"}
    import_all = (
        "import importlib, pkgutil, moelab\n"
        "for m in pkgutil.walk_packages(moelab.__path__, 'moelab.'):\n"
        "    if m.name != 'moelab.__main__': importlib.import_module(m.name)"
    )
    subprocess.run([sys.executable, "-c", import_all], cwd=repo, env=env, check=True)
    assert list(package.rglob("__pycache__/*.pyc")), "importing wrote no bytecode: the test proves nothing"
    for junk in ("io.py~", ".#io.py", ".io.py.swp", ".pytest_cache/v/cache/lastfailed", ".ruff_cache/CACHEDIR.TAG"):
        (package / junk).parent.mkdir(parents=True, exist_ok=True)
        (package / junk).write_text("x")
    assert changed_stages(repo) == set()


def test_machine_fingerprint_is_stable_and_changes_with_the_threads(tmp_path):
    out = tmp_path / "machine.json"

    def machine(threads: str) -> str:
        command = [sys.executable, "-m", "moelab", "machine", "--out", str(out)]
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": threads})
        return out.read_text()

    first = machine("1")
    stamp = out.stat().st_mtime_ns
    assert machine("1") == first and out.stat().st_mtime_ns == stamp, "same machine: the file is left alone"
    assert json.loads(machine("2"))["omp_num_threads"] == "2" and out.read_text() != first


@pytest.mark.slow
def test_a_narrowed_study_averages_only_what_params_asks_for(lab):
    """Tasks [lm, summarization, classification] -> [lm] with seeds [0] -> [0, 1], then seeds -> [0] with
    fewer steps: the report shows exactly one seed of the new run per variant and no other task, however
    many old files are on disk. It narrows the lab for good, so it is this file's last test."""
    repo, _ = lab
    params_file = repo / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params.update(tasks=["lm"], seeds=[0, 1])
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    sh("dvc repro", repo)
    headline = json.loads((repo / "metrics" / "study.json").read_text())
    assert [headline["lm"][variant]["n"] for variant in ("linear-softmax-top2-e8", "dense")] == [2, 2]
    params["seeds"] = [0]
    params["lm"]["train"]["steps"] = 4
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    sh("dvc repro dvc.yaml:report", repo)  # the report and what it reads (not the experiment, which lm.train re-runs)
    summary = json.loads((repo / "metrics" / "summary.json").read_text())
    headline = json.loads((repo / "metrics" / "study.json").read_text())
    assert set(headline) == {"lm"}
    assert "classification" not in json.dumps(summary) and "summarization" not in json.dumps(summary)
    for variant in ("linear-softmax-top2-e8", "dense"):
        assert headline["lm"][variant]["n"] == 1
        runs = repo / "metrics" / "study" / "lm" / variant
        evaluation = json.loads((runs / "eval" / "s0.json").read_text())
        assert headline["lm"][variant]["test_ppl"] == pytest.approx(evaluation["test_ppl"], rel=1e-5)
        assert json.loads((runs / "train" / "s0.json").read_text())["steps"] == 4
        assert not (runs / "eval" / "s1.json").exists()
