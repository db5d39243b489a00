"""Experiment commands: ``experiment`` (a recipe's stages) and ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from hardneg.cli.common import (
    STATE,
    ThreadsOpt,
    err,
    info,
    out,
    use_threads,
)
from hardneg.errors import HardnegError


def experiment(
    recipe: Annotated[Path, typer.Argument(help="A recipe YAML (see configs/).")],
    data_dir: Annotated[str | None, typer.Option("--data-dir",
        help="Replaces {data_dir} in the recipe (default $HARDNEG_DATA_DIR or ../shared/data).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o",
        help="Experiment folder (default runs/experiments/<name>).")] = None,
    only: Annotated[list[str] | None, typer.Option("--only",
        help="Run only stages matching this name or glob (and what they need); repeatable.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run",
        help="Check the recipe and list the stages with their status (with --only: the ones it would run); "
             "compute nothing.")] = False,
    threads: ThreadsOpt = None,
    device: Annotated[str | None, typer.Option("--device",
        help="auto, cpu, cuda or cuda:N for every stage; replaces the recipe's `device:` (default: the "
             "recipe's). Not part of the stage keys: changing it reruns nothing.")] = None,
    keep_going: Annotated[bool, typer.Option("--keep-going", "-k",
        help="A failing stage does not stop the run: it is recorded as failed, the stages that need it are "
             "skipped, every other stage runs; exit 1 at the end if any failed.")] = False,
    records: Annotated[Path | None, typer.Option("--records",
        help="Also keep each finished stage's small files (metrics, per-query scores, logs; not models, indexes "
             "or runs) in this folder, and take the stages done there instead of running them: a grid split "
             "over jobs or machines whose disks do not last. Keep the folder (commit it); `hardneg report` "
             "reads it. A taken stage whose model a stage still to run needs runs again.")] = None,
) -> None:
    """Run a recipe's stages in order (train, test, transfer, analyses, report); done stages are skipped.

    Interrupted? Run the same command again: finished stages are cached, training resumes from its
    last checkpoint. Example: `hardneg experiment configs/demo.yaml`
    """
    from hardneg.experiment import Experiment, Recipe

    use_threads(threads)
    exp = Experiment(Recipe.from_yaml(recipe, data_dir, device=device), out_dir, quiet=STATE["quiet"])
    if dry_run:
        rows = exp.status(records=records, only=only)
        for name, state in rows:
            out.print(f"{state:>24}  {name}", highlight=False)
        chosen = f", {len(rows)} of them chosen by --only" if only else ""
        info(f"{len(exp.stages)} stages{chosen}; recipe OK; folder {exp.out}")
        return
    from hardneg.locks import output_lock

    with output_lock(exp.out):  # <folder>.run.lock beside the experiment folder
        outcome = exp.run(only=only, echo=lambda msg: info(msg), keep_going=keep_going, records=records)
    failed = [n for n, o in outcome.items() if o == "failed"]
    report = exp.out / "report.md"
    if report.is_file():
        from hardneg.experiment import main_table

        out.print(main_table(exp.out))
        info(f"report: {report}")
    if failed:
        skipped = sum(o == "skipped" for o in outcome.values())
        err.print(Text("error: ", style="bold red") + Text(
            f"{len(failed)} stage(s) failed ({', '.join(failed)}; the error is in each one's stage.json and the "
            f"log above), {skipped} skipped; run the command again to resume them (`hardneg report {exp.out}` "
            "reports what finished)"), highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def report(
    run_dir: Annotated[Path | None, typer.Argument(help="An experiment folder (written by `hardneg experiment`).",
                                                   show_default=False)] = None,
    latex: Annotated[bool, typer.Option("--latex",
        help="Also write every table as LaTeX (RUN_DIR/tables/NAME.tex, booktabs).")] = False,
    svg: Annotated[bool, typer.Option("--svg",
        help="Also write every figure as SVG (RUN_DIR/figures/NAME.svg).")] = False,
    readme: Annotated[Path | None, typer.Option("--readme",
        help="Instead: rewrite every `<!-- results-table:PATH -->` block of this markdown file from the "
             "results.json at PATH (relative to the file's folder).")] = None,
    check: Annotated[bool, typer.Option("--check",
        help="With --readme: change nothing, fail (exit 2) if a block does not match its results.json.")] = False,
    data_dir: Annotated[str | None, typer.Option("--data-dir",
        help="Where the data folder the experiment ran with is now, if it moved (records read on another "
             "machine): the test qrels and the seen/unseen strata come from there.")] = None,
) -> None:
    """Write RUN_DIR/report.md, its figures (PNG) and its tables (CSV) from the finished stages of an experiment.

    Example: `hardneg report runs/experiments/scifact --latex --svg`; the README's results tables from their
    results.json: `hardneg report --readme README.md` (`--check`: only verify).
    """
    if readme is not None:
        from hardneg.experiment.readme import update

        stale = update(readme, check=check)
        info(f"{readme}: rewrote the results tables of {', '.join(stale)}" if stale
             else f"{readme}: results tables up to date")
        return
    if run_dir is None or check:
        raise HardnegError("give an experiment folder (hardneg report RUN_DIR)" if run_dir is None
                           else "--check goes with --readme FILE")
    from hardneg.experiment import write_report

    path = write_report(run_dir, latex=latex, svg=svg, data_dir=data_dir)
    info(f"report: {path}; tables: {path.parent / 'tables'}")
