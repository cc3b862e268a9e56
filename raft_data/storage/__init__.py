"""Storage: where every artifact lives and how it is written so that a crash never leaves half of one: round
folders and shard names, atomic writes, markers, locks, manifests, the `stage()` ritual, and the Parquet schemas.
"""

from raft_data.storage.files import (
    file_sha256,
    make_dir,
    mark_done,
    marker_path,
    read_json,
    shard_done,
    stage_lock,
    write_json,
    write_parquet,
    write_text,
)
from raft_data.storage.layout import (
    NEXT_COMMAND,
    STAGE_FOLDERS,
    baseline_dir,
    experiment_dir,
    round_dir,
    shard_files,
    shard_name,
)
from raft_data.storage.lineage import policy_for_round, read_eval, round_wall_time
from raft_data.storage.manifests import (
    StageRun,
    begin_stage,
    finish_stage,
    library_versions,
    publish_folder,
    read_manifest,
    read_verified,
    shard_inventory,
    stage,
    tmp_folder,
    verify_shards,
)

__all__ = [
    "NEXT_COMMAND",
    "STAGE_FOLDERS",
    "StageRun",
    "baseline_dir",
    "begin_stage",
    "experiment_dir",
    "file_sha256",
    "finish_stage",
    "library_versions",
    "make_dir",
    "mark_done",
    "marker_path",
    "policy_for_round",
    "publish_folder",
    "read_eval",
    "read_json",
    "read_manifest",
    "read_verified",
    "round_dir",
    "round_wall_time",
    "shard_done",
    "shard_files",
    "shard_inventory",
    "shard_name",
    "stage",
    "stage_lock",
    "tmp_folder",
    "verify_shards",
    "write_json",
    "write_parquet",
    "write_text",
]
