"""Seconds per `make demo` training step, alone and beside a competing PyTorch process, per OpenMP wait policy.

Each measurement is a fresh process (OpenMP reads OMP_WAIT_POLICY once, when
torch loads it) that builds the demo exactly as `vqlib fit --config
configs/tokenizer/demo.yaml` does (LightningCLI with `run=False`), trains
`--warmup` batches, then times `--steps` batches (data loading included) and
reports their median. Settings: OpenMP's default policy and `PASSIVE`, each
alone and with a competitor: a second process running PyTorch matrix products
on all cores with the default policy, as a test run or another training job
would. The settings run interleaved, `--repeats` rounds, so that drift in the
machine's load hits them alike; the table shows the median over rounds.

    python benchmarks/bench_demo.py --write BENCHMARKS.md          # about 5 minutes on an idle 2-core machine
    python benchmarks/bench_demo.py --steps 10 --repeats 1         # a quick look
    python benchmarks/bench_demo.py --profile                      # torch.profiler table of demo steps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CONFIG = ROOT / "configs/tokenizer/demo.yaml"
POLICIES = {"default": None, "PASSIVE": "PASSIVE"}
# a busy neighbour: short parallel regions back to back, as in a training step
COMPETITOR = """
import torch
x = torch.randn(256, 256)
while True:
    for _ in range(50):
        x = torch.tanh(x @ x / 16)
"""


def build_demo(args_extra: list[str] | None = None):
    """The demo's module and data module, built from demo.yaml as the CLI builds them."""
    import torch
    from lightning.pytorch.cli import LightningCLI

    from vqlib.cli import quiet_lightning
    from vqlib.tokenizers.module import TokenizerModule

    quiet_lightning()
    torch.set_flush_denormal(True)  # as vqlib.cli does
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        cli = LightningCLI(TokenizerModule, run=False, args=["--config", str(CONFIG), *(args_extra or [])],
                           auto_configure_optimizers=False, save_config_callback=None)  # fmt: skip
    finally:
        sys.argv = argv
    return cli.model, cli.datamodule


def demo_trainer(max_steps: int, callbacks: list):
    import lightning.pytorch as pl

    return pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=callbacks)  # fmt: skip


def worker(warmup: int, steps: int) -> dict:
    """Train warmup + steps demo batches; seconds of each timed batch (end to end, data included)."""
    import lightning.pytorch as pl
    import torch

    class StepTimer(pl.Callback):
        def __init__(self):
            self.ends: list[float] = []

        def on_train_batch_end(self, *args, **kwargs):
            self.ends.append(time.perf_counter())

    pl.seed_everything(0, verbose=False)
    module, data = build_demo()
    timer = StepTimer()
    demo_trainer(warmup + steps, [timer]).fit(module, datamodule=data)
    times = [b - a for a, b in zip(timer.ends[warmup - 1 :], timer.ends[warmup:])] if warmup else []
    return {"median": statistics.median(times), "mean": statistics.fmean(times), "steps": len(times),
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}  # fmt: skip


def profile(warmup: int, steps: int) -> None:
    """torch.profiler over `steps` demo batches after `warmup`: the operators that take the time."""
    import lightning.pytorch as pl
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    class Profile(pl.Callback):
        def __init__(self):
            self.prof = torch_profile(activities=[ProfilerActivity.CPU], record_shapes=False)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == warmup:
                self.prof.__enter__()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == warmup + steps - 1:
                self.prof.__exit__(None, None, None)

    pl.seed_everything(0, verbose=False)
    module, data = build_demo()
    cb = Profile()
    demo_trainer(warmup + steps, [cb]).fit(module, datamodule=data)
    print(cb.prof.key_averages().table(sort_by="cpu_time_total", row_limit=30))


def measure(policy: str | None, contended: bool, warmup: int, steps: int, threads: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    neighbour = None
    if contended:  # the neighbour keeps the user's environment, minus any wait policy or thread cap
        bare = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
        neighbour = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=bare)
    try:
        cmd = [sys.executable, __file__, "--worker", "--warmup", str(warmup), "--steps", str(steps)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({policy}, contended={contended}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed training batches per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds over all settings")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the demo (default: unset)")
    p.add_argument("--write", default=None, help="write the table into this markdown file (e.g. BENCHMARKS.md)")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of demo steps instead")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.warmup, args.steps)))
        return
    if args.profile:
        profile(args.warmup, args.steps)
        return

    settings = [(name, contended) for contended in (False, True) for name in POLICIES]
    results: dict[tuple[str, bool], list[float]] = {s: [] for s in settings}
    t0 = time.time()
    for r in range(args.repeats):
        order = settings if r % 2 == 0 else settings[::-1]
        for name, contended in order:
            res = measure(POLICIES[name], contended, args.warmup, args.steps, args.threads)
            results[(name, contended)].append(res["median"])
            print(f"round {r + 1}: {name:8s} {'with competitor' if contended else 'alone':15s} "
                  f"{res['median']:.3f} s/step (mean {res['mean']:.3f}, {res['steps']} steps, {res['threads']} threads)",
                  flush=True)  # fmt: skip
    med = {s: statistics.median(v) for s, v in results.items()}
    rows = ["| OMP_WAIT_POLICY | alone s/step | with a competing PyTorch process s/step | slowdown |", "|---|---|---|---|"]
    for name in POLICIES:
        alone, busy = med[(name, False)], med[(name, True)]
        rows.append(f"| {name} | {alone:.3f} | {busy:.3f} | {busy / alone:.1f}x |")
    base = med[("default", False)]
    summary = (f"PASSIVE alone costs {100 * (med[('PASSIVE', False)] / base - 1):+.1f} % against the default; "
               f"with a competitor it takes {med[('PASSIVE', True)]:.3f} s/step instead of {med[('default', True)]:.3f}.")  # fmt: skip
    table = "\n".join(rows)
    print()
    print(table)
    print(summary)
    print(f"total wall time {time.time() - t0:.0f} s")
    if args.write:
        import lightning
        import torch
        from report import machine_line, write_block

        cmd = "python benchmarks/bench_demo.py " + " ".join(a for a in sys.argv[1:])
        threads = f"OMP_NUM_THREADS={args.threads}" if args.threads else f"{os.cpu_count()} cores, threads unset"
        text = "\n".join([
            f"Command: `{cmd}`", "",
            machine_line(threads, f"torch {torch.__version__}, lightning {lightning.__version__}"), "",
            f"### `make demo` step time and the OpenMP wait policy ({args.steps} timed steps after {args.warmup}, "
            f"median of {args.repeats} interleaved rounds)", "",
            table, "", summary, "",
            "Competitor: another process multiplying 256×256 matrices with PyTorch on all cores, default policy.",
        ])  # fmt: skip
        write_block(args.write, "bench_demo", text, heading="## Demo step time (issue 12)")


if __name__ == "__main__":
    main()
