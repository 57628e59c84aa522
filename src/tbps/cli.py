"""`tbps <verb> key=value ...`: the command line (Hydra overrides on the packaged config tree)."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence

from tbps import __version__
from tbps.app.compose import compose_config
from tbps.errors import ConfigError, TBPSError, one_line

log = logging.getLogger("tbps")

USAGE = f"""tbps {__version__}: Text-Based Person Search

usage: tbps <command> [key=value ...] [--cfg job]

commands:
  train               train, validate every epoch, test best and last (default: synthetic data)
                      tbps train resume=RUN_DIR continues an interrupted run in its folder
                      tbps train -m seed=1,2,3 optim.lr=1e-5,2e-5 [sweep_dir=DIR]: a sweep, one
                      run folder per combination (re-run the command to continue it)
  report              results of runs and sweeps: tbps report PATH... [group_by=seed,...]
                      [format=table|markdown|csv|json] [plots=DIR]
  eval                evaluate a model: tbps eval model=DIR | ckpt_path=RUN/checkpoints/best.ckpt
                      [data=NAME data.root=DIR split=test device=auto precision=32]
  export              tbps export ckpt_path=RUN/checkpoints/best.ckpt out=DIR [format=tbps|hf|onnx]
  index               embed a folder of images for search: tbps index model=DIR images=FOLDER
                      out=INDEX [backend=exact|faiss] (a second run adds only what changed)
  search              tbps search index=INDEX query="a man in a red jacket" [k=10 format=json]
                      tbps search index=INDEX image=PATH (the same person in the gallery)
  serve               the search service and web page: tbps serve index=INDEX [port=8000]
  clean               free checkpoints: tbps clean [runs_dir=runs min_score=R1 dry_run=false]
  convert             OpenAI / open_clip CLIP checkpoint -> HF folder: tbps convert src=FILE out=DIR
                      IRRA's best.pth -> a model folder: tbps convert src=best.pth out=DIR
  data synth          write the synthetic dataset: tbps data synth out=DIR [num_identities=N seed=S]
  data stats          per-split counts: tbps data stats data=NAME data.root=DIR [format=json]
  data check          scan for bad images/captions: tbps data check data=NAME data.root=DIR

options:
  key=value           Hydra override, e.g. trainer.max_epochs=5 backbone=scratch_tiny debug=fast
  --cfg job           print the composed config and exit
  -h, --help          this help; --version prints the version
"""

# verb -> (primary config name, runner import path)
VERBS: dict[str, str] = {
    "train": "train",
    "eval": "eval",
    "export": "export",
    "index": "index",
    "search": "search",
    "serve": "serve",
    "clean": "clean",
    "data synth": "synth",
    "convert": "convert",
    "data stats": "stats",
    "data check": "check",
    "report": "report",
}


class _DropAdverts(logging.Filter):
    """Drop Lightning's product tips from the run log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def _setup_logging() -> None:
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())
    for old in [h for h in log.handlers if getattr(h, "tbps_cli", False)]:
        log.removeHandler(old)  # main() called again in one process (tests): one handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    handler.tbps_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    logging.getLogger().setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


DATA_VERBS = ("data synth", "data stats", "data check")


def _verb_line(verb: str) -> str:
    """The verb's lines of USAGE (its description and examples)."""
    lines = USAGE.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {verb} "))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("                      "):
            break
        block.append(line)
    return "\n".join(block)


def _groups(config_name: str) -> list[tuple[str, str, list[str]]]:
    """(group, default option, options) of a primary config's defaults list."""
    from importlib import resources

    import yaml

    configs = resources.files("tbps.configs")
    primary = yaml.safe_load(configs.joinpath(f"{config_name}.yaml").read_text()) or {}
    groups = []
    for entry in primary.get("defaults", []):
        if isinstance(entry, dict):
            ((group, default),) = entry.items()
            groups.append((group, "null" if default is None else str(default), _options(group)))
    return groups


def _primary_keys(config_name: str) -> list[str]:
    """The primary config file's own keys with their comments (its defaults list left out)."""
    from importlib import resources

    text = resources.files("tbps.configs").joinpath(f"{config_name}.yaml").read_text()
    lines, in_defaults = [], False
    for line in text.splitlines():
        if line.startswith("defaults:"):
            in_defaults = True
            continue
        if in_defaults and (line.startswith((" ", "-")) or not line.strip()):
            continue
        in_defaults = False
        if line.strip() and not (line.startswith("#") and not lines):  # skip the title comment
            lines.append(line)
    return lines


