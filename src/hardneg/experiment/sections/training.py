"""Training: Fig. 4 (static negatives going stale, dev quality per step), the training curves (loss and dev
per step), Fig. 5 (ADORE with LambdaLoss vs RankNet) and Table 4 (training time)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hardneg.devices import machine_label, same_machine
from hardneg.experiment.context import ReportContext, machine
from hardneg.experiment.figures import pyplot, smooth
from hardneg.experiment.peer_st import PEER_ST
from hardneg.experiment.results import is_refreshed, is_star
from hardneg.experiment.sections.registry import Section, section
from hardneg.experiment.stages import test_stage, train_stage
from hardneg.experiment.stats import holm, mean, ttest
from hardneg.experiment.tables import Num, fmt, fmt_p


@section("negative-drift", 70)
def curves(ctx: ReportContext) -> Section:
    """Fig. 4 analogue: (a) overlap of static negatives with the current model's top negatives per tracked step,
    (b) dev RR@10 per step."""
    plt = pyplot()
    tracked = {n: [r for r in ctx.r.train_log(n) if r.get("kind") == "track"] for n in ctx.r.names}
    tracked = {n: v for n, v in tracked.items() if v and any(k.startswith("overlap@") for k in v[0])}
    dev = {n: [r for r in ctx.r.train_log(n) if r.get("kind") == "dev"] for n in ctx.r.names}
    dev = {n: v for n, v in dev.items() if v and _curve_worthy(ctx, n)}
    if not tracked and not dev:
        return Section()
    # A panel only where it has curves: an empty axis would read as "no overlap" or "no change".
    panels = int(bool(tracked)) + int(bool(dev))
    fig, axes = plt.subplots(1, panels, figsize=(10, 4) if panels == 2 else (5.5, 4), squeeze=False)
    axes = list(axes[0])
    text = ["## Fig. 4 analogue: static negatives go stale; quality per step", ""]
    if not tracked:
        text.append("Panel (a), the overlap of static negatives with the current model's top negatives, is not "
                    "drawn: no system of this report tracked it (the training option `track_every`).")
    if not dev:
        text.append("Panel (b), dev quality per step, is not drawn: no system shown here has dev evaluations.")
    if tracked:
        ax = axes[0]
        for name, recs in tracked.items():
            key = next(k for k in recs[0] if k.startswith("overlap@"))
            mined_by_start = _mined_by_start(ctx, name)
            steps = ([0] if mined_by_start else []) + [r["step"] for r in recs]
            values = ([1.0] if mined_by_start else []) + [r[key] for r in recs]
            ax.plot(steps, values, marker="o", label=name, color=ctx.colours[name])
            text.append(f"- {name}: {key} of its static negatives with the current model's top negatives: "
                        + ", ".join(f"step {r['step']}: {r[key]:.2f}" for r in recs))
        keys = sorted({next(k for k in recs[0] if k.startswith("overlap@")) for recs in tracked.values()})
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{'/'.join(keys)}, static vs dynamic negatives")
        ax.set_ylim(0, 1.05)
        ax.set_title("(a) overlap with dynamic hard negatives")
        ax.legend()
    if dev:
        metric, ax = "RR@10", axes[-1]
        for name, recs in dev.items():
            style = "--" if ctx.r.frozen_doc(name) else "-"
            ax.plot([r["step"] for r in recs], [r.get(metric, math.nan) for r in recs], style, marker=".",
                    label=name, color=ctx.colours[name])
        ax.set_xlabel("training step")
        ax.set_ylabel(f"dev {metric}")
        ax.set_title("(b) dev quality per step")
        ax.legend(fontsize=7)
    path = ctx.save(fig, "fig4_overlap_and_dev.png")
    text += ["", f"![Fig. 4 analogue]({path})", ""]
    if tracked:
        text.append("Overlap at step 0 is 1 by construction where the start model mined the static negatives "
                    "itself.")
    if dev:
        text.append("Dev curves: solid = document encoder trained (dev ranks a BM25 top-20 pool per dev query "
                    "plus its positives), dashed = ADORE (dev ranks the full fixed index), so the two families' "
                    "levels are not comparable with each other, only their trends.")
    text.append("")
    return Section("\n".join(text), {"tracked": tracked})


def _mined_by_start(ctx: ReportContext, name: str) -> bool:
    """The start model mined the system's static negatives itself (overlap 1 at step 0 by construction): a method
    that re-mines with the current model, or one with the start model's negatives and no negatives file given."""
    spec = ctx.r.spec(name)
    if spec is None:
        return False
    given = spec.negatives_file and bool(ctx.r.settings_of(name).get("negatives"))
    return spec.hard_negatives == "refreshed" or (spec.hard_negatives == "start-model" and not given)


