import json

import pytest
from typer.testing import CliRunner

from asdtool.evaluate import report
from asdtool.cli import app
from asdtool.core.errors import AsdError

runner = CliRunner()


def _metrics(v: float) -> dict:
    machines = {m: {"auc_source": v, "auc_target": v / 2, "pauc": 0.5, "hmean": v} for m in ("fan", "valve")}
    return {"official_score": v, "arithmetic_mean": v, "hmean_auc_source": v, "hmean_auc_target": v / 2,
            "hmean_pauc": 0.5, "machines": machines}  # fmt: skip


def test_tables_in_the_papers_layouts():
    header, rows = report.single_model_rows({"a": _metrics(0.6), "b": _metrics(0.7)})
    assert header == ["model", "fan", "valve", "hmean"]
    assert rows == [["a", "60.00", "60.00", "60.00"], ["b", "70.00", "70.00", "70.00"]]
    header, rows = report.system_rows({"s1": _metrics(0.6), "s2": _metrics(0.8)})
    assert header == ["machine", "metric", "s1", "s2"]
    assert rows[0] == ["fan", "AUC_s", "60.00", "80.00"]
    assert rows[1] == ["fan", "AUC_t", "30.00", "40.00"]
    assert rows[-1] == ["hmean", "hmean", "60.00", "80.00"]
    assert len(rows) == 3 * 4
    md = report.markdown(header, rows[:1])
    assert md.splitlines()[:2] == ["| machine | metric | s1 | s2 |", "|---|---:|---:|---:|"]


def test_report_command_writes_markdown(tmp_path):
    for name, v in (("m1", 0.61), ("sys", 0.72)):
        (tmp_path / f"{name}.json").write_text(json.dumps(_metrics(v)))
    r = runner.invoke(app, ["report", "--metrics-dir", str(tmp_path), "--out", str(tmp_path / "rep"), "--model", "m1", "--system", "sys"])
    assert r.exit_code == 0, r.output
    assert "| m1 | 61.00 | 61.00 | 61.00 |" in (tmp_path / "rep" / "single_models.md").read_text()
    assert "| hmean | hmean | 72.00 |" in (tmp_path / "rep" / "systems.md").read_text()


def test_report_refuses_missing_or_foreign_metrics(tmp_path):
    r = runner.invoke(app, ["report", "--metrics-dir", str(tmp_path), "--out", str(tmp_path / "rep"), "--model", "nope"])
    assert r.exit_code == 1 and "nope.json: metrics file does not exist" in r.output
    assert not (tmp_path / "rep").exists()
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(AsdError, match="missing keys"):
        report.read_metrics(tmp_path / "x.json")
    other = _metrics(0.5)
    other["machines"] = {"fan": other["machines"]["fan"]}
    with pytest.raises(AsdError, match="other machine types"):
        report.single_model_rows({"a": _metrics(0.6), "b": other})
