"""CSV ledgers as pandas writes them: quoted fields with line ends, a byte-order mark, a row cut inside quotes."""

from __future__ import annotations

import pandas as pd

from resumedoctor import api


def codes(report) -> set[str]:
    return {finding.code for finding in report.findings}


def test_quoted_line_ends_and_a_bom_are_records_not_damage(tmp_path):
    results = tmp_path / "results.csv"
    frame = pd.DataFrame({"id": [1, 2, 3], "completion": ["line\nbreak", 'say "hi"\n\nok', "plain"]})
    frame.to_csv(results, index=False)
    report = api.diagnose(results)
    assert report.exit_code == 0 and report.ledger["records"] == len(pd.read_csv(results))  # pandas: the oracle
    with_bom = tmp_path / "bom.csv"
    frame.to_csv(with_bom, index=False, encoding="utf-8-sig")
    report = api.diagnose(with_bom)
    assert "GEN015" not in codes(report) and report.ledger["records"] == 3


def test_a_row_cut_inside_its_quotes_is_torn_and_the_cut_leaves_what_pandas_reads(tmp_path):
    results = tmp_path / "results.csv"
    pd.DataFrame({"id": [1, 2], "completion": ["whole", "cut\nafter its first line"]}).to_csv(results, index=False)
    raw = results.read_bytes()
    results.write_bytes(raw[:raw.index(b"after")])  # the writer killed inside the quoted field
    report = api.diagnose(results)
    assert "GEN001" in codes(report)
    api.fix(results)
    assert pd.read_csv(results)["id"].tolist() == [1]
    assert "GEN001" not in codes(api.diagnose(results))
