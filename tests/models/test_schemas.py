import json

from bundle import schemas
from tests.conftest import REPO


def test_committed_schemas_match_the_models():
    wanted = schemas.render_schemas()
    folder = REPO / "schemas"
    committed = {p.name: p.read_text() for p in folder.glob("*.schema.json")}
    assert set(committed) == set(wanted), "run: python -m bundle.schemas"
    for name, text in wanted.items():
        assert committed[name] == text, f"{name} is stale: run python -m bundle.schemas"


def test_check_mode_reports_drift(tmp_path):
    assert schemas.main(["--out", str(tmp_path)]) == 0
    assert schemas.main(["--check", "--out", str(tmp_path)]) == 0
    path = tmp_path / "route.schema.json"
    doc = json.loads(path.read_text())
    doc["title"] = "changed"
    path.write_text(json.dumps(doc))
    assert schemas.main(["--check", "--out", str(tmp_path)]) == 1
