"""Artifacts: what export writes and every runtime reads. Manifests (sealed; predictor, encoder
and engine), the files they list (hashed), and publishing (lock, temporary directory, atomic
swap) shared by every writer. numpy-free: the runtime side reads artifacts with it."""

from .files import check_name, check_output, file_digest, load_json, save_figure, sha256_file, strict_json, umask, write_json_atomic
from .manifest import (ARTIFACT_FORMAT, ARTIFACT_FORMAT_VERSION, CONCAT_ENGINE_FORMAT_VERSION, CONCAT_FORMAT_VERSION,
                       ENCODER_DIR, ENCODER_FORMAT, ENCODER_FORMAT_VERSION, ENGINE_FORMAT, ENGINE_FORMAT_VERSION, ENGINE_SUFFIXES,
                       MANIFEST, NESTED, artifact_kind, cache_contract, find_encoder, graph_names, now_iso,
                       read_encoder_manifest, read_engine_manifest, read_manifest, verify_files, versions)
from .publish import OutLock, Progress, check_out, owned_entries, publish_lock, publishing
from .seal import SEAL, check_format_version, check_keys, check_seal, seal

__all__ = [
    "ARTIFACT_FORMAT", "ARTIFACT_FORMAT_VERSION", "CONCAT_ENGINE_FORMAT_VERSION", "CONCAT_FORMAT_VERSION",
    "ENCODER_DIR", "ENCODER_FORMAT", "ENCODER_FORMAT_VERSION", "ENGINE_FORMAT", "ENGINE_FORMAT_VERSION", "MANIFEST",
    "ENGINE_SUFFIXES", "NESTED", "SEAL", "OutLock", "Progress", "artifact_kind", "cache_contract", "check_format_version",
    "check_keys", "check_name", "check_output", "check_out", "check_seal", "file_digest", "find_encoder", "graph_names",
    "load_json", "now_iso", "owned_entries", "publish_lock", "publishing", "read_encoder_manifest",
    "read_engine_manifest", "read_manifest", "save_figure", "seal", "sha256_file", "strict_json", "umask",
    "verify_files", "versions", "write_json_atomic",
]
