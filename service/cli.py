"""`cpe-serving`: start the service under Gunicorn with its own config, or check a model
repository offline before deploying it.

    cpe-serving [--model-repository DIR] [--port N] [--host H]   # serve (as `make run`)
    cpe-serving check [DIR]                                        # validate, exit 1 on a problem
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    if args.model_repository:
        os.environ["SERVING_MODEL_REPOSITORY"] = str(Path(args.model_repository).resolve())
    if args.port:
        os.environ["PORT"] = str(args.port)
    if args.host:
        os.environ["SERVING_HOST"] = args.host
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf", "service.app:create_app()"]
    os.execv(sys.executable, argv)
    return 0  # not reached


def check_repository(root: Path, config_file: Path | None = None) -> list[tuple[str, str, str]]:
    """(model/version, check, problem or 'ok') for every version the policy would serve."""
    from service.models import resolve
    from service.models.policy import discover, read_model_config
    from service.models.repository import versions_in
    from service.models.signature import build_model_info

    rows: list[tuple[str, str, str]] = []
    try:
        policies = read_model_config(config_file, root) if config_file else discover(root)
    except Exception as err:  # noqa: BLE001 - reported as a row
        return [("-", "models.config", f"{type(err).__name__}: {err}")]
    if not policies:
        return [(str(root), "repository", "no model with a complete version (<model>/<n>/saved_model.pb)")]
    import tensorflow as tf

    for policy in policies:
        wanted = policy.select(versions_in(policy.base_path))
        if not wanted:
            rows.append((policy.name, "policy", f"selects no version of {versions_in(policy.base_path)}"))
        for number in wanted:
            where = f"{policy.name}/{number}"
            try:
                version = resolve(root, policy.name, number, model_dir=policy.base_path)
                loaded = tf.saved_model.load(str(version.path))
                signature_name = version.metadata.signature_name or "serving_default"
                function = loaded.signatures[signature_name]
                _, specs = function.structured_input_signature
                info = build_model_info(version, signature_name, {k: v.shape.as_list() for k, v in specs.items()},
                                        list(function.structured_outputs))
                summary = (f"ok: {info.input_key} {info.height}x{info.width}x{info.channels} "
                           f"-> {info.output_key} {list(info.classes)}")
                rows.append((where, "signature", summary))
                rows.append((where, "metadata", "ok" if version.metadata.classes else "no class names (class_0..)"))
                rows.append((where, "qc gate", f"ok: {len(info.metadata.qc.checks)} checks"
                             if info.metadata.qc.checks else "none (answers carry no qc)"))
            except Exception as err:  # noqa: BLE001 - every problem becomes a row
                rows.append((where, "load", f"{type(err).__name__}: {err}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cpe-serving` console script."""
    parser = argparse.ArgumentParser(prog="cpe-serving", description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", help="TF Serving layout <dir>/<model>/<version>/")
    parser.add_argument("--port", type=int)
    parser.add_argument("--host")
    commands = parser.add_subparsers(dest="command")
    check = commands.add_parser("check", help="validate a model repository offline")
    check.add_argument("repository", nargs="?", type=Path, default=None)
    check.add_argument("--model-config-file", type=Path)
    args = parser.parse_args(argv)
    if args.command != "check":
        return _serve(args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from service.config import Settings

    root = args.repository or (Path(args.model_repository) if args.model_repository else Settings().model_repository)
    rows = check_repository(root, args.model_config_file)
    width = max(len(row[0]) for row in rows)
    for where, what, result in rows:
        print(f"{where:<{width}}  {what:<9}  {result}")
    bad = [row for row in rows if not (row[2].startswith("ok") or row[1] in ("metadata", "qc gate"))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
