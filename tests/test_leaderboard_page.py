"""The browsable leaderboard page: seed groups, the CSV download read back, and the built page
driven in headless Chromium (Debian's `chromium`, through playwright given its path; no browser
is downloaded). Without a browser the browser tests skip locally and fail in CI."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from recall_bench import cli
from recall_bench import leaderboard as lb
from recall_bench.leaderboard.page import CSV_HEADER, METRICS, build_page, rows_csv, seed_groups

ROOT = Path(__file__).parent.parent
BOARD = ROOT / "results" / "leaderboard.json"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _read_csv(text: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and list(rows[0]) == list(CSV_HEADER)
    return rows


def _assert_same_numbers(csv_rows: list[dict[str, str]], rows: list[dict[str, Any]]) -> None:
    """Every field and metric statistic of the JSON rows reads back equal from the CSV, and
    the CSV has nothing the JSON lacks."""
    assert len(csv_rows) == len(rows)
    for got, row in zip(csv_rows, rows, strict=True):
        for field in ("n_facts", "params", "n_seeds", "steps"):
            assert float(got[field]) == row[field]
        for field in ("group", "mode", "dtype", "device", "converged", "seeds", "records"):
            assert got[field] == str(row[field])
        present = {f"{m}_{s}": v for m, st in row["metrics"].items() for s, v in st.items()}
        for name in CSV_HEADER[len(CSV_HEADER) - 3 * len(METRICS) :]:
            if name in present:
                assert float(got[name]) == present[name], name
            else:
                assert got[name] == "", name


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    return lb.validate(BOARD)


def test_seed_groups_differ_only_in_seed(committed: dict[str, Any]) -> None:
    rows = seed_groups(committed["entries"], ROOT / "results" / "leaderboard")
    assert sum(r["n_seeds"] for r in rows) == len(committed["entries"])
    assert any(r["n_seeds"] > 1 for r in rows)
    by_id = {e["run_id"]: e for e in committed["entries"]}
    for row in rows:
        for stats in row["metrics"].values():
            assert stats["min"] <= stats["mean"] <= stats["max"]
        for link in filter(None, row["records"].split(";")):
            record = json.loads((ROOT / "results" / "leaderboard" / link).read_text())
            entry = by_id[record["run_id"]]
            assert entry["mode"] == row["mode"] and entry["n_facts"] == row["n_facts"]
            assert entry["model"]["params"]["total"] == row["params"]


def test_csv_round_trips_to_the_json(committed: dict[str, Any]) -> None:
    rows = seed_groups(committed["entries"])
    _assert_same_numbers(_read_csv(rows_csv(rows)), json.loads(json.dumps(rows)))


def test_committed_page_is_built_from_the_committed_leaderboard(
    committed: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """results/leaderboard/ holds the rows of results/leaderboard.json (rebuild: README)."""
    monkeypatch.chdir(ROOT)
    out = Path("results") / "leaderboard"
    rows = json.loads((out / "leaderboard-rows.json").read_text())
    assert rows == json.loads(json.dumps(seed_groups(committed["entries"], out)))
    assert (out / "leaderboard.csv").read_text() == rows_csv(rows)


def test_html_refuses_a_file_as_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        build_page(BOARD, tmp_path / "f")


def _browser() -> tuple[Any, str]:
    """playwright's sync API and the path of Debian's chromium; skip locally, fail in CI."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if path is None or sync_playwright is None:
        missing = "playwright (pip install -e '.[test]')" if path else "chromium (apt-get)"
        if os.environ.get("CI"):
            pytest.fail(f"no browser for the page test in CI: install {missing}")
        pytest.skip(f"{missing} not installed")
    return sync_playwright, path


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page of the committed leaderboard, built into a temporary folder by the CLI."""
    out = tmp_path_factory.mktemp("page")
    assert cli.main(["leaderboard", "html", str(BOARD), "-o", str(out)]) == 0
    return out


def _column(page: Any, table: str, key: str) -> list[str]:
    heads = page.eval_on_selector_all(f"#{table} th", "ths => ths.map(t => t.dataset.key)")
    i = heads.index(key)
    return page.eval_on_selector_all(
        f"#{table} tbody tr", f"trs => trs.map(tr => tr.cells[{i}].textContent)"
    )


def test_page_in_headless_chromium(page_dir: Path, tmp_path: Path) -> None:
    sync_playwright, chromium = _browser()
    rows = json.loads((page_dir / "leaderboard-rows.json").read_text())
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True, args=FLAGS
        )
        page = context.new_page()
        page.goto((page_dir / "index.html").as_uri())
        assert page.locator("#tables tbody tr").count() == len(rows)  # one row per seed group

        table = "table-in-weight-capacity"
        before = _column(page, table, "params")
        page.click(f'#{table} th[data-key="params"]')
        after = [float(v) for v in _column(page, table, "params")]
        assert after == sorted(after, reverse=True) and after != [float(v) for v in before]
        page.click(f'#{table} th[data-key="params"]')
        assert [float(v) for v in _column(page, table, "params")] == sorted(after)

        page.select_option("#filter-mode", "in-tool")
        modes = page.eval_on_selector_all("#tables tbody tr", "trs => trs.map(t => t.dataset.mode)")
        assert modes and set(modes) == {"in-tool"}
        assert len(modes) == sum(r["mode"] == "in-tool" for r in rows)

        widths = page.eval_on_selector_all("#plots img", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(widths) == 4 and all(w > 0 for w in widths)

        shown = page.evaluate("JSON.stringify(leaderboardPage.shownRows())")
        csv_text = page.evaluate("leaderboardPage.toCSV(leaderboardPage.shownRows())")
        _assert_same_numbers(_read_csv(csv_text), json.loads(shown))
        href = page.get_attribute("#download-csv", "href")
        assert href.startswith("data:text/csv") and href.count("%0A") == len(modes) + 1

        shot = tmp_path / "leaderboard.png"
        page.screenshot(path=str(shot), full_page=True)
        context.close()
    assert shot.stat().st_size > 0
    print(f"screenshot: {shot}")
