"""infra/: every manifest parses and has the shape we rely on; entry points name real job scripts with flags
their parsers accept; the Dockerfile installs what infra/README.md says; one image at adray's version."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml

import adray
from adray.cli import SUBCOMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
JOB_SCRIPT = re.compile(r"(?:^|/)jobs/(\w+)\.py$")
SHELL_STOPS = {"&&", "||", ";", "|", ">", ">>", "2>&1", "fi", "then"}
#: jobs/<file>.py -> adray subcommand (jobs/*.py call adray.cli.run_command with these names)
SCRIPT_COMMAND = {
    "fit": "fit",
    "score": "score",
    "reinspect": "reinspect",
    "fit_bgad": "fit-bgad",
    "build_m3dm": "build-m3dm",
    "evaluate": "evaluate",
    "benchmark": "benchmark",
    "demo": "demo",
}
#: job scripts the manifests are written against before they exist (built by a later change): script ->
#: what builds it. Once jobs/<script>.py exists every check below applies to it as to the others.
PENDING_SCRIPTS = {"fit": "adray fit --detector auto / jobs/fit.py (issue 17, item 3)"}


def _yaml_files() -> list[Path]:
    return sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in _docs(p)]


def _cluster_specs() -> list[tuple[str, dict]]:
    """Every RayCluster spec: RayCluster.spec, RayJob.spec.rayClusterSpec, RayCronJob's job template."""
    out = []
    for path, doc in _all_docs():
        kind, spec = doc["kind"], doc.get("spec", {})
        if kind == "RayCluster":
            out.append((path.name, spec))
        elif kind == "RayJob" and "rayClusterSpec" in spec:
            out.append((path.name, spec["rayClusterSpec"]))
        elif kind == "RayCronJob" and "rayClusterSpec" in spec["jobTemplate"]:
            out.append((path.name, spec["jobTemplate"]["rayClusterSpec"]))
    return out


def _pod_specs(cluster: dict) -> list[dict]:
    return [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster.get("workerGroupSpecs", [])
    ]


def _entrypoint_texts() -> list[tuple[str, str]]:
    """(file, shell text) of everything that launches a job script."""
    texts = []
    for path, doc in _all_docs():
        spec = doc.get("spec", {})
        if doc["kind"] == "RayJob":
            texts.append((path.name, spec["entrypoint"]))
        elif doc["kind"] == "RayCronJob":
            texts.append((path.name, spec["jobTemplate"]["entrypoint"]))
        elif doc["kind"] == "CronJob":
            pod = spec["jobTemplate"]["spec"]["template"]["spec"]
            for c in pod["containers"]:
                texts.append((path.name, "\n".join(c.get("command", []) + c.get("args", []))))
    return texts


