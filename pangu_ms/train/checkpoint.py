"""Training checkpoints: the train-side names for `pangu_ms.checkpoint`.

A run keeps one `Checkpointer` (every rank saves its own slices and resume loads them back, see
`pangu_ms.checkpoint.training`); `load_for_inference` loads a model from a checkpoint of any
layout. The step-directory format is described in `pangu_ms.checkpoint.store`.
"""
from pangu_ms.checkpoint.inference import init_weights, load_for_inference, load_tokenizer, newest_complete
from pangu_ms.checkpoint.store import (STEP_RE, WEIGHT_FILES, checkpoints_root, list_step_dirs,
                                       step_dir_name)
from pangu_ms.checkpoint.training import (LM_PREFIX, CheckpointState, Checkpointer, compile_for_slices,
                                          load_job_config, read_tensors, resume, save)

__all__ = ["Checkpointer", "CheckpointState", "LM_PREFIX", "STEP_RE", "WEIGHT_FILES", "checkpoints_root",
           "compile_for_slices", "init_weights", "list_step_dirs", "load_for_inference", "load_job_config", "load_tokenizer", "newest_complete",
           "read_tensors", "resume", "save", "step_dir_name"]
