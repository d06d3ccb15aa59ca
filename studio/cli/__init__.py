"""The ``rcdm-studio`` console script: the studio, and one subcommand per stage.

``rcdm-studio`` alone launches the studio; every action the studio can do, a subcommand can
do too. The commands live in one module per group (``*_commands.py``: ``add_parsers`` and the
``cmd_*`` functions); ``studio.cli.console`` holds what they share (options, Ctrl-C as cancel,
progress bars, output). Errors the engine raises on purpose are printed as one sentence with
exit code 2; so are the operating system's refusals a command meets (permission denied, a
full disk, a file gone: ``OSError``) and input nested too deeply (``RecursionError``),
worded by ``engine.errors.describe_os_error`` as in the studio.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from engine.errors import StudioError, describe_os_error, os_error_text
from studio.cli import (
    data_commands,
    evaluation_commands,
    explore_commands,
    model_commands,
    project_commands,
    selection_commands,
)
from studio.cli.console import project_arg, resolve_project_arg

log = logging.getLogger(__name__)

GROUPS = (data_commands, model_commands, selection_commands, explore_commands,
          evaluation_commands, project_commands)  # the order of `rcdm-studio --help`: the pipeline's
COMMANDS = {name: fn for group in GROUPS for name, fn in group.COMMANDS.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcdm-studio",
        description="RCDM Studio: train representation-conditioned diffusion models on your "
                    "images, generate variations, curate them in the representation space, "
                    "measure their training value and export an ImageFolder. Without a "
                    "subcommand it launches the studio in the browser.")
    project_arg(parser, top=True)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int,
                        default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port (default 7860)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    parser.add_argument("--auth", default=os.environ.get("RCDM_STUDIO_AUTH") or None,
                        metavar="USER:PASSWORD",
                        help="ask for this login (several: comma-separated); default "
                             "$RCDM_STUDIO_AUTH, the better place for it (a command line is "
                             "visible to every user of the machine). Use it whenever --host "
                             "is not 127.0.0.1")
    parser.add_argument("--max-upload", default=os.environ.get("RCDM_STUDIO_MAX_UPLOAD",
                                                               "512mb"),
                        help="largest file the studio accepts as an upload (default 512mb)")
    parser.add_argument("--demo", action="store_true",
                        help="import the bundled digits dataset when the project has no dataset")
    parser.add_argument("--share", choices=("private", "public"),
                        default=os.environ.get("RCDM_STUDIO_SHARE", "private"),
                        help="private (default): whoever reaches the page may do everything "
                             "(behind --auth's login page when given); public: visitors browse, "
                             "curate and download, and sign in (--auth accounts, or Hugging "
                             "Face users in $RCDM_STUDIO_EDITORS) to write. Default "
                             "$RCDM_STUDIO_SHARE")
    parser.add_argument("--max-jobs", type=int,
                        default=int(os.environ.get("RCDM_STUDIO_MAX_JOBS", "2")),
                        help="public: jobs one visitor may have queued or running (default 2)")
    parser.add_argument("--max-disk", default=os.environ.get("RCDM_STUDIO_MAX_DISK", "20gb"),
                        help="public: no job starts once the projects folder holds this much "
                             "(default 20gb; 0: no limit)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        resolve_project_arg(args)
        return COMMANDS.get(args.command, project_commands.cmd_launch)(args)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RecursionError) as exc:  # permission, full disk, a file gone, depth
        log.debug("command %s failed", args.command, exc_info=True)
        text = describe_os_error(exc) or os_error_text(exc)  # type: ignore[arg-type]
        print(f"error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
