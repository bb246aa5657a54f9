"""`python -m jaxmnist.train`: the training command. Run it with `--help` for the flags.

It parses the flags into a Config (`jaxmnist.cli`), takes the run folder's lock, trains with
`jaxmnist.loop.fit`, and prints the summary (and writes JSON, a plot). Ctrl-C or SIGTERM stop the
run at the next chunk of steps, checkpointed.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from jaxmnist import cache, cli, distributed, plot, report
from jaxmnist.checkpoint import SUMMARY_FILE, RunDir, write_json
from jaxmnist.errors import Diverged, Interrupted, JaxMnistError
from jaxmnist.loop import fit


class _StopRequests:
    """Ctrl-C and SIGTERM ask the run to stop at the next chunk boundary; a second one stops it at once."""

    def __init__(self):
        self.signal: int | None = None

    def __call__(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\njaxmnist: {signal.Signals(signum).name}: stopping after the current chunk of steps "
              "(send it again to stop at once)", file=sys.stderr)

    def requested(self) -> bool:
        return self.signal is not None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jaxmnist.train`: parse flags, train, print the summary (and write JSON, a plot).

    Exit status: 0 done; 2 bad input; 3 diverged; 130 / 143 stopped by SIGINT / SIGTERM.
    """
    imports_seconds = report.process_seconds()
    args, config = cli.parse(argv)
    stop = _StopRequests()
    handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    run_dir = None
    try:
        cli.check_outputs(args)
        config.validate()  # before the run folder is touched
        cache.enable(args.cache_dir)
        resume = False
        if args.checkpoint_dir:
            distributed.initialize(config.distributed)  # the lock is the main process's, so this comes first
            run_dir = RunDir(args.checkpoint_dir, args.keep)
            if took_over := run_dir.lock():
                print(f"jaxmnist: {took_over}.", file=sys.stderr)
            config, resume = cli.run_config(args, config, run_dir)
        result = fit(config, progress=not args.no_progress, run_dir=run_dir, resume=resume,
                     metrics_path=cli.metrics_path(args), tensorboard_dir=args.tensorboard, should_stop=stop.requested)
    except Diverged as e:
        print(f"jaxmnist: error: {e}", file=sys.stderr)
        return 3
    except JaxMnistError as e:
        print(f"jaxmnist: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"jaxmnist: {e}", file=sys.stderr)
        return 128 + stop.signal
    except KeyboardInterrupt:
        print("jaxmnist: stopped at once; anything after the last checkpoint is lost.", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        if run_dir is not None:
            run_dir.close()
    if not distributed.is_main_process():
        return 0
    summary = report.summary(result)
    summary["phases"] = {"imports": imports_seconds, **summary["phases"]}
    summary["wall_seconds"] = report.process_seconds()
    print(report.format_summary(summary))
    for path in (args.json, run_dir and run_dir.file(SUMMARY_FILE)):
        if path:
            write_json(path, summary)
    if args.plot:
        plot.learning_curves(cli.metrics_path(args), args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