def _curve_worthy(ctx: ReportContext, name: str) -> bool:
    """Fig. 4b shows every document-trained system, and only the plain ADORE variants (flat, LambdaLoss)
    on the zero-shot model and on STAR, to stay readable."""
    if not ctx.r.frozen_doc(name):
        return True
    base = ctx.r.base_of(name)
    return ctx.r.is_plain_adore(name) and (base == ctx.r.start or base in ctx.r.with_trait(is_star))


@section("training-curves", 90)
def training_curves(ctx: ReportContext) -> Section:
    """Training loss and dev quality per step of every trained system (train_log.jsonl)."""
    trained = ctx.r.trained()
    logs = {n: ctx.r.train_log(n) for n in trained}
    loss = {n: _losses(recs) for n, recs in logs.items()}
    loss = {n: v for n, v in loss.items() if v}
    dev = {n: [x for x in recs if x.get("kind") == "dev"] for n, recs in logs.items()}
    dev = {n: v for n, v in dev.items() if v}
    if not loss and not dev:
        return Section()
    keys = {k for recs in dev.values() for x in recs for k in x}
    metric = ctx.main_measure if ctx.main_measure in keys else "RR@10"
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    longest = max((len(v) for v in loss.values()), default=0)
    window = max(1, longest // 50)
    for name, recs in loss.items():
        steps, values = [x["step"] for x in recs], [float(x["loss"]) for x in recs]
        style = "--" if ctx.r.frozen_doc(name) else "-"
        if window > 1:  # raw values faint, their moving average drawn over them
            axes[0].plot(steps, values, style, color=ctx.colours[name], alpha=0.25, linewidth=0.8)
        axes[0].plot(steps, smooth(values, window), style, color=ctx.colours[name], label=name)
    if loss and all(float(x["loss"]) > 0 for v in loss.values() for x in v):
        axes[0].set_yscale("log")  # the methods' losses differ by orders of magnitude
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel("training loss" + (f" (moving average of {window} steps)" if window > 1 else ""))
    axes[0].set_title("(a) training loss")
    for name, recs in dev.items():
        style = "--" if ctx.r.frozen_doc(name) else "-"
        axes[1].plot([x["step"] for x in recs], [x.get(metric, math.nan) for x in recs], style, marker=".",
                     color=ctx.colours[name], label=name)
    axes[1].set_xlabel("training step")
    axes[1].set_ylabel(f"dev {metric}")
    axes[1].set_title(f"(b) dev {metric}")
    for ax in axes:
        if ax.get_lines():
            ax.legend(fontsize=7)
    path = ctx.save(fig, "training_curves.png")
    rows, rising = [], []
    for system in trained:
        # a seeded system: each seed's run is a row (its replicas are not drawn, to keep the figure readable)
        runs = [system] + [run for _, run in ctx.r.seed_runs(system)[1:] if ctx.r.stage(train_stage(run))]
        for name in runs:
            log = logs[name] if name in logs else ctx.r.train_log(name)
            losses = _losses(log)
            last = losses[-1]["loss"] if losses else None
            evals = [x for x in log if x.get("kind") == "dev" and isinstance(x.get(metric), (int, float))]
            d = [x[metric] for x in evals]
            best = int(np.argmax(d)) if d else None
            ended, gain = budget(ctx, name, log, system=system)
            if gain is not None:
                rising.append(f"{name} (+{gain:.4f})")
            rows.append([name, ctx.r.method_label(system), str(len(losses)), fmt(last, 4),
                         fmt(d[0] if d else None), fmt(max(d) if d else None),
                         str(evals[best]["step"]) if best is not None else "–", ended])
    at_cap = (f"Still at their best dev value at the cap (the gain of the last evaluation over every earlier one "
              f"in brackets; a larger cap might help where it is not noise): {', '.join(rising)}." if rising else
              "No system was still improving on dev at its cap.")
    return Section("\n".join([
        "## Training curves: loss and dev quality per step",
        "",
        f"Every trained system's training loss per optimiser step (log scale where every loss is positive) and "
        f"its dev {metric} at each dev evaluation (step 0 = before training). Solid = document encoder trained, "
        "dashed = ADORE (query encoder only, dev ranks the full fixed index); the losses of different methods "
        "are different objectives, so compare their shapes, not their levels.",
        "",
        f"![Training curves]({path})",
        "",
        ctx.table("training_curves", ["system", "method", "steps", "last loss", f"dev {metric} at step 0",
                                        f"best dev {metric}", f"step of best {metric}", "budget"], rows),
        "",
        "\"budget\": how training ended, by the system's own dev metric (the one its model was chosen by): "
        "stopped early by `patience`, or at the cap (`max_steps`; a sentence-transformers recipe: "
        "`num_train_epochs`) with the step or epoch whose model was kept, which can differ from the step of the "
        f"best dev {metric} where that metric is not the one the model was chosen by. A system with `seeds` has a "
        "row per seed (`<system>.seed<k>`: a replica; the figure draws the first seed only). " + at_cap,
        "",
    ]))


def _losses(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A training log's step records that carry a loss."""
    return [x for x in log if x.get("kind") == "train" and isinstance(x.get("loss"), (int, float))]


def budget(ctx: ReportContext, name: str, log: list[dict[str, Any]], system: str | None = None
           ) -> tuple[str, float | None]:
    """How ``name``'s training ended (``log``: its ``train_log.jsonl`` records; ``name`` may be a seed's run of
    ``system``), by its own dev metric (the one its model was picked by): early-stopped before its cap, or at the
    cap; and when at the cap the last evaluation is strictly the best, that gain over every earlier evaluation (else
    None): dev was still rising when the budget ran out."""
    st = ctx.r.stage(train_stage(name))
    if st is None:
        return "–", None
    cfg = st["settings"]
    metric = cfg.get("dev_metric") or "RR@10"
    dev = [x for x in log if x.get("kind") == "dev" and isinstance(x.get(metric), (int, float))]
    if (system or name) in ctx.r.with_kind(PEER_ST):
        unit, cap = "epoch", cfg.get("num_train_epochs")
        done = max((int(x["epoch"]) for x in dev if "epoch" in x), default=0)
    else:
        unit, cap = "step", cfg.get("max_steps")
        done = max((int(x["step"]) for x in log if x.get("kind") == "train"), default=0)
    if not dev or cap is None:
        return "–", None
    values = [float(x[metric]) for x in dev]
    kept = dev[int(np.argmax(values))]  # the first of the best: the model training kept
    best = kept.get(unit, kept.get("step"))
    if done < int(cap):
        return f"early stop at {unit} {done} of {cap} (kept {unit} {best}, by {metric})", None
    if len(values) > 1 and values[-1] > max(values[:-1]):
        gain = values[-1] - max(values[:-1])
        return f"cap {cap}, best at the cap (+{gain:.4f} {metric})", gain
    return f"cap {cap} (kept {unit} {best}, by {metric})", None


def _ranknet_pairs(ctx: ReportContext) -> list[tuple[str, str]]:
    """(LambdaLoss, RankNet) ADORE twins: same base and index, differing only in the loss."""
    pairs = []
    for s in ctx.r.systems:
        settings = ctx.r.settings_of(s["name"])
        if not ctx.r.frozen_doc(s["name"]) or settings.get("adore_loss") != "ranknet":
            continue
        twin = next((t["name"] for t in ctx.r.systems if ctx.r.frozen_doc(t["name"])
                     and ctx.r.base_of(t["name"]) == ctx.r.base_of(s["name"])
                     and ctx.r.settings_of(t["name"]).get("adore_loss", "lambda") == "lambda"
                     and ctx.r.adore_index(t["name"]) == settings.get("index", "flat")), None)
        if twin:
            pairs.append((twin, s["name"]))
    return pairs


@section("lambda-vs-ranknet", 100)
def lambda_vs_ranknet(ctx: ReportContext) -> Section:
    """Fig. 5 analogue: the dev curves of each LambdaLoss/RankNet ADORE twin pair, and their test t-tests."""
    pairs = _ranknet_pairs(ctx)
    if not pairs:
        return Section()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    text = ["## Fig. 5 analogue: ADORE with LambdaLoss vs RankNet", ""]
    rows: list[list[str]] = []
    facts: dict[str, Any] = {}
    plotted = False
    for lam, rank in pairs:
        for name, label in ((lam, "LambdaLoss (ΔMRR-weighted)"), (rank, "RankNet (unweighted)")):
            recs = [r for r in ctx.r.train_log(name) if r.get("kind") == "dev"]
            if recs:
                ax.plot([r["step"] for r in recs], [r.get("RR@10", math.nan) for r in recs], marker="o",
                        label=f"{label}: {name}", color=ctx.colours[name])
                plotted = True
        if lam in ctx.per_query and rank in ctx.per_query:
            pair_rows = []
            for m in ctx.r.measures:
                a, b = ctx.per_query[lam][m], ctx.per_query[rank][m]
                pair_rows.append([m, fmt(mean(a)), fmt(mean(b)), ttest(a, b)])
            # Holm over the family of this pair's measures
            for row, adj in zip(pair_rows, holm([r[3] for r in pair_rows]), strict=True):
                rows.append([*row[:3], fmt_p(row[3]), fmt_p(adj)])
            facts["lambda_rows"] = (lam, rank, rows)
    if not plotted and not rows:  # a partial run: neither twin has trained yet
        plt.close(fig)
        return Section()
    ax.set_xlabel("training step")
    ax.set_ylabel("dev RR@10")
    if plotted:
        ax.legend(fontsize=7)
    path = ctx.save(fig, "fig5_lambda_vs_ranknet.png")
    text += [f"![Fig. 5 analogue]({path})", ""]
    if rows:
        text += [f"Test: {pairs[0][0]} (LambdaLoss) vs {pairs[0][1]} (RankNet), paired t-test; \"p Holm\": "
                 "Holm–Bonferroni-corrected over the family of this table's measures.", "",
                 ctx.table("fig5_lambda_vs_ranknet", ["measure", "LambdaLoss", "RankNet", "p", "p Holm"], rows),
                 ""]
    return Section("\n".join(text), facts)


@section("training-time", 110)
def timing(ctx: ReportContext) -> Section:
    """Table 4 analogue: steps, median step time, summed step time, re-mining and stage wall-clock of every trained
    system."""
    rows = []
    steps_done: dict[str, int] = {}
    step_median: dict[str, float] = {}
    remining: dict[str, tuple[float, bool]] = {}
    peak_rss: dict[str, float | None] = {}
    threads: set[int] = set()
    for s in ctx.r.systems:
        st = ctx.r.stage(train_stage(s["name"]))
        if st is None:
            continue
        records = ctx.r.train_log(s["name"])
        step_s = [r["seconds"] for r in records if r.get("kind") == "train"]
        steps = len(step_s)
        cfg = st["settings"]
        if step_s:
            step_median[s["name"]], steps_done[s["name"]] = float(np.median(step_s)), steps
        again = remine_seconds(ctx, s["name"], records, steps)
        if again is not None:
            remining[s["name"]] = again
        peak_rss[s["name"]] = st.get("peak_rss_mb")
        rows.append([s["name"], ctx.r.method_label(s["name"]), str(steps),
                     str(cfg.get("batch_size", cfg.get("per_device_train_batch_size"))),
                     fmt(float(np.median(step_s)) if step_s else math.nan, 2), fmt(sum(step_s) / 60, 1),
                     "–" if again is None else ("≈" if again[1] else "") + fmt(again[0] / 60, 1),
                     fmt(ctx.r.stage_seconds(train_stage(s["name"])) / 60, 1), _cpu_minutes(st),
                     _gib(st.get("peak_rss_mb"), st.get("peak_rss_scope")), _gib(st.get("peak_gpu_mb"))])
        if isinstance(st.get("threads"), int):
            threads.add(st["threads"])
    facts = {"steps": steps_done, "step_median": step_median, "remining": remining, "peak_rss_mb": peak_rss}
    if not rows:
        return Section(facts=facts)
    gpu = any(r[-1] != "–" for r in rows)
    header = ["system", "method", "steps", "batch", "step time (s)", "training (min)", "re-mining (min)",
              "stage (min)", "CPU (min)", "peak RAM (GiB)"] + ["peak GPU (GiB)"] * gpu
    rows = [r if gpu else r[:-1] for r in rows]
    where, machines_text = _machines(ctx, [r[0] for r in rows])
    if where:
        header.append("machine")
        rows = [[*r, where[r[0]]] for r in rows]
    unrecorded = [r[0] for r in rows if r[header.index("peak RAM (GiB)")] == "–"]
    no_cpu = [r[0] for r in rows if r[header.index("CPU (min)")] == "–"]
    ran_with = (f"{next(iter(threads))}" if len(threads) == 1 else
                f"{min(threads)}–{max(threads)}" if threads else "stage.json's threads")
    estimated = any(e for _, e in remining.values())
    return Section("\n".join([
        "## Table 4 analogue: training time" + ("" if where else " on one machine"),
        "",
        machines_text + "\"step time\": median seconds per optimiser step (forward, backward, update, "
        "and for ADORE the per-step retrieval); \"training\": the sum of step times; \"re-mining\": ANCE-style "
        "re-encoding of the corpus and re-mining of the negatives with the current model, which STAR does not do"
        + (" (\"≈\": not logged by this run's training, estimated as the number of re-minings times the "
           "system's test stage, which encodes the same corpus with the same model)" if estimated else "")
        + "; \"stage\": the whole stage wall-clock including dev evaluation, mining the static negatives, "
        "re-mining and negative-overlap tracking (all attempts when a stage was resumed; an attempt killed "
        "mid-way counts up to its last minute, from stage.json's heartbeat; a stage run before hardneg wrote "
        "that heartbeat misses its killed attempts, and shows at least its logged training and re-mining time); "
        "\"CPU\": the CPU time of the stage's process, all its threads and attempts; it is about \"stage\" "
        f"times the threads the stage ran with ({ran_with}) when the cores were the stage's alone, and a much "
        "smaller CPU time than that means other work shared the machine: that stage's wall-clock is longer than "
        "the machine needs"
        + (f" (\"–\": not recorded, the stage ran before hardneg recorded it: {', '.join(no_cpu)})"
           if no_cpu else "") + "; "
        "\"peak RAM\": the stage's peak resident memory, the largest over its attempts (\"≤\": the process's peak "
        "so far, where the stage's own could not be told apart)"
        + ("; \"peak GPU\": the PyTorch allocator's peak reserved memory (Faiss's GPU index is outside it)"
           if gpu else "")
        + (f" (\"–\": not recorded; the stage ran before hardneg recorded it: {', '.join(unrecorded)})"
           if unrecorded else "") + ".",
        "",
        ctx.table("table4_training_time", header, rows),
        "",
    ]), facts)


def _machines(ctx: ReportContext, systems: list[str]) -> tuple[dict[str, str], str]:
    """Where the training stages of ``systems`` ran, and the sentence saying so. On more than one machine (a machine
    not recorded counts as one): each system's machine as a letter (``A``, ``A+B`` for a stage resumed on another
    machine) and the letters' legend. On one: no letters, and that machine in words
    (:func:`hardneg.devices.machine_label`), or where none recorded it, this machine's."""
    names = [train_stage(s) for s in systems]
    seen = ctx.r.machines(names)
    if len(seen) < 2:
        one = (machine_label(seen[0]) if seen and seen[0] else
               f"{machine()} (where this report ran; the stages did not record theirs)")
        return {}, f"Machine: {one}. "

    def letter(record: dict[str, Any]) -> str:
        return chr(ord("A") + next(i for i, m in enumerate(seen) if same_machine(record, m)))

    where = {s: "+".join(letter(m) for m in ctx.r.machines([n])) for s, n in zip(systems, names, strict=True)}
    legend = "; ".join(f"{letter(m)} = {machine_label(m)}" for m in seen)
    return where, f"Machines (\"machine\" column; wall-clocks on different machines are not comparable): {legend}. "


def _cpu_minutes(state: dict[str, Any]) -> Num:
    """A stage's CPU time over its attempts (stage.json ``cpu_seconds``) in minutes; "–" where not recorded."""
    cpu = state.get("cpu_seconds")
    return fmt(float(cpu) / 60 if isinstance(cpu, int | float) else None, 1)


def _gib(mb: object, scope: object = None) -> Num:
    """MiB as GiB; "≤" where the peak is the process's so far (the stage's own could not be measured apart)."""
    gib = fmt(float(mb) / 1024 if isinstance(mb, int | float) else None, 2)
    return Num(f"≤{gib}", gib.value, "≤") if scope == "process" and gib.value is not None else gib


def remine_seconds(ctx: ReportContext, name: str, records: list[dict[str, Any]],
                   steps: int) -> tuple[float, bool] | None:
    """``(seconds, estimated)`` that ``name``'s training spent re-mining its negatives with the current model
    (ANCE); ``None`` for a method that never re-mines, or when it cannot be known. From the training log's
    ``remine`` records; the re-minings its steps imply (after every ``refresh_every``-th step, not after the run's
    last) that have no record (a log, or the part of one, from before they were written) count as the system's
    test stage seconds each (the same corpus through the same model), ``estimated``."""
    spec, st = ctx.r.spec(name), ctx.r.stage(train_stage(name))
    settings = (st or {}).get("settings", {})
    every = settings.get("refresh_every") or 0
    if spec is None or not is_refreshed(spec) or not every:
        return None
    logged = [float(r["seconds"]) for r in records if r.get("kind") == "remine"]
    # after every refresh_every-th step, except the last step of the run (max_steps; an early stop re-mines)
    count = steps // every - (steps == settings.get("max_steps") and steps % every == 0)
    missing = max(0, count - len(logged))
    if not missing:
        return float(sum(logged)), False
    test = ctx.r.stage(test_stage(name))
    if test is None:
        return None  # unknown: no estimate without the test stage's encoding time
    return float(sum(logged)) + missing * float(test["seconds"]), True
