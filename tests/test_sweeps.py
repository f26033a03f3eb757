"""Sweeps through hydra-submitit-launcher on a real SLURM cluster (CPU, tiny model), and the local launcher.

What a cluster user relies on: one run dir per job (named from the overrides, so a requeued job finds its
own last.pt), one SLURM task per DDP rank, and a requeued or timed-out job continuing from its last
checkpoint with the same wandb run. The cluster tests skip without a cluster (``sinfo`` missing or not
answering) unless ``LUNA_REQUIRE_SLURM=1``, which turns the skip into a failure (CI starts one with
``SLURM_NODE_CPUS=4 ../shared/tools/slurm-local.sh start``).
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from omegaconf import OmegaConf

from tests.paths import ROOT
from luna.training import preemption
from tests.training.helpers import TINY, load, metrics

# 1 CPU and 1 GB per task: the test node advertises 4 CPUs, so the 4 jobs of a 2×2 sweep run at once
SIZE = ["hardware.cpus_per_task=1", "hardware.mem_gb=1"]
GRID = ["model.codebook_size=16,32", "model.num_quantizers=1,2"]
ENV = {"PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


# ---- the cluster ----------------------------------------------------------------------------------
def _cluster_problem() -> Optional[str]:
    for tool in ("sinfo", "sbatch", "squeue", "scontrol", "scancel"):
        if shutil.which(tool) is None:
            return f"{tool} not found on PATH"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%a %D %T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s"
    if r.returncode != 0:
        return f"sinfo failed: {(r.stderr or r.stdout).strip()[:200]}"
    if not any(line.split()[:1] == ["up"] for line in r.stdout.splitlines()):
        return f"no partition is up: {r.stdout.strip()[:200]!r}"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    problem = _cluster_problem()
    if problem:
        msg = f"no SLURM cluster answers ({problem}); start one with ../shared/tools/slurm-local.sh start"
        if os.environ.get("LUNA_REQUIRE_SLURM") == "1":
            pytest.fail(f"LUNA_REQUIRE_SLURM=1 but {msg}")
        pytest.skip(msg)


# ---- running sweeps -------------------------------------------------------------------------------
def _cmd(sweep_dir: Path, launcher: str, overrides: List[str]) -> List[str]:
    return [sys.executable, "-m", "luna.train", "-m", *TINY, *SIZE, *overrides,
            f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}"]


def run_sweep(sweep_dir: Path, overrides: List[str], launcher: str = "slurm", timeout: int = 300) -> str:
    """Run a multirun to completion; returns its output, fails with it when the sweep fails."""
    try:
        r = subprocess.run(_cmd(sweep_dir, launcher, overrides), capture_output=True, text=True, timeout=timeout,
                           cwd=ROOT, env={**os.environ, **ENV})
    finally:
        _cancel_jobs(sweep_dir)  # nothing of a failed or timed-out test keeps a slot of the node
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"sweep failed ({r.returncode}):\n{out[-4000:]}\n{_job_logs(sweep_dir)}"
    return out


def _job_ids(sweep_dir: Path) -> List[str]:
    """SLURM ids of the sweep's jobs, from submitit's folders (``<id>/<id>_submitted.pkl``, arrays ``<a>_<i>``)."""
    return sorted(p.name[: -len("_submitted.pkl")] for p in (sweep_dir / ".submitit").glob("*/*_submitted.pkl"))


def _cancel_jobs(sweep_dir: Path) -> None:
    ids = _job_ids(sweep_dir) if shutil.which("scancel") else []
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


def _job_logs(sweep_dir: Path) -> str:
    parts = []
    for p in sorted((sweep_dir / ".submitit").glob("*/*_log.*")):
        parts.append(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}")
    return "\n".join(parts)


def run_dirs(sweep_dir: Path) -> List[Path]:
    return sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/config.yaml"))


def _job_state(job_id: str) -> str:
    r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    return r.stdout.strip()


def _last_step(run: Path) -> int:
    try:
        return int(load(run / "checkpoints" / "last.pt")["step"])
    except Exception:  # not written yet (atomic rename: never half-written)
        return -1


class Background:
    """A one-job sweep running in the background, watched through its run dir and its SLURM job."""

    def __init__(self, sweep_dir: Path, overrides: List[str]):
        self.sweep_dir = sweep_dir
        self.proc = subprocess.Popen(_cmd(sweep_dir, "slurm", overrides), cwd=ROOT, env={**os.environ, **ENV},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)

    def wait_for_step(self, step: int, timeout: float = 180) -> int:
        """Block until the job's last.pt holds at least ``step``; returns the job id."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            runs, ids = run_dirs(self.sweep_dir), _job_ids(self.sweep_dir)
            if runs and ids and _last_step(runs[0]) >= step:
                return int(ids[0]) if ids[0].isdigit() else ids[0]
            assert self.proc.poll() is None, f"the sweep ended before step {step}:\n{self.proc.stdout.read()[-4000:]}"
            time.sleep(0.2)
        pytest.fail(f"no last.pt with step >= {step} after {timeout} s\n{_job_logs(self.sweep_dir)}")

    def release_requeued(self, job_id, log: Path, timeout: float = 120) -> None:
        """SLURM holds a requeued batch job back for ~2 minutes (BeginTime); start it now instead."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = _job_state(str(job_id))
            if state == "PENDING":
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True,
                               timeout=30)
                return
            if not state or "resumed from" in log.read_text(errors="replace"):
                return  # gone from the queue or already running again: the assertions will tell
            time.sleep(0.3)
        pytest.fail(f"job {job_id} was not requeued within {timeout} s (state {_job_state(str(job_id))!r})")

    def finish(self, timeout: float = 240) -> str:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, _ = self.proc.communicate()
            pytest.fail(f"the sweep did not finish within {timeout} s:\n{out[-3000:]}\n{_job_logs(self.sweep_dir)}")
        assert self.proc.returncode == 0, f"sweep failed:\n{out[-4000:]}\n{_job_logs(self.sweep_dir)}"
        return out

    def stop(self) -> None:
        _cancel_jobs(self.sweep_dir)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _val_steps(log: str) -> List[int]:
    return [int(s) for s in re.findall(r"\] - step (\d+) epoch \d+: val loss", log)]


def _check_grid(sweep_dir: Path, steps: int, group: str) -> Dict[tuple, Path]:
    """4 runs, one per (K, N), each in its own dir named after its overrides, trained to ``steps``."""
    by_kn = {}
    for run in run_dirs(sweep_dir):
        cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
        kn = (cfg.model.codebook_size, cfg.model.num_quantizers)
        assert f"model.codebook_size={kn[0]}" in run.name and f"model.num_quantizers={kn[1]}" in run.name, run.name
        assert kn not in by_kn, f"two runs for {kn}"
        by_kn[kn] = run
        assert load(run / "checkpoints" / "last.pt")["step"] == steps
        assert metrics(run)["step"] == steps
        # every run of one sweep logs into one wandb group (the trainer saves the config it resolved)
        assert OmegaConf.load(run / "config.yaml").logger.wandb.group == group
    assert sorted(by_kn) == list(itertools.product([16, 32], [1, 2]))
    return by_kn


# ---- tests without a cluster ----------------------------------------------------------------------
def test_slurm_launcher_is_sized_from_the_hardware_preset():
    def launcher(*overrides: str):
        from hydra import compose, initialize_config_dir

        from luna.config import CONF_DIR

        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
        la = cfg.hydra.launcher
        return la.tasks_per_node, la.gpus_per_node, la.cpus_per_task, la.mem_gb, la.nodes

    tasks, gpus, cpus, mem, nodes = launcher("hardware=cpu", "hardware.gpus=2")
    assert (tasks, gpus, cpus, mem, nodes) == (2, None, 2, 8, 1)  # CPU ranks: 2 tasks, no GPU request at all
    assert launcher("hardware=a100_80g", "hardware.gpus=4")[:5] == (4, 4, 10, 100, 1)
    assert launcher("hardware=auto")[1] == 1  # auto on a cluster means the GPU it asks for


def test_preemption_watch_saves_first_then_hands_the_signal_on():
    calls = []

    def previous(signum, frame):  # stands in for submitit's handlers
        calls.append(signum)

    usr = preemption.requeue_signal()
    old = {s: signal.signal(s, previous) for s in (usr, signal.SIGTERM)}
    try:
        with preemption.PreemptionWatch(active=True) as watch:
            assert watch.requested() is None
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), usr)
            time.sleep(0.05)
            assert calls == []  # recorded only: the step in progress finishes first
            assert watch.requested() == usr  # the requeue signal wins over SIGTERM
            with pytest.raises(SystemExit):  # the previous handler returned (a rank > 0): stop anyway
                watch.deliver(usr, step=7)
            assert calls == [usr]
            assert watch.requested() == signal.SIGTERM
            watch.deliver(signal.SIGTERM, step=7)  # submitit ignores SIGTERM: training goes on
            assert calls == [usr, signal.SIGTERM] and watch.requested() is None
            os.kill(os.getpid(), usr)  # arrives after the last step boundary
            time.sleep(0.05)
        assert calls == [usr, signal.SIGTERM, usr]  # handed on when the loop ends
        assert signal.getsignal(usr) is previous and signal.getsignal(signal.SIGTERM) is previous
        with preemption.PreemptionWatch(active=False) as idle:  # outside SLURM/submitit: hands off
            assert signal.getsignal(usr) is previous and idle.requested() is None
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---- tests on the cluster -------------------------------------------------------------------------
@pytest.mark.slurm
def test_slurm_sweep_2x2_lands_in_four_dirs_and_reports(slurm, tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_sweep(sweep_dir, [*GRID, "trainer.max_steps=4"])
    runs = _check_grid(sweep_dir, steps=4, group="sweep")
    ids = _job_ids(sweep_dir)
    assert len(ids) == 4 and all(re.fullmatch(r"\d+_\d", i) for i in ids), ids  # one SLURM array of 4
    script = next((sweep_dir / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --cpus-per-task=1" in script and "#SBATCH --ntasks-per-node=1" in script
    assert not re.search(r"^#SBATCH --(gpus|gres)", script, re.M)  # CPU hardware asks for no GPU at all
    for run in runs.values():
        assert "world 1 (single, cpu, fp32)" in (run / "train.log").read_text()

    r = subprocess.run([sys.executable, "-m", "luna.report", str(sweep_dir)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    table = [line for line in (sweep_dir / "report.md").read_text().splitlines()
             if line.startswith("| ") and not line.startswith("| run ")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert sorted((int(c[1]), int(c[2])) for c in cells) == sorted(runs)
    assert all(c[9] == "4" and c[5] != "n/a" for c in cells), table  # steps and val loss of every run
    assert (sweep_dir / "rate_distortion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slurm
def test_two_slurm_tasks_are_two_ddp_ranks_with_identical_weights(slurm, tmp_path):
    sweep_dir = tmp_path / "ddp"
    run_sweep(sweep_dir, ["hardware.gpus=2", "hardware.device=cpu", "trainer.max_steps=4"])
    [run] = run_dirs(sweep_dir)
    m = metrics(run)
    assert m["world_size"] == 2 and m["step"] == 4
    assert m["rank_sync_checks"] >= 4  # every step: per-tensor checksums all-gathered, equal on both ranks
    log = (run / "train.log").read_text()
    assert "rank 1/2 joined (slurm, gloo" in log and "world 2 (slurm, cpu, fp32)" in log  # SLURM tasks, not spawn
    [job] = _job_ids(sweep_dir)
    assert "#SBATCH --ntasks-per-node=2" in (sweep_dir / ".submitit" / job / f"{job}_submission.sh").read_text()
    assert load(run / "checkpoints" / "last.pt")["step"] == 4


def _interrupted_run(sweep_dir, overrides, at_step, command):
    """Run one SLURM job, hit it with ``command + [job id]`` once it reached ``at_step``, let the requeued
    job finish; returns (run dir, its train.log)."""
    job = Background(sweep_dir, overrides)
    try:
        job_id = job.wait_for_step(at_step)
        subprocess.run([*command, str(job_id)], check=True, capture_output=True, timeout=30)
        [run] = run_dirs(sweep_dir)
        job.release_requeued(job_id, run / "train.log")
        job.finish()
    finally:
        job.stop()
    return run, (run / "train.log").read_text()


@pytest.mark.slurm
def test_scontrol_requeue_resumes_from_last_checkpoint(slurm, tmp_path):
    steps = 400
    run, log = _interrupted_run(tmp_path / "requeue", [f"trainer.max_steps={steps}", "checkpointing.every_steps=1"],
                                10, ["scontrol", "requeue"])
    saved = [int(s) for s in re.findall(r"received SIGTERM: last\.pt holds step (\d+)", log)]
    resumed = [int(s) for s in re.findall(r"resumed from \S+/last\.pt at step (\d+)", log)]
    assert saved and resumed, log[-3000:]
    assert resumed[0] >= saved[0] >= 10  # continued from where it stopped, never from step 0
    assert _val_steps(log) == sorted(_val_steps(log)) and _val_steps(log)[-1] == steps, log[-3000:]
    assert load(run / "checkpoints" / "last.pt")["step"] == steps and metrics(run)["step"] == steps


@pytest.mark.slurm
def test_timeout_signal_saves_at_the_next_step_and_submitit_requeues(slurm, tmp_path):
    # USR2 is what SLURM sends signal_delay_s before the time limit; no periodic checkpoints: the step
    # resumed from can only come from the save the signal triggered; the wandb run must stay the same
    steps = 200
    # signalled after two epochs (9 steps each): training is well under way
    run, log = _interrupted_run(tmp_path / "timeout", [f"trainer.max_steps={steps}", "checkpointing.every_steps=0",
                                "logger=wandb"], 18, ["scancel", "--signal=USR2"])
    saved = re.findall(r"received SIGUSR2: last\.pt holds step (\d+)", log)
    resumed = re.findall(r"resumed from \S+/last\.pt at step (\d+)", log)
    assert len(saved) == 1 and "Requeued job" in log, log[-3000:]  # submitit requeued it via checkpoint()
    assert resumed == saved and int(saved[0]) >= 18
    assert _val_steps(log) == sorted(_val_steps(log)) and _val_steps(log)[-1] == steps
    assert load(run / "checkpoints" / "last.pt")["step"] == steps and metrics(run)["step"] == steps
    run_id = (run / "wandb_run_id").read_text().strip()
    attempts = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and all(a.endswith(f"-{run_id}") for a in attempts), attempts


@pytest.mark.slow  # no cluster needed (submitit's local executor): not a slurm test, but 4 trainings
def test_local_launcher_runs_the_same_sweep_without_a_cluster(tmp_path):
    # submitit's local executor needs no cluster, so this one runs everywhere; an explicit group wins
    sweep_dir = tmp_path / "local"
    run_sweep(sweep_dir, [*GRID, "trainer.max_steps=4", "logger.wandb.group=mine"], launcher="local")
    _check_grid(sweep_dir, steps=4, group="mine")
    assert not list((sweep_dir / ".submitit").glob("*/*_submission.sh"))  # no sbatch involved
