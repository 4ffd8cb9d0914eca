"""Trains a transformation network and exports it.

  fastnst train --config=style[:runlocal,style=NAME] --workdir=DIR [--config.train.steps=N]
  bin/train --config=configs/style.py:runlocal --workdir=DIR        (the same, from a clone)

--config is a packaged config by name (style, multistyle, sr_x4, sr_x8) or a config file's path;
--config.KEY=VALUE overrides one key (--print_config lists the keys with their values).

Resumes from the newest checkpoint in DIR (a DIR made with a different config is refused). Prints
the exported model's path as the last line. Uses every local device (data parallel); several hosts:
the same command on each with --coordinator=HOST0:PORT --num_processes=N --process_id=I (or let
JAX detect SLURM / Open MPI / TPU pods). train.precision=bfloat16 computes in bf16.
SIGINT/SIGTERM save a checkpoint and exit with status 130; rerun the same command to resume. In a
multi-process run a signal to any process stops every process at the same step; a process that dies
ends the others at their next step (exit 1, one line naming the last complete checkpoint); every
process must join within --init_timeout_s.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fastnst.cli import absl_flags_parser, one_line_errors, snake

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Packaged config by name (style, multistyle, sr_x4, sr_x8) or a config file's "
    "path, with :ARGS, e.g. style:runlocal or configs/style.py:runlocal", lock_config=True)
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print the config's keys and values (after --config.* overrides) and "
    "exit; the config file's docstring says what they mean.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, model).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "Multi-host: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_INIT_TIMEOUT = flags.DEFINE_integer("init_timeout_s", 300, "Multi-host: every process must have joined "
                                     "the job within this many seconds, else each exits with one line.")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 60, "Multi-host: a process silent this long (a lost machine, a frozen "
    "process) is declared dead and JAX ends the others; a process that exits or is killed is "
    "noticed sooner, at the others' next step, which exit with one line.")
flags.mark_flags_as_required(["config"])


@one_line_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    from fastnst import parallel, train
    from fastnst.errors import FastnstError

    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                        init_timeout_s=_INIT_TIMEOUT.value, heartbeat_timeout_s=_HEARTBEAT_TIMEOUT.value)

    config = _CONFIG.value
    try:
        config.to_dict()
    except OSError as e:  # config_flags loads the file lazily and reports a missing one here
        raise FastnstError(f"cannot load --config: {str(e).splitlines()[-1].strip()}") from None
    if _PRINT_CONFIG.value:
        print(config)
        return 0
    if not _WORKDIR.value:
        raise FastnstError("give --workdir=DIR (checkpoints, metrics and the model go there)")
    result = train.train_and_evaluate(config, _WORKDIR.value, progress=_PROGRESS.value)
    if result.bad_files:
        print(f"skipped {result.bad_files} unreadable image file(s)", file=sys.stderr)
    if result.interrupted:
        print(f"interrupted at step {result.step}; checkpoint saved in {_WORKDIR.value}; "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    if parallel.is_writer():
        print(result.model_path)
    return 0


def run(argv=None) -> None:
    """Parses `argv` (default sys.argv; argv[0] the program name) and trains; exits with the status."""
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "-help", "--helpshort", "--helpfull") for a in argv[1:]):
        print(f"usage: {argv[0]} --config=NAME_OR_PATH[:ARGS] --workdir=DIR [flags]\n\n{__doc__.strip()}\n")
        print(flags.FLAGS.module_help(__name__))
        sys.exit(0)
    try:
        argv = [argv[0], *(_resolve(snake(a)) for a in argv[1:])]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    app.run(main, argv=argv, flags_parser=absl_flags_parser)


def _resolve(arg: str) -> str:
    """`--config=NAME[:ARGS]` with a packaged config's name as its file's path."""
    from fastnst import configs

    return f"--config={configs.resolve(arg[9:])}" if arg.startswith("--config=") else arg


if __name__ == "__main__":
    run()
