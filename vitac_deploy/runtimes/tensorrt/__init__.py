"""TensorRT: the runtime backend (`backend.py`), engine building (`build.py`), optimization
profiles (`profiles.py`), the checks an engine's manifest must pass before deserialization
(`compat.py`) and the choice of TensorRT flavour (`module.py`). Imports tensorrt only when used."""
