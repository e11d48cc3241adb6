"""TensorRT: engine building (`build.py`), optimization profiles (`profiles.py`) and the checks an
engine's manifest must pass before deserialization (`compat.py`). Imports tensorrt only when used."""