def verb_help(verb: str) -> str:
    """``tbps VERB --help``: what it does, its config groups and options, its keys with their
    defaults (from the packaged config tree)."""
    if verb == "data":
        return (
            "tbps data <synth|stats|check> [key=value ...]\n\n"
            + "\n".join(_verb_line(v) for v in DATA_VERBS)
            + "\n\ntbps data synth --help (stats, check) lists each one's keys"
        )
    config_name = VERBS[verb]
    groups = _groups(config_name)
    out = [
        f"usage: tbps {verb}"
        + (" PATH..." if verb == "report" else "")
        + (" [group=option ...]" if groups else "")
        + " [key=value ...] [--cfg job]",
        "",
        _verb_line(verb),
    ]
    if groups:
        out += ["", "config groups (group=option; default first):"]
        for group, default, options in groups:
            others = [o for o in options if o != default]
            out.append(f"  {group:<11} {default}" + (f"  | {', '.join(others)}" if others else ""))
    group_names = {g for g, _, _ in groups}
    out += ["", "keys and their defaults (key=value; ??? = required):"]
    out += ["  " + line for line in _primary_keys(config_name)]
    if group_names:
        out += ["", f"the groups' own keys: tbps {verb} --cfg job [group=option]"]
    return "\n".join(out)


def _options(group: str) -> list[str]:
    from importlib import resources

    folder = resources.files("tbps.configs").joinpath(group)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def experiment_as_recipe(args: Sequence[str]) -> list[str]:
    """``experiment=<data>_<recipe>_<backbone>`` (the old per-dataset configs) -> ``recipe=<recipe>
    data=<data>``.

    The recipes are their own config group now, composed with any dataset; the old names keep
    working and the new command is printed.
    """
    out = []
    for arg in args:
        key, _, name = arg.partition("=")
        if key != "experiment":
            out.append(arg)
            continue
        datasets = _options("data")
        for recipe in _options("recipe"):
            data, marker, backbone = name.partition(f"_{recipe}_")
            if marker and data in datasets and backbone:
                new = [f"recipe={recipe}", f"data={data}"]
                if f"{recipe}_{backbone}" not in _recipe_names():
                    new.append(f"backbone={backbone}")
                log.warning("experiment=%s is now: %s", name, " ".join(new))
                out += new
                break
        else:
            raise ConfigError(
                f"experiment={name!r}: experiments are now recipe=RECIPE data=DATASET; recipes: "
                f"{', '.join(_options('recipe'))}; data: {', '.join(datasets)}"
            )
    return out


def _recipe_names() -> set[str]:
    """``<recipe>_<backbone>`` of each packaged recipe (its default backbone)."""
    from importlib import resources

    import yaml

    names = set()
    for recipe in _options("recipe"):
        text = resources.files("tbps.configs").joinpath(f"recipe/{recipe}.yaml").read_text()
        for entry in yaml.safe_load(text).get("defaults", []):
            if isinstance(entry, dict) and "override /backbone" in entry:
                names.add(f"{recipe}_{entry['override /backbone']}")
    return names


def _check_required(cfg, keys: Sequence[str], example: str) -> None:
    from omegaconf import OmegaConf

    for key in keys:
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key} is required: {example}")


def _train(cfg, overrides: Sequence[str] = ()) -> None:
    from tbps.app.train import run_training

    run_training(cfg, overrides)


def _report(cfg) -> None:
    from tbps.app.report import run_report

    run_report(cfg)


def _eval(cfg) -> None:
    from tbps.app.eval import run_evaluation

    run_evaluation(cfg)


def _export(cfg) -> None:
    from tbps.app.export import run_export

    run_export(cfg)


def _index(cfg) -> None:
    from tbps.app.index import run_index

    run_index(cfg)


def _search(cfg) -> None:
    from tbps.app.search import run_search

    run_search(cfg)


def _serve(cfg) -> None:
    from tbps.app.serve import run_serve

    run_serve(cfg)


def _clean(cfg) -> None:
    from tbps.app.clean import run_clean

    run_clean(cfg)


