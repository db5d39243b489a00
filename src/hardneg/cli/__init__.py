"""The ``hardneg`` command line: a thin layer over the library.

Every command takes datasets as one string, ``path[:split]`` (a BEIR or MS MARCO
folder) or ``irds:<id>``; bad input ends with a one-line message naming the
file and line, and a non-zero exit (``--debug`` shows the traceback).

One module per group of commands (:mod:`.retrieve`, :mod:`.data_cmds`,
:mod:`.index_cmds`, :mod:`.evaluate`, :mod:`.train`, :mod:`.experiment`), sharing
:mod:`.common`; this module assembles them into :data:`app` in help order.
"""

from __future__ import annotations

from hardneg.cli import data_cmds, evaluate, experiment, index_cmds, retrieve, train
from hardneg.cli.common import App, run_app
from hardneg.cli.common import global_options as _global_options

#: ``-h`` as well as ``--help``, on the app and on every command
HELP = {"help_option_names": ["-h", "--help"]}

app = App(  # typer.Typer whose --help shows flags as flags (no `<bool>` value type)
    name="hardneg",
    context_settings=HELP,
    help="Train and evaluate dense retrievers with hard negatives (STAR, ADORE).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # markdown mode would drop `<M>` in `pq<M>` as an HTML tag
    add_completion=False,
)
app.callback()(_global_options)

app.command(context_settings=HELP)(retrieve.bm25)
app.command(context_settings=HELP)(retrieve.retrieve)
app.command(context_settings=HELP)(data_cmds.tokenize)
app.command(context_settings=HELP)(index_cmds.encode)
app.command("encode-merge", context_settings=HELP)(index_cmds.encode_merge)
app.command("index", context_settings=HELP)(index_cmds.index_cmd)
app.command(context_settings=HELP)(retrieve.search)
app.command(context_settings=HELP)(evaluate.evaluate)
app.command(context_settings=HELP)(evaluate.compare)
app.command(context_settings=HELP)(train.export)
app.command(context_settings=HELP)(train.merge)
app.command(context_settings=HELP)(data_cmds.mine)
app.command("train", context_settings=HELP)(train.train)
app.command(context_settings=HELP)(experiment.experiment)
app.command(context_settings=HELP)(experiment.report)


def main() -> None:
    """Console entry point: run the app, turning HardnegError into a clean message and exit code."""
    run_app(app)


__all__ = ["app", "main"]
