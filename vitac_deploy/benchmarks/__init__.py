"""Benchmarks: figures printed side by side in one run, never asserted by tests.

- `rollouts`: `vitac-deploy bench`, each backend's per-frame and rollout latency (or one CEM plan)
  against the upstream way (full recompute) on the same device.
- `encoder`: the encoder's rows of `bench` (1 and 2 frames per call) against the reference.
- `serving`: N robots against one server, batched and one at a time
  (`python -m vitac_deploy.benchmarks.serving`).
"""