def job_invocations(text: str) -> list[tuple[str, list[str]]]:
    """(script stem, argv) for every `.../jobs/<name>.py ARGS` in a shell text, up to a shell operator."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        for i, tok in enumerate(tokens):
            m = JOB_SCRIPT.search(tok)
            if m:
                argv = []
                for t in tokens[i + 1 :]:
                    if t in SHELL_STOPS:
                        break
                    argv.append(t)
                found.append((m.group(1), argv))
    return found


def _invocations() -> list[tuple[str, str, list[str]]]:
    return [(f, s, a) for f, text in _entrypoint_texts() for s, a in job_invocations(text)]


def test_every_yaml_under_infra_parses():
    files = _yaml_files()
    assert len(files) >= 8
    for path in files:
        docs = _docs(path)
        assert docs, f"{path} has no YAML document"
        for d in docs:
            assert isinstance(d, dict), f"{path}: a document is not a mapping"


def test_kinds_and_api_versions():
    expected = {
        "RayCluster": "ray.io/v1",
        "RayJob": "ray.io/v1",
        "RayCronJob": "ray.io/v1",
        "CronJob": "batch/v1",
        "ServiceAccount": "v1",
        "ConfigMap": "v1",
    }
    kinds = {}
    for path, doc in _all_docs():
        assert doc["kind"] in expected, f"{path.name}: unexpected kind {doc['kind']}"
        assert doc["apiVersion"] == expected[doc["kind"]], f"{path.name}: {doc['kind']} {doc['apiVersion']}"
        assert doc["metadata"]["name"], f"{path.name}: unnamed {doc['kind']}"
        kinds.setdefault(doc["kind"], []).append(path.name)
    assert kinds["RayCluster"] == ["raycluster.yaml"]
    assert sorted(kinds["RayJob"]) == ["rayjob-build-m3dm.yaml", "rayjob-fit-bgad.yaml", "rayjob-score.yaml"]
    assert kinds["RayCronJob"] == ["raycronjob-reinspect.yaml"]
    assert kinds["CronJob"] == ["cronjob-reinspect.yaml"]


def test_every_cluster_has_a_gpu_group_that_scales_from_zero():
    specs = _cluster_specs()
    assert len(specs) == 5  # RayCluster + 3 RayJobs + RayCronJob template
    for name, cluster in specs:
        assert cluster["enableInTreeAutoscaling"] is True, name
        assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", name
        gpu = [
            g
            for g in cluster["workerGroupSpecs"]
            for c in g["template"]["spec"]["containers"]
            if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
        ]
        assert gpu, f"{name}: no worker group asks for nvidia.com/gpu"
        for g in gpu:
            assert g["minReplicas"] == 0 and g["replicas"] == 0, (
                f"{name}: {g['groupName']} does not start at 0"
            )
            assert g["maxReplicas"] >= 1, name


def test_clusters_use_token_auth_offline_weights_and_the_ray_version_we_pin():
    pinned = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    for name, cluster in _cluster_specs():
        assert cluster["rayVersion"] == pinned, f"{name}: rayVersion {cluster['rayVersion']} != ray=={pinned}"
        assert cluster["authOptions"]["mode"] == "token", name
        assert cluster["authOptions"]["secretName"] == "adray-ray-token", name
        for pod in _pod_specs(cluster):
            assert pod["serviceAccountName"] == "adray", name
            for c in pod["containers"]:
                refs = [e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])]
                assert "adray-env" in refs, f"{name}: container {c['name']} misses ConfigMap adray-env"
    env = next(d for _, d in _all_docs() if d["kind"] == "ConfigMap")["data"]
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"] == "/models/hf"


def test_every_image_is_this_project_at_its_version():
    tag = f"adray:{adray.__version__}"
    images = []
    for _, cluster in _cluster_specs():
        for pod in _pod_specs(cluster):
            images += [c["image"] for c in pod["containers"] + pod.get("initContainers", [])]
    for _, doc in _all_docs():
        if doc["kind"] == "CronJob":
            images += [
                c["image"] for c in doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
            ]
    launcher = yaml.safe_load((INFRA / "cluster-launcher" / "aws.yaml").read_text())
    images.append(launcher["docker"]["image"])
    assert len(images) > 20
    for image in images:
        assert image == tag or image.endswith("/" + tag), f"image {image!r} is not {tag}"


def test_secrets_referenced_by_manifests_are_created_in_the_readme():
    readme = (INFRA / "README.md").read_text()
    text = "\n".join(p.read_text() for p in KUBERAY.glob("*.yaml"))
    names = set(re.findall(r"secretName: ([\w-]+)", text)) | set(
        re.findall(r"secretKeyRef: \{name: ([\w-]+)", text)
    )
    names |= set(re.findall(r"secretRef: \{name: ([\w-]+)", text))
    assert "adray-ray-token" in names
    for name in names:
        assert f"kubectl create secret generic {name}" in readme, f"README never says how to create {name}"


def test_entry_points_name_existing_job_scripts():
    invocations = _invocations()
    scripts = {s for _, s, _ in invocations}
    assert {"score", "fit_bgad", "build_m3dm", "reinspect"} <= scripts
    for file, script, _ in invocations:
        if script in PENDING_SCRIPTS and not (ROOT / "jobs" / f"{script}.py").is_file():
            continue  # written against the CLI of a later change; checked as soon as it exists
        assert (ROOT / "jobs" / f"{script}.py").is_file(), f"{file}: jobs/{script}.py does not exist"
        assert script in SCRIPT_COMMAND and SCRIPT_COMMAND[script] in SUBCOMMANDS, f"{file}: {script}"


@pytest.mark.parametrize(
    "file,script,argv",
    [pytest.param(f, s, a, id=f"{f}:{s}") for f, s, a in _invocations()],
)
def test_entry_point_flags_parse_with_the_job_parser(file, script, argv):
    command = SCRIPT_COMMAND[script]
    if command not in SUBCOMMANDS:
        pytest.skip(
            f"adray {command} is not written yet ({PENDING_SCRIPTS.get(script)}); cannot check {file}"
        )
    module = SUBCOMMANDS[command][0]
    if importlib.util.find_spec(f"adray.commands.{module}") is None:
        pytest.skip(f"adray.commands.{module} is not written yet; cannot check {file}'s flags")
    parser = build_parser(f"jobs/{script}.py", command)
    known = {opt for action in parser._actions for opt in action.option_strings}
    for tok in argv:
        if tok.startswith("--"):
            assert tok.split("=", 1)[0] in known, f"{file}: jobs/{script}.py has no flag {tok}"
    try:
        parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports the problem on stderr
        pytest.fail(f"{file}: jobs/{script}.py rejects {argv}: exit {exc.code}")


def test_scheduled_runs_have_one_run_id_per_slot():
    for file, script, argv in _invocations():
        if script != "reinspect":
            continue
        run_id = argv[argv.index("--run-id") + 1]
        assert "$(date -u +%Y%m%d)" in run_id or run_id == "$SLOT", (
            f"{file}: run id {run_id!r} is not per slot"
        )
    cron = next(d for _, d in _all_docs() if d["kind"] == "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    script = "\n".join(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert 'SLOT="reinspect-$(date -u +%Y%m%d)"' in script and 'FIT="fit-$(date -u +%Y%m%d)"' in script
    assert '--submission-id "$id"' in script and '--run-id "$SLOT"' in script
    assert 'step "$SLOT" python /opt/adray/src/jobs/reinspect.py' in script  # submission id = run id
    raycron = next(d for _, d in _all_docs() if d["kind"] == "RayCronJob")
    assert raycron["spec"]["schedule"] == cron["spec"]["schedule"]
    assert raycron["spec"]["jobTemplate"]["shutdownAfterJobFinishes"] is True


def _install_block(text: str) -> list[str]:
    # the markers are whole lines: `# install:begin` (Dockerfile) or `<!-- install:begin -->` (README)
    m = re.search(r"^(?:# |<!-- )install:begin.*?$(.*?)^(?:# |<!-- )install:end", text, re.M | re.S)
    assert m, "no install:begin / install:end block"
    block = m.group(1)
    return [line.strip() for line in block.replace("\\\n", " ").splitlines()]


def _apt_packages(lines: list[str]) -> set[str]:
    pkgs: set[str] = set()
    for line in lines:
        for part in line.split("&&"):
            tokens = part.split()
            if "apt-get" in tokens and "install" in tokens:
                pkgs |= {t for t in tokens[tokens.index("install") + 1 :] if not t.startswith("-")}
    return pkgs


def _pip_installs(lines: list[str]) -> list[str]:
    cmds = []
    for line in lines:
        line = line.removeprefix("RUN ").strip()
        for part in line.split("&&"):
            tokens = shlex.split(part)
            if "pip" in tokens and "install" in tokens:
                cmds.append(" ".join(tokens[tokens.index("pip") :]))
    return cmds


def test_dockerfile_installs_what_the_readme_says():
    dockerfile = (INFRA / "Dockerfile").read_text()
    readme = (INFRA / "README.md").read_text()
    docker_lines, readme_lines = _install_block(dockerfile), _install_block(readme)
    assert _pip_installs(docker_lines) == _pip_installs(readme_lines)
    assert any("-c constraints.txt" in c and "[gpu]" in c for c in _pip_installs(docker_lines))
    assert _apt_packages(docker_lines) == _apt_packages(readme_lines)
    assert "libusb-1.0-0" in _apt_packages(docker_lines)  # open3d needs it at import


def test_dockerfile_uses_a_cuda_base_and_a_non_root_user():
    dockerfile = (INFRA / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", dockerfile, re.M))
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert base.startswith("nvidia/cuda:"), base
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0"), f"final USER is {users[-1:]}"
    for path in ("adray", "schemas", "jobs", "pyproject.toml", "constraints.txt"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", dockerfile, re.M), (
            f"Dockerfile does not copy {path}"
        )
        assert (ROOT / path).exists()


def test_cluster_launcher_config_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "cluster-launcher" / "aws.yaml").read_text())
    assert config["provider"]["type"] == "aws"
    prepared = prepare_config(config)
    validate_config(prepared)
    gpu = prepared["available_node_types"]["ray.worker.gpu"]
    assert gpu["min_workers"] == 0 and gpu["node_config"]["InstanceType"].startswith(("g", "p"))
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]


def test_job_invocation_parser_reads_shell_text():
    text = 'set -e\nray job submit --submission-id "$S" -- python /x/jobs/score.py --input a --run-id "$S" && echo ok'
    assert job_invocations(text) == [("score", ["--input", "a", "--run-id", "$S"])]


# ----------------------------------------------------------------------------------------- the ladder
# Both schedules run `fit --detector auto`, then `reinspect --detector auto` only after the fit succeeded.
# The shell texts of the manifests are run for real, with fake `python` / `ray` commands first on PATH
# that record what they were asked to do.

SCHEDULES = ("raycronjob-reinspect.yaml", "cronjob-reinspect.yaml")
FAKE_PYTHON = """#!/bin/bash
echo "python $*" >> "$LOG"
case "$1" in *jobs/fit.py) [ "$FAIL" = fit ] && exit 3 ;; esac
exit 0
"""
FAKE_RAY = """#!/bin/bash
# ray job status|logs|submit, with submissions kept as files under $STATE (id -> final status)
echo "ray $*" >> "$LOG"
if [ "$2" = status ]; then
  [ -f "$STATE/$3" ] || { echo "job $3 not found" >&2; exit 1; }
  echo "Job '$3' status: $(cat "$STATE/$3")"
