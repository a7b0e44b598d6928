"""Distributed checkpoints: per-rank slices, merge and reshard, and the formats people have.

- `layout`: which slice of which tensor each rank holds, computed from our plan (one place).
- `store`: step directories of per-rank files, the manifest, completeness, pruning.
- `training`: `Checkpointer` (every rank saves its slices; resume loads them back).
- `reshard`: streaming NumPy merge and reshard between layouts.
- `strategy`: the layout as a MindSpore strategy file, written and read back.
- `safetensors_io`: safetensors read and written one tensor at a time.
- `formats` and `convert`: the released 2021, MindFormers 1.3.2 and Hugging-Face-style weights.
- `inference`: a model loaded from a checkpoint of any layout.

Layer: above `parallel`, `models`, `data`, `tokenizer` and `config`; `train` and `cli` use it.
"""
