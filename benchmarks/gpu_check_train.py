"""The training checks of ``benchmarks/gpu_check.py``: DRhard's model under the paper preset, a SIGKILLed run
resumed, and ``hardneg train`` under torchrun (each a function that returns its detail line or raises).

* :func:`drhard_paper`: a tiny RoBERTa with DRhard's head (a ``RobertaDot`` checkpoint: ``config.json`` +
  ``pytorch_model.bin`` with ``roberta.*``, ``embeddingHead.*``, ``norm.*``, and a byte-level BPE tokenizer
  trained here on the tiny corpus) trains STAR for a few steps under ``--preset paper-passage``: DRhard's LAMB,
  fp16 autocast with the loss scaler, gradient checkpointing, pair-mean mixing.
* :class:`Runs`: the plain ``hardneg train star`` run (fp16, dropout on, 8 steps, a checkpoint every 2) the
  other two compare against, in subprocesses with ``--device cpu`` or ``cuda`` (one GPU: ``CUDA_VISIBLE_DEVICES``
  names the GPU asked for, so that torchrun's rank 0 trains on the same one).
* :func:`kill_resume`: the same run SIGKILLed from outside once its step-2 checkpoint is on disk and step 3 is
  logged (a real SIGKILL between checkpoints: no handler runs), resumed with ``--resume``, ends with the plain
  run's weights; its log lists each step once; a resume whose generators are reseeded after loading does *not*
  match (dropout depends on them).
* :func:`torchrun_runs`: ``torchrun --nproc_per_node 1`` gives the plain run's weights and per-step losses (so
  the same data order and dropout masks); with 2 GPUs, ``--nproc_per_node 2`` (NCCL) finishes with finite
  losses and a 2-process checkpoint.

"Equal" is bit for bit. On a GPU whose kernels are not deterministic (atomics in some backward passes) a second
plain run, the twin, is made: if it matches the first bit for bit, the compared run must too; if it does not,
the compared run's distance from the plain run (relative to the plain run's update over steps 3-8) must be
within 5x the twin's (and 1e-3), where a dropout stream restored wrongly gives a distance of order 1.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

STEPS, SAVE = 8, 2
#: a resume whose generators are reseeded after the checkpoint restored them (the control)
RESEEDED = ("import sys, torch; import hardneg.distributed as d; restore = d.set_rng_state; "
            "d.set_rng_state = lambda s, dev=None: (restore(s, dev), torch.manual_seed(12345)) and None; "
            "from hardneg.cli import main; sys.argv = ['hardneg', *sys.argv[1:]]; main()")


def _tail(text: str, n: int = 1500) -> str:
    return text.strip()[-n:]


# ----------------------------------------------------------------------------- DRhard under the paper preset
def drhard_checkpoint(folder: Path, texts: list[str], hidden: int = 32, out_dim: int = 16) -> Path:
    """A tiny DRhard ``RobertaDot`` checkpoint folder (with its tokenizer files; dropout 0.1)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel

    folder.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))  # vocab.json, merges.txt (as roberta-base ships)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    config = RobertaConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=2 * hidden, max_position_embeddings=514, type_vocab_size=1,
                           pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
                           output_embedding_size=out_dim, architectures=["RobertaDot"])
    torch.manual_seed(0)
    roberta = RobertaModel(config, add_pooling_layer=False)
    head, norm = torch.nn.Linear(hidden, out_dim), torch.nn.LayerNorm(out_dim)
    state = {f"roberta.{k}": v for k, v in roberta.state_dict().items()}
    state.update({f"embeddingHead.{k}": v for k, v in head.state_dict().items()})
    state.update({f"norm.{k}": v for k, v in norm.state_dict().items()})
    config.save_pretrained(folder)
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def drhard_paper(device: str, work: Path, data: Path) -> str:
    import torch

    from hardneg.model.drhard import HeadTower
    from hardneg.train.presets import resolve_config
    from hardneg.train.trainer import Trainer

    texts = [json.loads(line)["text"] for name in ("corpus.jsonl", "queries.jsonl")
             for line in (data / name).read_text().splitlines()] + ["Hello World"]
    model_dir = drhard_checkpoint(work / "robertadot", texts)
    given = dict(method="star", data=str(data), model=str(model_dir), out=str(work / "drhard-paper"),
                 cache_dir=str(work / "drhard-cache"), device=device, max_steps=STEPS, batch_size=4, topk=20,
                 dev_every=STEPS, save_every=STEPS, dev_pool=5, quiet=True, report_to=[])
    cfg, _ = resolve_config("paper-passage", None, given)
    trainer = Trainer(cfg)
    trainer.setup()
    model = trainer.model
    tower = model.doc_model
    optimizer = type(trainer.optimizer).__name__
    flag = ("is_activation_checkpointing" if hasattr(type(tower.transformer), "is_activation_checkpointing")
            else "is_gradient_checkpointing")  # transformers 5.2x renamed it
    checkpointing = getattr(tower.transformer, flag, False)
    cased, lower = (model.tokenize([t], "query")["input_ids"] for t in ("Hello World", "hello world"))
    problems = [p for p, bad in (
        (f"the encoder is a {type(tower).__name__}, not DRhard's head (HeadTower)", not isinstance(tower, HeadTower)),
        ("query and document towers are not shared", not model.config.shared),
        (f"optimizer {optimizer}, not DRhardLamb", optimizer != "DRhardLamb"),
        ("the fp16 loss scaler is off", not trainer.scaler.is_enabled()),
        ("gradient checkpointing is off", not checkpointing),
        (f"star_mixing {cfg.star_mixing}", cfg.star_mixing != "pairmean"),
        (f"train_chunk {cfg.train_chunk} < batch {cfg.batch_size}", cfg.train_chunk < cfg.batch_size),
        ("DRhard's tokenisation is not applied (cased ids differ from lower-cased)", cased != lower),
    ) if bad]
    if problems:
        raise AssertionError("; ".join(problems))
    seen: dict[str, set] = {"dtype": set(), "grad": set()}
    layer0 = tower.transformer.encoder.layer[0]

    def on_forward(module, args, output):
        first = output[0] if isinstance(output, tuple) else output
        if torch.is_grad_enabled():  # a training forward (or its recomputation), not dev encoding
            seen["dtype"].add(str(first.dtype).removeprefix("torch."))

    def on_grad(param):
        norm = float(param.grad.float().norm())
        seen["grad"].add("finite>0" if math.isfinite(norm) and norm > 0 else f"{norm}")

    query = layer0.attention.self.query  # a Linear: float16 under fp16 autocast (a LayerNorm stays float32)
    hooks = [query.register_forward_hook(on_forward), query.weight.register_post_accumulate_grad_hook(on_grad)]
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        trainer.train()
    finally:
        for hook in hooks:
            hook.remove()
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    log = [json.loads(x) for x in (trainer.out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r.get("kind") == "train"]
    where = {p.device.type for p in model.parameters()}
    need = {"head": ("dense.weight", "norm.weight"), "layer 0": ("layer.0.attention",), "embeddings": ("word_emb",)}
    missing = [what for what, keys in need.items() if not any(s in k for k in changed for s in keys)]
    problems = [p for p, bad in (
        (f"losses {losses}", len(losses) != STEPS or not all(math.isfinite(x) for x in losses)),
        (f"these parts did not change: {missing}", bool(missing)),
        (f"layer 0's query projection ran in {sorted(seen['dtype'])}, not float16 under autocast",
         seen["dtype"] != {"float16"}),
        (f"layer 0's gradients: {sorted(seen['grad'])} (none finite and non-zero)", "finite>0" not in seen["grad"]),
        (f"parameters on {where}, not {trainer.device.type}", where != {trainer.device.type}),
    ) if bad]
    if problems:
        raise AssertionError("; ".join(problems))
    return (f"RobertaDot (CLS -> embeddingHead -> norm, BPE vocab {model.tokenizer.vocab_size}) on {trainer.device}, "
            f"paper-passage: DRhardLamb lr {cfg.lr:g}, fp16 (layer 0's query projection ran in float16, loss scale "
            f"{trainer.scaler.get_scale():g}), gradient checkpointing, pairmean; {STEPS} steps, losses "
            f"{losses[0]:.4f} -> {losses[-1]:.4f}, {len(changed)} of {len(before)} tensors changed")


# ----------------------------------------------------------------------------- the plain run and its twins
def subprocess_env(device: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if device == "cpu":  # also on a GPU machine: torchrun then uses gloo, like the plain run: the CPU
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def pin_gpu(env: dict[str, str], device: str) -> dict[str, str]:
    """``env`` in which the one GPU of ``device`` is the only one visible (cuda:0 to the process)."""
    if not device.startswith("cuda"):
        return env
    index = int(device.split(":")[1]) if ":" in device else 0
    visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return {**env, "CUDA_VISIBLE_DEVICES": visible[index] if visible else str(index)}


def distance(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        return math.inf
    return math.sqrt(sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a))


class Runs:
    """``hardneg train star`` runs on one device, all with the same settings (fp16, dropout on, seed 7)."""

    def __init__(self, device: str, work: Path, model: Path, data: Path) -> None:
        self.device, self.work, self.model, self.data = device, work / "runs", model, data
        self.env = pin_gpu(subprocess_env(device), device)
        self.flag = "cpu" if device == "cpu" else "cuda"
        self._reference: dict | None = None
        self._twin: dict | None = None  # a second plain run's final weights, made only when needed

    def argv(self, out: Path, *extra: str) -> list[str]:
        return ["--quiet", "train", "star", "--data", str(self.data), "--model", str(self.model), "--out", str(out),
                "--device", self.flag, "--precision", "fp16", "--max-steps", str(STEPS), "--save-every", str(SAVE),
                "--keep-checkpoints", "20", "--batch-size", "4", "--lr", "1e-3", "--topk", "8", "--n-negatives", "2",
                "--dev-fraction", "0.25", "--dev-every", str(STEPS), "--dev-pool", "5", "--query-max-length", "16",
                "--doc-max-length", "32", "--warmup-ratio", "0", "--seed", "7", "--report-to", "none",
                "--cache-dir", str(self.work / "cache"), *extra]

    def command(self, out: Path, *extra: str, procs: int = 0, code: str = "") -> list[str]:
        """The command line: ``python -m hardneg``, under torchrun with ``procs`` processes, or ``python -c code``."""
        if procs:
            launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), "-m", "hardneg"]
        else:
            launcher = ["-c", code] if code else ["-m", "hardneg"]
        return [sys.executable, *launcher, *self.argv(out, *extra)]

    def train(self, out: Path, *extra: str, procs: int = 0, code: str = "", env: dict | None = None) -> Path:
        proc = subprocess.run(self.command(out, *extra, procs=procs, code=code), env=env or self.env,
                              capture_output=True, text=True, timeout=280)
        if proc.returncode != 0:
            raise AssertionError(f"{out.name}: exit {proc.returncode}: {_tail(proc.stderr)}")
        return out

    @staticmethod
    def weights(out: Path, step: int = STEPS) -> dict:
        from safetensors.torch import load_file

        found = sorted((out / "checkpoints").glob("step-*"))
        if not found or found[-1].name != f"step-{STEPS:07d}":
            raise AssertionError(f"{out.name}: last checkpoint {found[-1].name if found else None}, not step {STEPS}")
        return load_file(str(out / "checkpoints" / f"step-{step:07d}" / "model.safetensors"))

    @staticmethod
    def losses(out: Path) -> list[tuple[int, float]]:
        rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train"]

    def reference(self) -> dict:
        """The plain run (made once): final and step-2 weights, per-step losses, and its update over steps 3-8."""
        if self._reference is None:
            out = self.train(self.work / "plain")
            final = self.weights(out)
            update = distance(final, self.weights(out, SAVE))
            if not update > 0:
                raise AssertionError(f"the plain run's weights did not change after step {SAVE} ({update})")
            self._reference = {"out": out, "final": final, "losses": self.losses(out), "update": update}
        return self._reference

    def noise(self) -> float:
        """How far a second plain run ends from the first (relative to the update): 0 on the CPU."""
        if self.device == "cpu":
            return 0.0
        if self._twin is None:
            self._twin = self.weights(self.train(self.work / "twin"))
        ref = self.reference()
        return distance(self._twin, ref["final"]) / ref["update"]

    def agree(self, label: str, final: dict) -> tuple[bool, str]:
        """``(bit for bit, how)``: how ``final`` compares with the plain run's final weights; raises when it
        does not match."""
        ref = self.reference()
        if final.keys() == ref["final"].keys() and all(ref["final"][k].equal(v) for k, v in final.items()):
            return True, "bit for bit"
        rel = distance(final, ref["final"]) / ref["update"]
        noise = self.noise()
        if noise == 0:
            raise AssertionError(f"{label}: weights differ from the plain run's by {rel:.2e} of its update"
                                 + ("" if self.device == "cpu" else ", yet a second plain run matches the first bit "
                                    "for bit (the GPU kernels are deterministic here)"))
        if rel > max(5 * noise, 1e-3):
            raise AssertionError(f"{label}: differs by {rel:.2e} of the update; two plain runs differ by {noise:.2e}")
        return False, (f"within {rel:.1e} of the update (two plain runs: {noise:.1e}: the GPU's kernels are not "
                       "deterministic)")


