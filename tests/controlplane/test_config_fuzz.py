"""The config loader on arbitrary input: a UsageError or a valid Config, nothing else."""

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from scx_gpu.controlplane import config
from scx_gpu.errors import UsageError

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=8)


def _build_or_usage_error(path: Path | None, flags: dict[str, object]) -> None:
    try:
        cfg = config.build(path, flags)
    except UsageError:
        return
    assert isinstance(cfg, config.Config)
    assert cfg.validate() is cfg


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_toml_text(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "c.toml")
        path.write_text(text)
        _build_or_usage_error(path, {})


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["quota", "period_ms", "floor_ms", "scope", "policy",
                                        "fallback", "cuda_libs", "sched_idle_batch", "rescan_s",
                                        "gpu", "batch"]), VALUES, max_size=4))
def test_any_toml_tables(values):
    lines = []
    for key, value in values.items():
        lines.append(f"{key} = {_toml(value)}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "c.toml")
        path.write_text("\n".join(lines) + "\n")
        _build_or_usage_error(path, {})


def _toml(value: object) -> str:
    """A TOML literal for value (inline tables for dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return '""'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items()) + "}"
