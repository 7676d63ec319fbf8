"""``negspace mine``: NegLabel's negative labels for a class list, written to a label file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from negspace.cli import options
from negspace.cli.eval import CLASSES_HELP


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    mine = commands.add_parser("mine", parents=[common], help="mine NegLabel negative labels and write them to a file")
    mine.add_argument("--classes", required=True, help=CLASSES_HELP)
    mine.add_argument("-o", "--output", type=Path, required=True, help="label file to write")
    options.add_model_options(mine, images=False)
    options.add_mining_options(mine)
    mine.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """`negspace mine`."""
    from negspace.classnames import load_class_names
    from negspace.corpus.labelfile import write_label_file
    from negspace.corpus.mining import mine_negative_labels
    from negspace.runs import load_model, mining_cache_dir

    options.check_output_file(args.output, "-o/--output")
    classes = load_class_names(args.classes)
    config = options.mining_config(args)
    model = options.model_config(args)
    encoder = load_model(model)
    mined = mine_negative_labels(encoder, classes.names, config, mining_cache_dir(model), model.progress)
    settings = json.dumps({"model": model.spec, "classes": classes.source, **config.__dict__})
    write_label_file(args.output, mined.nouns, mined.adjectives, comment=settings)
    print(f"{len(mined.nouns)} nouns and {len(mined.adjectives)} adjectives written to {args.output}")
    return 0