def _synth(cfg) -> None:
    from omegaconf import OmegaConf

    from tbps.data.synthetic import SynthConfig, generate_synthetic_dataset

    _check_required(cfg, ["out"], "tbps data synth out=DIR")
    settings = OmegaConf.to_container(cfg, resolve=True)
    out = settings.pop("out")
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    try:
        config = SynthConfig(**settings)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid synthetic dataset setting: {e}") from e
    summary = generate_synthetic_dataset(out, config)
    for split in ("train", "val", "test"):
        s = summary[split]
        ceiling = s.get("caption_ceiling_r1")
        print(
            f"{split:<6} {s['ids']:>6} ids {s['images']:>7} images {s['captions']:>7} captions"
            + ("" if ceiling is None else f"   caption ceiling t2i R1 {ceiling:.2f}")
        )
    print(f"written to {out} in {summary['seconds']:.1f} s")
    print(
        "caption ceiling: the R1 of an oracle ranking by the attributes each caption mentions "
        "(what no model can beat on average)"
    )


def _load_dataset(cfg, on_bad_caption: str | None = None):
    from omegaconf import OmegaConf

    from tbps.data.sources import load_dataset_section

    data = OmegaConf.to_container(cfg.data, resolve=True)
    if on_bad_caption:
        data["on_bad_caption"] = on_bad_caption
    return load_dataset_section(data, cfg.cache_dir, progress=sys.stderr.isatty())


def _check_format(cfg) -> None:
    if cfg.format not in ("table", "json"):
        raise ConfigError(f"format={cfg.format!r}; valid: table, json")


def _stats(cfg) -> None:
    import json

    from tbps.data.stats import dataset_stats, format_stats_table, identity_overlap

    _check_format(cfg)
    dataset = _load_dataset(cfg)
    stats = dataset_stats(dataset)
    overlap = identity_overlap(dataset)
    if cfg.format == "json":
        for pair, shared in overlap.items():  # per split: ids shared with each other split
            a, b = pair.split("&")
            stats[a].setdefault("shared_ids", {})[b] = shared
            stats[b].setdefault("shared_ids", {})[a] = shared
        print(json.dumps(stats, indent=2))
        return
    print(f"{dataset.name}: {dataset.root}")
    for note in dataset.notes:
        print(f"note: {note}")
    print(format_stats_table(stats, overlap))


def _check(cfg) -> int:
    import json

    from tbps.data.checks import check_dataset

    _check_format(cfg)
    dataset = _load_dataset(cfg, on_bad_caption="skip")  # count empty captions, don't stop
    report = check_dataset(
        dataset,
        check_images=cfg.images,
        decode=cfg.decode,
        max_examples=cfg.max_examples,
        progress=sys.stderr.isatty(),
    )
    if cfg.format == "json":
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(f"{dataset.name}: {dataset.root}")
        print(report.format())
    return 0 if report.ok else 1


def _convert(cfg) -> None:
    from tbps.model.convert import convert_clip_checkpoint
    from tbps.model.published import METHODS, NAMES, convert_published, detect_method

    _check_required(cfg, ["src", "out"], "tbps convert src=ViT-B-16.pt out=DIR")
    source = cfg["from"]
    if source not in ("auto", "openai", "open_clip", *METHODS):
        raise ConfigError(f"from={source!r}; valid: auto, openai, open_clip, {', '.join(METHODS)}")
    if source == "auto":
        source = detect_method(cfg.src) or "openai"
    if source in METHODS:
        size = None if cfg.image_size is None else tuple(cfg.image_size)
        out = convert_published(source, cfg.src, cfg.out, image_size=size, bpe_path=cfg.bpe)
        print(
            f"{NAMES[source]} model folder written to {out}; "
            f"tbps eval model={out} data=... , tbps index model={out} ..."
        )
        return
    out = convert_clip_checkpoint(
        cfg.src,
        cfg.out,
        hidden_act=cfg.hidden_act,
        vision_heads=cfg.vision_heads,
        text_heads=cfg.text_heads,
        bpe_path=cfg.bpe,
        allow_torchscript=cfg.allow_torchscript,
    )
    print(f"written to {out}; train on it with backbone=clip_b16 backbone.path={out}")


