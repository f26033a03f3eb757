"""Training throughput: audio seconds trained per wall second (forward + backward + AdamW step).

CPU rows (``model=rvq8`` and ``model=tiny``, ``hardware=cpu``): the preset's batch (16) of 1 s segments
(the data default; ``tiny`` runs at 16 kHz), fp32, 2 threads, one fixed batch of real speech from the
bundled corpus so that only the model is timed. The step is the trainer's: forward (quantizer dropout
as configured), backward, gradient clipping, AdamW (lr from the config), ``zero_grad``. The first steps
(k-means init of the RVQ) are untimed.

GPU rows (only with CUDA): ``hardware=h200`` — bf16 autocast, its per-device batch (64) and worker
count (capped at the CPU count), fed by the real ``luna.data`` DataLoader over the bundled corpus, as
the trainer does. They also report the fraction of step time spent waiting for the next batch. There is
no baseline: these rows are luna's own figures (no target).

    python -m benchmarks.training_step [--quick]
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Dict, Iterator, List, Optional

import torch

from benchmarks.run import CPU_THREADS, compose, main_of, median, row, skipped, speech, threads


def _loader_batches(cfg: Any, sample_rate: int, batch: int, workers: int, pin: bool) -> Iterator[torch.Tensor]:
    """Endless training batches from the real DataLoader (a new epoch, and new workers, when one ends)."""
    from luna.data import build_datasets, make_loader, prepare

    prepare(cfg.data)
    train_ds, _, _ = build_datasets(cfg.data, sample_rate, cfg.seed)
    epoch = 0
    while True:
        loader = make_loader(train_ds, batch, train=True, seed=cfg.seed, epoch=epoch, num_workers=workers,
                             pin_memory=pin)
        for b in loader:
            yield b["audio"]
        epoch += 1


def measure(
    cfg: Any,
    device: torch.device,
    steps: int,
    warmup: int,
    batch: Optional[int] = None,
    segment_seconds: Optional[float] = None,
    loader_workers: Optional[int] = None,
) -> Dict[str, Any]:
    """Time ``steps`` training steps of ``cfg.model`` after ``warmup`` untimed ones.

    ``loader_workers=None``: one fixed batch of speech (model time only). Otherwise batches come from
    the real DataLoader with that many workers, and ``wait_s`` holds the time each step waited for its
    batch (the rest of ``step_s`` is compute). Returns per-step ``step_s`` and ``wait_s`` lists.
    """
    from luna.devices import AMP_DTYPES, resolve_precision
    from luna.losses import MelLoss
    from luna.models.tokenizer import SpeechTokenizer

    torch.manual_seed(cfg.seed)
    batch = batch or int(cfg.hardware.batch_size)
    segment_seconds = segment_seconds or float(cfg.data.segment_seconds)
    model = SpeechTokenizer.from_config(cfg).to(device).train()
    objective = MelLoss(cfg.loss, model.config.mel.hop_length)
    o = cfg.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=o.lr * cfg.hardware.lr_scale, betas=tuple(o.betas),
                            weight_decay=o.weight_decay, eps=o.eps)
    amp = AMP_DTYPES.get(resolve_precision(cfg.hardware.precision, device))
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else contextlib.nullcontext
    sr = model.sample_rate
    if loader_workers is None:
        fixed = speech(batch * segment_seconds, sr).view(batch, -1).to(device)
        source: Iterator[torch.Tensor] = iter(lambda: fixed, None)
    else:
        cfg.data.segment_seconds = segment_seconds
        source = _loader_batches(cfg, sr, batch, loader_workers, pin=device.type == "cuda")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step_s, wait_s = [], []
    sync()
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        audio = next(source).to(device, non_blocking=True)
        t1 = time.perf_counter()
        with autocast():
            loss, _ = objective(model(audio))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, float(cfg.trainer.grad_clip))
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t2 = time.perf_counter()
        if i >= warmup:
            step_s.append(t2 - t0)
            wait_s.append(t1 - t0)
    if not torch.isfinite(loss.detach()).item():
        raise RuntimeError(f"non-finite loss while timing {cfg.model.name}")
    return {"step_s": step_s, "wait_s": wait_s, "batch": batch, "segment_seconds": segment_seconds,
            "sample_rate": sr}


def run(quick: bool = False, smoke: bool = False) -> List[Dict]:
    rows = []
    with threads(CPU_THREADS):
        for model, steps in (("rvq8", 3 if quick else 10), ("tiny", 10 if quick else 30)):
            cfg = compose(model, "cpu", ["vocoder=griffinlim"] if model == "tiny" else [])
            kw = dict(batch=2, segment_seconds=0.5) if smoke else {}
            m = measure(cfg, torch.device("cpu"), steps=1 if smoke else steps, warmup=1 if smoke else 2, **kw)
            audio = m["batch"] * m["segment_seconds"]
            rate = audio / median(m["step_s"])
            rows.append(row(
                "training_step", f"train {model} on CPU: batch {m['batch']} x {m['segment_seconds']:g} s at "
                f"{m['sample_rate'] // 1000} kHz, fp32, forward + backward + clip + AdamW",
                rate, None, "audio s / s", CPU_THREADS, "cpu", lower_is_better=False,
                note=f"median of {len(m['step_s'])} steps ({median(m['step_s']):.2f} s each) after the k-means "
                     f"init step; one fixed batch of speech (model time only)",
                step_ms=round(median(m["step_s"]) * 1e3, 1), repeats=len(m["step_s"]),
            ))
    for model, steps in (("rvq8", 20 if quick else 60), ("tiny", 20 if quick else 60)):
        what = f"train {model} on GPU: hardware=h200 (bf16 autocast, its per-device batch), real DataLoader"
        if not torch.cuda.is_available():
            rows.append(skipped("training_step", what))
            continue
        cfg = compose(model, "h200", ["vocoder=griffinlim"] if model == "tiny" else [])
        workers = min(int(cfg.hardware.num_workers), os.cpu_count() or 1)
        m = measure(cfg, torch.device("cuda"), steps=2 if smoke else steps, warmup=1 if smoke else 5,
                    loader_workers=workers)
        total, waited = sum(m["step_s"]), sum(m["wait_s"])
        audio = m["batch"] * m["segment_seconds"]
        rows.append(row(
            "training_step", what.replace("its per-device batch", f"batch {m['batch']} x {m['segment_seconds']:g} s"),
            audio * len(m["step_s"]) / total, None, "audio s / s", None, torch.cuda.get_device_name(0),
            lower_is_better=False,
            note=(f"{len(m['step_s'])} steps after 5 warm-up steps, {workers} loader workers (epochs restart them, "
                  f"as in training); {waited / total:.1%} of step time waiting for data; median step "
                  f"{median(m['step_s']) * 1e3:.0f} ms"),
            data_wait_fraction=round(waited / total, 4), step_ms=round(median(m["step_s"]) * 1e3, 1),
            workers=workers, repeats=len(m["step_s"]),
        ))
    return rows


if __name__ == "__main__":
    main_of(run, __doc__)
