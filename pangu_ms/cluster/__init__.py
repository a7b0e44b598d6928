"""Launching on Ascend clusters: HCCL rank tables and pre-flight checks.

- `rank_table`: the rank-table model (versions "1.0" and "1.2"), validation, JSON I/O
  (atomic writes) and merging of per-server tables.
- `sources`: where device IPs and the server id come from (`/etc/hccn.conf`,
  `hccn_tool -i N -ip -g`, an explicit list; device ranges such as `0-7`).
- `superpod`: version "1.2" tables for Atlas A3 SuperPoD clusters from a YAML description.
- `preflight`: the checks `launch/run_distributed.sh` and `launch/run_msrun.sh` run before
  starting any process (`python -m pangu_ms preflight`).

Nothing here imports MindSpore.
"""