RUNNERS: dict[str, Callable] = {
    "train": _train,
    "eval": _eval,
    "export": _export,
    "index": _index,
    "search": _search,
    "serve": _serve,
    "clean": _clean,
    "data synth": _synth,
    "convert": _convert,
    "data stats": _stats,
    "data check": _check,
    "report": _report,
}


#: keys whose value is free text, taken verbatim (commas, quotes, brackets and all) instead of
#: through Hydra's override grammar
VERBATIM_KEYS: dict[str, tuple[str, ...]] = {"search": ("query", "image"), "report": ("group_by",)}
#: an override's key; any other word is a positional path (``tbps report PATH...``)
OVERRIDE_KEY = re.compile(r"^[+~]?[A-Za-z_][\w.]*(=|$)")


def _split_verbatim(verb: str, args: list[str]) -> tuple[list[str], dict[str, str]]:
    keys = VERBATIM_KEYS.get(verb, ())
    verbatim = {}
    rest = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key in keys:
            verbatim[key] = value
        else:
            rest.append(arg)
    return rest, verbatim


def _split_paths(args: list[str]) -> tuple[list[str], list[str]]:
    """``tbps report runs/a runs/sweeps/x/000_seed=1 format=json``: (paths, overrides)."""
    paths = [a for a in args if not OVERRIDE_KEY.match(a) or "=" not in a]
    return paths, [a for a in args if a not in paths]


def _resumed_config(args: Sequence[str]):
    """``tbps train resume=RUN_DIR [key=value ...]``: the run's saved config (or None)."""
    resume = [a for a in args if a.startswith("resume=")]
    if not resume or resume[-1] == "resume=null":
        return None
    from tbps.app.resume import resume_config

    others = [a for a in args if not a.startswith("resume=")]
    return resume_config(resume[-1].partition("=")[2], others)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if args[0] == "--version":
        print(__version__)
        return 0
    verb = args.pop(0)
    if verb == "data":
        if not args or args[0] in ("-h", "--help"):
            print(verb_help("data"))
            return 0
        verb = f"data {args.pop(0)}"
    if verb not in VERBS:
        print(
            f"tbps: unknown command {verb!r}; valid: {', '.join(VERBS)}\n\n{USAGE}", file=sys.stderr
        )
        return 2
    print_cfg = None
    if "--cfg" in args:
        i = args.index("--cfg")
        print_cfg = args[i + 1] if i + 1 < len(args) else "job"
        del args[i : i + 2]
    if any(a in ("-h", "--help") for a in args):
        try:
            print(verb_help(verb))
        except TBPSError as e:
            print(f"tbps {verb}: error: {e}", file=sys.stderr)
            return 2
        return 0
    _setup_logging()
    try:
        if verb == "train":
            args = experiment_as_recipe(args)
            if any(a in ("-m", "--multirun") for a in args):
                if print_cfg is not None:
                    raise ConfigError("--cfg shows one run's config: drop -m and the a,b lists")
                from tbps.app.sweep import sweep_command

                return sweep_command([a for a in args if a not in ("-m", "--multirun")])
        cfg = _resumed_config(args) if verb == "train" else None
        paths, args = _split_paths(args) if verb == "report" else ([], args)
        args, verbatim = _split_verbatim(verb, args)
        cfg = cfg if cfg is not None else compose_config(VERBS[verb], args)
        for key, value in verbatim.items():
            cfg[key] = value
        if verb == "report":
            cfg.paths = paths
        if verb == "eval":
            from tbps.app.eval import with_training_data

            cfg = with_training_data(cfg, args)
        if print_cfg is not None:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg, resolve=print_cfg == "resolved"))
            return 0
        from tbps.app.schema import validate_config

        validate_config(VERBS[verb], cfg)  # types and ranges, once, before any work
        code = RUNNERS[verb](cfg, args) if verb == "train" else RUNNERS[verb](cfg)
    except TBPSError as e:
        code = getattr(e, "exit_code", 2)
        print(f"tbps {verb}: {'error: ' if code else ''}{one_line(e)}", file=sys.stderr)
        return code
    except KeyboardInterrupt as e:
        run_dir = getattr(e, "run_dir", None)
        hint = f"; continue with: tbps train resume={run_dir}" if run_dir else ""
        print(f"tbps {verb}: interrupted{hint}", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
