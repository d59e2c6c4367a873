"""The model catalogue (models/catalog.py) and docs/MODELS.md, which it generates."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.efficiency import count_parameters
from models import create_model, list_models
from models.catalog import COMMAND, catalog_rows, format_lines, main, markdown

MODELS_MD = Path(__file__).resolve().parent.parent / "docs" / "MODELS.md"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return catalog_rows()


def test_docs_models_md_is_up_to_date(rows):
    assert MODELS_MD.read_text(encoding="utf-8") == markdown(rows), (
        f"docs/MODELS.md is out of date; regenerate it with: {COMMAND}"
    )


def test_every_model_is_in_the_catalogue_and_in_docs(rows):
    names = list_models()
    assert [r["name"] for r in rows] == names
    text = MODELS_MD.read_text(encoding="utf-8")
    missing = [n for n in names if f"`{n}`" not in text]
    assert not missing, f"docs/MODELS.md lacks {missing}; regenerate it with: {COMMAND}"


@pytest.mark.parametrize("name, dim, patch", [("unet3d_xs", "3d", (128, 128, 128)), ("mobile_unetr", "2d", (128, 128))])
def test_params_equal_count_parameters_of_the_cpu_model(rows, name, dim, patch):
    row = next(r for r in rows if r["name"] == name)
    assert row["params"] == count_parameters(create_model(name, dim, patch))


def test_format_lines_keep_the_list_models_substrings(rows):
    lines = format_lines(rows)
    assert len(lines) == len(rows)
    line = next(x for x in lines if x.startswith("unet3d_xs "))
    assert "family=unet3d" in line and "modalities=t1ce,flair" in line and "dims=2d,3d" in line
    assert "modalities=t1,t1ce,t2,flair" in next(x for x in lines if x.startswith("unet3d_4modal_s "))
    assert "dims=2d " in next(x for x in lines if x.startswith("mobile_unetr "))


def test_main_write_and_check(rows, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("models.catalog.catalog_rows", lambda: rows)  # built once, by the fixture
    path = tmp_path / "MODELS.md"
    assert main(["--check", str(path)]) == 1  # missing
    assert main(["--write", str(path)]) == 0
    assert main(["--check", str(path)]) == 0
    path.write_text(path.read_text(encoding="utf-8") + "edited by hand\n", encoding="utf-8")
    assert main(["--check", str(path)]) == 1
    assert "out of date" in capsys.readouterr().err


# ------------------------------------------------------------------ the README's options table
README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_options_table_is_generated_from_the_config_and_current():
    from experiment.config import build_parser, options_table, readme_with_table

    text = README.read_text(encoding="utf-8")
    assert readme_with_table(text) == text, (
        "README.md's options table is out of date; regenerate it with: python -m experiment.config --write README.md")
    table = options_table()
    parser_flags = {s for a in build_parser()._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    table_flags = {line.split("`")[1].split()[0] for line in table.splitlines() if line.startswith("| `")}
    assert table_flags == parser_flags  # every option of the command, nothing else
    from brats_data.definitions import DATASET_VERSIONS

    assert f"`--dataset_version {{{','.join(DATASET_VERSIONS)}}}`" in table  # every data set record


def test_readme_table_regeneration_replaces_only_the_marked_part():
    from experiment.config import TABLE_END, TABLE_START, readme_with_table

    text = f"before\n{TABLE_START}\nstale\n{TABLE_END}\nafter\n"
    out = readme_with_table(text)
    assert out.startswith("before\n") and out.endswith("after\n") and "stale" not in out and "--epochs" in out
    with pytest.raises(ValueError, match="markers"):
        readme_with_table("no table here")