elif [ "$2" = submit ]; then
  id="$4"
  case "$id" in "$FAIL"-*) echo FAILED > "$STATE/$id" ;; *) echo SUCCEEDED > "$STATE/$id" ;; esac
fi
exit 0
"""


def _fake_bin(tmp_path: Path) -> dict[str, str]:
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("python", FAKE_PYTHON), ("ray", FAKE_RAY)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "state").mkdir(exist_ok=True)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "LOG": str(tmp_path / "log"),
        "STATE": str(tmp_path / "state"),
    }


def _run_shell(shell: str, text: str, env: dict[str, str], fail: str = "") -> tuple[int, list[str]]:
    import subprocess

    log = Path(env["LOG"])
    log.unlink(missing_ok=True)
    proc = subprocess.run(
        [shell, "-c", text], env={**env, "FAIL": fail}, capture_output=True, text=True, timeout=30
    )
    return proc.returncode, log.read_text().splitlines() if log.exists() else []


def _scripts(lines: list[str]) -> list[str]:
    return [m.group(1) for line in lines for m in [re.search(r"jobs/(\w+)\.py", line)] if m]


def test_schedules_run_fit_auto_then_reinspect_auto():
    scheduled = [(f, t) for f, t in _entrypoint_texts() if f in SCHEDULES]
    assert sorted(f for f, _ in scheduled) == sorted(SCHEDULES)
    for file, text in scheduled:
        calls = job_invocations(text)
        assert [s for s, _ in calls] == ["fit", "reinspect"], file
        for script, argv in calls:
            assert argv[argv.index("--detector") + 1] == "auto", f"{file}: {script}"
        fit_args, re_args = (a for _, a in calls)
        for flag in ("--input", "--output"):  # one archive, one root: the registry is under the output
            assert fit_args[fit_args.index(flag) + 1] == re_args[re_args.index(flag) + 1], f"{file}: {flag}"


def test_raycronjob_entrypoint_reinspects_only_after_the_fit_succeeded(tmp_path):
    entry = next(d for _, d in _all_docs() if d["kind"] == "RayCronJob")["spec"]["jobTemplate"]["entrypoint"]
    env = _fake_bin(tmp_path)
    rc, lines = _run_shell("sh", entry, env)  # ray job submit runs the entrypoint with /bin/sh
    assert rc == 0 and _scripts(lines) == ["fit", "reinspect"]
    rc, lines = _run_shell("sh", entry, env, fail="fit")
    assert rc != 0 and _scripts(lines) == ["fit"]


def test_cronjob_submits_the_fit_then_the_reinspection_once_per_slot(tmp_path):
    cron = next(d for _, d in _all_docs() if d["kind"] == "CronJob")
    script = "\n".join(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"])
    env = _fake_bin(tmp_path)
    rc, lines = _run_shell("bash", script, env, fail="fit")
    submits = [line for line in lines if line.startswith("ray job submit")]
    assert rc != 0 and _scripts(submits) == ["fit"]  # the fit failed: no reinspection was submitted
    for f in Path(env["STATE"]).iterdir():
        f.unlink()
    rc, lines = _run_shell("bash", script, env)
    submits = [line for line in lines if line.startswith("ray job submit")]
    assert rc == 0 and _scripts(submits) == ["fit", "reinspect"]
    assert re.match(r"ray job submit --submission-id fit-\d{8} ", submits[0])
    slot = re.search(r"--submission-id (reinspect-\d{8}) ", submits[1]).group(1)
    assert f"--run-id {slot}" in submits[1]
    rc, lines = _run_shell("bash", script, env)  # a retried pod of the same slot submits nothing again
    assert rc == 0 and not [line for line in lines if line.startswith("ray job submit")]
    assert sum(line.startswith("ray job logs --follow") for line in lines) == 2