# ----------------------------------------------------------------------------- the checks
def logged_steps(out: Path) -> list[int]:
    """The train steps in a run's log so far (a line being written is skipped)."""
    try:
        lines = (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    steps = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("kind") == "train":
            steps.append(row["step"])
    return steps


def kill_resume(runs: Runs) -> str:
    import torch

    ref = runs.reference()
    out = runs.work / "killed"
    checkpoint = out / "checkpoints" / f"step-{SAVE:07d}"
    with open(runs.work / "killed.stderr", "w+", encoding="utf-8") as err:
        proc = subprocess.Popen(runs.command(out), env=runs.env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 240
        # between checkpoints: step SAVE's checkpoint on disk and step SAVE + 1 logged, which the resume redoes
        while proc.poll() is None and time.monotonic() < deadline:
            if checkpoint.is_dir() and max(logged_steps(out), default=0) > SAVE:
                break
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        code = proc.wait()
        err.seek(0)
        stderr = err.read()
    if code != -signal.SIGKILL:
        raise AssertionError(f"the run ended with exit {code} before the SIGKILL (run slower?): {_tail(stderr)}")
    left = sorted(p.name for p in (out / "checkpoints").glob("*step-*"))
    if (out / "summary.json").exists() or f"step-{STEPS:07d}" in left:
        raise AssertionError(f"the SIGKILL landed after the run's end (checkpoints {left})")
    logged = logged_steps(out)
    runs.train(out, "--resume")
    exact, verdict = runs.agree("the resumed run", runs.weights(out))
    steps = [s for s, _ in runs.losses(out)]
    if steps != list(range(1, STEPS + 1)):
        raise AssertionError(f"the resumed run's log lists steps {steps}")
    rng = torch.load(ref["out"] / "checkpoints" / f"step-{SAVE:07d}" / "rng.pt", map_location="cpu", weights_only=True)
    if runs.flag == "cuda" and (rng.get("device_type") != "cuda" or not rng.get("cuda")):
        raise AssertionError(f"the checkpoint's rng.pt holds no CUDA RNG state (keys {sorted(rng)})")
    config = json.loads((runs.model / "config.json").read_text())
    dropout = config.get("hidden_dropout_prob", 0)
    if not dropout:
        raise AssertionError("the model has no dropout: the check would prove nothing about RNG state")
    # the control: resume the plain run from its step-2 checkpoint with the generators reseeded after loading
    for later in sorted((ref["out"] / "checkpoints").glob("step-*"))[1:]:
        shutil.rmtree(later)
    (ref["out"] / "summary.json").unlink(missing_ok=True)
    runs.train(ref["out"], "--resume", code=RESEEDED)
    control = distance(runs.weights(ref["out"]), ref["final"]) / ref["update"]
    if control <= (0 if exact else max(5 * runs.noise(), 1e-3)):
        raise AssertionError(f"a resume with reseeded generators also matched ({control:.1e}): dropout does not "
                             "depend on the restored RNG state")
    return (f"SIGKILLed mid-run (checkpoints on disk: {', '.join(left)}; log at step "
            f"{logged[-1] if logged else 0}), resumed: weights {verdict} with the uninterrupted {STEPS}-step fp16 run, "
            f"dropout p={dropout}; {len(rng.get('cuda') or [])} GPU RNG state(s) in the checkpoint; a reseeded "
            f"resume differs by {control:.2f} of the update")


def torchrun_runs(runs: Runs) -> str:
    import torch

    ref = runs.reference()
    one = runs.train(runs.work / "torchrun-1", procs=1)
    exact, verdict = runs.agree("torchrun --nproc_per_node 1", runs.weights(one))
    got, want = runs.losses(one), ref["losses"]
    same_order = [s for s, _ in got] == [s for s, _ in want] and all(
        a == b if exact else math.isclose(a, b, rel_tol=1e-3) for (_, a), (_, b) in zip(got, want, strict=True))
    if not same_order:
        raise AssertionError(f"per-step losses differ from the plain run's (data order?): {got} vs {want}")
    summary = json.loads((one / "summary.json").read_text())
    if summary.get("world_size") != 1:
        raise AssertionError(f"torchrun-1's summary says world_size {summary.get('world_size')}")
    backend = "gloo" if runs.flag == "cpu" else "NCCL"
    detail = (f"{backend} 1 process == plain run: weights {verdict}, the {STEPS} per-step losses "
              f"{'identical' if exact else 'within 1e-3'} (same data order and dropout)")
    gpus = torch.cuda.device_count() if runs.flag == "cuda" else 0
    if gpus < 2:
        return detail + f"; 2 processes skipped ({gpus} GPU(s))"
    env = subprocess_env(runs.device)  # every GPU visible: rank r on cuda:r
    two = runs.train(runs.work / "torchrun-2", procs=2, env=env)
    runs.weights(two)
    summary = json.loads((two / "summary.json").read_text())
    losses = [x for _, x in runs.losses(two)]
    if summary.get("world_size") != 2 or len(losses) != STEPS or not all(math.isfinite(x) for x in losses):
        raise AssertionError(f"torchrun-2: world_size {summary.get('world_size')}, losses {losses}")
    return detail + (f"; NCCL 2 processes finished (global batch {summary.get('global_batch')}, last loss "
                     f"{losses[-1]:.4f})")
