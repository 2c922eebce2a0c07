"""The ``maskid`` command line: gallery building, enrollment, identification and evaluation.

The CLI sits beside ``core`` (and later ``bot``) so that ``core`` never imports a
front end. Every command reads one :class:`~core.settings.Settings` object from
the environment or ``.env``; global options override it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from cli import (
    bot_command,
    calibrate_command,
    commands,
    eval_ident_command,
    mask_command,
    reembed_command,
    train_command,
)
from core.errors import ConfigurationError, MaskidError
from core.settings import InvalidSettingError, Settings

logger = logging.getLogger(__name__)

# Settings that a global option overrides: the parsed attribute and the option's name.
SETTING_OPTIONS = {
    "db_path": ("db", "--db"),
    "device": ("device", "--device"),
    "model": ("model", "--model"),
    "torch_threads": ("threads", "--threads"),
    "match_threshold": ("threshold", "--threshold"),
    "masked_match_threshold": ("masked_threshold", "--masked-threshold"),
}

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def positive_int(text: str) -> int:
    """Parse a command-line integer that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Create the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="maskid",
        description="Face identification that still works when people wear face masks.",
        epilog="Settings also come from MASKID_* environment variables or a .env file; see .env.example.",
    )
    parser.add_argument("--db", type=Path, help="gallery database file (default: MASKID_DB or ./maskid.sqlite3)")
    parser.add_argument("--device", help="compute device: cpu or cuda[:N] (default: MASKID_DEVICE or cpu)")
    parser.add_argument(
        "--model",
        help="embedding network: base (FaceNet), siamese (FaceNet with the shipped twin-network head) "
        "or a head file from `maskid train siamese` (default: MASKID_MODEL or siamese)",
    )
    parser.add_argument("--threads", type=int, help="PyTorch CPU threads; 0 keeps its default (MASKID_TORCH_THREADS)")
    parser.add_argument(
        "--threshold",
        type=float,
        help="score an unmasked face's best candidate needs (default: MASKID_MATCH_THRESHOLD, else calibrated, "
        "else 0.56)",
    )
    parser.add_argument(
        "--masked-threshold",
        type=float,
        help="score a masked face's best candidate needs (default: MASKID_MASKED_MATCH_THRESHOLD, else "
        "calibrated, else 0.67 with the Siamese model and 0.62 with the base model)",
    )
    parser.add_argument("--env-file", type=Path, help="settings file to read (default: .env when it exists)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v: info, -vv: debug)")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gallery = subcommands.add_parser("gallery", help="build and manage the gallery").add_subparsers(
        dest="gallery_command", required=True, metavar="SUBCOMMAND"
    )
    build = gallery.add_parser("build", help="enroll a folder-per-person dataset (incremental, resumable)")
    build.add_argument("directory", type=Path, help="ROOT/<person>/<image> folder, e.g. LFW")
    build.add_argument("--json", action="store_true", help="print the summary as JSON")
    build.set_defaults(handler=commands.gallery_build)
    reembed_command.register(gallery)

    enroll = subcommands.add_parser("enroll", help="add photos of one person to the gallery")
    enroll.add_argument("name", help="the person's name")
    enroll.add_argument(
        "images", type=Path, nargs="+", metavar="IMAGE", help="photos of that person; the main face of each is enrolled"
    )
    enroll.add_argument("--json", action="store_true", help="print the result as JSON")
    enroll.set_defaults(handler=commands.enroll)

    identify = subcommands.add_parser("identify", help="name every face in photos")
    identify.add_argument(
        "images",
        type=Path,
        nargs="+",
        metavar="IMAGE",
        help="photos to identify (JPEG, MPO, PNG, WebP, BMP, GIF, TIFF)",
    )
    identify.add_argument(
        "--top", type=positive_int, default=3, metavar="K", help="candidates shown per face (default: 3)"
    )
    identify.add_argument("--json", action="store_true", help="print the results as JSON")
    identify.set_defaults(handler=commands.identify)

    verify = subcommands.add_parser(
        "verify",
        help="tell whether two photos show the same person",
        description="Compare the main face of two photos. The threshold is MASKID_VERIFY_THRESHOLD (0.40), or "
        "for a pair with a masked face MASKID_MASKED_VERIFY_THRESHOLD (unset: 0.50 with the Siamese model, "
        "whose head compares such pairs, and 0.40 with the base model).",
    )
    verify.add_argument("first", type=Path, metavar="IMAGE1", help="photo of the first face")
    verify.add_argument("second", type=Path, metavar="IMAGE2", help="photo of the second face")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(handler=commands.verify)

    people = subcommands.add_parser(
        "people", help="list the people the current model searches, with photo and template counts"
    )
    people.add_argument("--json", action="store_true", help="print the list as JSON")
    people.set_defaults(handler=commands.people)

    remove = subcommands.add_parser("remove", help="delete a person and all their templates")
    remove.add_argument("name", help="the person's name, as `maskid people` shows it")
    remove.add_argument("--json", action="store_true", help="print what was deleted as JSON")
    remove.set_defaults(handler=commands.remove)

    mask_command.add_mask_parser(subcommands)

    evaluate = subcommands.add_parser("eval", help="run an evaluation protocol").add_subparsers(
        dest="eval_command", required=True, metavar="PROTOCOL"
    )
    lfw = evaluate.add_parser("lfw-pairs", help="LFW verification: k-fold accuracy on a pairs.txt file")
    lfw.add_argument("pairs", type=Path, help="pairs file in the official pairs.txt format")
    lfw.add_argument("images", type=Path, help="LFW folder with Name/Name_0001.jpg images")
    lfw.add_argument("--json", action="store_true", help="print the result as JSON")
    lfw.set_defaults(handler=commands.eval_lfw_pairs)
    eval_ident_command.add_eval_ident_parser(evaluate)

    calibrate_command.add_calibrate_parser(subcommands)
    train_command.add_train_parser(subcommands)

    bot_command.add_bot_parser(subcommands)
    return parser


def configure_logging(verbosity: int) -> None:
    if verbosity == 0:
        level = logging.WARNING
    elif verbosity == 1:
        level = logging.INFO
    else:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def settings_from_options(args: argparse.Namespace) -> Settings:
    """Read the settings with the global options on top, and name the option in the error when one is invalid."""
    options = {field_name: getattr(args, attribute) for field_name, (attribute, _) in SETTING_OPTIONS.items()}
    try:
        return Settings.from_env(env_file=args.env_file or Path(".env"), **options)
    except InvalidSettingError as exc:
        if not exc.from_option:
            raise
        raise ConfigurationError(f"{SETTING_OPTIONS[exc.field_name][1]} {exc.problem}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``maskid`` command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)

    try:
        if args.env_file is not None and not args.env_file.is_file():
            raise ConfigurationError(f"settings file {args.env_file} not found; fix --env-file or leave it out")
        settings = settings_from_options(args)
        result = asyncio.run(args.handler(args, settings))
    except MaskidError as exc:
        logger.debug("command failed", exc_info=True)
        print(f"maskid: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("maskid: interrupted; work committed so far is kept, run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED

    if getattr(args, "json", False) and result.data is not None:
        print(json.dumps(result.data, indent=2, ensure_ascii=False))
    elif result.text:
        print(result.text)
    for error in result.errors:
        print(f"maskid: error: {error}", file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
