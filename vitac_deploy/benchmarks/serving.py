"""The serving benchmark: N concurrent robots (PolicyClient on loopback) against one server, the
same requests batched (`--batch-window-ms W`) and one at a time (window 0, max one robot per batch),
in one run: plans per second and p50/p99 latency. Also `tiny_artifact`, the reduced-size model the
tests and the CPU benchmark serve (export side: needs torch).

    python -m vitac_deploy.benchmarks.serving --clients 1,2,4,8 --requests 12 --samples 32 --cem-steps 3
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np


def tiny_artifact(out: Path, seed: int = 0, embed_dim: int = 32, depth: int = 2, img_size: int = 64,
                  grid: int = 4, encoder_depth: int = 1) -> Path:
    """A small random 7-dim (Franka) predictor with a matching encoder at `out/encoder` (export validated)."""
    from ..config import PredictorConfig
    from ..encoder import EncoderConfig
    from ..exporters import ExportOptions, export_artifact
    from ..exporters.encoder_artifact import EncoderExportOptions, export_encoder
    from ..reference import random_encoder, random_predictor

    cfg = PredictorConfig(embed_dim=embed_dim, predictor_embed_dim=48, depth=depth, num_heads=2, action_dim=7,
                          grid_height=grid, grid_width=grid, max_frames=4)
    ecfg = EncoderConfig(img_size=img_size, patch_size=img_size // grid, embed_dim=embed_dim, depth=encoder_depth,
                         num_heads=2)
    export_artifact(random_predictor(cfg, seed), out, ExportOptions(precisions=["fp32"], first_frame_graph=False,
                                                                    force=True))
    export_encoder(random_encoder(ecfg, seed + 1), Path(out) / "encoder",
                   EncoderExportOptions(precisions=["fp32"], force=True))
    return Path(out)


def robot_requests(n: int, seed: int, size: tuple = (48, 64), state_dim: int = 7) -> list:
    """n requests with random camera frames, goal images and poses (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pose = np.concatenate([rng.uniform(-0.3, 0.3, 3), rng.uniform(-0.5, 0.5, 3), [rng.uniform(0, 1)]])
        out.append({"observation/image": rng.integers(0, 256, (*size, 3), dtype=np.uint8),
                    "observation/state": pose[:state_dim].astype(np.float32),
                    "goal/image": rng.integers(0, 256, (*size, 3), dtype=np.uint8),
                    "seed": int(rng.integers(0, 2**31))})
    return out


def run_clients(port: int, clients: int, requests: int, seed: int = 0) -> dict:
    """`clients` robots, each sending `requests` requests back to back; latencies and plans/s."""
    from ..client import PolicyClient

    lat: list = []
    errors: list = []
    lock = threading.Lock()
    conns = [PolicyClient("127.0.0.1", port, connect_timeout=10) for _ in range(clients)]
    barrier = threading.Barrier(clients)

    def robot(i: int) -> None:
        reqs = robot_requests(requests, seed + 1000 * i)
        barrier.wait()
        for r in reqs:
            t0 = time.perf_counter()
            try:
                conns[i].infer(r)
            except Exception as e:  # noqa: BLE001 - counted
                errors.append(str(e))
                continue
            with lock:
                lat.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    ms = np.array(lat) * 1e3
    return {"clients": clients, "plans": len(lat), "errors": len(errors), "seconds": wall,
            "plans_per_s": len(lat) / wall, "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None}


def main(argv: Optional[list] = None) -> None:
    import tempfile

    from ..planning import CEMOptions
    from ..serving import PlanService, ServeOptions
    from ..runtimes import open_models
    from ..serving.server import PolicyServer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", type=Path, help="serve this artifact (default: a reduced-size random model)")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=12, help="requests per client")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--topk", type=int, default=4)
    ap.add_argument("--cem-steps", type=int, default=3)
    ap.add_argument("--batch-window-ms", type=float, default=5.0)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--embed-dim", type=int, default=64, help="reduced model: feature dim")
    ap.add_argument("--depth", type=int, default=4, help="reduced model: predictor blocks")
    ap.add_argument("--ray-replicas", default="", help="also through Ray Serve with these replica counts "
                    "(e.g. 1,2: a local Ray instance, the batched options; needs the ray extra)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    counts = [int(c) for c in a.clients.split(",")]
    cem = CEMOptions(samples=a.samples, topk=a.topk, cem_steps=a.cem_steps)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        art = a.artifact or tiny_artifact(Path(tmp) / "art", embed_dim=a.embed_dim, depth=a.depth, img_size=128,
                                          grid=8, encoder_depth=2)
        for mode, window, robots_per_batch in (("one at a time", 0.0, 1), ("batched", a.batch_window_ms, max(counts))):
            rt, enc, _ = open_models(art, None, a.backend, a.device, None, cem.samples * robots_per_batch)
            opts = ServeOptions(batch_window_ms=window, max_robots=max(counts))
            service = PlanService(rt, enc, cem, opts, batch_robots=robots_per_batch)
            server = PolicyServer(service, port=0)
            server.start_in_thread()
            run_clients(server.port, 1, 2)                  # warm up
            for n in counts:
                r = run_clients(server.port, n, a.requests)
                r["mode"] = mode
                rows.append(r)
                print(f"{mode:>14}  {n} clients: {r['plans_per_s']:.2f} plans/s, p50 {r['p50_ms']:.0f} ms, "
                      f"p99 {r['p99_ms']:.0f} ms ({r['plans']} plans, {r['errors']} errors)", flush=True)
            server.stop()
        if a.ray_replicas:
            rows += _ray_rows(art, a, cem, counts, [int(r) for r in a.ray_replicas.split(",")])
    if a.json:
        a.json.write_text(json.dumps({"options": vars(a) | {"json": str(a.json), "artifact": str(a.artifact)},
                                      "rows": rows}, indent=1, default=str))


def _ray_rows(art: Path, a: argparse.Namespace, cem: object, counts: list, replica_counts: list) -> list:
    """The same clients against `serve --ray` on a local Ray instance, one deployment per replica count."""
    import socket

    import ray

    from ..serving import ServeOptions
    from ..serving.ray_serve import build_app, run_ray

    rows = []
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        for n_rep in replica_counts:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            app = build_app(art, backend=a.backend, device=a.device, cem=cem, replicas=n_rep, gpus_per_replica=0,
                            options=ServeOptions(batch_window_ms=a.batch_window_ms, max_robots=max(counts)))
            stop, ready = threading.Event(), threading.Event()
            t = threading.Thread(target=run_ray, args=(app, "127.0.0.1", port, None, n_rep),
                                 kwargs=dict(say=lambda m: None, stop=stop, ready=ready), daemon=True)
            t.start()
            ready.wait(300)
            run_clients(port, 2 * n_rep, 2)                  # warm up (every replica, likely)
            mode = f"ray {n_rep} replica" + ("s" if n_rep > 1 else "")
            for n in counts:
                r = run_clients(port, n, a.requests)
                r["mode"] = mode
                rows.append(r)
                print(f"{mode:>14}  {n} clients: {r['plans_per_s']:.2f} plans/s, p50 {r['p50_ms']:.0f} ms, "
                      f"p99 {r['p99_ms']:.0f} ms ({r['plans']} plans, {r['errors']} errors)", flush=True)
            stop.set()
            t.join(120)
    finally:
        ray.shutdown()
    return rows


if __name__ == "__main__":
    main()
