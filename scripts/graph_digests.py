#!/usr/bin/env python3
"""The sha256 of every graph and weights file `export` and `export-encoder` write, for two predictor
and two encoder configurations (the golden cases' shapes, seeded random weights), each cache
contract and precision, first-frame and energy graphs included. A refactoring that must leave the
exported graphs unchanged compares this script's output before and after:

    python scripts/graph_digests.py > before.json   # on the old tree
    python scripts/graph_digests.py > after.json    # on the new tree
    diff before.json after.json                     # nothing: byte-identical

Needs the export extra (torch, onnx). Manifests are not hashed (they carry dates and versions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREDICTORS = ("seed_l384", "swiglu_extr_h64")
ENCODERS = ("encoder_gelu_h24", "encoder_vitg_shape")


def _digests(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.suffix in (".onnx", ".bin")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--golden", type=Path, default=ROOT / "tests" / "golden",
                    help="Where the golden cases' JSON files are (their shapes are used, not their outputs).")
    args = ap.parse_args()
    from vitac_deploy.config import PredictorConfig
    from vitac_deploy.encoder import EncoderConfig
    from vitac_deploy.exporters import EncoderExportOptions, ExportOptions, export_artifact, export_encoder
    from vitac_deploy.reference import random_encoder, random_predictor

    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="vitac-digests-") as tmp:
        for case in PREDICTORS:
            cfg = PredictorConfig.from_json(args.golden / f"{case}.json")
            model = random_predictor(cfg, seed=0)
            for cache in ("concat", "static"):
                art = Path(tmp) / f"{case}-{cache}"
                export_artifact(model, art, ExportOptions(validate=False, cache=cache))
                out.update({f"{case}/{cache}/{k}": v for k, v in _digests(art).items()})
        for case in ENCODERS:
            ecfg = EncoderConfig.from_dict(json.loads((args.golden / f"{case}.json").read_text()))
            art = Path(tmp) / case
            export_encoder(random_encoder(ecfg, seed=0), art, EncoderExportOptions(validate=False))
            out.update({f"{case}/{k}": v for k, v in _digests(art).items()})
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
