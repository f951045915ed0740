"""``trials.parquet``: one row per trial (search trials and baselines) with a fixed, documented schema.

The schema does not depend on the space's C: per-column metrics are list columns (``column_val_acc[k-1]`` is
column k), and every sampled parameter is a ``param_<name>`` column. The metric columns are the fields of
:class:`~fractal_space.search.trial.record.TrialRecord`, so a new metric appears here without an edit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fractal_space.core.files import atomic_path
from fractal_space.search.study.accounting import is_search_trial
from fractal_space.search.trial.record import record_columns

TRIAL_SCHEMA = pa.schema([
    ("number", pa.int64()),
    ("kind", pa.string()),               # "fractalnet" or "baseline"
    ("model", pa.string()),
    ("state", pa.string()),              # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    ("fail_reason", pa.string()),
    ("values", pa.list_(pa.float64())),  # the study's objective values (accuracy first)
    ("duration_s", pa.float64()),        # start to finish as the storage saw it
    ("datetime_start", pa.timestamp("us")),
    ("datetime_complete", pa.timestamp("us")),
    ("config", pa.string()),             # JSON: the model_kwargs and train dict the trial was built from
    ("worker", pa.string()),
])
#: Every fixed column: the trial's own, then the record's metrics (``param_*`` columns follow).
FIXED_SCHEMA = pa.schema([*TRIAL_SCHEMA, *(pa.field(column, arrow) for _, column, arrow in record_columns())])


def rows(study: optuna.Study) -> list[dict[str, Any]]:
    """The study's trials as dicts in FIXED_SCHEMA order plus ``param_*`` keys (surplus trials left out)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        rec = t.user_attrs.get("record") or {}
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
            t.datetime_start else None
        row = {
            "number": t.number,
            "kind": "fractalnet" if is_search_trial(t) else "baseline",
            "model": t.user_attrs.get("model"),
            "state": t.state.name,
            "fail_reason": t.user_attrs.get("fail_reason", "stale heartbeat" if t.state.name == "FAIL" else None),
            "values": list(t.values) if t.values else None,
            "duration_s": duration,
            "datetime_start": t.datetime_start,
            "datetime_complete": t.datetime_complete,
            "config": json.dumps(t.user_attrs["config"]) if "config" in t.user_attrs else None,
            "worker": t.user_attrs.get("worker"),
        }
        row.update({column: rec.get(name) for name, column, _ in record_columns()})
        row.update({f"param_{k}": v for k, v in t.params.items()})
        out.append(row)
    return out


def write_trials(study: optuna.Study, path: Path) -> pa.Table:
    """Write ``trials.parquet`` atomically (a reader never sees half a file) and return the table."""
    data = rows(study)
    param_names = sorted({k for r in data for k in r if k.startswith("param_")})
    columns = {f.name: pa.array([r[f.name] for r in data], type=f.type) for f in FIXED_SCHEMA}
    for name in param_names:
        values = [r.get(name) for r in data]
        kinds = {type(v) for v in values if v is not None}
        typ = pa.string() if str in kinds else pa.float64() if float in kinds else pa.int64()
        columns[name] = pa.array(values, type=typ)
    table = pa.table(columns)
    # pandas metadata with nullable integer dtypes: baseline rows have no num_columns and no integer params, and
    # pandas would otherwise read those int64 columns back as float64
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    table = pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return table
